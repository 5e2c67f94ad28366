//! Reading and atomically writing the JSON configuration file shared with the control plane.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Config, Error};

/// Reads the configuration at `path`; a missing file is an empty configuration, so the data plane
/// can start before the control plane has anything to route.
pub fn load_config(path: &Path) -> Result<Config, Error> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(source) => {
            return Err(Error::ReadConfig {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_slice(&text).map_err(|source| Error::ParseConfig {
        path: path.to_owned(),
        source,
    })
}

/// Writes `config` to `path` so that a reader sees either the old or the new file, never a part:
/// a temporary file beside it is written, synced and renamed over it, then the directory is synced.
pub fn write_config(path: &Path, config: &Config) -> io::Result<()> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("config path {} has no file name", path.display()),
        )
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let temp: PathBuf = dir.join(temp_name);
    let result = (|| {
        // The daemon's alone: it names every instance and its address.
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temp)?;
        serde_json::to_writer_pretty(&mut file, config)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist when creating it failed.
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Listener, Protocol};

    #[test]
    fn missing_file_is_an_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            load_config(&dir.path().join("none.json")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn written_config_reads_back_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dataplane.json");
        let config = Config {
            listeners: vec![Listener {
                name: "shop/web:8080".into(),
                bind: "127.0.0.1:8080".parse().unwrap(),
                protocol: Protocol::Http,
                backends: vec![Backend {
                    id: "web.1".into(),
                    addr: "10.0.0.2:8080".parse().unwrap(),
                    weight: 1,
                }],
                revisions: Vec::new(),
            }],
        };
        write_config(&path, &config).unwrap();
        write_config(&path, &config).unwrap();
        assert_eq!(load_config(&path).unwrap(), config);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn invalid_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dataplane.json");
        fs::write(&path, "{ not json").unwrap();
        let message = load_config(&path).unwrap_err().to_string();
        assert!(message.contains("dataplane.json"), "{message}");
    }
}
