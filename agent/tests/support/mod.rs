//! A project folder for agent tests: agent config, mapping, blueprints and raw items, with an
//! in-process Port emulator.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use port_emulator::{Emulator, EmulatorConfig};
use serde_json::{Value, json};

pub const BLUEPRINTS: &str = r#"[
  {"identifier": "team", "title": "Team", "schema": {"properties": {"size": {"type": "number"}}}},
  {"identifier": "service", "title": "Service", "schema": {"properties": {
     "language": {"type": "string"}, "stars": {"type": "number"}, "tier": {"type": "string"}}},
   "relations": {"team": {"target": "team", "required": false, "many": false}}}
]"#;

pub fn mapping(tier_cut: u32) -> String {
    format!(
        r#"
resources:
  - kind: service
    selector: {{query: 'true'}}
    port:
      entity:
        mappings:
          identifier: .name
          title: .name
          blueprint: '"service"'
          properties:
            language: .lang // 'unknown'
            stars: .stars
            tier: 'if .stars > {tier_cut} then "high" else "low" end'
          relations:
            team: .team
  - kind: team
    selector: {{query: 'true'}}
    port:
      entity:
        mappings: {{identifier: .id, title: .id, blueprint: '"team"', properties: {{size: .size}}}}
"#
    )
}

pub fn service(i: usize) -> Value {
    json!({"name": format!("svc-{i:04}"), "lang": (["rust", "go"][i % 2]), "stars": (i * 37) % 400, "team": format!("team-{}", i % 5)})
}

/// A folder with an agent config pointing at an in-process emulator.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub emulator: Emulator,
}

impl Project {
    pub async fn new(services: usize) -> Self {
        let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(".port/resources")).unwrap();
        std::fs::write(root.join(".port/resources/blueprints.json"), BLUEPRINTS).unwrap();
        std::fs::write(root.join("port-app-config.yaml"), mapping(100)).unwrap();
        std::fs::write(
            root.join("agent.yaml"),
            format!(
                "port: {{base_url: '{}', client_id: emulator-client, client_secret: emulator-secret}}\n\
                 integration: {{identifier: my-services, type: json, config: {{kinds: {{service: ./services.jsonl, team: ./teams.jsonl}}}}}}\n\
                 mapping: ./port-app-config.yaml\nresources_path: ./.port/resources\nstate: {{path: ./state/agent.redb}}\n\
                 event_listener: {{type: ONCE}}\n",
                emulator.base_url()
            ),
        )
        .unwrap();
        let project = Self { dir, emulator };
        project.write_services(&(0..services).map(service).collect::<Vec<_>>());
        project.write_lines(
            "teams.jsonl",
            &(0..5)
                .map(|t| json!({"id": format!("team-{t}"), "size": t}))
                .collect::<Vec<_>>(),
        );
        project
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_path(&self) -> PathBuf {
        self.root().join("state/agent.redb")
    }

    /// Writes `items` as JSON lines into `file`, whole then renamed into place: a run that
    /// reads it meanwhile sees the old file or the new one, never half of one.
    pub fn write_lines(&self, file: &str, items: &[Value]) {
        let text: String = items.iter().map(|v| format!("{v}\n")).collect();
        let partial = self.root().join(format!("{file}.partial"));
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(partial, self.root().join(file)).unwrap();
    }

    pub fn write_services(&self, items: &[Value]) {
        self.write_lines("services.jsonl", items);
    }

    pub async fn agent(&self, args: &[&str]) -> Output {
        agent_in(self.root(), args).await
    }

    /// `resync --json`: exit code and the summary.
    pub async fn resync(&self, extra: &[&str]) -> (i32, Value, String) {
        let mut args = vec!["resync", "--config", "agent.yaml", "--json"];
        args.extend_from_slice(extra);
        let out = self.agent(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let summary = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {} / {stderr}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code().unwrap_or(-1), summary, stderr)
    }

