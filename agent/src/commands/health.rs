//! `port-agent health`: asks a running agent whether it is ready (`GET /health/ready`), for a
//! container's HEALTHCHECK where no curl is (distroless). Exit 0 when ready, 1 otherwise.

use std::io::Write;
use std::time::Duration;

use anyhow::anyhow;

use crate::Failure;

pub async fn check(address: &str) -> Result<(), Failure> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Failure::Run(e.into()))?;
    let response = client
        .get(format!("http://{address}/health/ready"))
        .send()
        .await
        .map_err(|e| Failure::Run(anyhow!("no agent answers on {address}: {e}")))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let _ = writeln!(std::io::stdout(), "{}: {}", status.as_u16(), body.trim());
    if status.is_success() {
        Ok(())
    } else {
        Err(Failure::Run(anyhow!("not ready")))
    }
}
