//! The audit log of capsule runs: one JSON line per run, appended to `<root>/audit.log` (0600).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::Serialize;

/// One run, as it ended.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    /// The caller's user on the node (the agent socket's peer credentials).
    pub caller_uid: Option<u32>,
    pub pod: crate::oci::PodRef,
    pub container: String,
    pub capsule: String,
    pub args: Vec<String>,
    /// The function's exit code; `None` when it never ran.
    pub exit: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// The time `ms` (since the epoch) in RFC 3339.
pub fn time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Appends `record` as one line.
pub fn append(path: &Path, record: &Record) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // One write: lines of runs ending together never interleave.
    file.write_all(&line)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(super::time(1_764_912_000_123), "2025-12-05T05:20:00.123Z");
    }
}