    /// The entity Port holds as `identifier` (any blueprint); panics when there is none.
    pub fn port_entity(&self, identifier: &str) -> Value {
        self.emulator
            .entity(identifier)
            .unwrap_or_else(|| panic!("Port holds no entity {identifier}"))
    }

    /// Adds `settings` (YAML flow pairs, e.g. `max_retries: 1`) to the config's `port` section.
    pub fn set_port_settings(&self, settings: &str) {
        let path = self.root().join("agent.yaml");
        let config = std::fs::read_to_string(&path).unwrap();
        let changed = config.replacen(
            "client_secret: emulator-secret}",
            &format!("client_secret: emulator-secret, {settings}}}"),
            1,
        );
        assert_ne!(config, changed, "agent.yaml has no port section to extend");
        std::fs::write(path, changed).unwrap();
    }

    /// Appends top-level `yaml` to the agent's config.
    pub fn append_config(&self, yaml: &str) {
        let path = self.root().join("agent.yaml");
        let mut config = std::fs::read_to_string(&path).unwrap();
        config.push_str(yaml);
        config.push('\n');
        std::fs::write(path, config).unwrap();
    }

    /// What Port holds, as a user sees it: each entity's identifier, blueprint, title, icon,
    /// team, properties and relations, by blueprint and identifier (Port's own timestamps left
    /// out). Two runs that should leave Port alike must give equal values.
    pub fn port_content(&self) -> std::collections::BTreeMap<(String, String), Value> {
        port_content(&self.emulator)
    }

    pub fn stats(&self) -> Value {
        self.emulator.stats()
    }

    pub fn writes(&self) -> u64 {
        writes(&self.emulator)
    }
}

/// Port's content after one uninterrupted run of `services` (and the default teams) on a fresh
/// Port and a fresh state: what any sequence of runs ending on the same data must leave.
pub async fn uninterrupted_run(
    services: &[Value],
) -> std::collections::BTreeMap<(String, String), Value> {
    let reference = Project::new(0).await;
    reference.write_services(services);
    let (code, _, stderr) = reference.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    reference.port_content()
}

/// Entity writes `emulator` has answered: upserts (bulk and single) and bulk deletes.
pub fn writes(emulator: &Emulator) -> u64 {
    let requests = &emulator.stats()["requests"];
    [
        "POST /v1/blueprints/{bp}/entities/bulk",
        "POST /v1/blueprints/{bp}/entities",
        "POST /v1/blueprints/{bp}/bulk/entities/delete",
    ]
    .iter()
    .map(|r| requests[r].as_u64().unwrap_or(0))
    .sum()
}

/// See [`Project::port_content`].
pub fn port_content(emulator: &Emulator) -> std::collections::BTreeMap<(String, String), Value> {
    emulator
        .entities()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let mut content = e.clone();
            let fields = content.as_object_mut().unwrap();
            for stamp in ["createdAt", "updatedAt", "createdBy", "updatedBy"] {
                fields.remove(stamp);
            }
            let key = (
                e["blueprint"].as_str().unwrap().to_owned(),
                e["identifier"].as_str().unwrap().to_owned(),
            );
            (key, content)
        })
        .collect()
}

fn agent_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_port-agent"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("PORT_AGENT_CONFIG")
        // Tests read the lines a person reads; off a terminal the default would be JSON.
        .env("PORT_AGENT_LOG_FORMAT", "text");
    command
}

