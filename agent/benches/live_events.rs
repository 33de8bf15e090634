//! Live events at a steady load: `port-agent run` (the process, with its redb state) receives
//! signed pushes on `POST /integration/webhook` over loopback from this process, which also hosts
//! the Port emulator on a thread of its own.
//!
//! `cargo bench -p port-agent --bench live_events` (LIVE_RATE events a second, default 200, for
//! LIVE_SECONDS, default 30). Each event upserts one changed entity. Prints the events accepted,
//! the rate Port acknowledged them at, the latency from the push to Port's acknowledgement
//! (p50, p99, max; read from the emulator's upsert count every few milliseconds: events apply
//! in order), and the agent's CPU and peak RSS.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use port_emulator::{EmulatorConfig, EmulatorThread};
use serde_json::{Value, json};

const SECRET: &str = "bench-secret";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn project(dir: &Path, base_url: &str) {
    std::fs::create_dir_all(dir.join(".port/resources")).unwrap();
    std::fs::write(
        dir.join(".port/resources/blueprints.json"),
        r#"[{"identifier": "service", "schema": {"properties": {"version": {"type": "number"}}}}]"#,
    )
    .unwrap();
    std::fs::write(dir.join("services.jsonl"), "").unwrap();
    std::fs::write(
        dir.join("port-app-config.yaml"),
        "resources:\n  - kind: service\n    selector: {query: 'true'}\n    port:\n      entity:\n        mappings: {identifier: .name, blueprint: '\"service\"', properties: {version: .version}}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("agent.yaml"),
        format!(
            "port: {{base_url: '{base_url}', client_id: emulator-client, client_secret: emulator-secret}}\n\
             integration: {{identifier: bench, type: json, config: {{webhookSecret: {SECRET}, kinds: {{service: ./services.jsonl}}}}}}\n\
             mapping: ./port-app-config.yaml\nstate: {{path: ./state.redb}}\n\
             event_listener: {{type: WEBHOOK}}\nhttp: {{listen: '127.0.0.1:0'}}\n"
        ),
    )
    .unwrap();
}

async fn upserted(base_url: &str, client: &reqwest::Client) -> u64 {
    let Ok(response) = client
        .get(format!("{base_url}/_emulator/stats"))
        .send()
        .await
    else {
        return 0;
    };
    response
        .json::<Value>()
        .await
        .map(|v| v["entities_upserted"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let rate = env_number("LIVE_RATE", 200).max(1);
    let seconds = env_number("LIVE_SECONDS", 30).max(1);
    let emulator = EmulatorThread::start(EmulatorConfig::default(), Vec::new()).unwrap();
    let base_url = emulator.base_url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), &base_url);
    let log = dir.path().join("agent.log");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(["run", "--config", "agent.yaml"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let address = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(address) = text.lines().find_map(|l| {
                Some(
                    l.split("address=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .to_owned(),
                )
            }) {
                let ready = client
                    .get(format!("http://{address}/health/ready"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    break address;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not start:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let cpu_before = cpu_seconds(agent.id());
    let baseline = upserted(&base_url, &client).await;
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(total as usize);
    let mut refused = 0u64;
    // Pushes at the rate; the acknowledgements are read between them.
    let mut acked_at: Vec<Instant> = Vec::with_capacity(total as usize);
    async fn record_acks(
        acked_at: &mut Vec<Instant>,
        base_url: &str,
        client: &reqwest::Client,
        baseline: u64,
    ) {
        let now = upserted(base_url, client).await.saturating_sub(baseline);
        while (acked_at.len() as u64) < now {
            acked_at.push(Instant::now());
        }
    }
    // Open loop, as webhook senders are: each push leaves at its time whether or not the
    // ones before it were answered.
    let mut pushes = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval * i as u32;
        while Instant::now() < due {
            record_acks(&mut acked_at, &base_url, &client, baseline).await;
        }
        let body = json!({"id": format!("e-{i}"), "kind": "service",
            "upsert": [{"name": format!("svc-{}", i % 500), "version": i}]})
        .to_string();
        let request = client
            .post(format!("http://{address}/integration/webhook"))
            .header(
                "X-Port-Agent-Signature-256",
                port_agent_integrations::push::signature(SECRET.as_bytes(), body.as_bytes()),
            )
            .body(body);
        let pushed_at = Instant::now();
        pushes.push(tokio::spawn(async move {
            let status = request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            (pushed_at, status)
        }));
    }
    for push in pushes {
        let (pushed_at, status) = push.await.unwrap();
        if status == 202 {
            sent_at.push(pushed_at);
        } else {
            refused += 1;
        }
    }
    let sending = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked_at.len() < sent_at.len() && Instant::now() < deadline {
        record_acks(&mut acked_at, &base_url, &client, baseline).await;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(agent.id()) - cpu_before;
    let rss = peak_rss_mib(agent.id());
    let _ = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status();
    let _ = agent.wait();
    let mut latencies: Vec<Duration> = sent_at
        .iter()
        .zip(&acked_at)
        .map(|(sent, acked)| acked.saturating_duration_since(*sent))
        .collect();
    latencies.sort();
    let mut out = std::io::stdout();
    writeln!(
        out,
        "live events: {} pushed at {rate}/s over {:.1} s ({refused} refused), {} acknowledged by Port in {:.1} s = {:.0} events/s",
        sent_at.len(),
        sending.as_secs_f64(),
        acked_at.len(),
        elapsed.as_secs_f64(),
        acked_at.len() as f64 / elapsed.as_secs_f64()
    )
    .unwrap();
    if !latencies.is_empty() {
        writeln!(
            out,
            "  push to Port's ack: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; agent CPU {:.2} s ({:.0}% of one core), peak RSS {:.0} MiB",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().unwrap().as_secs_f64() * 1e3,
            cpu,
            100.0 * cpu / elapsed.as_secs_f64(),
            rss
        )
        .unwrap();
    }
    drop(emulator);
}
