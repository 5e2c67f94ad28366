//! Fuzz target: whatever an instance sends as a PaCI body, parsing and checking it never panics,
//! and what the checks accept is within the documented ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paracloud_paci::{Ack, EventKind, LoadReport, ReplicasRequest, WeightRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = serde_json::from_slice::<LoadReport>(data) {
        if report.check().is_ok() {
            assert!(report.capacity.is_none_or(|c| c.is_finite() && c > 0.0));
            assert!(report.custom.len() <= paracloud_paci::MAX_CUSTOM);
        }
    }
    if let Ok(weight) = serde_json::from_slice::<WeightRequest>(data) {
        if let Ok(w) = weight.check() {
            assert!(w <= paracloud_paci::FULL_WEIGHT);
        }
    }
    if let Ok(ask) = serde_json::from_slice::<ReplicasRequest>(data) {
        let _ = paracloud_paci::check_replicas("api", ask.replicas, Some((1, 4)));
    }
    if let Ok(ack) = serde_json::from_slice::<Ack>(data) {
        let drain = EventKind::Drain {
            reason: "fuzz".into(),
        };
        let _ = ack.check(&drain);
    }
});
