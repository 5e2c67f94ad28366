//! The SQLite store: WAL journal, one transaction per change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use paracloud_manifest::Manifest;
use paracloud_reconcile::{InstanceKey, InstanceState, Millis};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::records::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database holds a value it cannot read: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no application named {0}")]
    NoApp(String),
    #[error("application {app} has no service named {service} (it has: {known})")]
    NoService {
        app: String,
        service: String,
        known: String,
    },
    #[error("every service address of {app} is taken ({max} services at most)")]
    AddressesExhausted { app: String, max: u32 },
}

pub type Result<T> = std::result::Result<T, Error>;

pub struct Store {
    conn: Mutex<Connection>,
    /// Space held for the database on its filesystem (see [`Store::keep_reserve`]).
    reserve: std::path::PathBuf,
}

/// What the reserve holds: room for many small transactions (a scale-down, a `down`, the
/// records of instances ending) once the filesystem is full.
const RESERVE_BYTES: usize = 16 << 20;

/// How one try of a transaction failed: the store's own error (which a full disk may cause)
/// or the decision's.
enum Refused<E> {
    Store(Error),
    Caller(E),
}

impl<E> From<Error> for Refused<E> {
    fn from(e: Error) -> Self {
        Self::Store(e)
    }
}

impl<E: From<Error>> Refused<E> {
    fn into_caller(self) -> E {
        match self {
            Self::Store(e) => e.into(),
            Self::Caller(e) => e,
        }
    }
}

