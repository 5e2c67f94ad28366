//! Placeholder until the policy lands (being written now).

use crate::{Decision, History, Millis, Policy, ScalingConfig};

#[derive(Debug, Default)]
pub struct Hpa;

impl Policy for Hpa {
    fn name(&self) -> &'static str {
        "hpa"
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
