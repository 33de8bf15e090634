use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{
    Database, DatabaseError, Durability, ReadOnlyDatabase, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, StorageError, TableDefinition,
};

use crate::error::StateError;
use crate::raw_cache::{RAW_BLOCKS, RAW_ITEMS};
use crate::record::{EntityKey, EntityRecord, Identity, Intent, RunRecord, RunStatus, Written};

/// The layout this build writes. Opening a newer one is refused; older ones are migrated on open.
pub const SCHEMA_VERSION: u32 = 4;

/// Runs kept in the history; older ones are dropped as new ones start (a scheduled agent starts
/// thousands a year). Beyond them, as many of the older runs that were not live events stay:
/// live events (a run per batch, many a minute) would otherwise push every resync out of the
/// history within minutes, and with them what `state inspect` says wrote an entity.
pub const RUNS_KEPT: u64 = 1000;

/// The trigger of the runs that apply live events.
pub const LIVE_EVENT_TRIGGER: &str = "live-event";

/// Page cache of the state file.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

pub(crate) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
pub(crate) const ENTITIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entities");
const RUNS: TableDefinition<u64, &str> = TableDefinition::new("runs");
const CHECKPOINTS: TableDefinition<&str, &str> = TableDefinition::new("checkpoints");
/// The positions of `items`, in the order of the items.
pub(crate) fn sorted_positions<T: Ord>(items: &[T]) -> Vec<usize> {
    let mut positions: Vec<usize> = (0..items.len()).collect();
    positions.sort_unstable_by(|&a, &b| items[a].cmp(&items[b]));
    positions
}

/// How much of the file one table takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableUsage {
    pub table: &'static str,
    pub entries: u64,
    /// Keys and values as inserted.
    pub stored_bytes: u64,
    /// Branch pages and other b-tree overhead.
    pub metadata_bytes: u64,
    /// Unused space inside the table's pages.
    pub fragmented_bytes: u64,
}

/// The open state file: the agent's, or a read-only look at it while no agent runs. redb locks
/// the file against any second process.
#[derive(Debug)]
pub struct StateStore {
    db: Handle,
    path: PathBuf,
    identity: Identity,
    /// Whether the file may hold a confirmation of the raw-item cache's blocks, which the next
    /// record write must remove (known false once removed: saves a meta write per commit).
    pub(crate) blocks_confirmed: AtomicBool,
}

/// Whether opening an existing file may migrate an older layout (commands that write) or must
/// refuse it (commands that only read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Migrate {
    Yes,
    No,
}

enum Handle {
    Writer(Database),
    Reader(ReadOnlyDatabase),
    /// Only while the store is dropped.
    Closed,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handle::Writer(_) => "Writer",
            Handle::Reader(_) => "Reader",
            Handle::Closed => "Closed",
        })
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A write about to leave for Port, to record as in doubt first.
#[derive(Debug, Clone)]
pub struct Sending {
    pub key: EntityKey,
    pub intent: Intent,
    /// The kind and resource that produce it (for an entity the state does not know yet).
    pub kind: String,
    pub resource: u32,
}

/// An upsert Port refused: the entity is still produced, with this contribution's hash.
pub type Refused = (EntityKey, [u8; 32]);

impl StateStore {
    /// The record stored under `key`, or the corruption error naming it.
    pub(crate) fn decode(
        &self,
        key: (&str, &str),
        bytes: &[u8],
    ) -> Result<EntityRecord, StateError> {
        EntityRecord::decode(bytes).ok_or_else(|| StateError::Corrupt {
            path: self.path.clone(),
            detail: format!("unreadable record for {}/{}", key.0, key.1),
        })
    }

    /// A redb failure: what says the file's structure is not what this program wrote is
    /// corruption; the rest (I/O, locks) is told as it is.
    pub(crate) fn storage(&self, source: impl Into<redb::Error>) -> StateError {
        let source = source.into();
        match source {
            redb::Error::Corrupted(_)
            | redb::Error::TableTypeMismatch { .. }
            | redb::Error::TableIsMultimap(_)
            | redb::Error::TableIsNotMultimap(_)
            | redb::Error::TypeDefinitionChanged { .. }
            | redb::Error::UnorderedKey
            // Tables that may be missing are looked for before this; the others are always
            // created, so one gone means a damaged file.
            | redb::Error::TableDoesNotExist(_) => StateError::Corrupt {
                path: self.path.clone(),
                detail: source.to_string(),
            },
            // A page pointer past the end of the file: damage, not a failing disk.
            redb::Error::Io(ref e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                StateError::Corrupt {
                    path: self.path.clone(),
                    detail: source.to_string(),
                }
            }
            source => StateError::Storage {
                path: self.path.clone(),
                cause: source,
            },
        }
    }

    /// Opens (or creates) the state file of `identity`. Refuses a file of another integration,
    /// of a newer schema, a locked one or a corrupt one; never replaces a file it cannot read.
    pub fn open(path: &Path, identity: &Identity) -> Result<Self, StateError> {
        shield(path, || Self::open_unshielded(path, identity))
    }

