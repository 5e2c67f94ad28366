//! Autoscaling policies as pure code: observations in, decisions out, time passed in.
//!
//! One [`Policy`] interface serves the discrete-event simulator and the live platform alike.
//! A policy sees the last seconds of [`Observation`]s (one per second, per service: arrivals,
//! completions, latency, concurrency, per-instance CPU use and limit, instances ready and
//! starting, and the call graph) and the application's [`ScalingConfig`], and returns one
//! [`Decision`] per service it wants to change or keep, each with a reason a person can read.
//!
//! The policies:
//! - [`model::ModelPolicy`]: a queueing model of the whole application (this crate's point);
//! - [`hpa::Hpa`]: Kubernetes' HorizontalPodAutoscaler v2 with its defaults;
//! - [`kpa::Kpa`]: Knative's Pod Autoscaler with its defaults.

pub mod capacity;
pub mod config;
pub mod hpa;
pub mod kpa;
pub mod model;
pub mod observe;
pub mod plan;
pub mod queries;
pub mod queueing;
pub mod taskfarm;

pub use config::{Bounded, Bounds, Current, ScalingConfig, Slo};
pub use observe::{
    Call, History, InstanceFacts, InstanceSample, Observation, Reported, ServiceSample,
    REPORT_TTL_MS,
};

use serde::{Deserialize, Serialize};

/// Milliseconds on the caller's clock (the simulator's virtual time, or the epoch when live).
pub type Millis = u64;

/// What a policy wants for one service from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub service: String,
    /// Instances wanted (ready and starting together).
    pub instances: u32,
    /// CPU per instance, in cores (applied at once, also to running instances).
    pub cpu: f64,
    /// Why, in words a person reads in the dashboard or the simulator's log.
    pub reason: String,
}

/// An autoscaling policy. Pure: no clock, no I/O, no randomness; the same inputs give the same
/// decisions. It may keep state between calls (windows, stabilisation), which is why `decide`
/// takes `&mut self`.
pub trait Policy {
    /// A short name: "model", "hpa", "kpa".
    fn name(&self) -> &'static str;

    /// Called once a second with `now` and the observations up to it (the newest last). Returns
    /// the decisions for the services this policy acts on at this call; a service left out keeps
    /// what it has. Policies that act on a slower cadence (HPA every 15 s) return nothing in
    /// between.
    fn decide(&mut self, now: Millis, history: &History, config: &ScalingConfig) -> Vec<Decision>;

    /// The end-to-end latency (at the SLO's percentile, in seconds) its latest plan predicts
    /// for the application's entry service; `None` for a policy without a model of it.
    fn predicted_latency(&self) -> Option<f64> {
        None
    }
}

/// Which policy, by name; the names the CLI and the manifest accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    Model,
    Hpa,
    Kpa,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 3] = [PolicyKind::Model, PolicyKind::Hpa, PolicyKind::Kpa];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Model => "model",
            PolicyKind::Hpa => "hpa",
            PolicyKind::Kpa => "kpa",
        }
    }

    /// A new policy of this kind with its defaults.
    pub fn build(self) -> Box<dyn Policy + Send> {
        match self {
            PolicyKind::Model => Box::new(model::ModelPolicy::default()),
            PolicyKind::Hpa => Box::new(hpa::Hpa::default()),
            PolicyKind::Kpa => Box::new(kpa::Kpa::default()),
        }
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| format!("unknown policy {s:?}: use one of model, hpa, kpa"))
    }
}
