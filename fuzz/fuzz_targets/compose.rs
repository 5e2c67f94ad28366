//! Fuzz target: `paracloud_compose::parse` never panics, whatever the text, and what it accepts
//! the manifest parser accepts as TOML too.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use paracloud_compose::{parse, Host};
use paracloud_manifest::{FileSystem, Origin};

/// Every path exists and is a directory; every file read holds one variable.
struct Everything;

impl FileSystem for Everything {
    fn exists(&self, _: &Path) -> bool {
        true
    }
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
}

impl Host for Everything {
    fn read_to_string(&self, _: &Path) -> Option<String> {
        Some("FROM_FILE=1\n".into())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Origin {
        file: "compose.yaml".into(),
        base_dir: PathBuf::from("/srv/app"),
    };
    let env = BTreeMap::from([("HOME".to_owned(), "/home/u".to_owned())]);
    match parse(source, &origin, &env, &Everything) {
        Ok(converted) => {
            let again = paracloud_manifest::parse(&converted.toml, &origin, &Everything);
            assert_eq!(again.ok(), Some(converted.manifest));
        }
        Err(error) => {
            assert!(!error.diagnostics.is_empty());
            let _ = error.to_string();
        }
    }
});