    fn open_unshielded(path: &Path, identity: &Identity) -> Result<Self, StateError> {
        let identity = &identity.without_credentials();
        if !path.exists() {
            Self::create(path, identity)?;
        }
        refuse_empty(path)?;
        let db = Handle::Writer(open_database(path)?);
        let mut store = Self {
            db,
            path: path.to_owned(),
            identity: identity.clone(),
            blocks_confirmed: AtomicBool::new(true),
        };
        match store.read_identity()? {
            Some((found, version)) => {
                if version > SCHEMA_VERSION {
                    return Err(StateError::NewerSchema {
                        path: path.to_owned(),
                        found: version,
                        supported: SCHEMA_VERSION,
                    });
                }
                if version < SCHEMA_VERSION {
                    store.migrate(version)?;
                }
                if found.without_credentials() != *identity {
                    return Err(StateError::OtherIntegration {
                        path: path.to_owned(),
                        found: describe(&found),
                        expected: describe(identity),
                    });
                }
                store.identity = found.without_credentials();
            }
            None => store.initialize()?,
        }
        Ok(store)
    }

    /// Creates the file whole or not at all: it is written and initialized under a temporary
    /// name, then linked into place. A kill while redb lays out a new file would otherwise leave
    /// a half-written file at `path` that every later start refuses as corrupt.
    fn create(path: &Path, identity: &Identity) -> Result<(), StateError> {
        let io_error = |e: std::io::Error| StateError::Storage {
            path: path.to_owned(),
            cause: redb::Error::Io(e),
        };
        let name = path
            .file_name()
            .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
        let creating = path.with_file_name(format!(".{name}.creating-{}", std::process::id()));
        let _ = std::fs::remove_file(&creating);
        let store = Self {
            db: Handle::Writer(open_database(&creating)?),
            path: creating.clone(),
            identity: identity.clone(),
            blocks_confirmed: AtomicBool::new(true),
        };
        store.initialize()?;
        drop(store);
        // A link, unlike a rename, never replaces a file another agent created meanwhile.
        match std::fs::hard_link(&creating, path) {
            Ok(()) => std::fs::remove_file(&creating).map_err(io_error)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&creating).map_err(io_error)?
            }
            // A filesystem without hard links (some network mounts): a rename is still whole.
            Err(_) if !path.exists() => std::fs::rename(&creating, path).map_err(io_error)?,
            Err(e) => {
                let _ = std::fs::remove_file(&creating);
                return Err(io_error(e));
            }
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error)?;
        }
        Ok(())
    }

    /// Opens an existing state file whatever integration it belongs to, for writing (`state
    /// reset`, `compact`, `verify --repair`).
    pub fn open_existing(path: &Path) -> Result<Self, StateError> {
        shield(path, || {
            exists(path)?;
            refuse_empty(path)?;
            Self::adopt(Handle::Writer(open_database(path)?), path, Migrate::Yes)
        })
    }

    /// Opens an existing state file only to read it (`state inspect`, `stats`, `export`). A file
    /// a killed agent left to recover is opened as [`StateStore::open_existing`] does, which
    /// recovers it.
    pub fn open_read_only(path: &Path) -> Result<Self, StateError> {
        shield(path, || {
            exists(path)?;
            refuse_empty(path)?;
            match builder().open_read_only(path) {
                Ok(db) => Self::adopt(Handle::Reader(db), path, Migrate::No),
                Err(DatabaseError::RepairAborted) => {
                    Self::adopt(Handle::Writer(open_database(path)?), path, Migrate::No)
                }
                Err(e) => Err(open_error(path, e, true)),
            }
        })
    }

    /// A store over an opened file whose identity is read from it; an older layout is
    /// migrated when `migrate` allows (a command that writes), refused otherwise.
    fn adopt(db: Handle, path: &Path, migrate: Migrate) -> Result<Self, StateError> {
        let mut store = Self {
            db,
            path: path.to_owned(),
            identity: Identity {
                integration_type: String::new(),
                integration_identifier: String::new(),
                port_base_url: String::new(),
            },
            blocks_confirmed: AtomicBool::new(true),
        };
        match store.read_identity()? {
            Some((identity, SCHEMA_VERSION)) => {
                store.identity = identity.without_credentials();
            }
            Some((identity, version)) if version < SCHEMA_VERSION && migrate == Migrate::Yes => {
                store.migrate(version)?;
                store.identity = identity.without_credentials();
            }
            // Read as this version's layout, it would look corrupt.
            Some((_, version)) if version < SCHEMA_VERSION => {
                return Err(StateError::OlderSchema {
                    path: path.to_owned(),
                    found: version,
                    supported: SCHEMA_VERSION,
                });
            }
            Some((_, version)) => {
                return Err(StateError::NewerSchema {
                    path: path.to_owned(),
                    found: version,
                    supported: SCHEMA_VERSION,
                });
            }
            None => {
                return Err(StateError::Corrupt {
                    path: path.to_owned(),
                    detail: "it has no port-agent metadata".to_owned(),
                });
            }
        }
        Ok(store)
    }

    /// Runs `work` on the store; a panic inside redb (some corruptions reach one) becomes the
    /// "state file is corrupt" error instead of ending the process.
    pub fn shield<T>(
        &self,
        work: impl FnOnce(&Self) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        shield(&self.path, || work(self))
    }

    /// `table` in `txn`, or `None` while nothing has written it (caches and the inbox are made
    /// on first use, and a file being created has no metadata yet).
    pub(crate) fn optional_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        txn: &redb::ReadTransaction,
        table: TableDefinition<K, V>,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, StateError> {
        match txn.open_table(table) {
            Ok(table) => Ok(Some(table)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.storage(e)),
        }
    }

    pub(crate) fn read(&self) -> Result<redb::ReadTransaction, StateError> {
        match &self.db {
            Handle::Writer(db) => db.begin_read(),
            Handle::Reader(db) => db.begin_read(),
            Handle::Closed => return Err(self.closed()),
        }
        .map_err(|e| self.storage(e))
    }

    pub(crate) fn write(&self) -> Result<redb::WriteTransaction, StateError> {
        match &self.db {
            Handle::Writer(db) => db.begin_write().map_err(|e| self.storage(e)),
            Handle::Reader(_) => Err(StateError::ReadOnly {
                path: self.path.clone(),
            }),
            Handle::Closed => Err(self.closed()),
        }
    }

    fn closed(&self) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            detail: "the store is closing".to_owned(),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version the file is at (after any migration on open).
    pub fn schema_version(&self) -> Result<u32, StateError> {
        shield(&self.path, || {
            Ok(self.read_identity()?.map_or(SCHEMA_VERSION, |(_, v)| v))
        })
    }

    fn read_identity(&self) -> Result<Option<(Identity, u32)>, StateError> {
        let txn = self.read()?;
        let Some(table) = self.optional_table(&txn, META)? else {
            return Ok(None);
        };
        let get = |key: &str| -> Result<Option<String>, StateError> {
            Ok(table
                .get(key)
                .map_err(|e| self.storage(e))?
                .map(|v| v.value().to_owned()))
        };
        let Some(version) = get("schema_version")? else {
            return Ok(None);
        };
        let version = version.parse::<u32>().map_err(|_| StateError::Corrupt {
            path: self.path.clone(),
            detail: format!("schema version {version:?}"),
        })?;
        let identity = Identity {
            integration_type: get("integration_type")?.unwrap_or_default(),
            integration_identifier: get("integration_identifier")?.unwrap_or_default(),
            port_base_url: get("port_base_url")?.unwrap_or_default(),
        };
        Ok(Some((identity, version)))
    }

    /// Brings a file of schema `from` up to [`SCHEMA_VERSION`], every step in one transaction:
    /// a crash mid-way leaves the old file as it was.
    fn migrate(&self, from: u32) -> Result<(), StateError> {
        let txn = self.write()?;
        for migration in crate::migrations::MIGRATIONS
            .iter()
            .filter(|m| m.from >= from)
        {
            (migration.apply)(&txn).map_err(|e| self.storage(e))?;
        }
        {
            let mut meta = txn.open_table(META).map_err(|e| self.storage(e))?;
            meta.insert("schema_version", SCHEMA_VERSION.to_string().as_str())
                .map_err(|e| self.storage(e))?;
        }
        txn.commit().map_err(|e| self.storage(e))
    }

    fn initialize(&self) -> Result<(), StateError> {
        let txn = self.write()?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.storage(e))?;
            let version = SCHEMA_VERSION.to_string();
            let created = now_ms().to_string();
            for (key, value) in [
                ("schema_version", version.as_str()),
                ("integration_type", self.identity.integration_type.as_str()),
                (
                    "integration_identifier",
                    self.identity.integration_identifier.as_str(),
                ),
                ("port_base_url", self.identity.port_base_url.as_str()),
                ("created_at_ms", created.as_str()),
            ] {
                meta.insert(key, value).map_err(|e| self.storage(e))?;
            }
            txn.open_table(ENTITIES).map_err(|e| self.storage(e))?;
            txn.open_table(RUNS).map_err(|e| self.storage(e))?;
            txn.open_table(CHECKPOINTS).map_err(|e| self.storage(e))?;
        }
        txn.commit().map_err(|e| self.storage(e))
    }

    /// Starts a run. Runs an earlier agent left `running` (it was killed) are closed as aborted.
    pub fn start_run(&self, trigger: &str) -> Result<RunRecord, StateError> {
        shield(&self.path, || {
            let txn = self.write()?;
            let run = {
                let mut runs = txn.open_table(RUNS).map_err(|e| self.storage(e))?;
                let mut interrupted = Vec::new();
                // Each start closes the runs before it, so only the newest ones can still be open.
                for entry in runs.iter().map_err(|e| self.storage(e))?.rev() {
                    let (_, json) = entry.map_err(|e| self.storage(e))?;
                    let Ok(mut run) = serde_json::from_str::<RunRecord>(json.value()) else {
                        continue;
                    };
                    if run.status != RunStatus::Running {
                        break;
                    }
                    run.status = RunStatus::Aborted;
                    run.notes
                        .push("interrupted: the agent stopped before the run finished".to_owned());
                    interrupted.push(run);
                }
                for run in &interrupted {
                    self.put_run(&mut runs, run)?;
                }
                let id = runs
                    .last()
                    .map_err(|e| self.storage(e))?
                    .map(|(k, _)| k.value() + 1)
                    .unwrap_or(1);
                let run = RunRecord {
                    id,
                    trigger: trigger.to_owned(),
                    started_at_ms: now_ms(),
                    finished_at_ms: None,
                    status: RunStatus::Running,
                    kinds: Default::default(),
                    totals: Default::default(),
                    notes: Vec::new(),
                };
                self.put_run(&mut runs, &run)?;
                if id > RUNS_KEPT {
                    self.prune_runs(&mut runs, id - RUNS_KEPT)?;
                }
                run
            };
            txn.commit().map_err(|e| self.storage(e))?;
            Ok(run)
        })
    }

    /// Records the run as it ended.
    pub fn finish_run(&self, run: &RunRecord) -> Result<(), StateError> {
        shield(&self.path, || {
            let mut run = run.clone();
            run.finished_at_ms.get_or_insert_with(now_ms);
            let txn = self.write()?;
            {
                let mut runs = txn.open_table(RUNS).map_err(|e| self.storage(e))?;
                self.put_run(&mut runs, &run)?;
            }
            txn.commit().map_err(|e| self.storage(e))
        })
    }

    /// Drops the runs up to `last_old` (those past the newest [`RUNS_KEPT`]) except the newest
    /// [`RUNS_KEPT`] of them that were not live events.
    fn prune_runs(
        &self,
        runs: &mut redb::Table<u64, &str>,
        last_old: u64,
    ) -> Result<(), StateError> {
        // Runs are compact JSON (`put_run`): the trigger is found without parsing each run.
        let live = format!("\"trigger\":\"{LIVE_EVENT_TRIGGER}\"");
        let mut kept = 0;
        let mut dropped = Vec::new();
        for entry in runs.range(..=last_old).map_err(|e| self.storage(e))?.rev() {
            let (id, json) = entry.map_err(|e| self.storage(e))?;
            if kept < RUNS_KEPT && !json.value().contains(&live) {
                kept += 1;
            } else {
                dropped.push(id.value());
            }
        }
        for id in dropped {
            runs.remove(id).map_err(|e| self.storage(e))?;
        }
        Ok(())
    }

    /// Writes `run` into the runs table as JSON.
    fn put_run(
        &self,
        runs: &mut redb::Table<u64, &str>,
        run: &RunRecord,
    ) -> Result<(), StateError> {
        let json = serde_json::to_string(run).expect("runs are plain JSON");
        runs.insert(run.id, json.as_str())
            .map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// The most recent runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        shield(&self.path, || {
            let txn = self.read()?;
            let runs = txn.open_table(RUNS).map_err(|e| self.storage(e))?;
            let mut out = Vec::new();
            for entry in runs.iter().map_err(|e| self.storage(e))?.rev().take(limit) {
                let (_, json) = entry.map_err(|e| self.storage(e))?;
                if let Ok(run) = serde_json::from_str(json.value()) {
                    out.push(run);
                }
            }
            Ok(out)
        })
    }

    /// The records of `keys`, in order.
    pub fn get_many(&self, keys: &[EntityKey]) -> Result<Vec<Option<EntityRecord>>, StateError> {
        shield(&self.path, || {
            let txn = self.read()?;
            let table = txn.open_table(ENTITIES).map_err(|e| self.storage(e))?;
            // In key order: neighbours share the b-tree's branch pages, which stay cached.
            let mut found = vec![None; keys.len()];
            for at in sorted_positions(keys) {
                let (bp, id) = &keys[at];
                let key = (bp.as_str(), id.as_str());
                if let Some(v) = table.get(key).map_err(|e| self.storage(e))? {
                    found[at] = Some(self.decode(key, v.value())?);
                }
            }
            Ok(found)
        })
    }

    /// Marks unchanged entities (with the hash each contribution had) as produced by `run`.
    /// Not fsynced: see the crate docs.
    pub fn mark_seen(&self, run: u64, seen: &[(EntityKey, [u8; 32])]) -> Result<(), StateError> {
        shield(&self.path, || {
            self.update_records(seen, Durability::None, |_, record, hash| {
                if let Some(record) = record {
                    record.seen(run, hash);
                }
            })
        })
    }

    /// Records, durably and before they are sent, the writes `run` is about to make: until
    /// Port's answer is recorded, each entity is in doubt (never taken as unchanged, and owned:
    /// deleted once no item produces it). A crash then costs a resend, never a lie.
    pub fn mark_sending(&self, run: u64, sending: &[Sending]) -> Result<(), StateError> {
        shield(&self.path, || {
            let entries: Vec<(EntityKey, &Sending)> =
                sending.iter().map(|s| (s.key.clone(), s)).collect();
            self.update_records(&entries, Durability::Immediate, |_, record, s| {
                match (record, s.intent) {
                    (Some(record), intent) => record.send(run, intent),
                    (record @ None, Intent::Upsert(hash)) => {
                        *record = Some(EntityRecord::sending_new(run, hash, &s.kind, s.resource));
                    }
                    // Nothing to delete that the state knows of.
                    (None, Intent::Delete) => {}
                }
            })
        })
    }

    /// Records Port's answers to `run`'s upserts: `written` were acknowledged; `refused` were
    /// refused (still produced, so not deletion candidates). Not fsynced: losing this commit
    /// in a crash leaves the entities in doubt (sent again), which is safe.
    pub fn record_answers(
        &self,
        run: u64,
        written: &[Written],
        refused: &[Refused],
    ) -> Result<(), StateError> {
        shield(&self.path, || {
            let now = now_ms();
            let written: Vec<(EntityKey, &Written)> =
                written.iter().map(|w| (w.key.clone(), w)).collect();
            self.update_records(&written, Durability::None, |_, record, w| {
                Self::acknowledge(record, run, w, now)
            })?;
            self.update_records(refused, Durability::None, |_, slot, hash| {
                let Some(record) = slot else { return };
                let lifted = record.refused(run);
                if lifted && record.written_run == 0 {
                    // Port never had it: nothing to own.
                    *slot = None;
                } else {
                    record.seen(run, hash);
                }
            })
        })
    }

    /// Records Port's answers to `run`'s deletions: `gone` are no longer in Port (deleted now,
    /// or Port no longer had them); `refused` were refused. Not fsynced, as
    /// [`StateStore::record_answers`].
    pub fn record_deletions(
        &self,
        run: u64,
        gone: &[EntityKey],
        refused: &[EntityKey],
    ) -> Result<(), StateError> {
        shield(&self.path, || {
            let gone: Vec<(EntityKey, ())> = gone.iter().map(|k| (k.clone(), ())).collect();
            self.update_records(&gone, Durability::None, |_, slot, ()| *slot = None)?;
            let refused: Vec<(EntityKey, ())> = refused.iter().map(|k| (k.clone(), ())).collect();
            self.update_records(&refused, Durability::None, |_, slot, ()| {
                if let Some(record) = slot {
                    record.refused(run);
                }
            })
        })
    }

    fn acknowledge(slot: &mut Option<EntityRecord>, run: u64, w: &Written, now: i64) {
        match slot {
            Some(record) => {
                if record.position_in(run) == 0 {
                    // The first contribution names the entity's kind and resource.
                    record.kind.clone_from(&w.kind);
                    record.resource = w.resource;
                }
                record.written(run, w.hash, now);
            }
            None => {
                *slot = Some(EntityRecord::first_written(
                    run, w.hash, &w.kind, w.resource, now,
                ))
            }
        }
    }

    /// Reads each entry's record (`None`: none yet), lets `change` edit it (setting `None`
    /// removes it) and commits them all in one transaction, which ends the raw-item cache's
    /// confirmation of its blocks. Every record write goes through here (the blocks depend on it).
    fn update_records<T>(
        &self,
        entries: &[(EntityKey, T)],
        durability: Durability,
        mut change: impl FnMut(&EntityKey, &mut Option<EntityRecord>, &T),
    ) -> Result<(), StateError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut txn = self.write()?;
        txn.set_durability(durability)
            .map_err(|e| self.storage(e))?;
        {
            let mut table = txn.open_table(ENTITIES).map_err(|e| self.storage(e))?;
            for (key, value) in entries {
                let at = (key.0.as_str(), key.1.as_str());
                let mut record = match table.get(at).map_err(|e| self.storage(e))? {
                    Some(v) => Some(self.decode(at, v.value())?),
                    None => None,
                };
                let existed = record.is_some();
                change(key, &mut record, value);
                match record {
                    Some(record) => {
                        table
                            .insert(at, record.encode().as_slice())
                            .map_err(|e| self.storage(e))?;
                    }
                    None if existed => {
                        table.remove(at).map_err(|e| self.storage(e))?;
                    }
                    None => {}
                }
            }
        }
        let unconfirming = self.blocks_confirmed.load(Ordering::Acquire);
        if unconfirming {
            crate::raw_cache::unconfirm_blocks(&txn).map_err(|e| self.storage(e))?;
        }
        txn.commit().map_err(|e| self.storage(e))?;
        if unconfirming {
            self.blocks_confirmed.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Records entities Port acknowledged in `run`. Durable before it returns (for records
    /// made without sending anything: `state rebuild`, `state verify --repair`).
    pub fn record_written(&self, run: u64, written: &[Written]) -> Result<(), StateError> {
        shield(&self.path, || {
            let now = now_ms();
            let written: Vec<(EntityKey, &Written)> =
                written.iter().map(|w| (w.key.clone(), w)).collect();
            self.update_records(&written, Durability::Immediate, |_, record, w| {
                Self::acknowledge(record, run, w, now)
            })
        })
    }

    /// How many records `in_scope` accepts, and those of them `run` did not see (neither
    /// marked seen nor `seen_elsewhere`); reads the records once and keeps only the unseen ones.
    pub fn scoped_unseen(
        &self,
        run: u64,
        in_scope: impl Fn(&EntityRecord) -> bool,
        seen_elsewhere: impl Fn(&EntityKey) -> bool,
    ) -> Result<(usize, Vec<(EntityKey, EntityRecord)>), StateError> {
        shield(&self.path, || {
            let mut total = 0;
            let unseen = self.entities(|key, record| {
                let counted = in_scope(record);
                total += usize::from(counted);
                counted && record.last_seen_run != run && !seen_elsewhere(key)
            })?;
            Ok((total, unseen))
        })
    }

    /// Every record that `keep` accepts.
    pub fn entities(
        &self,
        mut keep: impl FnMut(&EntityKey, &EntityRecord) -> bool,
    ) -> Result<Vec<(EntityKey, EntityRecord)>, StateError> {
        shield(&self.path, || {
            let mut out = Vec::new();
            self.each_entity(|key, record| {
                if keep(&key, &record) {
                    out.push((key, record));
                }
                Ok::<(), std::convert::Infallible>(())
            })?
            .unwrap_or_else(|never| match never {});
            Ok(out)
        })
    }

    /// Hands each record to `visit` in key order without holding them all (a million records
    /// would take hundreds of MB); the first error `visit` returns stops the walk and is given
    /// back inside the `Ok`.
    pub fn each_entity<E>(
        &self,
        mut visit: impl FnMut(EntityKey, EntityRecord) -> Result<(), E>,
    ) -> Result<Result<(), E>, StateError> {
        shield(&self.path, || {
            let txn = self.read()?;
            let table = txn.open_table(ENTITIES).map_err(|e| self.storage(e))?;
            for entry in table.iter().map_err(|e| self.storage(e))? {
                let (key, value) = entry.map_err(|e| self.storage(e))?;
                let (bp, id) = key.value();
                let Some(record) = EntityRecord::decode(value.value()) else {
                    return Err(StateError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("unreadable record for {bp}/{id}"),
                    });
                };
                if let Err(stop) = visit((bp.to_owned(), id.to_owned()), record) {
                    return Ok(Err(stop));
                }
            }
            Ok(Ok(()))
        })
    }

    pub fn entity_count(&self) -> Result<u64, StateError> {
        shield(&self.path, || {
            let txn = self.read()?;
            let table = txn.open_table(ENTITIES).map_err(|e| self.storage(e))?;
            table.len().map_err(|e| self.storage(e))
        })
    }

    /// Forgets records (`state verify --repair`). Durable before it returns.
    pub fn remove(&self, keys: &[EntityKey]) -> Result<(), StateError> {
        shield(&self.path, || {
            let keys: Vec<(EntityKey, ())> = keys.iter().map(|k| (k.clone(), ())).collect();
            self.update_records(&keys, Durability::Immediate, |_, slot, ()| *slot = None)
        })
    }

    /// Rewrites the file without its free pages (redb keeps freed pages for reuse and rarely
    /// shrinks the file). Safe against a crash: redb compacts through ordinary commits.
    /// Returns the file's size before and after.
    pub fn compact(&mut self) -> Result<(u64, u64), StateError> {
        let path = self.path.clone();
        shield(&path, || {
            let size = |path: &Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let before = size(&self.path);
            match &mut self.db {
                Handle::Writer(db) => db.compact().map_err(|e| self.storage(e))?,
                Handle::Reader(_) => {
                    return Err(StateError::ReadOnly {
                        path: self.path.clone(),
                    });
                }
                Handle::Closed => return Err(self.closed()),
            };
            Ok((before, size(&self.path)))
        })
    }

    /// Where the file's bytes go, table by table (`state stats`).
    pub fn usage(&self) -> Result<Vec<TableUsage>, StateError> {
        shield(&self.path, || {
            fn usage_of(
                table: &'static str,
                opened: Result<impl ReadableTableMetadata, redb::TableError>,
            ) -> Result<Option<TableUsage>, redb::Error> {
                let opened = match opened {
                    Ok(opened) => opened,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let stats = opened.stats()?;
                Ok(Some(TableUsage {
                    table,
                    entries: opened.len()?,
                    stored_bytes: stats.stored_bytes(),
                    metadata_bytes: stats.metadata_bytes(),
                    fragmented_bytes: stats.fragmented_bytes(),
                }))
            }
            let txn = self.read()?;
            let usage = [
                usage_of("entities", txn.open_table(ENTITIES)),
                usage_of("raw_items", txn.open_table(RAW_ITEMS)),
                usage_of("raw_blocks", txn.open_table(RAW_BLOCKS)),
                usage_of("inbox", txn.open_table(crate::inbox::INBOX)),
                usage_of("dead_letters", txn.open_table(crate::inbox::DEAD_LETTERS)),
                usage_of(
                    "http_validators",
                    txn.open_table(crate::validators::VALIDATORS),
                ),
                usage_of("runs", txn.open_table(RUNS)),
                usage_of("checkpoints", txn.open_table(CHECKPOINTS)),
                usage_of("meta", txn.open_table(META)),
            ];
            let mut out = Vec::new();
            for table in usage {
                if let Some(table) = table.map_err(|e| self.storage(e))? {
                    out.push(table);
                }
            }
            Ok(out)
        })
    }

    /// A per-kind checkpoint (free-form JSON text), e.g. how far the kind's last run got.
    pub fn set_checkpoint(&self, kind: &str, value: &str) -> Result<(), StateError> {
        shield(&self.path, || {
            let txn = self.write()?;
            {
                let mut table = txn.open_table(CHECKPOINTS).map_err(|e| self.storage(e))?;
                table.insert(kind, value).map_err(|e| self.storage(e))?;
            }
            txn.commit().map_err(|e| self.storage(e))
        })
    }

    pub fn checkpoints(&self) -> Result<Vec<(String, String)>, StateError> {
        shield(&self.path, || {
            let txn = self.read()?;
            let table = txn.open_table(CHECKPOINTS).map_err(|e| self.storage(e))?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(|e| self.storage(e))? {
                let (k, v) = entry.map_err(|e| self.storage(e))?;
                out.push((k.value().to_owned(), v.value().to_owned()));
            }
            Ok(out)
        })
    }
}

fn describe(identity: &Identity) -> String {
    let identity = identity.without_credentials();
    format!(
        "{}/{} at {}",
        identity.integration_type, identity.integration_identifier, identity.port_base_url
    )
}

/// How every handle on a state file is opened. redb's exclusive-writer mode: its shared-writer
/// modes refuse commits without fsync, which the write path relies on; a running agent answers
/// `state inspect` itself instead.
fn builder() -> redb::Builder {
    let mut builder = Database::builder();
    // redb caches up to 1 GiB by default; the agent's working set is far smaller, and its
    // memory budget is 150 MB at a million entities.
    builder.set_cache_size(CACHE_BYTES);
    builder
}

fn exists(path: &Path) -> Result<(), StateError> {
    if path.exists() {
        return Ok(());
    }
    Err(StateError::Storage {
        path: path.to_owned(),
        cause: redb::Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        )),
    })
}

