//! The Helm chart (`packaging/helm/port-agent`) as Kubernetes would run it. Its manifests, as
//! `scripts/check-helm.sh` renders them for each case of `packaging/helm/tests/values/` into
//! `packaging/helm/tests/rendered/`, must hold together (every name a manifest refers to
//! exists, the probes and Services reach the agent's port, one replica), and the pod they
//! describe — its image's binary, its arguments, its environment from the ConfigMap and the
//! Secret, its mounted files and its state volume — must run as the agent: ready, syncing,
//! stopping cleanly; and the CronJob's runs must keep their state on the claim.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use port_emulator::{Emulator, EmulatorConfig};
use serde::Deserialize;
use serde_json::{Value, json};

fn helm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/helm")
}

/// The manifests of one rendered case.
fn rendered(case: &str) -> Vec<Value> {
    let path = helm_dir()
        .join("tests/rendered")
        .join(format!("{case}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|document| !document.is_null())
        .collect()
}

fn values(case: &str) -> Value {
    let path = helm_dir().join("tests/values").join(format!("{case}.yaml"));
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The manifest of `kind` named `name`, if the case has it.
fn find<'a>(manifests: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    manifests
        .iter()
        .find(|m| m["kind"] == kind && m["metadata"]["name"] == name)
}

fn of_kind<'a>(manifests: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    manifests.iter().filter(move |m| m["kind"] == kind)
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
}

fn list(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The workload's pod spec: the StatefulSet's, or the CronJob's job's.
fn pod_spec(manifests: &[Value]) -> &Value {
    let mut workloads = of_kind(manifests, "StatefulSet").chain(of_kind(manifests, "CronJob"));
    let workload = workloads.next().expect("a StatefulSet or a CronJob");
    assert!(workloads.next().is_none(), "one workload, not two");
    match text(&workload["kind"]) {
        "StatefulSet" => &workload["spec"]["template"]["spec"],
        _ => &workload["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    }
}

fn container(manifests: &[Value]) -> &Value {
    let containers = list(&pod_spec(manifests)["containers"]);
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The Secrets the values say already exist in the cluster (`secret.create: false`).
fn existing_secrets(case: &str) -> Vec<String> {
    let values = values(case);
    match &values["secret"]["name"] {
        Value::String(name) => vec![name.clone()],
        Value::Array(names) => names.iter().map(|n| text(n).to_owned()).collect(),
        _ => Vec::new(),
    }
}

/// `labels` carries every label `selector` asks for.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels[k] == *v)
}

const SERVED_CASES: [&str; 2] = ["service", "webhooks"];
const ALL_CASES: [&str; 3] = ["service", "webhooks", "cronjob"];

#[test]
fn every_manifest_is_named_labelled_and_unique() {
    for case in ALL_CASES {
        let manifests = rendered(case);
        let mut seen = std::collections::BTreeSet::new();
        for manifest in &manifests {
            let (kind, name) = (text(&manifest["kind"]), text(&manifest["metadata"]["name"]));
            assert!(manifest["apiVersion"].is_string(), "{case}: {kind} {name}");
            let limit = if kind == "CronJob" { 52 } else { 63 };
            assert!(name.len() <= limit, "{case}: {kind} {name} is too long");
            assert_eq!(
                manifest["metadata"]["labels"]["app.kubernetes.io/instance"], "port-agent",
                "{case}: {kind} {name}"
            );
            assert!(seen.insert((kind, name)), "{case}: {kind} {name} twice");
        }
    }
}

#[test]
fn the_chart_s_version_is_the_agent_s() {
    let chart: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(helm_dir().join("port-agent/Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    for case in ALL_CASES {
        let image = text(&container(&rendered(case))["image"]).to_owned();
        assert!(
            image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
            "{case}: {image}"
        );
    }
}

#[test]
fn everything_the_pod_refers_to_exists() {
    for case in ALL_CASES {
        let manifests = rendered(case);
        let container = container(&manifests);
        for source in list(&container["envFrom"]) {
            if let Some(name) = source["configMapRef"]["name"].as_str() {
                assert!(
                    find(&manifests, "ConfigMap", name).is_some(),
                    "{case}: {name}"
                );
            } else {
                let name = text(&source["secretRef"]["name"]);
                assert!(
                    find(&manifests, "Secret", name).is_some()
                        || existing_secrets(case).iter().any(|s| s == name),
                    "{case}: Secret {name} is neither rendered nor named in the values"
                );
            }
        }
        let volumes = volume_names(&manifests);
        for mount in list(&container["volumeMounts"]) {
            assert!(
                volumes.contains(text(&mount["name"])),
                "{case}: mount {mount}"
            );
        }
        for volume in list(&pod_spec(&manifests)["volumes"]) {
            if let Some(name) = volume["configMap"]["name"].as_str() {
                assert!(
                    find(&manifests, "ConfigMap", name).is_some(),
                    "{case}: {name}"
                );
            }
            if let Some(name) = volume["persistentVolumeClaim"]["claimName"].as_str() {
                let claim = find(&manifests, "PersistentVolumeClaim", name)
                    .unwrap_or_else(|| panic!("{case}: claim {name}"));
                assert_eq!(
                    claim["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
                    "{case}: the state's claim must outlive an uninstall"
                );
            }
        }
        // The state, on a volume the pod has, where the agent's config puts it.
        let files = config_files(&manifests);
        let agent: Value = serde_yaml_ng::from_str(&files["agent.yaml"]).unwrap();
        let state_mount = mount_path(container, "state");
        assert!(
            text(&agent["state"]["path"]).starts_with(&format!("{state_mount}/")),
            "{case}: state.path outside the state volume"
        );
    }
}

fn volume_names(manifests: &[Value]) -> std::collections::BTreeSet<&str> {
    let claims = of_kind(manifests, "StatefulSet")
        .flat_map(|s| list(&s["spec"]["volumeClaimTemplates"]))
        .map(|c| text(&c["metadata"]["name"]));
    list(&pod_spec(manifests)["volumes"])
        .iter()
        .map(|v| text(&v["name"]))
        .chain(claims)
        .collect()
}

fn mount_path<'a>(container: &'a Value, volume: &str) -> &'a str {
    list(&container["volumeMounts"])
        .iter()
        .find(|m| m["name"] == volume)
        .map(|m| text(&m["mountPath"]))
        .unwrap_or_else(|| panic!("no mount of {volume}"))
}

/// The files the config volume's ConfigMap holds.
fn config_files(manifests: &[Value]) -> BTreeMap<String, String> {
    let volume = list(&pod_spec(manifests)["volumes"])
        .iter()
        .find(|v| v["name"] == "config")
        .expect("a config volume");
    let map = find(manifests, "ConfigMap", text(&volume["configMap"]["name"])).unwrap();
    serde_json::from_value(map["data"].clone()).unwrap()
}

#[test]
fn the_service_is_one_replica_probed_and_reachable_on_the_agent_s_port() {
    for case in SERVED_CASES {
        let manifests = rendered(case);
        let set = of_kind(&manifests, "StatefulSet").next().unwrap();
        assert_eq!(
            set["spec"]["replicas"], 1,
            "{case}: the state has one writer"
        );
        let pod_labels = &set["spec"]["template"]["metadata"]["labels"];
        assert!(selects(&set["spec"]["selector"]["matchLabels"], pod_labels));
        let governing = find(&manifests, "Service", text(&set["spec"]["serviceName"]))
            .unwrap_or_else(|| panic!("{case}: the StatefulSet's serviceName"));
        assert_eq!(governing["spec"]["clusterIP"], "None");

        // The agent listens where the container port says.
        let container = container(&manifests);
        let agent: Value =
            serde_yaml_ng::from_str(&config_files(&manifests)["agent.yaml"]).unwrap();
        let listen_port: u64 = text(&agent["http"]["listen"])
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ports = list(&container["ports"]);
        let http = ports.iter().find(|p| p["name"] == "http").unwrap();
        assert_eq!(http["containerPort"], listen_port, "{case}");
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                container[probe]["httpGet"]["port"], "http",
                "{case}: {probe}"
            );
        }
        for service in of_kind(&manifests, "Service") {
            assert!(selects(&service["spec"]["selector"], pod_labels), "{case}");
            for port in list(&service["spec"]["ports"]) {
                assert!(
                    ports.iter().any(|p| p["name"] == port["targetPort"]),
                    "{case}: Service port {port}"
                );
            }
        }
    }
}

#[test]
fn ingress_and_service_monitor_reach_the_service_and_expose_only_webhooks() {
    let manifests = rendered("webhooks");
    let service = find(&manifests, "Service", "github-sync").unwrap();
    let service_ports = list(&service["spec"]["ports"]);
    let ingress = of_kind(&manifests, "Ingress").next().unwrap();
    let mut paths = Vec::new();
    for rule in list(&ingress["spec"]["rules"]) {
        for path in list(&rule["http"]["paths"]) {
            let backend = &path["backend"]["service"];
            assert_eq!(backend["name"], service["metadata"]["name"]);
            assert!(
                service_ports
                    .iter()
                    .any(|p| p["name"] == backend["port"]["name"])
            );
            paths.push(text(&path["path"]).to_owned());
        }
    }
    // Webhooks and the WEBHOOK listener's resync trigger; never /metrics nor /state/*.
    assert_eq!(paths, ["/integration", "/resync"]);
    let monitor = of_kind(&manifests, "ServiceMonitor").next().unwrap();
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert!(service_ports.iter().any(|p| p["name"] == endpoint["port"]));
    assert_eq!(endpoint["path"], "/metrics");
}

#[test]
fn refused_values_are_refused_naming_the_value() {
    let expected = [
        ("refused-without-client-id", "port.clientId is required"),
        (
            "refused-once-as-a-service",
            "integration.eventListener.type ONCE",
        ),
        ("refused-ocean-deployment-kind", "workload.kind"),
        (
            "refused-cron-schedule-as-minutes",
            "scheduledResyncInterval",
        ),
    ];
    let cases: Vec<String> = std::fs::read_dir(helm_dir().join("tests/values"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .replace(".yaml", "")
        })
        .filter(|name| name.starts_with("refused-"))
        .collect();
    assert_eq!(
        cases.len(),
        expected.len(),
        "every refused case is named here"
    );
    for (case, names) in expected {
        let rendered = helm_dir().join("tests/rendered");
        assert!(!rendered.join(format!("{case}.yaml")).exists(), "{case}");
        let error = std::fs::read_to_string(rendered.join(format!("{case}.error")))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(
            error.starts_with("Error: ") && error.contains(names),
            "{case}: {error}"
        );
    }
}

// ---- The pod, run as a process ----

/// Port's credentials and the vendor's token, as the test values give them.
const CLIENT_ID: &str = "client-id-1";
const CLIENT_SECRET: &str = "client-secret-1";
const API_TOKEN: &str = "token-from-the-secret";

fn services() -> Value {
    json!([
        {"id": "payments", "name": "Payments", "tier": "gold"},
        {"id": "search", "name": "Search", "tier": "silver"},
        {"id": "web", "name": "Web", "tier": "bronze"}
    ])
}

/// What Port must hold after a resync of [`services`] with the test values' mapping.
fn expected_content() -> BTreeMap<(String, String), Value> {
    list(&services())
        .iter()
        .map(|s| {
            let id = text(&s["id"]).to_owned();
            let entity = json!({"identifier": id, "blueprint": "service", "title": s["name"],
                "properties": {"tier": s["tier"]}, "relations": {}, "team": [],
                "$datasource": format!("port-ocean/custom/{}/my-api/exporter", env!("CARGO_PKG_VERSION"))});
            (("service".to_owned(), id), entity)
        })
        .collect()
}

/// The vendor's API: `GET /services`, with the bearer token the Secret holds.
async fn vendor() -> String {
    async fn list_services(headers: HeaderMap) -> Response {
        if headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {API_TOKEN}"))
        {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        axum::Json(services()).into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let app = Router::new().route("/services", get(list_services));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

async fn port() -> Emulator {
    let emulator = Emulator::start(EmulatorConfig {
        client_id: CLIENT_ID.to_owned(),
        client_secret: CLIENT_SECRET.to_owned(),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    emulator
        .put_blueprint(json!({"identifier": "service", "title": "Service",
            "schema": {"properties": {"tier": {"type": "string"}}}}))
        .unwrap();
    emulator
}

/// The container as the kubelet starts it: its environment (`envFrom` first, `env` over it),
/// its arguments, and each volume as a folder — the ConfigMap's files written out, the state
/// on `state_dir`. Paths under a mount are moved to its folder, in the environment and in the
/// mounted files, as a mount namespace would place them.
struct Pod {
    env: BTreeMap<String, String>,
    args: Vec<String>,
    _folders: Vec<tempfile::TempDir>,
}

impl Pod {
    fn new(manifests: &[Value], state_dir: &Path) -> Self {
        let container = container(manifests);
        let mut env = BTreeMap::new();
        for source in list(&container["envFrom"]) {
            env.extend(env_source(manifests, source));
        }
        for variable in list(&container["env"]) {
            env.insert(
                text(&variable["name"]).to_owned(),
                text(&variable["value"]).to_owned(),
            );
        }
        let mut folders = Vec::new();
        let mut mounts = Vec::new();
        for mount in list(&container["volumeMounts"]) {
            let folder = match text(&mount["name"]) {
                "state" => state_dir.to_owned(),
                name => {
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().to_owned();
                    if name == "config" {
                        for (file, content) in config_files(manifests) {
                            std::fs::write(path.join(file), content).unwrap();
                        }
                    }
                    folders.push(dir);
                    path
                }
            };
            mounts.push((text(&mount["mountPath"]).to_owned(), folder));
        }
        // In two passes, so that a folder under one mount path (a temporary folder under
        // /tmp) is not moved again.
        let place = |text: &str| {
            let marked = mounts
                .iter()
                .enumerate()
                .fold(text.to_owned(), |text, (i, (at, _))| {
                    text.replace(&format!("{at}/"), &format!("\u{0}{i}\u{0}/"))
                });
            mounts
                .iter()
                .enumerate()
                .fold(marked, |text, (i, (_, folder))| {
                    text.replace(
                        &format!("\u{0}{i}\u{0}/"),
                        &format!("{}/", folder.display()),
                    )
                })
        };
        for (_, folder) in &mounts {
            for entry in std::fs::read_dir(folder).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    let content = std::fs::read_to_string(&path).unwrap();
                    std::fs::write(&path, place(&content)).unwrap();
                }
            }
        }
        let env = env.into_iter().map(|(k, v)| (k, place(&v))).collect();
        let args = list(&container["args"])
            .iter()
            .map(|a| text(a).to_owned())
            .collect();
        Self {
            env,
            args,
            _folders: folders,
        }
    }

    /// Points the addresses the cluster would resolve at this test's Port and vendor, and the
    /// listener at a free port; each must have been set by the chart first.
    fn in_this_network(&mut self, port: &Emulator, vendor: &str) {
        for (variable, address) in [
            ("OCEAN__PORT__BASE_URL", port.base_url()),
            ("OCEAN__INTEGRATION__CONFIG__BASE_URL", vendor.to_owned()),
        ] {
            let set = self.env.insert(variable.to_owned(), address);
            assert!(set.is_some(), "the chart sets no {variable}");
        }
        self.env
            .insert("OCEAN__HTTP__LISTEN".to_owned(), "127.0.0.1:0".to_owned());
    }

    /// The image's entrypoint (`port-agent`) with the container's arguments and only the
    /// pod's environment.
    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_port-agent"));
        command
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .current_dir("/");
        command
    }
}

/// The variables a ConfigMap or Secret named in `envFrom` gives.
fn env_source(manifests: &[Value], source: &Value) -> BTreeMap<String, String> {
    if let Some(name) = source["configMapRef"]["name"].as_str() {
        let map = find(manifests, "ConfigMap", name).unwrap();
        return serde_json::from_value(map["data"].clone()).unwrap();
    }
    let name = text(&source["secretRef"]["name"]);
    let secret = find(manifests, "Secret", name).unwrap();
    let data: BTreeMap<String, String> = serde_json::from_value(secret["data"].clone()).unwrap();
    data.into_iter()
        .map(|(key, encoded)| {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap();
            (key, String::from_utf8(decoded).unwrap())
        })
        .collect()
}

/// The address the agent logged as serving its probes, from its JSON log lines.
fn served_address(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line.to_string().contains("serving /health/live"))
        .and_then(|line| find_field(&line, "address"))
}

fn find_field(value: &Value, key: &str) -> Option<String> {
    match value {
        Value::Object(fields) => fields
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| fields.values().find_map(|v| find_field(v, key))),
        _ => None,
    }
}

fn collected(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (sink, stderr) = (text.clone(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stateful_set_s_pod_runs_ready_syncs_and_stops_cleanly() {
    let manifests = rendered("service");
    let (port, vendor) = (port().await, vendor().await);
    let state = tempfile::tempdir().unwrap();
    let mut pod = Pod::new(&manifests, state.path());
    pod.in_this_network(&port, &vendor);
    let mut child = pod
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collected(&mut child);
    let mut address = None;
    support::wait_until(
        Duration::from_secs(30),
        "the agent serves its probes",
        || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the agent exited ({status}):\n{}", log.lock().unwrap());
            }
            address = served_address(&log.lock().unwrap());
            address.is_some()
        },
    )
    .await;
    let address = address.unwrap();

    let container = container(&manifests);
    for probe in ["livenessProbe", "readinessProbe"] {
        let path = text(&container[probe]["httpGet"]["path"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while support::http(&address, "GET", path).await.map(|(s, _)| s) != Some(200) {
            assert!(
                std::time::Instant::now() < deadline,
                "{probe} {path} never 200"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    support::wait_until(Duration::from_secs(30), "the first resync", || {
        support::port_content(&port) == expected_content()
    })
    .await;
    // The ServiceMonitor's path (from the case that has one) serves the agent's metrics.
    let monitor = rendered("webhooks");
    let monitor = of_kind(&monitor, "ServiceMonitor").next().unwrap();
    let metrics_path = text(&monitor["spec"]["endpoints"][0]["path"]);
    let (status, metrics) = support::http(&address, "GET", metrics_path).await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("port_agent_"), "{metrics}");

    let grace = pod_spec(&manifests)["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let output = stop_within(child, Duration::from_secs(grace)).await;
    assert_eq!(output, Some(0), "{}", log.lock().unwrap());
    let log = log.lock().unwrap().clone();
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "the chart asks for JSON logs:\n{log}"
    );
    for secret in [CLIENT_SECRET, API_TOKEN] {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
    }
    assert!(state.path().join("state.redb").exists());
}

/// SIGTERM, as the kubelet sends it; the exit code if it came within `grace`.
async fn stop_within(mut child: Child, grace: Duration) -> Option<i32> {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = std::time::Instant::now() + grace;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running {grace:?} after SIGTERM (the pod's grace period)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cron_job_s_runs_keep_their_state_on_the_claim() {
    let manifests = rendered("cronjob");
    let (port, vendor) = (port().await, vendor().await);
    let claim = tempfile::tempdir().unwrap();
    let mut writes_after = Vec::new();
    for run in 1..=2 {
        // Each schedule starts a new pod on the same claim.
        let mut pod = Pod::new(&manifests, claim.path());
        pod.in_this_network(&port, &vendor);
        let out = tokio::task::spawn_blocking(move || pod.command().output().unwrap())
            .await
            .unwrap();
        support::assert_success(&out);
        assert_eq!(
            support::port_content(&port),
            expected_content(),
            "after run {run}"
        );
        writes_after.push(support::writes(&port));
    }
    assert!(writes_after[0] > 0);
    assert_eq!(
        writes_after[0], writes_after[1],
        "the second run found the state the first left on the claim and sent nothing"
    );
}
