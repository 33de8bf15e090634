//! Mapping on every core, off the async runtime: worker threads, each with its own compiled
//! mapping (jaq values are reference-counted per thread), fed through one bounded queue.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use jaq_json::Val;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::budget::{EVALUATION_STACK_BYTES, Limits};
use super::jq::Jq;
use super::{CompiledMapping, PortAppConfig};
use crate::entity_hash::{EntityHash, hash_entity_sized};
use crate::port::Entity;
use crate::text::printable;

/// What `$ENV` and `env` show mappings (Ocean: `OCEAN__ALLOW_ENVIRONMENT_VARIABLES_JQ_ACCESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvAccess {
    Process,
    Denied,
}

impl EnvAccess {
    /// `$ENV` as a jq value.
    pub fn value(self) -> Val {
        match self {
            EnvAccess::Process => Jq::process_env(),
            EnvAccess::Denied => Val::obj(jaq_json::Map::default()),
        }
    }
}

/// How often one field's expression failed in a batch, and the first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarningCount {
    pub count: usize,
    pub first_message: String,
}

/// A batch of raw items, mapped and hashed. Item numbers are positions in the batch.
#[derive(Debug, Default)]
pub struct BatchResult {
    pub entities: Vec<(Entity, EntityHash)>,
    /// For each entity, the batch position of the item that produced it.
    pub entity_items: Vec<usize>,
    pub filtered_out: usize,
    pub skipped: Vec<(usize, String)>,
    /// Item errors: they mark the resource as failed for the run.
    pub errors: Vec<(usize, String)>,
    /// Field path → failures.
    pub warnings: BTreeMap<String, WarningCount>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the mapping workers have stopped")]
    Stopped,
    #[error("resources[{0}] does not exist or did not compile")]
    NotCompiled(usize),
}

struct Job {
    resource: usize,
    items: Vec<Box<RawValue>>,
    reply: oneshot::Sender<Result<BatchResult, PoolError>>,
}

/// The pool. Dropping it lets the workers finish their jobs and stop.
#[derive(Debug)]
pub struct MappingPool {
    jobs: Option<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

/// A batch accepted by the pool; await it for the result.
#[derive(Debug)]
pub struct PendingBatch(oneshot::Receiver<Result<BatchResult, PoolError>>);

impl PendingBatch {
    pub async fn result(self) -> Result<BatchResult, PoolError> {
        self.0.await.map_err(|_| PoolError::Stopped)?
    }
}

impl std::future::IntoFuture for PendingBatch {
    type Output = Result<BatchResult, PoolError>;
    type IntoFuture = std::pin::Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.result())
    }
}

/// Maps and hashes `items` with resource `resource` of `mapping`, on the calling thread.
pub(crate) fn map_batch(
    mapping: &CompiledMapping,
    resource: usize,
    items: &[Box<RawValue>],
    limits: &Limits,
) -> Result<BatchResult, PoolError> {
    let Some(Ok(resource)) = mapping.resources.get(resource) else {
        return Err(PoolError::NotCompiled(resource));
    };
    let mut out = BatchResult::default();
    for (number, item) in items.iter().enumerate() {
        let mut result = mapping.map_raw(resource, item.get().as_bytes(), limits);
        let mut hashed = Vec::with_capacity(result.entities.len());
        for entity in std::mem::take(&mut result.entities) {
            let (hash, size) = hash_entity_sized(&entity);
            if size > limits.entity_bytes {
                result.errors.push(format!(
                    "entity {}/{} is {size} bytes as JSON, more than the {} bytes Port accepts in one request; it is not sent",
                    entity.blueprint,
                    printable(&entity.identifier_label()),
                    limits.entity_bytes
                ));
            } else {
                hashed.push((entity, hash));
            }
        }
        out.filtered_out += result.filtered_out;
        out.skipped
            .extend(result.skipped.into_iter().map(|s| (number, s)));
        out.errors
            .extend(result.errors.into_iter().map(|e| (number, e)));
        for warning in result.warnings {
            out.warnings
                .entry(warning.field)
                .and_modify(|w| w.count += 1)
                .or_insert(WarningCount {
                    count: 1,
                    first_message: warning.message,
                });
        }
        out.entity_items
            .extend(std::iter::repeat_n(number, hashed.len()));
        out.entities.extend(hashed);
    }
    Ok(out)
}

