//! Fuzz target: capsule selectors parse without panic, and an accepted one prints as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paracloud_capsule::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(selector) = Selector::parse(text) {
        let again = Selector::parse(&selector.to_string()).expect("a printed selector parses");
        assert_eq!(again, selector);
    }
});
