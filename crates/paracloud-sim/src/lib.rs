//! A deterministic discrete-event simulator of a multi-service application: a model of its
//! services (`model`), a request trace (`trace`, `synthetic`), and an autoscaling policy
//! (`paracloud_autoscale::Policy`) asked once a simulated second, as the live platform does.
//!
//! ```text
//! model + trace + policy + seed ──simulate──▶ Outcome (SLO-violation seconds, cost, timeline)
//! ```
//!
//! The same seed gives the same outcome. Random draws come from separate streams (arrivals, load
//! balancing, start times, delays of CPU changes, each service's demands), so two policies run on
//! the same seed see the same arrivals. What the platform under the application adds to starting
//! instances and changing their CPU is a [`Platform`] profile in the [`Options`]: `local` (the
//! default, nothing) or `cluster` (a Kubernetes cluster's latencies, simulated).

pub mod engine;
pub mod model;
pub mod outcome;
pub mod platform;
pub mod synthetic;
pub mod trace;

use std::time::Duration;

use paracloud_autoscale::Policy;

pub use model::{Distribution, Model, ModelError, Phase, ServiceModel};
pub use outcome::{DecisionRecord, Histogram, Outcome, Second, Summary};
pub use platform::{Platform, UnknownPlatform};
pub use synthetic::Shape;
pub use trace::{Arrivals, ParseOptions, Trace, TraceError, TracedRequest};

/// How to run a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Keep a row per simulated second in `Outcome::timeline`.
    pub record_timeline: bool,
    /// After the trace ends, how long requests still in flight get to finish (the policy keeps
    /// being asked meanwhile); the run stops at the first whole second with nothing in flight.
    pub drain: Duration,
    /// Seconds of observations the policy's history keeps.
    pub history_seconds: usize,
    /// What the platform adds to starting instances and changing their CPU (default: local,
    /// nothing).
    pub platform: Platform,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            record_timeline: true,
            drain: Duration::from_secs(30),
            history_seconds: 600,
            platform: Platform::local(),
        }
    }
}

/// Simulates `model` under `trace` with `policy` deciding every second; the same seed gives the
/// same outcome.
pub fn simulate(model: &Model, trace: &Trace, policy: &mut dyn Policy, seed: u64) -> Outcome {
    simulate_with(model, trace, policy, seed, &Options::default())
}

/// [`simulate`] with options.
pub fn simulate_with(
    model: &Model,
    trace: &Trace,
    policy: &mut dyn Policy,
    seed: u64,
    options: &Options,
) -> Outcome {
    engine::Engine::new(model, trace, seed, options).run(trace, policy, seed)
}
