//! Calls about Port's configuration objects: blueprints, the integration, the organization.

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::client::{Call, PortClient, segment};
use super::error::PortError;
use super::model::{
    Integration, KafkaCredentials, NewIntegration, Organization, ResyncRequest, ResyncState,
};

#[derive(Deserialize)]
struct BlueprintAnswer {
    blueprint: Value,
}

#[derive(Deserialize)]
struct IntegrationAnswer {
    integration: Integration,
}

impl PortClient {
    pub async fn get_blueprint(&self, identifier: &str) -> Result<Option<Value>, PortError> {
        let call = Call::new(Method::GET, format!("/blueprints/{}", segment(identifier)));
        Ok(self
            .execute_optional::<BlueprintAnswer>(&call)
            .await?
            .map(|a| a.blueprint))
    }

    pub async fn create_blueprint(&self, blueprint: &Value) -> Result<Value, PortError> {
        let call = Call::new(Method::POST, "/blueprints").json(blueprint);
        Ok(self.execute_json::<BlueprintAnswer>(&call).await?.blueprint)
    }

    pub async fn patch_blueprint(
        &self,
        identifier: &str,
        patch: &Value,
    ) -> Result<Value, PortError> {
        let call = Call::new(
            Method::PATCH,
            format!("/blueprints/{}", segment(identifier)),
        )
        .json(patch);
        Ok(self.execute_json::<BlueprintAnswer>(&call).await?.blueprint)
    }

    /// This agent's integration object, or `None` when Port has none yet.
    pub async fn get_integration(
        &self,
        identifier: &str,
    ) -> Result<Option<Integration>, PortError> {
        let call = Call::new(Method::GET, format!("/integration/{}", segment(identifier)));
        Ok(self
            .execute_optional::<IntegrationAnswer>(&call)
            .await?
            .map(|a| a.integration))
    }

    pub async fn create_integration(
        &self,
        integration: &NewIntegration,
    ) -> Result<Integration, PortError> {
        let call = Call::new(Method::POST, "/integration").json(integration);
        Ok(self
            .execute_json::<IntegrationAnswer>(&call)
            .await?
            .integration)
    }

    pub async fn patch_integration(
        &self,
        identifier: &str,
        patch: &Value,
    ) -> Result<Integration, PortError> {
        let call = Call::new(
            Method::PATCH,
            format!("/integration/{}", segment(identifier)),
        )
        .json(patch);
        Ok(self
            .execute_json::<IntegrationAnswer>(&call)
            .await?
            .integration)
    }

    /// Replaces the mapping (port-app-config) stored on the integration.
    pub async fn patch_integration_config(
        &self,
        identifier: &str,
        config: &Value,
    ) -> Result<Integration, PortError> {
        let call = Call::new(
            Method::PATCH,
            format!("/integration/{}/config", segment(identifier)),
        )
        .json(&serde_json::json!({ "config": config }));
        Ok(self
            .execute_json::<IntegrationAnswer>(&call)
            .await?
            .integration)
    }

    pub async fn patch_resync_state(
        &self,
        identifier: &str,
        state: &ResyncState,
    ) -> Result<(), PortError> {
        let call = Call::new(
            Method::PATCH,
            format!("/integration/{}/resync-state", segment(identifier)),
        )
        .json(state);
        self.execute(&call).await.map(drop)
    }

    /// The latest resync someone requested in Port, if any.
    pub async fn get_resync_request(
        &self,
        identifier: &str,
    ) -> Result<Option<ResyncRequest>, PortError> {
        #[derive(Deserialize)]
        struct Answer {
            request: Option<ResyncRequest>,
        }
        let call = Call::new(
            Method::GET,
            format!("/integration/{}/resync-request", segment(identifier)),
        );
        Ok(self.execute_json::<Answer>(&call).await?.request)
    }

    pub async fn get_organization(&self) -> Result<Organization, PortError> {
        #[derive(Deserialize)]
        struct Answer {
            organization: Organization,
        }
        Ok(self
            .execute_json::<Answer>(&Call::new(Method::GET, "/organization"))
            .await?
            .organization)
    }

    pub async fn get_kafka_credentials(&self) -> Result<KafkaCredentials, PortError> {
        #[derive(Deserialize)]
        struct Answer {
            credentials: KafkaCredentials,
        }
        Ok(self
            .execute_json::<Answer>(&Call::new(Method::GET, "/kafka-credentials"))
            .await?
            .credentials)
    }
}
