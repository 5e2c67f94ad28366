//! Fuzz target: a registries file parses or fails without panic, and the sources of an accepted
//! one for any reference are found without panic, the registry itself last unless mirrors only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paracloud_image_spec::registries::Registries;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(registries) = Registries::parse(text) else {
        return;
    };
    for name in [
        "nginx",
        "bitnami/redis:7",
        "127.0.0.1:5000/a/b",
        "ghcr.io/o/r",
    ] {
        let reference = name.parse().expect("a valid reference");
        let sources = registries.sources(&reference);
        assert!(!sources.is_empty(), "somewhere to pull {name} from");
    }
});
