//! CRIU, for migrating instances that know nothing of PaCI: finding a binary that works here.
//!
//! Debian 12's criu 3.17 cannot start on kernels from 6.13 on ("vdso: Unexpected rt vDSO area
//! bounds"); version 4 or later is needed (`scripts/criu.sh` builds 4.1 from Debian's source).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a criu binary is looked for, first to last (then PATH).
pub const CANDIDATES: &[&str] = &[
    "/usr/local/sbin/criu",
    "/usr/local/bin/criu",
    "/usr/sbin/criu",
];

/// The oldest major version that works on current kernels.
pub const MIN_MAJOR: u32 = 4;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CriuError {
    #[error("CRIU is missing: no criu binary in {searched}; install CRIU {MIN_MAJOR}.x (`bash scripts/criu.sh` builds it), or migrate with --via paci or --via restart")]
    Missing { searched: String },
    #[error("CRIU at {path} is version {version}, too old for this kernel (criu before {MIN_MAJOR}.0 fails on kernels from 6.13 on); install CRIU {MIN_MAJOR}.x (`bash scripts/criu.sh` builds it)")]
    TooOld { path: String, version: String },
}

/// A criu binary of a version that works.
#[derive(Debug, Clone)]
pub struct Criu {
    pub path: PathBuf,
    pub version: String,
}

/// The version `criu --version` prints ("Version: 4.1.1"), as text and major number.
pub fn parse_version(output: &str) -> Option<(String, u32)> {
    let line = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))?;
    let version = line.trim().to_string();
    let major = version.split('.').next()?.parse().ok()?;
    Some((version, major))
}

impl Criu {
    /// The first criu of version [`MIN_MAJOR`] or later; the error says what was found.
    pub fn find() -> Result<Self, CriuError> {
        let mut candidates: Vec<PathBuf> = CANDIDATES.iter().map(PathBuf::from).collect();
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join("criu")));
        }
        let mut too_old = None;
        for path in candidates.iter().filter(|p| p.is_file()) {
            let Some((version, major)) = version_of(path) else {
                continue;
            };
            if major >= MIN_MAJOR {
                return Ok(Criu {
                    path: path.clone(),
                    version,
                });
            }
            too_old.get_or_insert(CriuError::TooOld {
                path: path.display().to_string(),
                version,
            });
        }
        Err(too_old.unwrap_or_else(|| CriuError::Missing {
            searched: format!("{} or PATH", CANDIDATES.join(", ")),
        }))
    }
}

fn version_of(path: &Path) -> Option<(String, u32)> {
    let output = Command::new(path).arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&output.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_what_criu_prints() {
        assert_eq!(parse_version("Version: 4.1.1\n"), Some(("4.1.1".into(), 4)));
        assert_eq!(
            parse_version("Version: 3.17.1\nGitID: v3.17.1\n"),
            Some(("3.17.1".into(), 3))
        );
        assert_eq!(parse_version("criu: command not found"), None);
    }
}