/// `port-agent ARGS` in `dir`, to the end.
pub async fn agent_in(dir: &Path, args: &[&str]) -> Output {
    let mut command = agent_command(dir, args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// Starts `port-agent ARGS` in `dir` with its output piped, without waiting.
pub fn start_agent_in(dir: &Path, args: &[&str]) -> Child {
    agent_command(dir, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends SIGTERM, as systemd or `docker stop` does, and waits for the exit.
pub async fn terminate(child: Child) -> Output {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM failed");
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

/// The command exited 0; otherwise the failure shows its stderr.
#[track_caller]
pub fn assert_success(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `done` every 10 ms until it holds; panics naming `what` after `limit`.
#[track_caller]
pub fn wait_until(
    limit: std::time::Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> impl std::future::Future<Output = ()> {
    let caller = std::panic::Location::caller();
    let what = what.to_owned();
    async move {
        let deadline = std::time::Instant::now() + limit;
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{caller}: waited {limit:?} for: {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// Port's content equals `expected`; on failure, names each entity that differs, is missing or
/// is extra (with both values), rather than printing everything.
#[track_caller]
pub fn assert_same_content(
    actual: &std::collections::BTreeMap<(String, String), Value>,
    expected: &std::collections::BTreeMap<(String, String), Value>,
) {
    let mut differences = Vec::new();
    for (key, want) in expected {
        match actual.get(key) {
            None => differences.push(format!("missing in Port: {key:?} (expected {want})")),
            Some(got) if got != want => {
                differences.push(format!("{key:?}: Port holds {got}, expected {want}"))
            }
            Some(_) => {}
        }
    }
    for (key, got) in actual {
        if !expected.contains_key(key) {
            differences.push(format!("orphan in Port: {key:?} = {got}"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} entities differ from an uninterrupted run:\n{}",
        differences.len(),
        expected.len(),
        differences
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Sets the event listener (`event_listener: ...` and any more top-level YAML) and has the
/// service's HTTP server listen on a port the system picks (the agent logs which), unless the
/// YAML has its own `http` section.
pub fn use_listener(project: &Project, listener: &str) {
    let path = project.root().join("agent.yaml");
    let config = std::fs::read_to_string(&path).unwrap();
    let http = if listener.contains("http:") {
        ""
    } else {
        "\nhttp: {listen: '127.0.0.1:0'}"
    };
    let changed = config.replace("event_listener: {type: ONCE}", &format!("{listener}{http}"));
    assert_ne!(config, changed);
    std::fs::write(path, changed).unwrap();
}

/// `port-agent run` in a project folder, its output collected as it comes.
pub struct RunningService {
    child: Child,
    /// Where its HTTP server listens (read from its log).
    pub address: String,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

fn collect(
    stream: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

impl RunningService {
    /// Starts `port-agent run --config agent.yaml` in `dir` and waits (30 s at most) for its
    /// HTTP server's address.
    pub async fn start(dir: &Path) -> Self {
        let mut child = start_agent_in(dir, &["run", "--config", "agent.yaml"]);
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let mut address = None;
        wait_until(
            std::time::Duration::from_secs(30),
            "the service logs its address",
            || {
                address = stderr
                    .lock()
                    .unwrap()
                    .lines()
                    .filter(|l| l.contains("serving /health/live"))
                    .find_map(|l| {
                        Some(
                            l.split("address=")
                                .nth(1)?
                                .split_whitespace()
                                .next()?
                                .to_owned(),
                        )
                    });
                address.is_some()
            },
        )
        .await;
        Self {
            child,
            address: address.unwrap(),
            stdout,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One plain HTTP/1.1 request to the service: the status and the body.
    pub async fn http(&self, method: &str, path: &str) -> Option<(u16, String)> {
        http(&self.address, method, path).await
    }

    /// The value of one series in `/metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.http("GET", "/metrics").await?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits (30 s at most) until `series` reaches `value`.
    pub async fn wait_for_metric(&self, series: &str, value: f64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.metric(series).await != Some(value) {
            assert!(
                std::time::Instant::now() < deadline,
                "{series} never reached {value}: {:?}\n{}",
                self.metric(series).await,
                self.stderr()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, as systemd or `docker stop` sends; waits (30 s at most) for the exit, and
    /// returns the exit code, stdout and stderr.
    pub async fn terminate(mut self) -> (Option<i32>, String, String) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("still running 30 s after SIGTERM:\n{}", self.stderr());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        // The readers finish once the pipes close.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        (
            status.code(),
            self.stdout.lock().unwrap().clone(),
            self.stderr(),
        )
    }
}

/// One plain HTTP/1.1 request: the status and the body.
pub async fn http(address: &str, method: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}
