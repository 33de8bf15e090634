//! `custom`: Ocean Custom, the generic HTTP REST integration, read as Ocean reads it
//! (`integrations/custom` in port-labs/ocean), so its users change nothing but the runtime.
//!
//! The connection is `integration.config` (`baseUrl`, `authType`, `paginationType`, ...; see
//! [`settings`]). Each `resources[]` entry's **kind is the endpoint path** (`/api/v1/users`);
//! its selector may add `endpoint` (instead of the kind), `method`, `query_params`, `headers`,
//! `body`, `data_path` (jq to the items in each page; without it a page that is an array is its
//! items, anything else one item) and `path_parameters` (`{param}` in the path, its values read
//! from another endpoint: `{endpoint, method, query_params, headers, data_path, field,
//! filter}`; each item gets `__param` set to its value).
//!
//! Where port-agent differs from Ocean (each on purpose): an HTTP error, a page that is not
//! JSON or a `data_path` that fails fails the kind (Ocean logs it and carries on with what it
//! has, so its deletions then remove what the failed pages held); a missing or second path
//! parameter is an error, not a request to a URL with `{param}` left in it; offset pagination
//! ends at an empty page; relative next links are resolved; a page repeating the request
//! before it ends the fetch with an error instead of looping.

pub mod pagination;
pub mod settings;
pub mod token;

use std::collections::HashSet;
use std::sync::Arc;

use port_agent_core::integration::{
    FetchError, FetchFuture, FetchRequest, Integration, RawBatch, RunCache,
};
use port_agent_core::mapping::config::ResourceConfig;
use port_agent_core::mapping::jq::Query;
use port_agent_core::text::value_text;
use port_agent_core::vendor_http::{
    Priority, ValidatorStore, VendorClient, VendorClientConfig, VendorRequest, origin, shown_url,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use self::pagination::PageRequest;
use self::settings::{Auth, Settings};

/// The selector keys Ocean Custom reads (others are kept by Ocean and ignored).
#[derive(Debug, Clone, Default, Deserialize)]
struct EndpointSelector {
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    query_params: Option<Map<String, Value>>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    data_path: Option<String>,
    #[serde(default)]
    path_parameters: Option<Map<String, Value>>,
}

fn get() -> String {
    "GET".to_owned()
}

/// A path parameter's source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathParameter {
    endpoint: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    query_params: Option<Map<String, Value>>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    data_path: Option<String>,
    field: String,
    #[serde(default)]
    filter: Option<String>,
}

/// The endpoint to call: method, path, query, headers, body, where its items are.
#[derive(Debug, Clone)]
struct Call {
    method: reqwest::Method,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Option<Value>,
    data_path: Option<String>,
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

fn method(name: &str, key: &str) -> Result<reqwest::Method, String> {
    let upper = name.to_ascii_uppercase();
    if !METHODS.contains(&upper.as_str()) {
        return Err(format!("{key}: expected one of {}", METHODS.join(", ")));
    }
    reqwest::Method::from_bytes(upper.as_bytes()).map_err(|_| format!("{key}: not a method"))
}

fn pairs(map: Option<&Map<String, Value>>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (key, value) in map.into_iter().flatten() {
        match value {
            Value::Null => {}
            Value::Array(values) => out.extend(values.iter().map(|v| (key.clone(), value_text(v)))),
            other => out.push((key.clone(), value_text(other))),
        }
    }
    out
}

/// `{name}` placeholders in `path`, in order.
fn placeholders(path: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open + 1..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + 1 + len];
        if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            names.push(name.to_owned());
        }
        rest = &rest[open + 1 + len..];
    }
    names
}

/// What a resource fetches: its call, and the path parameter it resolves first, if any.
#[derive(Debug, Clone)]
struct Endpoint {
    call: Call,
    parameter: Option<(String, PathParameter)>,
}

