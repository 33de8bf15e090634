//! A resync of many entities, run as a user runs it: the `port-agent` process against the Port
//! emulator (in this process, on its own thread), with a redb state file.
//!
//! `cargo bench -p port-agent --bench resync` (BENCH_ENTITIES, default 100000). Prints, for the
//! first resync, an unchanged resync and one with 1% of items changed: wall time, the agent's
//! CPU time, its peak RSS, the entity writes Port received and the bulk requests they took
//! (against the fewest possible). Then a first resync of BENCH_QUOTA_ENTITIES (default 20000)
//! against an emulator at Port's distance (250 ms a request) and quota (116 requests a second):
//! the share of the quota the agent used, and the entities Port refused.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use port_emulator::{EmulatorConfig, EmulatorThread};
use serde_json::{Value, json};

const MAPPING: &str = r#"
resources:
  - kind: repository
    selector:
      query: '.archived | not'
    port:
      entity:
        mappings:
          identifier: .full_name | split("/") | last | ascii_downcase
          title: .name // .full_name
          blueprint: '"repository"'
          properties:
            url: .html_url
            description: .description // ''
            stars: .stargazers_count | tostring
            language: .language // "unknown"
            topics: '[.topics[] | select(startswith("internal") | not) | gsub("\\](?=[^$])"; "-")]'
            createdDay: .created_at | fromdate | strftime("%Y-%m-%d")
            owners: '.collaborators | map(.login) | join(",")'
            visibility: if .private then "private" else "public" end
"#;

const BLUEPRINTS: &str = r#"[{"identifier": "repository", "schema": {"properties": {"url": {"type": "string"}, "description": {"type": "string"},
    "stars": {"type": "string"}, "language": {"type": "string"}, "topics": {"type": "array"}, "createdDay": {"type": "string"},
    "owners": {"type": "string"}, "visibility": {"type": "string"}}}}]"#;

fn item(i: usize, version: usize) -> String {
    json!({
        "id": i, "name": format!("repo-{i}"), "full_name": format!("org-{}/Repo-{i}", i % 37),
        "private": i.is_multiple_of(3), "archived": false, "html_url": format!("https://github.com/org/repo-{i}"),
        "description": format!("Service number {i} v{version}"), "stargazers_count": i % 5000,
        "language": (["Rust", "Go", "Python", "TypeScript"][i % 4]),
        "topics": ["backend", "internal-x", format!("team]{}", i % 11), "svc]"],
        "created_at": format!("2023-0{}-1{}T08:15:30Z", 1 + i % 9, i % 9),
        "collaborators": [{"login": "ann"}, {"login": format!("bob-{}", i % 11)}]
    })
    .to_string()
}

fn write_items(dir: &Path, count: usize, changed_every: Option<usize>) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("repos.jsonl")).unwrap());
    for i in 0..count {
        let version = usize::from(changed_every.is_some_and(|n| i % n == 0));
        writeln!(out, "{}", item(i, version)).unwrap();
    }
}

/// User + system CPU seconds of this process's waited-for children (fields 16 and 17).
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After ")" the state is field 3, so cutime (16) and cstime (17) are at 13 and 14.
    (ticks(13) + ticks(14)) / 100.0
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

struct Measured {
    wall: Duration,
    cpu: f64,
    rss_mib: f64,
    stdout: Vec<u8>,
}

