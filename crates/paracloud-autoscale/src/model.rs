//! Placeholder until the policy lands (being written now).

use crate::{Decision, History, Millis, Policy, ScalingConfig};

#[derive(Debug, Default)]
pub struct ModelPolicy;

impl Policy for ModelPolicy {
    fn name(&self) -> &'static str {
        "model"
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
