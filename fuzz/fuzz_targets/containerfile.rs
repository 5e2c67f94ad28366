//! Fuzz target: the Containerfile parser never panics, and every error names a line.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use paracloud_image_spec::containerfile::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = parse(text, &BTreeMap::new()) {
        assert!(e.line >= 1);
    }
});