/// An empty file at the state's path is not a new state: something truncated it, and taking it
/// as new would re-send everything and leave the old entities undeletable.
fn refuse_empty(path: &Path) -> Result<(), StateError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() == 0 => Err(StateError::Corrupt {
            path: path.to_owned(),
            detail: "the file is empty".to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Opens or creates the redb file, telling lock, corruption and plain I/O failures apart.
fn open_database(path: &Path) -> Result<Database, StateError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| StateError::Storage {
            path: path.to_owned(),
            cause: redb::Error::Io(e),
        })?;
    }
    let existed_with_data = std::fs::metadata(path)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    builder()
        .create(path)
        .map_err(|error| open_error(path, error, existed_with_data))
}

fn open_error(path: &Path, error: DatabaseError, existed_with_data: bool) -> StateError {
    match error {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StateError::Locked {
                path: path.to_owned(),
            }
        }
        DatabaseError::Storage(StorageError::Corrupted(detail)) => StateError::Corrupt {
            path: path.to_owned(),
            detail,
        },
        DatabaseError::Storage(StorageError::Io(io))
            if existed_with_data
                && !matches!(
                    io.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound
                ) =>
        {
            StateError::Corrupt {
                path: path.to_owned(),
                detail: io.to_string(),
            }
        }
        DatabaseError::UpgradeRequired(version) => StateError::Corrupt {
            path: path.to_owned(),
            detail: format!("redb file format {version} needs an upgrade"),
        },
        other => StateError::Storage {
            path: path.to_owned(),
            cause: other.into(),
        },
    }
}