/// A resource's selector read, or what is wrong with it (naming the key).
fn selector_of(kind: &str, extra: &Map<String, Value>) -> Result<Endpoint, String> {
    let selector: EndpointSelector =
        serde_json::from_value(Value::Object(extra.clone())).map_err(|e| {
            format!(
                "selector: {}",
                port_agent_core::text::without_values(&e.to_string())
            )
        })?;
    let path = selector.endpoint.clone().unwrap_or_else(|| kind.to_owned());
    if path.trim_matches('/').is_empty() {
        return Err(
            "the kind (or selector.endpoint) must be the endpoint's path, e.g. /api/v1/users"
                .to_owned(),
        );
    }
    let call = Call {
        method: method(&selector.method, "selector.method")?,
        path: path.clone(),
        query: pairs(selector.query_params.as_ref()),
        headers: pairs(selector.headers.as_ref()),
        body: selector.body.clone(),
        data_path: selector.data_path.clone(),
    };
    if let Some(path) = &call.data_path {
        Query::new(path).map_err(|e| format!("selector.data_path: {e}"))?;
    }
    let names = placeholders(&path);
    let parameter = match names.as_slice() {
        [] => None,
        [name] => {
            let config = selector
                .path_parameters
                .as_ref()
                .and_then(|p| p.get(name))
                .ok_or_else(|| {
                    format!("selector.path_parameters.{name}: required, the path has {{{name}}}")
                })?;
            let parameter: PathParameter = serde_json::from_value(config.clone()).map_err(|e| {
                format!(
                    "selector.path_parameters.{name}: {}",
                    port_agent_core::text::without_values(&e.to_string())
                )
            })?;
            method(
                &parameter.method,
                &format!("selector.path_parameters.{name}.method"),
            )?;
            for (key, expression) in [
                ("field", Some(&parameter.field)),
                ("filter", parameter.filter.as_ref()),
                ("data_path", parameter.data_path.as_ref()),
            ] {
                if let Some(expression) = expression {
                    Query::new(expression)
                        .map_err(|e| format!("selector.path_parameters.{name}.{key}: {e}"))?;
                }
            }
            Some((name.clone(), parameter))
        }
        more => {
            return Err(format!(
                "the path has {} parameters ({}); one is supported (as in Ocean, which resolves only the first)",
                more.len(),
                more.join(", ")
            ));
        }
    };
    Ok(Endpoint { call, parameter })
}

/// Items of one page: where `data_path` points (an array is its items; null none), or without
/// it the page itself (an array is its items). Each object item gets `__name` = value for the
/// path parameters it was fetched with.
fn items_of(
    page: &Value,
    data_path: Option<&str>,
    parameters: &[(String, String)],
) -> Result<Vec<Value>, String> {
    let found = match data_path.filter(|p| p.trim() != ".") {
        None => Some(page.clone()),
        Some(path) => Query::new(path)
            .map_err(|e| format!("data_path: {e}"))?
            .first(page)
            .map_err(|e| format!("data_path: {e}"))?,
    };
    let mut items = match found {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => vec![other],
    };
    for item in &mut items {
        if let Value::Object(object) = item {
            for (name, value) in parameters {
                object.insert(format!("__{name}"), Value::String(value.clone()));
            }
        }
    }
    Ok(items)
}

/// Ocean Custom over the SDK's vendor client.
#[derive(Debug, Clone)]
pub struct CustomIntegration {
    settings: Settings,
    client: VendorClient,
    /// Path-parameter values, read once per resync however many resources need them.
    parameter_values: Arc<RunCache<Vec<String>>>,
}