/// Runs `port-agent ARGS` in `dir`, sampling its peak RSS; with `keep_stdout` false its output
/// goes to /dev/null.
fn measure(dir: &Path, args: &[&str], keep_stdout: bool) -> Measured {
    let cpu_before = children_cpu();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(args)
        .current_dir(dir)
        .stdout(if keep_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut rss: f64 = 0.0;
    while child.try_wait().unwrap().is_none() {
        if let Some(now) = peak_rss_mib(child.id()) {
            rss = rss.max(now);
        }
        // A plain thread sampling another process, not async code: blocking is what it should do.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "port-agent {args:?} failed");
    Measured {
        wall: started.elapsed(),
        cpu: children_cpu() - cpu_before,
        rss_mib: rss,
        stdout: output.stdout,
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let count: usize = std::env::var("BENCH_ENTITIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let emulator = EmulatorThread::start(EmulatorConfig::default(), Vec::new()).unwrap();
    let base_url = emulator.base_url().to_owned();
    let dir = project(&base_url, "");
    let root = dir.path();

    let mut out = std::io::stdout();
    writeln!(
        out,
        "resync of {count} entities (agent process vs the emulator, redb state):"
    )
    .unwrap();
    let bulk = "POST /v1/blueprints/{bp}/entities/bulk";
    for (label, changed_every) in [
        ("first", None),
        ("unchanged", None),
        ("1% changed", Some(100)),
    ] {
        write_items(root, count, changed_every);
        let requests_before = requests(&base_url, bulk);
        let m = measure(root, &["resync", "--config", "agent.yaml", "--json"], true);
        let summary: Value = serde_json::from_slice(&m.stdout).unwrap();
        let totals = &summary["totals"];
        let sent = totals["upserted"].as_u64().unwrap_or(0);
        writeln!(
            out,
            "  {label:<11} wall {:>6.2} s  agent CPU {:>6.2} s  peak RSS {:>5.0} MiB  upserted {:>7}  unchanged {:>7}  bulk requests {} (fewest possible {})",
            m.wall.as_secs_f64(),
            m.cpu,
            m.rss_mib,
            totals["upserted"],
            totals["unchanged"],
            requests(&base_url, bulk) - requests_before,
            sent.div_ceil(20),
        )
        .unwrap();
    }
    let stats = emulator.stop();
    let size = std::fs::metadata(root.join("state.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    writeln!(
        out,
        "  emulator: {} entity writes in all; state file {:.1} MiB",
        stats["entities_upserted"],
        size as f64 / 1048576.0
    )
    .unwrap();
    // Where the state file's bytes go, as `state stats` tells a user.
    let stats = Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(["state", "stats", "--state", "state.redb"])
        .current_dir(root)
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&stats.stdout)
        .lines()
        .filter(|l| l.contains("table "))
    {
        writeln!(out, "  {}", line.trim()).unwrap();
    }
    let export = measure(
        root,
        &["state", "export", "--state", "state.redb", "--jsonl"],
        false,
    );
    writeln!(
        out,
        "  state export --jsonl of {count} records: wall {:.2} s, peak RSS {:.0} MiB",
        export.wall.as_secs_f64(),
        export.rss_mib
    )
    .unwrap();
    let compact = Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(["state", "compact", "--state", "state.redb"])
        .current_dir(root)
        .output()
        .unwrap();
    write!(out, "  {}", String::from_utf8_lossy(&compact.stdout)).unwrap();
    at_ports_distance(&mut out);
}

/// A project folder: blueprints, the mapping and an agent config for the emulator at
/// `base_url`, with `port_settings` added to its `port` section.
fn project(base_url: &str, port_settings: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join(".port/resources")).unwrap();
    std::fs::write(root.join(".port/resources/blueprints.json"), BLUEPRINTS).unwrap();
    std::fs::write(root.join("port-app-config.yaml"), MAPPING).unwrap();
    std::fs::write(
        root.join("agent.yaml"),
        format!(
            "port: {{base_url: '{base_url}', client_id: emulator-client, client_secret: emulator-secret{port_settings}}}\n\
             integration: {{identifier: bench, type: json, config: {{kinds: {{repository: ./repos.jsonl}}}}}}\n\
             mapping: ./port-app-config.yaml\nstate: {{path: ./state.redb}}\n"
        ),
    )
    .unwrap();
    dir
}

/// Requests the emulator at `base_url` has counted for `route`.
fn requests(base_url: &str, route: &str) -> u64 {
    emulator_call(base_url, "GET", "/_emulator/stats", None)["requests"][route]
        .as_u64()
        .unwrap_or(0)
}

/// One call to the emulator's controls, with a blocking client of this thread.
fn emulator_call(base_url: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{base_url}{path}");
        let request = match method {
            "POST" => client.post(url).json(body.unwrap_or(&Value::Null)),
            _ => client.get(url),
        };
        request.send().await.unwrap().json().await.unwrap()
    })
}

/// A first resync at Port's distance and quota: the agent must keep enough requests in flight
/// (and pace them) to use the quota, and lose no entity to it.
fn at_ports_distance(out: &mut impl Write) {
    const QUOTA: u32 = 116;
    let count: usize = std::env::var("BENCH_QUOTA_ENTITIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let config = EmulatorConfig {
        rate_limit: Some(QUOTA),
        ..EmulatorConfig::default()
    };
    let emulator = EmulatorThread::start(config, Vec::new()).unwrap();
    let base_url = emulator.base_url().to_owned();
    emulator_call(
        &base_url,
        "POST",
        "/_emulator/faults",
        Some(&json!({"latency_ms": 250})),
    );
    // Paced just under the quota, with enough requests in flight to cover 250 ms each.
    let dir = project(&base_url, ", max_concurrency: 40, requests_per_second: 115");
    let root = dir.path();
    write_items(root, count, None);
    let bulk = "POST /v1/blueprints/{bp}/entities/bulk";
    let m = measure(root, &["resync", "--config", "agent.yaml", "--json"], true);
    let summary: Value = serde_json::from_slice(&m.stdout).unwrap();
    let stats = emulator.stop();
    // Requests Port served: those the quota turned away (429, retried) do not count.
    let over_quota = stats["over_quota"].as_u64().unwrap_or(0);
    let sent = stats["requests"][bulk].as_u64().unwrap_or(0) - over_quota;
    // The rate while entities flow: from Port's first entity write to its last (the run's
    // start, a dozen sequential setup calls at 250 ms each, is not the write path's).
    let span = stats["writes_span_ms"].as_u64().unwrap_or(1).max(1) as f64 / 1000.0;
    let per_second = (sent - 1) as f64 / span;
    writeln!(
        out,
        "at Port's distance (250 ms a request, quota {QUOTA}/s): first resync of {count} in {:.1} s, writes over {span:.1} s: {sent} bulk requests, {:.1}/s = {:.0}% of the quota; {} entities/s; {over_quota} requests over quota (retried), {} entities failed",
        m.wall.as_secs_f64(),
        per_second,
        per_second / f64::from(QUOTA) * 100.0,
        (summary["totals"]["upserted"].as_u64().unwrap_or(0) as f64 / span) as u64,
        summary["totals"]["failed"],
    )
    .unwrap();
}
