//! What the emulator saw, for tests and benchmarks (`GET /_emulator/stats`).

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Counters {
    /// `"METHOD /route/{pattern}"` → requests received.
    pub requests: BTreeMap<String, u64>,
    pub entities_upserted: u64,
    pub entities_deleted: u64,
    /// `"blueprint/identifier"` → accepted writes of that entity.
    pub upserts_per_entity: BTreeMap<String, u64>,
    /// Requests answered 429 by the quota (`--rate-limit`).
    pub over_quota: u64,
    /// When the first and the last entity write were served.
    pub writes_between: Option<(std::time::Instant, std::time::Instant)>,
}

impl Counters {
    pub fn count_request(&mut self, route: String) {
        *self.requests.entry(route).or_insert(0) += 1;
    }

    pub fn count_upsert(&mut self, blueprint: &str, identifier: &str) {
        let now = std::time::Instant::now();
        let (first, _) = self.writes_between.unwrap_or((now, now));
        self.writes_between = Some((first, now));
        self.entities_upserted += 1;
        *self
            .upserts_per_entity
            .entry(format!("{blueprint}/{identifier}"))
            .or_insert(0) += 1;
    }
}

/// The field names are a contract: tests and benchmarks outside the project read them.
#[derive(Debug, Serialize)]
pub struct StatsReport<'a> {
    pub requests: &'a BTreeMap<String, u64>,
    pub entities_upserted: u64,
    pub entities_deleted: u64,
    pub entities_total: u64,
    pub by_blueprint: BTreeMap<String, u64>,
    pub upserts_per_entity: &'a BTreeMap<String, u64>,
    pub over_quota: u64,
    /// Milliseconds from the first entity write to the last.
    pub writes_span_ms: u64,
}