impl CustomIntegration {
    /// From `integration.config`; every problem at once, each naming its key.
    pub fn from_config(config: &Map<String, Value>) -> Result<Self, String> {
        let settings = Settings::from_config(config).map_err(|p| p.join("; "))?;
        let mut headers = settings.custom_headers.clone();
        let mut basic_auth = None;
        match &settings.auth {
            Auth::None => {}
            Auth::Bearer(token) => headers.push((
                "Authorization".to_owned(),
                port_agent_core::Secret::new(format!("Bearer {}", token.expose())),
            )),
            Auth::Basic { username, password } => {
                basic_auth = Some((username.clone(), password.clone()));
            }
            Auth::ApiKey { header, key } => headers.push((header.clone(), key.clone())),
            // Per request, from the token (see `Pages::send`).
            Auth::Token(_) => {}
        }
        let extra_roots_pem = match &settings.ca_certificate {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                format!(
                    "integration.config.caCertificate: cannot read {}: {e}",
                    path.display()
                )
            })?),
            None => None,
        };
        let client = VendorClient::new(VendorClientConfig {
            extra_roots_pem,
            timeout: settings.timeout,
            max_in_flight: settings.max_concurrent_requests,
            accept_invalid_certs: !settings.verify_ssl,
            headers,
            basic_auth,
            resync_share: settings.resync_share,
            ..VendorClientConfig::default()
        })
        .map_err(|e| format!("integration.config.caCertificate: {e}"))?;
        Ok(Self {
            settings,
            client,
            parameter_values: Arc::default(),
        })
    }

    /// The client every request of this integration goes through (one rate-limit scope).
    pub fn client(&self) -> &VendorClient {
        &self.client
    }

    /// `path` on the base URL (a full URL stays as it is).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            return path.to_owned();
        }
        format!(
            "{}/{}",
            self.settings.base_url,
            path.trim_start_matches('/')
        )
    }

    /// Sends `request` with the token's credentials when `authType` is custom: a 401 gets a
    /// new token and one more try.
    async fn send(
        &self,
        request: VendorRequest,
        validators: Option<&dyn ValidatorStore>,
    ) -> Result<(Value, reqwest::header::HeaderMap), String> {
        let Auth::Token(token) = &self.settings.auth else {
            return self
                .client
                .send_json_validated(&request, validators)
                .await
                .map_err(|e| e.to_string());
        };
        let mut renew = false;
        loop {
            let credentials = token
                .credentials(&self.client, &self.settings.base_url, renew)
                .await?;
            let mut authenticated = request.clone();
            authenticated.headers.extend(credentials.headers);
            authenticated.query.extend(credentials.query);
            if !credentials.body.is_empty() {
                let mut body = match authenticated.json_body.take() {
                    Some(Value::Object(map)) => map,
                    _ => Map::new(),
                };
                body.extend(credentials.body);
                authenticated.json_body = Some(Value::Object(body));
            }
            match self
                .client
                .send_json_validated(&authenticated, validators)
                .await
            {
                Err(e) if e.status() == Some(reqwest::StatusCode::UNAUTHORIZED) && !renew => {
                    tracing::info!(
                        "custom authentication: the token was refused; asking for a new one"
                    );
                    renew = true;
                }
                answer => return answer.map_err(|e| e.to_string()),
            }
        }
    }

    /// The pages of `call`, with `parameters` filled in its path.
    fn pages<'a>(
        &'a self,
        call: &'a Call,
        parameters: Vec<(String, String)>,
        validators: Option<&'a dyn ValidatorStore>,
    ) -> Pages<'a> {
        let mut path = call.path.clone();
        for (name, value) in &parameters {
            path = path.replace(&format!("{{{name}}}"), value);
        }
        let url = self.url(&path);
        Pages {
            page: Some(pagination::first(&self.settings, &url, &call.query)),
            integration: self,
            call,
            parameters,
            url,
            validators,
            seen: HashSet::new(),
        }
    }

    /// The values of a path parameter (see [`CustomIntegration::read_parameter_values`]),
    /// read once per resync for each distinct source.
    async fn parameter_values(
        &self,
        name: &str,
        parameter: &PathParameter,
    ) -> Result<Vec<String>, String> {
        let key = format!("{parameter:?}");
        self.parameter_values
            .get_or_fetch(&key, || self.read_parameter_values(name, parameter))
            .await
    }

    /// The values of a path parameter: each item's `field`, where `filter` is true.
    async fn read_parameter_values(
        &self,
        name: &str,
        parameter: &PathParameter,
    ) -> Result<Vec<String>, String> {
        let call = Call {
            method: method(&parameter.method, "method")?,
            path: parameter.endpoint.clone(),
            query: pairs(parameter.query_params.as_ref()),
            headers: pairs(parameter.headers.as_ref()),
            body: None,
            data_path: parameter.data_path.clone(),
        };
        let mut values = Vec::new();
        let mut pages = self.pages(&call, Vec::new(), None);
        let failed = |e: String| format!("path parameter {name}: {e}");
        while let Some(items) = pages.next().await.map_err(failed)? {
            let (field, filter) = (parameter.field.clone(), parameter.filter.clone());
            let picked =
                tokio::task::spawn_blocking(move || pick_values(&items, &field, filter.as_deref()))
                    .await
                    .map_err(|e| failed(e.to_string()))?
                    .map_err(failed)?;
            values.extend(picked);
        }
        Ok(values)
    }

    async fn fetch_resource(
        &self,
        request: FetchRequest<'_>,
        sink: mpsc::Sender<RawBatch>,
    ) -> Result<(), FetchError> {
        let Endpoint { call, parameter } =
            selector_of(request.kind, &request.selector.extra).map_err(|e| request.fail(e))?;
        let endpoints: Vec<Vec<(String, String)>> = match &parameter {
            None => vec![Vec::new()],
            Some((name, parameter)) => {
                let values = self
                    .parameter_values(name, parameter)
                    .await
                    .map_err(|e| request.fail(e))?;
                if values.is_empty() {
                    tracing::warn!(kind = request.kind, parameter = %name, "the path parameter has no values: the kind has no items");
                }
                values
                    .into_iter()
                    .map(|value| vec![(name.clone(), value)])
                    .collect()
            }
        };
        // Conditional requests only where asked for (`conditionalRequests`).
        let validators = request
            .validators
            .filter(|_| self.settings.conditional_requests);
        for parameters in endpoints {
            let mut pages = self.pages(&call, parameters, validators);
            while let Some(items) = pages.next().await.map_err(|e| request.fail(e))? {
                let batch: RawBatch = items
                    .iter()
                    .map(|item| {
                        RawValue::from_string(item.to_string()).expect("serde_json writes JSON")
                    })
                    .collect();
                sink.send(batch)
                    .await
                    .map_err(|_| request.fail("the resync stopped reading"))?;
            }
        }
        Ok(())
    }
}