impl MappingPool {
    /// Starts `threads` workers, each compiling `config`. Resources that do not compile are
    /// refused per batch ([`PoolError::NotCompiled`]); see [`CompiledMapping::errors`].
    pub fn start(
        config: &PortAppConfig,
        env: EnvAccess,
        threads: usize,
        limits: Limits,
    ) -> std::io::Result<Self> {
        let threads = threads.max(1);
        // Two batches a worker: enough to keep every core busy, few enough to bound memory.
        let (jobs, queue) = mpsc::channel::<Job>(threads * 2);
        let queue = Arc::new(Mutex::new(queue));
        let mut workers = Vec::with_capacity(threads);
        for n in 0..threads {
            let queue = queue.clone();
            let config = config.clone();
            let worker = std::thread::Builder::new()
                .name(format!("mapping-{n}"))
                .stack_size(EVALUATION_STACK_BYTES)
                .spawn(move || {
                    let mapping = CompiledMapping::compile(&config, env.value());
                    loop {
                        let job = queue
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .blocking_recv();
                        let Some(job) = job else { break };
                        let result = map_batch(&mapping, job.resource, &job.items, &limits);
                        // The caller may have gone; its batch is then simply not needed.
                        let _ = job.reply.send(result);
                    }
                })?;
            workers.push(worker);
        }
        Ok(Self {
            jobs: Some(jobs),
            workers,
        })
    }

    /// How many worker threads map.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Queues a batch, waiting while the queue is full, and returns a handle to its result.
    pub async fn submit(
        &self,
        resource: usize,
        items: Vec<Box<RawValue>>,
    ) -> Result<PendingBatch, PoolError> {
        let (reply, result) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(PoolError::Stopped)?;
        jobs.send(Job {
            resource,
            items,
            reply,
        })
        .await
        .map_err(|_| PoolError::Stopped)?;
        Ok(PendingBatch(result))
    }

    /// Maps one batch and waits for it.
    pub async fn map_batch(
        &self,
        resource: usize,
        items: Vec<Box<RawValue>>,
    ) -> Result<BatchResult, PoolError> {
        self.submit(resource, items).await?.result().await
    }
}

impl Drop for MappingPool {
    fn drop(&mut self) {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity_hash::hash_entity;

    const MAPPING: &str = "resources:\n  - kind: k\n    selector: {query: .ok}\n    port: {entity: {mappings: {identifier: .id, blueprint: '\"b\"', properties: {n: .n | tostring, bad: .x.y}}}}\n  - kind: k\n    selector: {query: '.ok |'}\n    port: {entity: {mappings: {identifier: .id, blueprint: '\"b\"'}}}\n";

    fn raw(items: &[&str]) -> Vec<Box<RawValue>> {
        items
            .iter()
            .map(|s| RawValue::from_string((*s).to_owned()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn batches_map_on_workers_in_order_with_counts() {
        let config = PortAppConfig::from_yaml(MAPPING).unwrap();
        let pool = MappingPool::start(&config, EnvAccess::Denied, 2, Limits::default()).unwrap();
        let items = raw(&[
            r#"{"id": "a", "ok": true, "n": 1.0, "x": "s"}"#,
            r#"{"id": "b", "ok": false}"#,
            r#"{"id": "c", "ok": "yes"}"#,
            r#"{"id": "d", "ok": true, "n": 2, "x": "t"}"#,
        ]);
        let result = pool.map_batch(0, items).await.unwrap();
        let ids: Vec<&serde_json::Value> =
            result.entities.iter().map(|(e, _)| &e.identifier).collect();
        assert_eq!(ids, ["a", "d"]);
        assert_eq!(result.entities[0].0.properties()["n"], "1.0");
        assert_eq!(result.entities[0].1, hash_entity(&result.entities[0].0));
        assert_eq!(result.filtered_out, 1);
        assert_eq!(result.entity_items, [0, 3]);
        assert_eq!(
            result.errors.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(
            result.warnings["resources[0].port.entity.mappings.properties.bad"].count,
            2
        );
        assert!(matches!(
            pool.map_batch(1, Vec::new()).await,
            Err(PoolError::NotCompiled(1))
        ));
    }

    #[tokio::test]
    async fn many_batches_in_flight_all_come_back() {
        let config = PortAppConfig::from_yaml(MAPPING).unwrap();
        let pool = MappingPool::start(&config, EnvAccess::Denied, 2, Limits::default()).unwrap();
        let mut pending = Vec::new();
        for b in 0..20 {
            let items: Vec<String> = (0..50)
                .map(|i| format!(r#"{{"id": "{b}-{i}", "ok": true, "n": {i}}}"#))
                .collect();
            let items = items
                .iter()
                .map(|s| RawValue::from_string(s.clone()).unwrap())
                .collect();
            pending.push(pool.submit(0, items).await.unwrap());
        }
        let mut total = 0;
        for (b, batch) in pending.into_iter().enumerate() {
            let result = batch.await.unwrap();
            assert_eq!(result.entities[0].0.identifier, format!("{b}-0"));
            total += result.entities.len();
        }
        assert_eq!(total, 1000);
    }
}
