//! Fuzz target: Compose variable interpolation never panics, and text without `$` is unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lookup = |name: &str| (name.len() % 2 == 0).then(|| name.to_lowercase());
    let result = paracloud_compose::interpolate(text, &lookup);
    if !text.contains('$') {
        assert_eq!(result.ok().as_deref(), Some(text));
    }
});