/// An endpoint's pages, read one at a time.
struct Pages<'a> {
    integration: &'a CustomIntegration,
    call: &'a Call,
    parameters: Vec<(String, String)>,
    /// The first page's URL, for errors.
    url: String,
    /// The next page to read; `None` after the last.
    page: Option<PageRequest>,
    /// Where validated answers are kept, with `conditionalRequests`.
    validators: Option<&'a dyn ValidatorStore>,
    /// Requests made: one made again means the API loops.
    seen: HashSet<(String, Vec<(String, String)>)>,
}

impl Pages<'_> {
    /// The next page's items; `None` after the last page. Errors name the page and the URL.
    async fn next(&mut self) -> Result<Option<Vec<Value>>, String> {
        let Some(page) = self.page.take() else {
            return Ok(None);
        };
        let where_ = format!("page {} of {}", page.number, shown_url(&self.url));
        if !self.seen.insert((page.url.clone(), page.query.clone())) {
            return Err(format!(
                "{where_}: the API pointed back at a page already read (the same cursor or next link); stopping"
            ));
        }
        // Credentials go with every request: a next page elsewhere is not asked.
        if origin(&page.url) != origin(&self.url) {
            return Err(format!(
                "{where_}: the API's next page is on another host ({}); stopping, since the credentials are sent only to the listing's host",
                origin(&page.url)
            ));
        }
        let request = VendorRequest {
            method: self.call.method.clone(),
            url: page.url.clone(),
            query: page.query.clone(),
            headers: self.call.headers.clone(),
            json_body: self.call.body.clone(),
            text_body: None,
            priority: Priority::Resync,
        };
        let (body, headers) = self
            .integration
            .send(request, self.validators)
            .await
            .map_err(|e| format!("{where_}: {e}"))?;
        let link = headers
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (data_path, parameters) = (self.call.data_path.clone(), self.parameters.clone());
        let (body, items) = tokio::task::spawn_blocking(move || {
            let items = items_of(&body, data_path.as_deref(), &parameters);
            (body, items)
        })
        .await
        .map_err(|e| format!("{where_}: {e}"))?;
        let items = items.map_err(|e| format!("{where_}: {e}"))?;
        self.page = pagination::next(
            &self.integration.settings,
            &page,
            &body,
            link.as_deref(),
            items.len(),
            &self.call.query,
        );
        Ok(Some(items))
    }
}