fn is_disk_full(error: &Error) -> bool {
    matches!(error, Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DiskFull)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    manifest TEXT NOT NULL,
    source TEXT NOT NULL,
    origin TEXT NOT NULL,
    subnet_index INTEGER NOT NULL UNIQUE,
    removing INTEGER,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS services (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    replicas INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    spec TEXT NOT NULL,
    PRIMARY KEY (app, name)
);
CREATE TABLE IF NOT EXISTS instances (
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    idx INTEGER NOT NULL,
    record TEXT NOT NULL,
    slot INTEGER NOT NULL,
    PRIMARY KEY (app, service, idx),
    UNIQUE (app, slot)
);
CREATE TABLE IF NOT EXISTS networks (app TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS facts (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS capsule_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    running INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    batch INTEGER NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (batch, idx)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    app TEXT NOT NULL,
    subject TEXT NOT NULL,
    message TEXT NOT NULL
);
";

/// Whether instances of `old_spec` (a stored service spec) run as those of `new` would.
fn runs_the_same(old_spec: &str, new: &paracloud_manifest::Service) -> bool {
    serde_json::from_str::<paracloud_manifest::Service>(old_spec).is_ok_and(|old| old.runs_as(new))
}

impl Store {
    /// Opens (creating when needed) the database at `path`, in WAL mode.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        // Columns added after the first release of the schema.
        for (column, kind) in [("weight", "INTEGER"), ("cpu", "REAL")] {
            let present = conn
                .prepare("SELECT 1 FROM pragma_table_info('services') WHERE name = ?1")?
                .exists([column])?;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE services ADD COLUMN {column} {kind}"))?;
            }
        }
        let store = Self {
            conn: Mutex::new(conn),
            reserve: path.with_extension("reserve"),
        };
        store.keep_reserve();
        Ok(store)
    }

    /// Holds space for the database: a file of [`RESERVE_BYTES`] beside it, given back to the
    /// filesystem when a write finds it full (instances, logs or anyone else filled it), so that
    /// stopping, scaling down and `down` still work then. Made again here when it is missing
    /// and the space is there; returns whether the reserve is in place.
    pub fn keep_reserve(&self) -> bool {
        if self.reserve.exists() {
            return true;
        }
        let partial = self.reserve.with_extension("reserve-new");
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)?;
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..RESERVE_BYTES / chunk.len() {
                file.write_all(&chunk)?;
            }
            file.sync_all()?;
            std::fs::rename(&partial, &self.reserve)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        written.is_ok()
    }

    /// Whether `error` says the filesystem is full and the reserve was there to give back: then
    /// a write is worth trying once more.
    fn gave_back_reserve(&self, error: &Error) -> bool {
        is_disk_full(error) && std::fs::remove_file(&self.reserve).is_ok()
    }

    /// Runs the write `op`; when the filesystem is full, gives the reserve back and runs it
    /// once more.
    fn writing<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        match op() {
            Err(e) if self.gave_back_reserve(&e) => op(),
            other => other,
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the transaction rolls back).
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates or updates an application from a validated manifest. Services whose spec changed get
    /// a new revision (their instances are replaced); replica counts return to the manifest's.
    /// Returns the names of the services whose revision changed.
    pub fn put_app(
        &self,
        manifest: &Manifest,
        source: &str,
        origin: &str,
        now: Millis,
    ) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = Self::put_app_in(&tx, manifest, source, origin, now)?;
        tx.commit()?;
        Ok(changed)
    }

    fn put_app_in(
        tx: &Transaction<'_>,
        manifest: &Manifest,
        source: &str,
        origin: &str,
        now: Millis,
    ) -> Result<Vec<String>> {
        let exists: bool = tx
            .query_row(
                "SELECT 1 FROM apps WHERE name = ?1",
                [&manifest.app],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        let manifest_json = serde_json::to_string(manifest)?;
        if exists {
            tx.execute(
                "UPDATE apps SET manifest = ?2, source = ?3, origin = ?4, removing = NULL WHERE name = ?1",
                params![manifest.app, manifest_json, source, origin],
            )?;
        } else {
            let used: BTreeSet<u32> = collect(tx, "SELECT subnet_index FROM apps", [])?;
            let index = (0..).find(|i| !used.contains(i)).unwrap_or(0);
            tx.execute(
                "INSERT INTO apps (name, manifest, source, origin, subnet_index, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![manifest.app, manifest_json, source, origin, index, now as i64],
            )?;
        }
        let mut changed = Vec::new();
        let old: BTreeMap<String, (String, u64)> = {
            let mut stmt =
                tx.prepare("SELECT name, spec, revision FROM services WHERE app = ?1")?;
            let rows = stmt.query_map([&manifest.app], |r| {
                Ok((r.get(0)?, (r.get(1)?, r.get::<_, i64>(2)? as u64)))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for name in old.keys().filter(|n| !manifest.services.contains_key(*n)) {
            tx.execute(
                "DELETE FROM services WHERE app = ?1 AND name = ?2",
                params![manifest.app, name],
            )?;
        }
        for (name, service) in &manifest.services {
            let spec = serde_json::to_string(service)?;
            match old.get(name) {
                Some((old_spec, revision)) => {
                    let revision = if *old_spec == spec || runs_the_same(old_spec, service) {
                        *revision
                    } else {
                        changed.push(name.clone());
                        revision + 1
                    };
                    // A task farm's workers are its batch's: an `up` leaves their count alone.
                    let farm = service.task_farm().is_some();
                    tx.execute(
                        "UPDATE services SET replicas = CASE WHEN ?6 THEN replicas ELSE ?3 END, revision = ?4, spec = ?5, weight = NULL, cpu = NULL WHERE app = ?1 AND name = ?2",
                        params![manifest.app, name, service.replicas, revision as i64, spec, farm],
                    )?;
                }
                None => {
                    let used: BTreeSet<u32> = collect(
                        tx,
                        "SELECT slot FROM services WHERE app = ?1",
                        [&manifest.app],
                    )?;
                    // A revision shares its service's address; services sort before their
                    // revisions ("api" < "api@canary"), so the service's row exists.
                    let parent_slot: Option<u32> = match &service.revision_of {
                        Some(of) => tx
                            .query_row(
                                "SELECT slot FROM services WHERE app = ?1 AND name = ?2",
                                params![manifest.app, of.service],
                                |r| r.get(0),
                            )
                            .optional()?,
                        None => None,
                    };
                    let slot = match parent_slot {
                        Some(slot) => slot,
                        None => {
                            (0..SERVICE_SLOTS)
                                .find(|s| !used.contains(s))
                                .ok_or_else(|| Error::AddressesExhausted {
                                    app: manifest.app.clone(),
                                    max: SERVICE_SLOTS,
                                })?
                        }
                    };
                    tx.execute(
                        "INSERT INTO services (app, name, replicas, revision, slot, spec) VALUES (?1, ?2, ?3, 0, ?4, ?5)",
                        params![manifest.app, name, service.replicas, slot, spec],
                    )?;
                }
            }
        }
        Ok(changed)
    }

    /// Deletes an application, its services and its events (its instances must already be gone).
    pub fn forget_app(&self, app: &str) -> Result<()> {
        self.writing(|| self.forget_app_once(app))
    }

    fn forget_app_once(&self, app: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM services WHERE app = ?1", [app])?;
        tx.execute("DELETE FROM apps WHERE name = ?1", [app])?;
        tx.execute("DELETE FROM networks WHERE app = ?1", [app])?;
        // Its history goes with it: an application created again under the name starts afresh.
        tx.execute("DELETE FROM events WHERE app = ?1", [app])?;
        tx.commit()?;
        Ok(())
    }

    fn check_service(tx: &Transaction<'_>, app: &str, service: &str) -> Result<()> {
        let known: BTreeSet<String> =
            collect(tx, "SELECT name FROM services WHERE app = ?1", [app])?;
        if known.is_empty() {
            let app_exists = tx
                .query_row("SELECT 1 FROM apps WHERE name = ?1", [app], |_| Ok(()))
                .optional()?;
            if app_exists.is_none() {
                return Err(Error::NoApp(app.to_string()));
            }
        }
        if !known.contains(service) {
            let known = known.into_iter().collect::<Vec<_>>().join(", ");
            return Err(Error::NoService {
                app: app.into(),
                service: service.into(),
                known,
            });
        }
        Ok(())
    }

    fn update_service_in(
        tx: &Transaction<'_>,
        app: &str,
        service: &str,
        assignment: &str,
        value: impl rusqlite::ToSql,
    ) -> Result<()> {
        Self::check_service(tx, app, service)?;
        tx.execute(
            &format!("UPDATE services SET {assignment} WHERE app = ?1 AND name = ?2"),
            params![app, service, value],
        )?;
        Ok(())
    }

    /// Picks the lowest free address slot of the application for a new instance.
    pub fn free_instance_slot(&self, app: &str) -> Result<u32> {
        let conn = self.conn();
        let used: BTreeSet<u32> = {
            let mut stmt = conn.prepare("SELECT slot FROM instances WHERE app = ?1")?;
            let rows = stmt.query_map([app], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        Ok((0..).find(|s| !used.contains(s)).unwrap_or(0))
    }

    /// Records a start of `key`, unless the key is taken: under one lock, the key must have no
    /// record or an exited one, and `make` builds the new record from that one and the lowest
    /// free address slot. Returns the record as written, or `None` when another start or a live
    /// instance holds the key (two starts of one key would run two processes in one cgroup).
    pub fn claim_instance(
        &self,
        key: &InstanceKey,
        mut make: impl FnMut(Option<&InstanceRecord>, u32) -> InstanceRecord,
    ) -> Result<Option<InstanceRecord>> {
        self.writing(|| self.claim_instance_once(key, &mut make))
    }

    fn claim_instance_once(
        &self,
        key: &InstanceKey,
        make: &mut impl FnMut(Option<&InstanceRecord>, u32) -> InstanceRecord,
    ) -> Result<Option<InstanceRecord>> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        let previous = Self::read_instance(&tx, key)?;
        if previous
            .as_ref()
            .is_some_and(|p| !matches!(p.state, InstanceState::Exited { .. }))
        {
            return Ok(None);
        }
        let used: BTreeSet<u32> = {
            let mut stmt = tx.prepare("SELECT slot FROM instances WHERE app = ?1")?;
            let rows = stmt.query_map([&key.app], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let free = (0..).find(|s| !used.contains(s)).unwrap_or(0);
        let record = make(previous.as_ref(), free);
        Self::write_instance(&tx, &record)?;
        tx.commit()?;
        Ok(Some(record))
    }

    pub fn put_instance(&self, record: &InstanceRecord) -> Result<()> {
        self.writing(|| self.put_instance_once(record))
    }

    fn put_instance_once(&self, record: &InstanceRecord) -> Result<()> {
        Self::write_instance(&self.conn(), record)
    }

    fn write_instance(conn: &Connection, record: &InstanceRecord) -> Result<()> {
        conn.execute(
            "INSERT INTO instances (app, service, idx, record, slot) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (app, service, idx) DO UPDATE SET record = excluded.record, slot = excluded.slot",
            params![record.key.app, record.key.service, record.key.index, serde_json::to_string(record)?, record.slot],
        )?;
        Ok(())
    }

    fn read_instance(conn: &Connection, key: &InstanceKey) -> Result<Option<InstanceRecord>> {
        let json: Option<String> = conn
            .query_row(
                "SELECT record FROM instances WHERE app = ?1 AND service = ?2 AND idx = ?3",
                params![key.app, key.service, key.index],
                |r| r.get(0),
            )
            .optional()?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// Changes the stored record of `key` with `change`, read and written under one lock, so
    /// that writers of different fields (the start of the instance, its PaCI calls, a
    /// migration) never undo each other. Returns the record as written (`None`: no such
    /// instance).
    pub fn update_instance(
        &self,
        key: &InstanceKey,
        mut change: impl FnMut(&mut InstanceRecord),
    ) -> Result<Option<InstanceRecord>> {
        self.writing(|| self.update_instance_once(key, &mut change))
    }

    fn update_instance_once(
        &self,
        key: &InstanceKey,
        change: &mut impl FnMut(&mut InstanceRecord),
    ) -> Result<Option<InstanceRecord>> {
        let conn = self.conn();
        let Some(mut record) = Self::read_instance(&conn, key)? else {
            return Ok(None);
        };
        change(&mut record);
        conn.execute(
            "UPDATE instances SET record = ?4, slot = ?5 WHERE app = ?1 AND service = ?2 AND idx = ?3",
            params![key.app, key.service, key.index, serde_json::to_string(&record)?, record.slot],
        )?;
        Ok(Some(record))
    }

    pub fn instance(&self, key: &InstanceKey) -> Result<Option<InstanceRecord>> {
        Self::read_instance(&self.conn(), key)
    }

    pub fn delete_instance(&self, key: &InstanceKey) -> Result<()> {
        self.writing(|| {
            self.conn().execute(
                "DELETE FROM instances WHERE app = ?1 AND service = ?2 AND idx = ?3",
                params![key.app, key.service, key.index],
            )?;
            Ok(())
        })
    }

    pub fn set_network(&self, app: &str, present: bool) -> Result<()> {
        self.writing(|| {
            let conn = self.conn();
            if present {
                conn.execute("INSERT OR IGNORE INTO networks (app) VALUES (?1)", [app])?;
            } else {
                conn.execute("DELETE FROM networks WHERE app = ?1", [app])?;
            }
            Ok(())
        })
    }

    /// Keeps `plan` as the address plan (how application subnets are cut from the daemon's
    /// pool) that the applications' subnets are given under, unless applications exist that
    /// were given theirs under another plan: then nothing changes and that plan is returned.
    pub fn keep_address_plan(&self, plan: &str) -> Result<Option<String>> {
        self.writing(|| {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let kept: Option<String> = tx
                .query_row(
                    "SELECT value FROM facts WHERE name = 'address_plan'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let apps: i64 = tx.query_row("SELECT COUNT(*) FROM apps", [], |r| r.get(0))?;
            if let Some(kept) = kept.filter(|kept| kept != plan && apps > 0) {
                return Ok(Some(kept));
            }
            tx.execute(
                "INSERT INTO facts (name, value) VALUES ('address_plan', ?1) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                [plan],
            )?;
            tx.commit()?;
            Ok(None)
        })
    }

    pub fn add_event(&self, at: Millis, app: &str, subject: &str, message: &str) -> Result<()> {
        self.writing(|| {
            self.conn().execute(
                "INSERT INTO events (at, app, subject, message) VALUES (?1, ?2, ?3, ?4)",
                params![at as i64, app, subject, message],
            )?;
            Ok(())
        })
    }

    /// Events after `after` (an event id), oldest first, optionally of one application.
    pub fn events(&self, app: Option<&str>, after: i64, limit: u32) -> Result<Vec<Event>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, at, app, subject, message FROM (
                SELECT * FROM events WHERE id > ?1 AND (?2 IS NULL OR app = ?2) ORDER BY id DESC LIMIT ?3
             ) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![after, app, limit], |r| {
            Ok(Event {
                id: r.get(0)?,
                at: r.get::<_, i64>(1)? as u64,
                app: r.get(2)?,
                subject: r.get(3)?,
                message: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a capsule run (as it starts, or refused); returns its id.
    pub fn add_capsule_run(&self, run: &CapsuleRun) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO capsule_runs (record) VALUES (?1)",
            [serde_json::to_string(run)?],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Replaces the record of run `id` (when it ends).
    pub fn update_capsule_run(&self, id: i64, run: &CapsuleRun) -> Result<()> {
        self.conn().execute(
            "UPDATE capsule_runs SET record = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(run)?],
        )?;
        Ok(())
    }

    /// The capsule runs recorded as running, oldest first: at a daemon's start, those its
    /// predecessor left when it died.
    pub fn running_capsule_runs(&self) -> Result<Vec<(i64, CapsuleRun)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, record FROM capsule_runs
             WHERE json_extract(record, '$.status') = 'running' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut runs = Vec::new();
        for row in rows {
            let (id, record) = row?;
            runs.push((id, serde_json::from_str(&record)?));
        }
        Ok(runs)
    }

    /// The last `limit` capsule runs, oldest first, optionally of one application.
    pub fn capsule_runs(&self, app: Option<&str>, limit: u32) -> Result<Vec<(i64, CapsuleRun)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, record FROM (
                SELECT id, record FROM capsule_runs
                WHERE ?1 IS NULL OR json_extract(record, '$.app') = ?1
                ORDER BY id DESC LIMIT ?2
             ) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![app, limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut runs = Vec::new();
        for row in rows {
            let (id, record) = row?;
            runs.push((id, serde_json::from_str(&record)?));
        }
        Ok(runs)
    }

    /// One capsule run, if it was recorded.
    pub fn capsule_run(&self, id: i64) -> Result<Option<CapsuleRun>> {
        let conn = self.conn();
        let record: Option<String> = conn
            .query_row(
                "SELECT record FROM capsule_runs WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(record.map(|r| serde_json::from_str(&r)).transpose()?)
    }

    /// The ids of the last `limit` runs of `app` that `who` asked for and that ended `ok`,
    /// newest first: the runs a schedule's `keep` holds on to.
    pub fn last_ok_capsule_runs(&self, app: &str, who: &str, limit: u32) -> Result<Vec<i64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id FROM capsule_runs
             WHERE json_extract(record, '$.app') = ?1 AND json_extract(record, '$.who') = ?2
               AND json_extract(record, '$.status') = 'ok'
             ORDER BY id DESC LIMIT ?3",
        )?;
        let ids = stmt.query_map(params![app, who, limit], |r| r.get::<_, i64>(0))?;
        Ok(ids.collect::<rusqlite::Result<_>>()?)
    }

    /// How many capsule runs ended, by capsule and status (`ok`, `failed`, `timeout`,
    /// `refused`), those still running left out: the daemon's metrics.
    pub fn capsule_run_counts(&self) -> Result<Vec<(String, String, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT json_extract(record, '$.capsule'), json_extract(record, '$.status'), COUNT(*)
             FROM capsule_runs WHERE json_extract(record, '$.status') != 'running'
             GROUP BY 1, 2 ORDER BY 1, 2",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut counts = Vec::new();
        for row in rows {
            let (capsule, status, count) = row?;
            counts.push((capsule, status, u64::try_from(count).unwrap_or(0)));
        }
        Ok(counts)
    }

    /// The token whose hash is `hash` (how a remote client is known), revoked or not.
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let json: Option<String> = self
            .conn()
            .query_row("SELECT record FROM tokens WHERE hash = ?1", [hash], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// Reads everything in one transaction.
    pub fn load(&self) -> Result<Snapshot> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let snapshot = Self::read(&tx)?;
        tx.commit()?;
        Ok(snapshot)
    }

    /// Writes `changes` in one transaction (a decision made elsewhere, or a test's).
    pub fn apply(&self, changes: &[Change], now: Millis) -> Result<()> {
        self.transact(now, |_| Ok::<_, Error>((changes.to_vec(), ())))
    }

    /// Reads the state, decides on it with `decide`, and writes the changes it returns, all in
    /// one transaction: a decision is applied to exactly the state it was made on, and either
    /// all of its changes are written or none. Events are recorded at `now`.
    pub fn transact<T, E: From<Error>>(
        &self,
        now: Millis,
        mut decide: impl FnMut(&Snapshot) -> std::result::Result<(Vec<Change>, T), E>,
    ) -> std::result::Result<T, E> {
        match self.transact_once(now, &mut decide) {
            Err(Refused::Store(e)) if self.gave_back_reserve(&e) => self
                .transact_once(now, &mut decide)
                .map_err(Refused::into_caller),
            other => other.map_err(Refused::into_caller),
        }
    }

    fn transact_once<T, E: From<Error>>(
        &self,
        now: Millis,
        decide: &mut impl FnMut(&Snapshot) -> std::result::Result<(Vec<Change>, T), E>,
    ) -> std::result::Result<T, Refused<E>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(Error::from)?;
        let snapshot = Self::read(&tx)?;
        let (changes, outcome) = decide(&snapshot).map_err(Refused::Caller)?;
        for change in &changes {
            Self::write(&tx, change, now)?;
        }
        tx.commit().map_err(Error::from)?;
        Ok(outcome)
    }

    fn write(tx: &Transaction<'_>, change: &Change, now: Millis) -> Result<()> {
        match change {
            Change::PutApp {
                manifest,
                source,
                origin,
            } => {
                Self::put_app_in(tx, manifest, source, origin, now)?;
            }
            Change::MarkRemoving { app, volumes } => {
                let n = tx.execute(
                    "UPDATE apps SET removing = ?2 WHERE name = ?1",
                    params![app, volumes],
                )?;
                if n == 0 {
                    return Err(Error::NoApp(app.to_string()));
                }
            }
            Change::Replicas {
                app,
                service,
                replicas,
            } => Self::update_service_in(tx, app, service, "replicas = ?3", replicas)?,
            Change::Cpu { app, service, cpu } => {
                Self::update_service_in(tx, app, service, "cpu = ?3", cpu)?
            }
            Change::TrafficWeight {
                app,
                service,
                weight,
            } => Self::update_service_in(tx, app, service, "weight = ?3", weight)?,
            Change::BumpRevision { app, service } => {
                Self::update_service_in(tx, app, service, "revision = revision + ?3", 1)?
            }
            Change::InstanceWeight { key, weight } => {
                let json: Option<String> = tx
                    .query_row(
                        "SELECT record FROM instances WHERE app = ?1 AND service = ?2 AND idx = ?3",
                        params![key.app, key.service, key.index],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(json) = json {
                    let mut record: InstanceRecord = serde_json::from_str(&json)?;
                    record.weight = *weight;
                    tx.execute(
                        "UPDATE instances SET record = ?4 WHERE app = ?1 AND service = ?2 AND idx = ?3",
                        params![key.app, key.service, key.index, serde_json::to_string(&record)?],
                    )?;
                }
            }
            Change::NetworkStale { app } => {
                tx.execute("DELETE FROM networks WHERE app = ?1", [app])?;
            }
            Change::PutToken(token) => {
                let mut token = token.clone();
                token.created = now;
                tx.execute(
                    "INSERT OR REPLACE INTO tokens (name, hash, record) VALUES (?1, ?2, ?3)",
                    params![token.name, token.hash, serde_json::to_string(&token)?],
                )?;
            }
            Change::RevokeToken { name } => {
                let json: Option<String> = tx
                    .query_row("SELECT record FROM tokens WHERE name = ?1", [name], |r| {
                        r.get(0)
                    })
                    .optional()?;
                if let Some(json) = json {
                    let mut token: TokenRecord = serde_json::from_str(&json)?;
                    token.revoked.get_or_insert(now);
                    tx.execute(
                        "UPDATE tokens SET record = ?2 WHERE name = ?1",
                        params![name, serde_json::to_string(&token)?],
                    )?;
                }
            }
            Change::Event {
                app,
                subject,
                message,
            } => {
                tx.execute(
                    "INSERT INTO events (at, app, subject, message) VALUES (?1, ?2, ?3, ?4)",
                    params![now as i64, app, subject, message],
                )?;
            }
            Change::SubmitBatch { batch, tasks } => {
                Self::put_batch_in(tx, batch, true)?;
                for (i, command) in tasks.iter().enumerate() {
                    let task = TaskRecord {
                        index: i as u32 + 1,
                        command: command.clone(),
                        state: TaskState::Pending,
                        attempts: Vec::new(),
                        stdout: String::new(),
                        stderr: String::new(),
                    };
                    Self::put_task_in(tx, batch.id, &task)?;
                }
            }
            Change::CancelBatch { id } => {
                if let Some(mut batch) = Self::batch_in(tx, *id)? {
                    if batch.state == BatchState::Running {
                        batch.state = BatchState::Cancelled;
                        batch.ended = Some(now);
                        batch.counts.not_run += batch.counts.pending;
                        batch.counts.pending = 0;
                        tx.execute(
                            "UPDATE tasks SET record = json_set(record, '$.state', 'not_run')
                             WHERE batch = ?1 AND json_extract(record, '$.state') = 'pending'",
                            [*id as i64],
                        )?;
                        Self::put_batch_in(tx, &batch, false)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn put_batch_in(tx: &Transaction<'_>, batch: &BatchRecord, new: bool) -> Result<()> {
        let running = batch.state == BatchState::Running;
        let record = serde_json::to_string(batch)?;
        if new {
            tx.execute(
                "INSERT INTO batches (id, app, running, record) VALUES (?1, ?2, ?3, ?4)",
                params![batch.id as i64, batch.app, running, record],
            )?;
        } else {
            tx.execute(
                "UPDATE batches SET running = ?2, record = ?3 WHERE id = ?1",
                params![batch.id as i64, running, record],
            )?;
        }
        Ok(())
    }

    fn put_task_in(tx: &Transaction<'_>, batch: u64, task: &TaskRecord) -> Result<()> {
        tx.execute(
            "INSERT OR REPLACE INTO tasks (batch, idx, record) VALUES (?1, ?2, ?3)",
            params![batch as i64, task.index, serde_json::to_string(task)?],
        )?;
        Ok(())
    }

    fn batch_in(tx: &Connection, id: u64) -> Result<Option<BatchRecord>> {
        let json: Option<String> = tx
            .query_row(
                "SELECT record FROM batches WHERE id = ?1",
                [id as i64],
                |r| r.get(0),
            )
            .optional()?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// The batch numbered `id`, running or ended.
    pub fn batch(&self, id: u64) -> Result<Option<BatchRecord>> {
        Self::batch_in(&self.conn(), id)
    }

    /// Every batch, oldest first, optionally of one application.
    pub fn batches(&self, app: Option<&str>) -> Result<Vec<BatchRecord>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT record FROM batches WHERE ?1 IS NULL OR app = ?1 ORDER BY id")?;
        let rows = stmt.query_map([app], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    /// The tasks of batch `id`, in order.
    pub fn tasks(&self, id: u64) -> Result<Vec<TaskRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT record FROM tasks WHERE batch = ?1 ORDER BY idx")?;
        let rows = stmt.query_map([id as i64], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    /// Writes what the farm learned of a running batch and of its tasks, in one transaction;
    /// a batch that ended meanwhile (cancelled) keeps its end, and its tasks their `not_run`.
    pub fn update_batch(&self, batch: &BatchRecord, tasks: &[&TaskRecord]) -> Result<()> {
        self.writing(|| {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let Some(stored) = Self::batch_in(&tx, batch.id)? else {
                return Ok(());
            };
            if stored.state != BatchState::Running {
                // Cancelled meanwhile: keep its end, record only what ran.
                let mut ended = stored.clone();
                ended.spent_ms = batch.spent_ms;
                ended.counts.succeeded = batch.counts.succeeded;
                ended.counts.failed = batch.counts.failed;
                ended.counts.running = batch.counts.running;
                ended.counts.not_run = batch.counts.not_run;
                Self::put_batch_in(&tx, &ended, false)?;
                for task in tasks {
                    if task.state != TaskState::Pending {
                        Self::put_task_in(&tx, batch.id, task)?;
                    }
                }
            } else {
                Self::put_batch_in(&tx, batch, false)?;
                for task in tasks {
                    Self::put_task_in(&tx, batch.id, task)?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn read(tx: &Transaction<'_>) -> Result<Snapshot> {
        let mut apps = Vec::new();
        {
            let mut stmt =
                tx.prepare("SELECT name, manifest, source, origin, subnet_index, removing, created FROM apps ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, Option<bool>>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })?;
            for row in rows {
                let (name, manifest, source, origin, subnet_index, removing, created) = row?;
                apps.push(AppRecord {
                    name,
                    manifest: serde_json::from_str(&manifest)?,
                    source,
                    origin,
                    subnet_index,
                    removing,
                    services: BTreeMap::new(),
                    created: created as u64,
                });
            }
        }
        {
            let mut stmt = tx
                .prepare("SELECT app, name, replicas, revision, slot, weight, cpu FROM services")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    ServiceRecord {
                        replicas: r.get(2)?,
                        revision: r.get::<_, i64>(3)? as u64,
                        slot: r.get(4)?,
                        weight: r.get(5)?,
                        cpu: r.get(6)?,
                    },
                ))
            })?;
            for row in rows {
                let (app, name, record) = row?;
                if let Some(a) = apps.iter_mut().find(|a| a.name == app) {
                    a.services.insert(name, record);
                }
            }
        }
        let instances = {
            let mut stmt = tx.prepare("SELECT record FROM instances ORDER BY app, service, idx")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(serde_json::from_str(&row?)?);
            }
            out
        };
        let networks = collect(tx, "SELECT app FROM networks", [])?;
        let tokens = {
            let mut stmt = tx.prepare("SELECT record FROM tokens ORDER BY name")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(serde_json::from_str(&row?)?);
            }
            out
        };
        let batches = {
            let mut stmt =
                tx.prepare("SELECT record FROM batches WHERE running = 1 ORDER BY id")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(serde_json::from_str(&row?)?);
            }
            out
        };
        let next_batch = tx
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'batches'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map_or(1, |seq| seq as u64 + 1);
        Ok(Snapshot {
            apps,
            instances,
            networks,
            tokens,
            batches,
            next_batch,
        })
    }
}

fn collect<T: rusqlite::types::FromSql + Ord, P: rusqlite::Params>(
    tx: &Connection,
    sql: &str,
    params: P,
) -> Result<BTreeSet<T>> {
    let mut stmt = tx.prepare(sql)?;
    let rows = stmt.query_map(params, |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
