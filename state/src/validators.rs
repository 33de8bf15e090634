//! HTTP validators: a vendor answer's `ETag` (and the parts of it a fetch needs again) kept per
//! request, so the next resync asks `If-None-Match` and a `304 Not Modified` reuses the body
//! (GitHub does not count those against its rate limit). Only integrations that opt in use it.
//!
//! A cache: written without fsync, emptied whole when it passes [`MAX_VALIDATORS`] entries
//! (cursor-paged APIs make a new key per cursor), never needed for correctness.

use redb::{Durability, ReadableTableMetadata, TableDefinition};

use crate::error::StateError;
use crate::store::{StateStore, shield};

pub(crate) const VALIDATORS: TableDefinition<&str, &[u8]> = TableDefinition::new("http_validators");

/// Entries kept before the table is emptied.
pub const MAX_VALIDATORS: u64 = 100_000;

/// Bodies larger than this are not kept (the request is made unconditionally).
pub const MAX_VALIDATED_BODY: usize = 8 * 1024 * 1024;

/// What a request's last full answer was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub etag: String,
    /// Its `Link` header, for pagination.
    pub link: Option<String>,
    pub body: Vec<u8>,
}

fn encode(validated: &Validated) -> Vec<u8> {
    let link = validated.link.as_deref().unwrap_or_default();
    let mut out = Vec::with_capacity(8 + validated.etag.len() + link.len() + validated.body.len());
    for part in [validated.etag.as_bytes(), link.as_bytes()] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    out.push(u8::from(validated.link.is_some()));
    out.extend_from_slice(&validated.body);
    out
}

fn decode(bytes: &[u8]) -> Option<Validated> {
    let mut rest = bytes;
    let mut part = || -> Option<String> {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let text = String::from_utf8(rest.get(4..4 + len)?.to_vec()).ok()?;
        rest = &rest[4 + len..];
        Some(text)
    };
    let etag = part()?;
    let link = part()?;
    let (&has_link, body) = rest.split_first()?;
    Some(Validated {
        etag,
        link: (has_link == 1).then_some(link),
        body: body.to_vec(),
    })
}

impl StateStore {
    /// The validated answer kept for request `key`, if any (a damaged entry is a miss).
    pub fn validated(&self, key: &str) -> Result<Option<Validated>, StateError> {
        shield(self.path(), || {
            let txn = self.read()?;
            let Some(table) = self.optional_table(&txn, VALIDATORS)? else {
                return Ok(None);
            };
            let found = table.get(key).map_err(|e| self.storage(e))?;
            Ok(found.and_then(|v| decode(v.value())))
        })
    }

    /// Keeps `validated` for request `key` (bodies over [`MAX_VALIDATED_BODY`] are not kept).
    pub fn keep_validated(&self, key: &str, validated: &Validated) -> Result<(), StateError> {
        if validated.body.len() > MAX_VALIDATED_BODY {
            return Ok(());
        }
        shield(self.path(), || {
            let mut txn = self.write()?;
            txn.set_durability(Durability::None)
                .map_err(|e| self.storage(e))?;
            {
                let mut table = txn.open_table(VALIDATORS).map_err(|e| self.storage(e))?;
                if table.len().map_err(|e| self.storage(e))? >= MAX_VALIDATORS {
                    table.retain(|_, _| false).map_err(|e| self.storage(e))?;
                }
                table
                    .insert(key, encode(validated).as_slice())
                    .map_err(|e| self.storage(e))?;
            }
            txn.commit().map_err(|e| self.storage(e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn validated_answers_survive_reopening_and_damage_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let identity = Identity {
            integration_type: "custom".into(),
            integration_identifier: "x".into(),
            port_base_url: "http://port".into(),
        };
        let answer = Validated {
            etag: "W/\"abc\"".into(),
            link: Some("<https://x/p2>; rel=\"next\"".into()),
            body: b"[1,2]".to_vec(),
        };
        {
            let store = StateStore::open(&path, &identity).unwrap();
            assert_eq!(store.validated("GET https://x/p1").unwrap(), None);
            store.keep_validated("GET https://x/p1", &answer).unwrap();
            store
                .keep_validated(
                    "GET https://x/p2",
                    &Validated {
                        link: None,
                        ..answer.clone()
                    },
                )
                .unwrap();
        }
        let store = StateStore::open(&path, &identity).unwrap();
        assert_eq!(
            store.validated("GET https://x/p1").unwrap(),
            Some(answer.clone())
        );
        assert_eq!(
            store.validated("GET https://x/p2").unwrap().unwrap().link,
            None
        );
        assert_eq!(decode(&encode(&answer)[..5]), None);
    }
}
