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
}

impl Counters {
    pub fn count_request(&mut self, route: String) {
        *self.requests.entry(route).or_insert(0) += 1;
    }

    pub fn count_upsert(&mut self, blueprint: &str, identifier: &str) {
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
}
