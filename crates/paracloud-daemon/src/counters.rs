//! What the daemon counts as it goes, for `GET /metrics`: instance exits and restarts, the
//! autoscaler's decisions and predicted latency, image pulls. The figures the state or the
//! cgroups already hold (instances by state, CPU, memory, capsule runs) are read when the
//! metrics are asked for instead (the `metrics` module); these are the ones nothing else keeps.
//! Counted in memory since the daemon started, as Prometheus counters are.

use std::sync::atomic::AtomicU64;

use paracloud_reconcile::{ExitInfo, InstanceKey, StopReason};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Labels: `[("app", ..), ("service", ..), ...]`, in the order they are written.
pub type Labels = Vec<(&'static str, String)>;

/// The daemon's own counters; clones share their values.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Instance exits by app, service and reason.
    pub exits: Family<Labels, Counter>,
    /// Instance restarts by app, service and reason (`policy`: the restart policy after an
    /// exit; `requested`: `paracloud restart`).
    pub restarts: Family<Labels, Counter>,
    /// The autoscaler's decisions by app, service and direction (`out`, `in`, `cpu_up`,
    /// `cpu_down`).
    pub decisions: Family<Labels, Counter>,
    /// The end-to-end latency the model policy's latest plan predicts for an application's
    /// entry service, in seconds, by app and service.
    pub predicted: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Image pulls by outcome (`ok`, `failed`).
    pub pulls: Family<Labels, Counter>,
}

impl Counters {
    /// Counts an instance's exit, by why it ended.
    pub fn exit(&self, key: &InstanceKey, exit: &ExitInfo) {
        let reason = exit_reason(exit);
        self.exits
            .get_or_create(&service_labels(key, ("reason", reason)))
            .inc();
    }

    /// Counts a restart of an instance by its restart policy.
    pub fn policy_restart(&self, key: &InstanceKey) {
        self.restarts
            .get_or_create(&service_labels(key, ("reason", "policy")))
            .inc();
    }

    /// Counts a `paracloud restart` of a service.
    pub fn requested_restart(&self, app: &str, service: &str) {
        self.restarts
            .get_or_create(&vec![
                ("app", app.to_owned()),
                ("service", service.to_owned()),
                ("reason", "requested".to_owned()),
            ])
            .inc();
    }

    /// Counts an autoscaler decision in one direction.
    pub fn decision(&self, app: &str, service: &str, direction: &'static str) {
        self.decisions
            .get_or_create(&vec![
                ("app", app.to_owned()),
                ("service", service.to_owned()),
                ("direction", direction.to_owned()),
            ])
            .inc();
    }

    /// Sets the latency the model predicts for an application's entry service.
    pub fn predicted_latency(&self, app: &str, service: &str, seconds: f64) {
        self.predicted
            .get_or_create(&vec![
                ("app", app.to_owned()),
                ("service", service.to_owned()),
            ])
            .set(seconds);
    }

    /// Counts an image pull that ended.
    pub fn pull(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.pulls
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }
}

fn service_labels(key: &InstanceKey, last: (&'static str, &str)) -> Labels {
    vec![
        ("app", key.app.clone()),
        ("service", key.service.clone()),
        (last.0, last.1.to_owned()),
    ]
}

/// Why an instance ended, in one word: the platform's request (`scale_in`, `down`, `replace`,
/// `unhealthy`), `oom`, `error` (it could not start, or its end was not seen), `signal`,
/// `completed` (exit code 0) or `failed` (another code).
pub fn exit_reason(exit: &ExitInfo) -> &'static str {
    match exit.requested {
        Some(StopReason::ScaleIn) => return "scale_in",
        Some(StopReason::Down) => return "down",
        Some(StopReason::Replace) => return "replace",
        Some(StopReason::Unhealthy) => return "unhealthy",
        None => {}
    }
    if exit.oom_killed {
        "oom"
    } else if exit.error.is_some() {
        "error"
    } else if exit.signal.is_some() {
        "signal"
    } else if exit.code == Some(0) {
        "completed"
    } else {
        "failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_has_one_reason_the_platform_s_request_first() {
        let requested = ExitInfo {
            requested: Some(StopReason::ScaleIn),
            signal: Some(15),
            ..ExitInfo::default()
        };
        assert_eq!(exit_reason(&requested), "scale_in");
        let oom = ExitInfo {
            oom_killed: true,
            signal: Some(9),
            ..ExitInfo::default()
        };
        assert_eq!(exit_reason(&oom), "oom");
        let crash = ExitInfo {
            code: Some(3),
            ..ExitInfo::default()
        };
        assert_eq!(exit_reason(&crash), "failed");
        let clean = ExitInfo {
            code: Some(0),
            ..ExitInfo::default()
        };
        assert_eq!(exit_reason(&clean), "completed");
        let unseen = ExitInfo {
            error: Some("the daemon restarted".into()),
            ..ExitInfo::default()
        };
        assert_eq!(exit_reason(&unseen), "error");
    }
}
