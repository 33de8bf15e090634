//! An in-memory stand-in for Port's REST API.
//!
//! It speaks Port's wire format for every call port-agent makes (tokens, entities in bulk and
//! one by one, the owned-entity listing, search, blueprints, the integration object), checks
//! what it is sent as Port does, and adds test controls under `/_emulator/`: statistics, a
//! dump of every entity, a reset, and injected faults. Tests start it in-process with
//! [`Emulator::start`]; the `port-emulator` binary serves it for scripts and benchmarks.

mod api;
mod control;
mod faults;
mod search;
mod stats;
mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::FaultSpec;

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Lifetime of issued access tokens.
    pub token_ttl: Duration,
    /// Requests per second before Port's quota answers 429.
    pub rate_limit: Option<u32>,
    /// Larger request bodies get 413, as Port does past its limit.
    pub max_body_bytes: usize,
    /// Entities accepted in one bulk upsert.
    pub bulk_max_entities: usize,
    pub organization_id: String,
    pub kafka_username: String,
    pub kafka_password: String,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            client_id: "emulator-client".to_owned(),
            client_secret: "emulator-secret".to_owned(),
            token_ttl: Duration::from_secs(3600),
            rate_limit: None,
            // Port's bulk limit is 1 MiB of entities; leave room for the envelope.
            max_body_bytes: 1024 * 1024 + 1024,
            bulk_max_entities: 20,
            organization_id: "org_emulator".to_owned(),
            kafka_username: "emulator-kafka".to_owned(),
            kafka_password: "emulator-kafka-password".to_owned(),
        }
    }
}

/// Everything the handlers share. Locks are held only for in-memory work, never across an await.
#[derive(Debug)]
pub(crate) struct Shared {
    config: EmulatorConfig,
    store: Mutex<store::Store>,
    tokens: Mutex<HashMap<String, Instant>>,
    faults: Mutex<faults::Faults>,
    quota: Option<Mutex<faults::Quota>>,
    counters: Mutex<stats::Counters>,
}

/// A poisoned lock means a handler panicked; the data is still the best we have.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

type AppState = Arc<Shared>;

impl Shared {
    fn new(config: EmulatorConfig) -> Self {
        Self {
            quota: config.rate_limit.map(|n| Mutex::new(faults::Quota::new(n))),
            config,
            store: Mutex::default(),
            tokens: Mutex::default(),
            faults: Mutex::default(),
            counters: Mutex::default(),
        }
    }
}

/// The whole HTTP surface: Port's `/v1` API and the `/_emulator` controls.
fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .merge(api::routes(state.clone()))
        .merge(control::routes())
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serves the emulator on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: EmulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(Shared::new(config));
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// An emulator running in this process, on a free loopback port. Stops when dropped.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Emulator {
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Shared::new(config));
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "emulator stopped");
            }
        });
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
            task,
        })
    }

    /// `http://127.0.0.1:PORT`: what port-agent takes as `port.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &EmulatorConfig {
        &self.state.config
    }

    /// The same JSON as `GET /_emulator/stats`.
    pub fn stats(&self) -> Value {
        control::stats_json(&self.state)
    }

    /// The same JSON as `GET /_emulator/entities`.
    pub fn entities(&self) -> Value {
        control::entities_json(&self.state)
    }

    /// The entity held as `identifier` (any blueprint), if any.
    pub fn entity(&self, identifier: &str) -> Option<Value> {
        self.entities()
            .as_array()?
            .iter()
            .find(|e| e["identifier"] == identifier)
            .cloned()
    }

    /// As `POST /_emulator/faults`.
    pub fn set_faults(&self, spec: FaultSpec) -> Result<(), String> {
        lock(&self.state.faults).set(spec)
    }

    /// Invalidates every issued token, as if each had expired early.
    pub fn revoke_tokens(&self) {
        lock(&self.state.tokens).clear();
    }

    /// Creates a blueprint directly (what `POST /v1/blueprints` does, without a token).
    pub fn put_blueprint(&self, blueprint: Value) -> Result<(), String> {
        api::insert_blueprint(&mut lock(&self.state.store), blueprint)
            .map(drop)
            .map_err(|r| r.message)
    }

    /// The integration as `GET /v1/integration/{id}` holds it (config, resyncState, ...).
    pub fn integration(&self, identifier: &str) -> Option<Value> {
        lock(&self.state.store)
            .integrations
            .get(identifier)
            .cloned()
    }

    /// As `POST /_emulator/integrations/{id}/resync-request`: someone pressed "Resync" in Port.
    pub fn request_resync(&self, integration: &str) -> Value {
        control::record_resync_request(&self.state, integration.to_owned())
    }

    /// As `POST /_emulator/reset`.
    pub fn reset(&self) {
        control::reset(&self.state);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// An emulator on a thread and runtime of its own: for benchmarks that measure a client beside
/// it, so the two do not share a scheduler. [`EmulatorThread::stop`] hands back the statistics.
#[derive(Debug)]
pub struct EmulatorThread {
    base_url: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Value>>,
}

impl EmulatorThread {
    /// Starts the emulator with `blueprints` already created.
    pub fn start(config: EmulatorConfig, blueprints: Vec<Value>) -> std::io::Result<Self> {
        let (address_tx, address_rx) = std::sync::mpsc::sync_channel::<std::io::Result<String>>(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("port-emulator".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = address_tx.send(Err(e));
                        return Value::Null;
                    }
                };
                runtime.block_on(async move {
                    let emulator = match Emulator::start(config).await {
                        Ok(emulator) => emulator,
                        Err(e) => {
                            let _ = address_tx.send(Err(e));
                            return Value::Null;
                        }
                    };
                    for blueprint in blueprints {
                        if let Err(message) = emulator.put_blueprint(blueprint) {
                            let _ = address_tx.send(Err(std::io::Error::other(message)));
                            return Value::Null;
                        }
                    }
                    let _ = address_tx.send(Ok(emulator.base_url()));
                    let _ = stopped.await;
                    emulator.stats()
                })
            })?;
        let base_url = address_rx.recv().map_err(std::io::Error::other)??;
        Ok(Self {
            base_url,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Stops the emulator and returns `GET /_emulator/stats` as it was at the end.
    pub fn stop(mut self) -> Value {
        self.stop.take();
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or(Value::Null)
    }
}

impl Drop for EmulatorThread {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