impl Drop for StateStore {
    /// Closing commits redb's allocator state, which on a damaged file can panic: the panic is
    /// caught here, as inside every other call, so dropping a store never ends the process.
    fn drop(&mut self) {
        let handle = std::mem::replace(&mut self.db, Handle::Closed);
        let _ = shield(&self.path, || {
            drop(handle);
            Ok(())
        });
    }
}

thread_local! {
    /// Depth of shielded calls on this thread: the panic hook stays silent inside them.
    static SHIELDED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `work`; a panic inside it (redb meeting a corrupt page) becomes [`StateError::Corrupt`].
pub(crate) fn shield<T>(
    path: &Path,
    work: impl FnOnce() -> Result<T, StateError>,
) -> Result<T, StateError> {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if SHIELDED.with(std::cell::Cell::get) == 0 {
                previous(info);
            }
        }));
    });
    SHIELDED.with(|depth| depth.set(depth.get() + 1));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    SHIELDED.with(|depth| depth.set(depth.get() - 1));
    outcome.unwrap_or_else(|payload| {
        let detail = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "the storage engine failed".to_owned());
        Err(StateError::Corrupt {
            path: path.to_owned(),
            detail: format!("reading it failed ({detail})"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(identifier: &str) -> Identity {
        Identity {
            integration_type: "json".into(),
            integration_identifier: identifier.into(),
            port_base_url: "http://127.0.0.1:5555".into(),
        }
    }

    fn written(id: &str, hash: u8) -> Written {
        Written {
            key: ("service".into(), id.into()),
            hash: [hash; 32],
            kind: "service".into(),
            resource: 0,
        }
    }

    #[test]
    fn records_survive_reopening_and_runs_are_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = StateStore::open(&path, &identity("svc")).unwrap();
            let run = store.start_run("test").unwrap();
            assert_eq!(run.id, 1);
            store
                .record_written(run.id, &[written("a", 1), written("b", 2)])
                .unwrap();
            store
                .finish_run(&RunRecord {
                    status: RunStatus::Completed,
                    ..run
                })
                .unwrap();
        }
        let store = StateStore::open(&path, &identity("svc")).unwrap();
        let keys = [
            ("service".to_owned(), "a".to_owned()),
            ("service".to_owned(), "zzz".to_owned()),
        ];
        let got = store.get_many(&keys).unwrap();
        assert_eq!(got[0].as_ref().unwrap().hash, [1; 32]);
        assert!(got[1].is_none());
        let run = store.start_run("test").unwrap();
        assert_eq!(run.id, 2);
        store
            .mark_seen(run.id, &[(keys[0].clone(), [1; 32])])
            .unwrap();
        let unseen: Vec<String> = store
            .scoped_unseen(run.id, |_| true, |_| false)
            .unwrap()
            .1
            .into_iter()
            .map(|(k, _)| k.1)
            .collect();
        assert_eq!(unseen, ["b"]);
        store.remove(&[("service".into(), "b".into())]).unwrap();
        assert_eq!(store.entity_count().unwrap(), 1);
    }

    #[test]
    fn only_the_newest_live_event_runs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = StateStore::open(&path, &identity("svc")).unwrap();
        let mut last = 0;
        for _ in 0..RUNS_KEPT + 5 {
            last = store.start_run(LIVE_EVENT_TRIGGER).unwrap().id;
        }
        let runs = store.runs(usize::MAX).unwrap();
        assert_eq!(runs.len() as u64, RUNS_KEPT);
        assert_eq!(runs[0].id, last);
        assert_eq!(runs.last().unwrap().id, last - RUNS_KEPT + 1);
    }

    #[test]
    fn live_event_runs_do_not_push_resyncs_out_of_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state.redb"), &identity("svc")).unwrap();
        let mut resyncs = Vec::new();
        for round in 0..3 {
            resyncs.push(store.start_run("schedule").unwrap().id);
            for _ in 0..RUNS_KEPT + round {
                store.start_run(LIVE_EVENT_TRIGGER).unwrap();
            }
        }
        let runs = store.runs(usize::MAX).unwrap();
        let kept: Vec<u64> = runs
            .iter()
            .filter(|r| r.trigger == "schedule")
            .map(|r| r.id)
            .collect();
        assert_eq!(kept, resyncs.iter().rev().copied().collect::<Vec<_>>());
        let live = runs
            .iter()
            .filter(|r| r.trigger == LIVE_EVENT_TRIGGER)
            .count();
        assert_eq!(live as u64, RUNS_KEPT, "the newest runs, all live events");
        assert_eq!(runs.len() as u64, RUNS_KEPT + 3);
        // The older non-live runs are bounded too.
        for _ in 0..2 * RUNS_KEPT {
            store.start_run("schedule").unwrap();
        }
        let runs = store.runs(usize::MAX).unwrap();
        assert_eq!(runs.len() as u64, 2 * RUNS_KEPT, "{}", runs.len());
    }

    #[test]
    fn a_killed_run_is_closed_as_aborted_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = StateStore::open(&path, &identity("svc")).unwrap();
        let first = store.start_run("test").unwrap();
        let second = store.start_run("test").unwrap();
        let runs = store.runs(10).unwrap();
        assert_eq!(runs[0].id, second.id);
        assert_eq!(runs[1].id, first.id);
        assert_eq!(runs[1].status, RunStatus::Aborted);
        assert!(runs[1].notes[0].contains("interrupted"));
    }

    fn set_schema_version(path: &Path, version: &str) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", version)
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused() {
        // Older schemas are migrated: tests/fixtures.rs opens a file of each earlier version.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = StateStore::open(&path, &identity("svc")).unwrap();
            let run = store.start_run("test").unwrap();
            store.record_written(run.id, &[written("a", 1)]).unwrap();
        }
        set_schema_version(&path, "99");
        let error = StateStore::open(&path, &identity("svc")).unwrap_err();
        assert!(
            matches!(error, StateError::NewerSchema { found: 99, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("upgrade port-agent"), "{error}");
    }

    #[test]
    fn another_integrations_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        drop(StateStore::open(&path, &identity("svc")).unwrap());
        let error = StateStore::open(&path, &identity("other")).unwrap_err();
        assert!(
            matches!(error, StateError::OtherIntegration { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("json/svc"), "{error}");
    }

    #[test]
    fn a_second_opener_gets_a_lock_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _first = StateStore::open(&path, &identity("svc")).unwrap();
        let error = StateStore::open(&path, &identity("svc")).unwrap_err();
        assert!(matches!(error, StateError::Locked { .. }), "{error}");
    }

    #[test]
    fn garbage_and_truncated_files_are_reported_corrupt_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.redb");
        std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
        let error = StateStore::open(&garbage, &identity("svc")).unwrap_err();
        assert!(matches!(error, StateError::Corrupt { .. }), "{error}");
        assert_eq!(
            std::fs::read(&garbage).unwrap(),
            vec![0x42u8; 8192],
            "the file must not be touched"
        );

        let good = dir.path().join("state.redb");
        {
            let store = StateStore::open(&good, &identity("svc")).unwrap();
            let run = store.start_run("test").unwrap();
            store
                .record_written(
                    run.id,
                    &(0..500)
                        .map(|i| written(&format!("e{i}"), 3))
                        .collect::<Vec<_>>(),
                )
                .unwrap();
        }
        let bytes = std::fs::read(&good).unwrap();
        let truncated = dir.path().join("truncated.redb");
        std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
        let error = StateStore::open(&truncated, &identity("svc")).unwrap_err();
        assert!(matches!(error, StateError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("left untouched"), "{error}");
    }
}
