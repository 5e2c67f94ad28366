//! Placeholder until the policy lands (being written now).

use crate::{Decision, History, Millis, Policy, ScalingConfig};

#[derive(Debug, Default)]
pub struct Kpa;

impl Policy for Kpa {
    fn name(&self) -> &'static str {
        "kpa"
    }

    fn decide(
        &mut self,
        _now: Millis,
        _history: &History,
        _config: &ScalingConfig,
    ) -> Vec<Decision> {
        Vec::new()
    }
}
