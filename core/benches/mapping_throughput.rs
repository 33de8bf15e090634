//! Mapping throughput: synthetic raw items of a realistic shape through a realistic mapping,
//! parsed, mapped and hashed. Prints entities/s per core and for the pool, and peak memory.
//!
//! `cargo bench -p port-agent-core --bench mapping_throughput` (BENCH_ITEMS, default 1000000).

use std::io::Write;
use std::time::Instant;

use port_agent_core::entity_hash::hash_entity;
use port_agent_core::mapping::budget::Limits;
use port_agent_core::mapping::jq::Jq;
use port_agent_core::mapping::value::parse_raw;
use port_agent_core::mapping::{CompiledMapping, EnvAccess, MappingPool, PortAppConfig};
use serde_json::value::RawValue;

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
          blueprint: '"githubRepository"'
          properties:
            url: .html_url
            description: .description // ''
            stars: .stargazers_count | tostring
            language: .language // "unknown"
            topics: '[.topics[] | select(startswith("internal") | not) | gsub("\\](?=[^$])"; "-")]'
            createdDay: .created_at | fromdate | strftime("%Y-%m-%d")
            owners: '.collaborators | map(.login) | join(",")'
            visibility: if .private then "private" else "public" end
          relations:
            team: .owner.team
"#;

fn item(i: usize) -> String {
    format!(
        r#"{{"id": {i}, "name": "repo-{i}", "full_name": "org-{org}/Repo-{i}", "private": {private}, "archived": {archived}, "html_url": "https://github.com/org-{org}/repo-{i}", "description": {description}, "stargazers_count": {stars}, "language": "{language}", "topics": ["backend", "internal-x", "team]{t}", "svc]"], "created_at": "2023-0{month}-1{day}T08:15:30Z", "owner": {{"login": "org-{org}", "team": "team-{t}"}}, "collaborators": [{{"login": "ann"}}, {{"login": "bob-{t}"}}], "size": {size}}}"#,
        org = i % 37,
        private = i.is_multiple_of(3),
        archived = i.is_multiple_of(50),
        description = if i.is_multiple_of(4) {
            "null".to_owned()
        } else {
            format!("\"Service number {i}\"")
        },
        stars = i % 5000,
        language = ["Rust", "Go", "Python", "TypeScript"][i % 4],
        t = i % 11,
        month = 1 + i % 9,
        day = i % 9,
        size = i * 7 % 100000,
    )
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// The same allocator as the `port-agent` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let total: usize = std::env::var("BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let config = PortAppConfig::from_yaml(MAPPING).unwrap();
    let mut out = std::io::stdout();

    // One core, no pool: the engine's own speed.
    let single = (total / 10).max(1000);
    let mapping = CompiledMapping::compile(&config, Jq::process_env());
    let resource = mapping.resources[0].as_ref().unwrap();
    let started = Instant::now();
    let mut entities = 0usize;
    let mut checksum = 0u8;
    for i in 0..single {
        let raw = parse_raw(item(i).as_bytes()).unwrap();
        for entity in mapping.map_item(resource, &raw).entities {
            checksum ^= hash_entity(&entity).0[0];
            entities += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    writeln!(out, "one core:  {single} items -> {entities} entities in {secs:.2} s = {:.0} entities/s (checksum {checksum})", entities as f64 / secs).unwrap();

    // The pool on every core, fed in batches through its bounded queue.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = MappingPool::start(&config, EnvAccess::Process, threads, Limits::default()).unwrap();
    let started = Instant::now();
    let (mapped, hashed) = runtime.block_on(async {
        let mut mapped = 0usize;
        let mut hashed = 0u8;
        let batch = 1000;
        let mut pending = std::collections::VecDeque::new();
        for start in (0..total).step_by(batch) {
            let items: Vec<Box<RawValue>> = (start..(start + batch).min(total))
                .map(|i| RawValue::from_string(item(i)).unwrap())
                .collect();
            pending.push_back(pool.submit(0, items).await.unwrap());
            // Keep a few batches in flight, as a resync streaming pages would.
            if pending.len() >= threads * 2 {
                let result = pending.pop_front().unwrap().await.unwrap();
                mapped += result.entities.len();
                hashed ^= result.entities.first().map_or(0, |(_, h)| h.0[0]);
            }
        }
        for job in pending {
            let result = job.await.unwrap();
            mapped += result.entities.len();
            hashed ^= result.entities.first().map_or(0, |(_, h)| h.0[0]);
        }
        (mapped, hashed)
    });
    let secs = started.elapsed().as_secs_f64();
    let rate = mapped as f64 / secs;
    writeln!(
        out,
        "pool:      {total} items -> {mapped} entities in {secs:.2} s on {threads} threads = {rate:.0} entities/s ({:.0} per core, checksum {hashed})",
        rate / threads as f64
    )
    .unwrap();
    writeln!(out, "peak RSS:  {:.0} MiB", peak_rss_mib()).unwrap();
}