/// Each item's `field` (text as Ocean's `str()` writes it), where `filter` gives true.
fn pick_values(items: &[Value], field: &str, filter: Option<&str>) -> Result<Vec<String>, String> {
    let field = Query::new(field).map_err(|e| format!("field: {e}"))?;
    let filter = filter
        .map(Query::new)
        .transpose()
        .map_err(|e| format!("filter: {e}"))?;
    let mut values = Vec::new();
    for item in items {
        let Ok(Some(value)) = field.first(item) else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        if let Some(filter) = &filter
            && !matches!(filter.first(item), Ok(Some(Value::Bool(true))))
        {
            continue;
        }
        values.push(match value {
            Value::String(s) => s,
            Value::Bool(true) => "True".to_owned(),
            Value::Bool(false) => "False".to_owned(),
            other => other.to_string(),
        });
    }
    Ok(values)
}

impl Integration for CustomIntegration {
    /// Any endpoint path is a kind.
    fn kinds(&self) -> Vec<String> {
        Vec::new()
    }

    fn resync_starting(&self) {
        self.parameter_values.open();
    }

    fn resync_ended(&self) {
        self.parameter_values.close();
    }

    fn check_resource(&self, resource: &ResourceConfig) -> Vec<String> {
        match selector_of(&resource.kind, &resource.selector.extra) {
            Ok(_) => Vec::new(),
            Err(e) => vec![e],
        }
    }

    fn fetch<'a>(
        &'a self,
        request: FetchRequest<'a>,
        sink: mpsc::Sender<RawBatch>,
    ) -> FetchFuture<'a> {
        Box::pin(self.fetch_resource(request, sink))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn items_come_from_the_data_path_or_the_page_and_carry_path_parameters() {
        let page = json!({"data": {"members": [{"id": 1}, {"id": 2}]}});
        let params = [("team".to_owned(), "t1".to_owned())];
        let items = items_of(&page, Some(".data.members"), &params).unwrap();
        assert_eq!(
            items,
            [
                json!({"id": 1, "__team": "t1"}),
                json!({"id": 2, "__team": "t1"})
            ]
        );
        assert_eq!(
            items_of(&json!([{"a": 1}]), None, &[]).unwrap(),
            [json!({"a": 1})]
        );
        assert_eq!(
            items_of(&json!({"a": 1}), Some("."), &[]).unwrap(),
            [json!({"a": 1})]
        );
        assert!(items_of(&page, Some(".nothing"), &[]).unwrap().is_empty());
        assert!(
            items_of(&json!([1]), Some(".a"), &[])
                .unwrap_err()
                .contains("data_path")
        );
    }

    #[test]
    fn selectors_are_checked_with_errors_naming_the_key() {
        let extra = |v: Value| v.as_object().unwrap().clone();
        assert!(selector_of("/api/users", &extra(json!({}))).is_ok());
        let cases = [
            (json!({"method": "FETCH"}), "selector.method"),
            (json!({"data_path": ".a["}), "selector.data_path"),
            (
                json!({"endpoint": "/teams/{team}/members"}),
                "selector.path_parameters.team",
            ),
            (json!({"endpoint": "/t/{a}/{b}"}), "2 parameters"),
            (
                json!({"endpoint": "/t/{a}", "path_parameters": {"a": {"endpoint": "/t"}}}),
                "selector.path_parameters.a",
            ),
            (json!({"query_params": "s3cret"}), "selector"),
        ];
        for (selector, expected) in cases {
            let error = selector_of("/api/users", &extra(selector.clone())).unwrap_err();
            assert!(error.contains(expected), "{selector}: {error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
        assert!(selector_of("/", &extra(json!({}))).is_err());
    }

    #[test]
    fn path_parameter_values_are_fields_of_items_the_filter_takes() {
        let items = [
            json!({"id": "a", "active": true}),
            json!({"id": 7, "active": true}),
            json!({"id": "c", "active": false}),
            json!({"name": "no id"}),
        ];
        assert_eq!(
            pick_values(&items, ".id", Some(".active")).unwrap(),
            ["a", "7"]
        );
        assert_eq!(pick_values(&items, ".id", None).unwrap(), ["a", "7", "c"]);
    }
}
