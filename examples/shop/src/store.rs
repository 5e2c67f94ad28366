//! The kv store's data: a map in memory, persisted as an append-only log replayed at start.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::kv::{Command, Reply};

/// Name of the log file inside the data directory.
pub const LOG_FILE: &str = "kv.log";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open kv data directory {path}: {source}; check that --data names a writable directory")]
    Open { path: PathBuf, source: io::Error },
}

/// The key-value map and the log that makes it durable.
///
/// Every change is one `SET` or `DEL` line written to the log before it is applied, in the order
/// applied, so replaying the log rebuilds the map. A write reaches the kernel before the reply
/// (it survives the process dying, not the machine losing power: there is no fsync per write).
#[derive(Debug)]
pub struct Store {
    map: HashMap<String, String>,
    log: File,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and replays its log. A torn last line, left by
    /// a crash in the middle of a write, is ignored and cut off so later appends start cleanly.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOG_FILE);
        let fail = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(fail)?;
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(fail)?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes).map_err(fail)?;
        let (map, complete) = replay(&bytes);
        if complete < bytes.len() {
            warn!(path = %path.display(), dropped = bytes.len() - complete, "ignoring a torn last line in the kv log");
            log.set_len(complete as u64).map_err(fail)?;
        }
        Ok(Self { map, log, path })
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every key and its value, for handing the store over to a successor.
    pub fn entries(&self) -> BTreeMap<String, String> {
        self.map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Replaces the whole content by `entries` (handed over by a predecessor), and the log by a
    /// compact one holding just them (written aside, then renamed over it).
    pub fn replace(&mut self, entries: BTreeMap<String, String>) -> io::Result<()> {
        let fresh = self.path.with_extension("log.new");
        let mut text = String::new();
        for (key, value) in &entries {
            text.push_str(&format!(
                "{}\n",
                Command::Set {
                    key: key.clone(),
                    value: value.clone()
                }
            ));
        }
        fs::write(&fresh, text)?;
        fs::rename(&fresh, &self.path)?;
        self.log = OpenOptions::new().append(true).open(&self.path)?;
        self.map = entries.into_iter().collect();
        Ok(())
    }

    /// Runs one command; changes are logged first, so a failed log write leaves the map unchanged.
    pub fn apply(&mut self, command: Command) -> Reply {
        match command {
            Command::Get { key } => match self.map.get(&key) {
                Some(value) => Reply::Value(value.clone()),
                None => Reply::NotFound,
            },
            Command::Count => Reply::Value(self.map.len().to_string()),
            Command::Set { key, value } => self.change(Command::Set { key, value }, Reply::Ok),
            Command::Del { key } => self.change(Command::Del { key }, Reply::Ok),
            Command::Incr { key } => {
                let current = match self.map.get(&key) {
                    None => 0,
                    Some(value) => match value.parse::<i64>() {
                        Ok(n) => n,
                        Err(_) => return Reply::Err(format!("value of {key} is not an integer")),
                    },
                };
                let Some(next) = current.checked_add(1) else {
                    return Reply::Err(format!("value of {key} would overflow"));
                };
                let value = next.to_string();
                self.change(
                    Command::Set {
                        key,
                        value: value.clone(),
                    },
                    Reply::Value(value),
                )
            }
        }
    }

    fn change(&mut self, record: Command, reply: Reply) -> Reply {
        if let Err(error) = self.log.write_all(format!("{record}\n").as_bytes()) {
            return Reply::Err(format!("cannot write the kv log: {error}"));
        }
        apply_record(&mut self.map, record);
        reply
    }
}

fn apply_record(map: &mut HashMap<String, String>, record: Command) {
    match record {
        Command::Set { key, value } => {
            map.insert(key, value);
        }
        Command::Del { key } => {
            map.remove(&key);
        }
        Command::Get { .. } | Command::Incr { .. } | Command::Count => {}
    }
}

/// Rebuilds the map from log bytes; returns it with the length of the complete lines.
fn replay(bytes: &[u8]) -> (HashMap<String, String>, usize) {
    let mut map = HashMap::new();
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for line in bytes[..complete].split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match std::str::from_utf8(line)
            .ok()
            .and_then(|l| Command::parse(l).ok())
        {
            Some(record) => apply_record(&mut map, record),
            None => {
                warn!(line = %String::from_utf8_lossy(line), "skipping an unreadable kv log line")
            }
        }
    }
    (map, complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Command {
        Command::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    fn get(key: &str) -> Command {
        Command::Get { key: key.into() }
    }

    #[test]
    fn commands_behave() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.apply(get("a")), Reply::NotFound);
        assert_eq!(store.apply(set("a", "1 2")), Reply::Ok);
        assert_eq!(store.apply(get("a")), Reply::Value("1 2".into()));
        assert!(matches!(
            store.apply(Command::Incr { key: "a".into() }),
            Reply::Err(_)
        ));
        assert_eq!(
            store.apply(Command::Incr { key: "n".into() }),
            Reply::Value("1".into())
        );
        assert_eq!(
            store.apply(Command::Incr { key: "n".into() }),
            Reply::Value("2".into())
        );
        assert_eq!(store.apply(Command::Count), Reply::Value("2".into()));
        assert_eq!(store.apply(Command::Del { key: "a".into() }), Reply::Ok);
        assert_eq!(store.apply(Command::Count), Reply::Value("1".into()));
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.apply(set("a", "x"));
        store.apply(set("b", "y"));
        store.apply(Command::Del { key: "b".into() });
        store.apply(Command::Incr { key: "n".into() });
        drop(store);
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.apply(get("a")), Reply::Value("x".into()));
        assert_eq!(store.apply(get("b")), Reply::NotFound);
        assert_eq!(store.apply(get("n")), Reply::Value("1".into()));
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOG_FILE), "SET a 1\nSET b 2\nSET c 3").unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.apply(get("b")), Reply::Value("2".into()));
        assert_eq!(store.apply(get("c")), Reply::NotFound);
        store.apply(set("d", "4"));
        drop(store);
        assert_eq!(
            fs::read_to_string(dir.path().join(LOG_FILE)).unwrap(),
            "SET a 1\nSET b 2\nSET d 4\n"
        );
    }

    #[test]
    fn a_store_handed_over_replaces_content_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = Store::open(dir.path()).unwrap();
        old.apply(set("a", "1"));
        old.apply(set("b", "2 3"));
        let entries = old.entries();
        let other = tempfile::tempdir().unwrap();
        let mut new = Store::open(other.path()).unwrap();
        new.apply(set("stale", "x"));
        new.replace(entries).unwrap();
        assert_eq!(new.apply(get("b")), Reply::Value("2 3".into()));
        assert_eq!(new.apply(get("stale")), Reply::NotFound);
        new.apply(set("c", "4"));
        drop(new);
        let mut reopened = Store::open(other.path()).unwrap();
        assert_eq!(reopened.apply(Command::Count), Reply::Value("3".into()));
        assert_eq!(reopened.apply(get("a")), Reply::Value("1".into()));
    }

    #[test]
    fn a_missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        Store::open(&nested).unwrap();
        assert!(nested.join(LOG_FILE).exists());
    }
}
