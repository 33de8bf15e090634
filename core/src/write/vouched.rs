//! The entities the raw-item cache vouched for in a run: kept in memory, 8 bytes a key, rather
//! than rewriting a million records a run.

use std::collections::HashSet;

use port_agent_state::EntityKey;

/// A key's 64-bit fingerprint, for the run's set of vouched entities (8 bytes a key where the
/// key itself takes dozens). Stored in the raw-item cache's blocks, so it is blake3, the same in
/// every build. A collision can only make a vanished entity look produced, so it is kept one more
/// run: never a wrong deletion.
pub fn key_fingerprint((blueprint, identifier): &EntityKey) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(blueprint.len() as u64).to_le_bytes());
    hasher.update(blueprint.as_bytes());
    hasher.update(identifier.as_bytes());
    let bytes = hasher.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The fingerprints are hashes already: hashing them again would only cost.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type BuildKeyHasher = std::hash::BuildHasherDefault<KeyHasher>;

/// The entities the raw-item cache vouched for in a run.
#[derive(Debug, Default)]
pub struct Vouched(HashSet<u64, BuildKeyHasher>);

impl Vouched {
    /// Whether the data produced `key` in this run through an item the cache vouched for.
    pub fn contains(&self, key: &EntityKey) -> bool {
        self.0.contains(&key_fingerprint(key))
    }

    pub(super) fn extend(&mut self, fingerprints: &[u64]) {
        self.0.extend(fingerprints);
    }
}
