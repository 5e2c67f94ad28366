//! Fuzz target: image references parse without panic, and an accepted one prints as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paracloud_image_spec::reference::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(reference) = parse(text) {
        let again = parse(&reference.to_string()).expect("a printed reference parses");
        assert_eq!(again, reference);
    }
});
