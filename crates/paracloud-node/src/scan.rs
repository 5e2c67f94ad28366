//! The node's containers, read from its OCI runtime's own state: `RUNTIME --root DIR list
//! --format json`, then each running container's bundle config.json.

use std::path::Path;

use crate::agent::Config;
use crate::oci::{Bundle, ListEntry};
use crate::Error;

/// Every container the runtime lists, with its bundle's config (an unreadable one is skipped
/// with a warning: the container may have gone meanwhile).
pub async fn containers(config: &Config) -> Result<Vec<(ListEntry, Bundle)>, Error> {
    let program = config.runtime.program();
    let output = tokio::process::Command::new(program)
        .arg("--root")
        .arg(&config.runtime_root)
        .args(["list", "--format", "json"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| {
            Error::Runtime(format!(
                "cannot run {program}: {e}; install it or pass --runtime"
            ))
        })?;
    if !output.status.success() {
        return Err(Error::Runtime(format!(
            "`{program} --root {} list` failed: {}",
            config.runtime_root.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let entries = parse_list(&output.stdout)
        .map_err(|e| Error::Runtime(format!("`{program} list` printed no container list: {e}")))?;
    let mut containers = Vec::new();
    for entry in entries {
        if entry.status != "running" {
            continue;
        }
        match read_bundle(Path::new(&entry.bundle)) {
            Ok(bundle) => containers.push((entry, bundle)),
            Err(e) => tracing::warn!("container {}: {e}", entry.id),
        }
    }
    Ok(containers)
}

/// The list's JSON: an array, or `null` (runc, with no container).
pub fn parse_list(text: &[u8]) -> Result<Vec<ListEntry>, serde_json::Error> {
    Ok(serde_json::from_slice::<Option<Vec<ListEntry>>>(text)?.unwrap_or_default())
}

fn read_bundle(bundle: &Path) -> Result<Bundle, String> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not an OCI config: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_is_null_or_an_empty_array() {
        assert!(parse_list(b"null").unwrap().is_empty());
        assert!(parse_list(b"[\n\n]\n").unwrap().is_empty());
    }
}
