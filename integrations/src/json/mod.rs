//! The built-in `json` integration: each kind is a file of raw items, a JSON array or JSON
//! lines. It lets any script feed port-agent, and it is what tests and benchmarks use to serve
//! exact raw data.
//!
//! ```yaml
//! integration:
//!   type: json
//!   config: {kinds: {service: ./data/services.jsonl}}   # relative to the config file
//! ```

pub mod push;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use port_agent_core::integration::{FetchError, FetchFuture, FetchRequest, Integration, RawBatch};
use port_agent_core::raw_items::RawItemReader;
use port_agent_core::webhook::{WebhookProcessor, WebhookSettings};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// Items per batch sent to the resync.
const BATCH: usize = 500;

#[derive(Debug, Clone)]
pub struct JsonIntegration {
    files: BTreeMap<String, PathBuf>,
}

impl JsonIntegration {
    /// From `integration.config` (`kinds: {kind: path}`); relative paths are resolved against
    /// `base_dir`, the config file's folder.
    pub fn from_config(config: &Map<String, Value>, base_dir: &Path) -> Result<Self, String> {
        let kinds = config
            .get("kinds")
            .and_then(Value::as_object)
            .ok_or("integration.config.kinds: expected a map of kind to file, e.g. {service: ./services.jsonl}")?;
        let mut files = BTreeMap::new();
        for (kind, path) in kinds {
            let path = path.as_str().ok_or_else(|| {
                format!(
                    "integration.config.kinds.{kind}: expected a file path, found {}",
                    port_agent_core::text::value_kind(path)
                )
            })?;
            files.insert(kind.clone(), base_dir.join(path));
        }
        Ok(Self { files })
    }
}

fn fail(kind: &str, message: String) -> FetchError {
    FetchError {
        kind: kind.to_owned(),
        message,
    }
}

/// Reads `path` one item at a time and sends its items in batches. Runs on a blocking thread.
fn read_kind(kind: &str, path: &Path, sink: &mpsc::Sender<RawBatch>) -> Result<(), FetchError> {
    let file = std::fs::File::open(path)
        .map_err(|e| fail(kind, format!("cannot read {}: {e}", path.display())))?;
    let send = |batch: RawBatch| {
        sink.blocking_send(batch)
            .map_err(|_| fail(kind, "the resync stopped reading".to_owned()))
    };
    let mut batch = Vec::with_capacity(BATCH);
    for item in RawItemReader::new(BufReader::new(file)) {
        batch.push(item.map_err(|e| fail(kind, format!("{}: {e}", path.display())))?);
        if batch.len() == BATCH {
            send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))?;
        }
    }
    if !batch.is_empty() {
        send(batch)?;
    }
    Ok(())
}

impl Integration for JsonIntegration {
    fn kinds(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }

    fn webhook_processors(&self, settings: &WebhookSettings) -> Vec<Box<dyn WebhookProcessor>> {
        vec![Box::new(push::PushProcessor {
            secret: settings.secret.clone(),
            allow_unsigned: settings.allow_unsigned,
        })]
    }

    fn check(&self) -> Vec<String> {
        self.files
            .iter()
            .filter_map(|(kind, path)| {
                std::fs::File::open(path).err().map(|e| {
                    format!(
                        "integration.config.kinds.{kind}: cannot read {}: {e}",
                        path.display()
                    )
                })
            })
            .collect()
    }

    fn fetch<'a>(
        &'a self,
        request: FetchRequest<'a>,
        sink: mpsc::Sender<RawBatch>,
    ) -> FetchFuture<'a> {
        let kind = request.kind;
        Box::pin(async move {
            let path = self
                .files
                .get(kind)
                .ok_or_else(|| {
                    fail(
                        kind,
                        "no file is configured for this kind under integration.config.kinds"
                            .to_owned(),
                    )
                })?
                .clone();
            let kind_owned = kind.to_owned();
            tokio::task::spawn_blocking(move || read_kind(&kind_owned, &path, &sink))
                .await
                .map_err(|e| fail(kind, format!("the reader stopped: {e}")))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fetch_all(
        integration: &JsonIntegration,
        kind: &str,
    ) -> Result<Vec<String>, FetchError> {
        let mapping = port_agent_core::mapping::PortAppConfig::from_yaml(&format!(
            "resources: [{{kind: {kind}, selector: {{query: 'true'}}, port: {{entity: {{mappings: {{identifier: .id, blueprint: '\"b\"'}}}}}}}}]"
        ))
        .unwrap();
        let (tx, mut rx) = mpsc::channel::<RawBatch>(2);
        let collect = async {
            let mut items = Vec::new();
            while let Some(batch) = rx.recv().await {
                assert!(batch.len() <= BATCH);
                items.extend(batch.into_iter().map(|r| r.get().to_owned()));
            }
            items
        };
        let fetch = integration.fetch(FetchRequest::of(&mapping, 0), tx);
        let (result, items) = tokio::join!(fetch, collect);
        result.map(|()| items)
    }

    #[tokio::test]
    async fn reads_lines_and_arrays_in_batches_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (0..1203)
            .map(|i| format!("{{\"id\": {i}, \"n\": 1.0}}\n"))
            .collect();
        std::fs::write(dir.path().join("a.jsonl"), lines).unwrap();
        std::fs::write(dir.path().join("b.json"), "  [{\"id\": 1}, {\"id\": 2}]").unwrap();
        let config: Map<String, Value> =
            serde_json::from_str(r#"{"kinds": {"a": "a.jsonl", "b": "b.json"}}"#).unwrap();
        let integration = JsonIntegration::from_config(&config, dir.path()).unwrap();
        assert_eq!(integration.kinds(), ["a", "b"]);
        let a = fetch_all(&integration, "a").await.unwrap();
        assert_eq!(a.len(), 1203);
        assert_eq!(a[7], "{\"id\": 7, \"n\": 1.0}");
        assert_eq!(
            fetch_all(&integration, "b").await.unwrap(),
            ["{\"id\": 1}", "{\"id\": 2}"]
        );
    }

    #[tokio::test]
    async fn a_broken_line_fails_the_kind_with_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "{\"id\": 1}\n{\"id\": \n").unwrap();
        let config: Map<String, Value> =
            serde_json::from_str(r#"{"kinds": {"a": "a.jsonl", "gone": "missing.jsonl"}}"#)
                .unwrap();
        let integration = JsonIntegration::from_config(&config, dir.path()).unwrap();
        let error = fetch_all(&integration, "a").await.unwrap_err();
        assert!(error.message.contains("a.jsonl: line 2"), "{error}");
        let error = fetch_all(&integration, "gone").await.unwrap_err();
        assert!(error.message.contains("missing.jsonl"), "{error}");
        assert!(JsonIntegration::from_config(&Map::new(), dir.path()).is_err());
        // Checked before any fetch: the missing file, not the one that is there.
        let problems = integration.check();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("integration.config.kinds.gone: cannot read "));
    }
}
