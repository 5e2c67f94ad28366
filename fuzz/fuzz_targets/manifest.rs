//! Fuzz target: `paracloud_manifest::parse` never panics, whatever the text.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use paracloud_manifest::{parse, FileSystem, Origin};

/// Every path exists and is a directory, so the fuzzer reaches the checks behind them.
struct Everything;

impl FileSystem for Everything {
    fn exists(&self, _: &Path) -> bool {
        true
    }
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Origin {
        file: "paracloud.toml".into(),
        base_dir: PathBuf::from("/srv/app"),
    };
    if let Err(error) = parse(source, &origin, &Everything) {
        assert!(!error.diagnostics.is_empty());
        // Rendering must not panic either: the CLI prints every error.
        let _ = error.to_string();
    }
});
