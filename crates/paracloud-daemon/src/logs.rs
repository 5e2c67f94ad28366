//! Instance output logs: size-based rotation, and reading the tail of them (once or following).
//!
//! Instances append their stdout and stderr straight to a file (no process sits in between), so
//! rotation is copy-then-truncate: the writer's O_APPEND descriptor continues at the new end.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Rotate a log once it grows past this size.
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept (`output.log.1` is the newest).
pub const KEEP_ROTATED: u32 = 3;

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `path` when it is larger than `max_bytes`; returns whether it did.
pub fn rotate_if_needed(path: &Path, max_bytes: u64, keep: u32) -> io::Result<bool> {
    let size = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size <= max_bytes || keep == 0 {
        return Ok(false);
    }
    for n in (1..keep).rev() {
        let from = rotated(path, n);
        if from.exists() {
            fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    fs::copy(path, rotated(path, 1))?;
    File::options().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// Starts the log afresh for a new instance in an old one's place: the old output moves to
/// `<path>.previous` (one generation kept, outside what `tail` and following read), and its
/// rotated files go.
pub fn set_aside(path: &Path, keep: u32) -> io::Result<()> {
    let mut previous = path.as_os_str().to_owned();
    previous.push(".previous");
    match fs::rename(path, previous) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for n in 1..=keep {
        match fs::remove_file(rotated(path, n)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The last `lines` lines of the log (reaching into the newest rotated file when needed).
pub fn tail(path: &Path, lines: usize) -> io::Result<Vec<String>> {
    let mut text = String::new();
    for file in [rotated(path, 1), path.to_path_buf()] {
        match fs::read(&file) {
            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|s| s.to_string())
        .collect())
}

/// Follows a file from an offset: returns complete new lines and the new offset. A file shorter
/// than the offset was truncated by rotation: reading restarts at its beginning.
pub fn read_new_lines(path: &Path, offset: u64) -> io::Result<(Vec<String>, u64)> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((vec![], offset)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let complete = bytes
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&bytes[..complete]);
    Ok((
        text.lines().map(str::to_string).collect(),
        start + complete as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotation_keeps_the_newest_files_and_the_writer_continues() {
        let dir = std::env::temp_dir().join(format!("paracloud-logs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("output.log");
        let mut writer = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        for round in 0..5 {
            writeln!(writer, "round {round} {}", "x".repeat(100)).unwrap();
            assert!(rotate_if_needed(&path, 50, 3).unwrap());
        }
        writeln!(writer, "after").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "after\n",
            "the O_APPEND writer writes at the new end"
        );
        assert!(fs::read_to_string(rotated(&path, 1))
            .unwrap()
            .starts_with("round 4"));
        assert!(fs::read_to_string(rotated(&path, 3))
            .unwrap()
            .starts_with("round 2"));
        assert!(!rotated(&path, 4).exists());
        assert_eq!(tail(&path, 2).unwrap()[1], "after");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_set_aside_leaves_nothing_for_tail() {
        let dir = std::env::temp_dir().join(format!("paracloud-aside-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("output.log");
        fs::write(rotated(&path, 1), "older\n").unwrap();
        fs::write(&path, "old revision\n").unwrap();
        set_aside(&path, 3).unwrap();
        assert!(tail(&path, 10).unwrap().is_empty());
        assert_eq!(
            fs::read_to_string(dir.join("output.log.previous")).unwrap(),
            "old revision\n"
        );
        set_aside(&path, 3).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn following_sees_only_complete_lines_and_survives_truncation() {
        let dir = std::env::temp_dir().join(format!("paracloud-follow-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("output.log");
        fs::write(&path, "one\ntw").unwrap();
        let (lines, offset) = read_new_lines(&path, 0).unwrap();
        assert_eq!((lines, offset), (vec!["one".to_string()], 4));
        fs::write(&path, "x\n").unwrap();
        let (lines, _) = read_new_lines(&path, offset + 10).unwrap();
        assert_eq!(lines, vec!["x".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
