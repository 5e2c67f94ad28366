//! Kubernetes' HorizontalPodAutoscaler (autoscaling/v2) on CPU utilisation, with upstream defaults.
//!
//! What is reproduced, and from where (kubernetes `pkg/controller/podautoscaler`):
//! - `horizontal.go` `reconcileAutoscaler`: one look every sync period; a target above its
//!   maximum or below its minimum is brought into range before any metric is read; otherwise
//!   the metric proposes a count that `normalizeDesiredReplicasWithBehaviors` stabilises (the
//!   highest recommendation of the last 300 s on the way down, none on the way up) and then
//!   limits by the `behavior` policies (up: the more of +4 pods and +100 % per 15 s; down:
//!   -100 % per 15 s), counting the replicas already added or removed in each policy's period.
//! - `replica_calculator.go` `GetResourceReplicas` and `groupPods`: utilisation is CPU used over
//!   CPU requested, in whole percent, over the ready pods that have a metric; unready pods are set
//!   aside and counted at 0 % only when scaling up; pods without a metric count at 0 % on the way
//!   up and 100 % on the way down; a recount that flips the direction or lands within the
//!   tolerance keeps the current count.
//!
//! Where the observations cannot say what Kubernetes knows, the choice made is written where it
//! is made: which pods metrics-server has not scraped yet, and which pods are draining.

use std::collections::{BTreeMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{Bounds, Decision, History, Millis, Policy, ScalingConfig, ServiceSample};

/// The HPA's parameters; `Default` gives kube-controller-manager's flags and the v2 API's
/// defaulted `behavior`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HpaConfig {
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub sync_period_ms: Millis,
    /// The CPU metric's `target.averageUtilization`, in percent of the request.
    pub target_utilization: u32,
    /// `--horizontal-pod-autoscaler-tolerance`: a usage ratio within 1 ± this changes nothing.
    pub tolerance: f64,
    /// metrics-server's `--metric-resolution`: it scrapes every this often and reports the CPU
    /// rate over that window, so a pod's metric is its mean over this window, and a pod younger
    /// than this has not been scraped yet.
    pub metric_resolution_ms: Millis,
    /// `--horizontal-pod-autoscaler-cpu-initialization-period`: while a pod is this young, a metric
    /// whose window began before the pod turned ready is not trusted (start-up CPU).
    pub cpu_initialization_period_ms: Millis,
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

/// One direction of `spec.behavior`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingRules {
    /// `stabilizationWindowSeconds`, in milliseconds.
    pub stabilization_window_ms: Millis,
    /// `selectPolicy`.
    pub select_policy: SelectPolicy,
    pub policies: Vec<ScalingPolicy>,
}

/// `selectPolicy`: which of the policies' limits applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectPolicy {
    /// The policy allowing the biggest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// One of `policies`: at most `value` pods, or `value` percent, per `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingPolicy {
    pub kind: ScalingPolicyKind,
    pub value: u32,
    pub period_ms: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScalingPolicyKind {
    Pods,
    Percent,
}

impl Default for HpaConfig {
    fn default() -> Self {
        Self {
            sync_period_ms: 15_000,
            target_utilization: 70,
            tolerance: 0.1,
            metric_resolution_ms: 15_000,
            cpu_initialization_period_ms: 300_000,
            scale_up: ScalingRules {
                stabilization_window_ms: 0,
                select_policy: SelectPolicy::Max,
                policies: vec![
                    ScalingPolicy {
                        kind: ScalingPolicyKind::Pods,
                        value: 4,
                        period_ms: 15_000,
                    },
                    ScalingPolicy {
                        kind: ScalingPolicyKind::Percent,
                        value: 100,
                        period_ms: 15_000,
                    },
                ],
            },
            scale_down: ScalingRules {
                stabilization_window_ms: 300_000,
                select_policy: SelectPolicy::Max,
                policies: vec![ScalingPolicy {
                    kind: ScalingPolicyKind::Percent,
                    value: 100,
                    period_ms: 15_000,
                }],
            },
        }
    }
}

/// The HorizontalPodAutoscaler: one per service, all synced together.
#[derive(Debug, Default)]
pub struct Hpa {
    pub config: HpaConfig,
    last_sync: Option<Millis>,
    services: BTreeMap<String, ServiceState>,
}

/// What upstream keeps per HPA between syncs.
#[derive(Debug, Default)]
struct ServiceState {
    /// Unstabilised recommendations and when they were made, oldest first.
    recommendations: VecDeque<(Millis, u32)>,
    /// Replicas added (positive) or removed (negative) and when.
    scale_events: VecDeque<(Millis, i64)>,
}

impl Hpa {
    pub fn new(config: HpaConfig) -> Self {
        Self {
            config,
            last_sync: None,
            services: BTreeMap::new(),
        }
    }

    /// One service's sync: the count wanted and why.
    fn reconcile(
        &mut self,
        now: Millis,
        service: &str,
        bounds: &Bounds,
        history: &History,
    ) -> Decision {
        // minReplicas is at least 1 without the alpha HPAScaleToZero gate.
        let min = bounds.min_instances.max(1);
        let max = bounds.max_instances.max(min);
        let pods = PodGroups::observe(history, service, &self.config);
        let current = pods.replicas();
        let state = self.services.entry(service.to_owned()).or_default();

        let (desired, reason) = if current == 0 {
            // Upstream leaves a target scaled to 0 alone (autoscaling disabled); here 0 means a
            // service not started yet, which a Deployment would start at its replicas (>= 1).
            (min, format!("no instances: start {min}, the HPA's minimum"))
        } else if current > max {
            (max, format!("above the maximum {max}: {current} -> {max}"))
        } else if current < min {
            (min, format!("below the minimum {min}: {current} -> {min}"))
        } else {
            let proposal = self.config.replicas_for_cpu(current, &pods, bounds.cpu);
            let Some(proposed) = proposal.replicas else {
                // Upstream: "did not receive metrics for any ready pods", no scaling.
                return decision(service, bounds, current, proposal.why);
            };
            let (stabilised, stabilised_why) =
                stabilise(&self.config, state, now, current, proposed);
            let (desired, limited_why) =
                limit_rate(&self.config, state, now, current, stabilised, min, max);
            let change = if desired == current {
                format!("keep {current}")
            } else {
                format!("{current} -> {desired}")
            };
            let why = [proposal.why, stabilised_why, limited_why]
                .into_iter()
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            (desired, format!("{why}: {change}"))
        };

        if desired != current {
            state
                .scale_events
                .push_back((now, i64::from(desired) - i64::from(current)));
            let longest = self
                .config
                .scale_up
                .policies
                .iter()
                .chain(&self.config.scale_down.policies)
                .map(|policy| policy.period_ms)
                .max()
                .unwrap_or(0);
            while state
                .scale_events
                .front()
                .is_some_and(|&(at, _)| at.saturating_add(longest) <= now)
            {
                state.scale_events.pop_front();
            }
        }
        decision(service, bounds, desired, reason)
    }
}

fn decision(service: &str, bounds: &Bounds, instances: u32, reason: String) -> Decision {
    Decision {
        service: service.to_owned(),
        instances,
        // The HPA scales out only; the request stays what the manifest asks for.
        cpu: bounds.cpu,
        reason,
    }
}

impl Policy for Hpa {
    fn name(&self) -> &'static str {
        "hpa"
    }

    fn decide(&mut self, now: Millis, history: &History, config: &ScalingConfig) -> Vec<Decision> {
        if let Some(last) = self.last_sync {
            if now < last.saturating_add(self.config.sync_period_ms) {
                return Vec::new();
            }
        }
        self.last_sync = Some(now);
        config
            .services
            .iter()
            .map(|(service, bounds)| self.reconcile(now, service, bounds, history))
            .collect()
    }
}

/// A service's instances as `groupPods` sorts them.
#[derive(Debug, Default, Clone, PartialEq)]
struct PodGroups {
    /// CPU of the ready pods with a trusted metric, in millicores, averaged over the resolution.
    metrics: Vec<i64>,
    /// Set aside: not ready, or ready so recently that the metric window covers start-up.
    unready: usize,
    /// Ready but not scraped yet.
    missing: usize,
}

impl PodGroups {
    /// The pods of a service at its latest sample, draining ones left out.
    fn observe(history: &History, service: &str, config: &HpaConfig) -> Self {
        let mut samples = history.service(service, history.len());
        let Some(latest) = samples.next_back() else {
            return Self::default();
        };
        // Pods are never unready after being ready here except while draining (upstream: a pod
        // with a deletion timestamp, which is neither counted nor measured). Starting pods have
        // not been ready yet.
        let was_ready: HashSet<&str> = samples
            .flat_map(|sample| &sample.instances)
            .filter(|instance| instance.ready)
            .map(|instance| instance.id.as_str())
            .collect();
        let window_seconds = usize::try_from(config.metric_resolution_ms.div_ceil(1000))
            .unwrap_or(usize::MAX)
            .max(1);
        let window: Vec<&ServiceSample> = history.service(service, window_seconds).collect();

        let mut groups = Self::default();
        for pod in &latest.instances {
            if !pod.ready {
                if !was_ready.contains(pod.id.as_str()) {
                    groups.unready += 1;
                }
                continue;
            }
            // metrics-server returns nothing for a pod until it has scraped it once; without
            // the scrape phase in the observations, assume the worst case of one resolution.
            if pod.age_ms < config.metric_resolution_ms {
                groups.missing += 1;
                continue;
            }
            let seen = window
                .iter()
                .flat_map(|sample| &sample.instances)
                .filter(|instance| instance.id == pod.id);
            // Upstream: within the initialisation period, a metric whose window began before
            // the pod's last readiness transition is start-up CPU, not load.
            if pod.age_ms < config.cpu_initialization_period_ms
                && seen.clone().any(|instance| !instance.ready)
            {
                groups.unready += 1;
                continue;
            }
            let (sum, count) = seen.fold((0.0, 0u32), |(sum, count), instance| {
                (sum + instance.cpu_used, count + 1)
            });
            if count == 0 {
                // Not observed within the metric window: no sample, no metric.
                groups.missing += 1;
            } else {
                groups.metrics.push(millicores(sum / f64::from(count)));
            }
        }
        groups
    }

    /// Replicas as the HPA counts them: every pod not being deleted.
    fn replicas(&self) -> u32 {
        let pods = self.metrics.len() + self.unready + self.missing;
        u32::try_from(pods).unwrap_or(u32::MAX)
    }
}

/// metrics-server reports nanocores; the HPA reads them as millicores rounded up.
fn millicores(cores: f64) -> i64 {
    let nanocores = (cores.max(0.0) * 1e9).round() as i64;
    (nanocores + 999_999) / 1_000_000
}

/// What the CPU metric proposes, before stabilisation and rate limits.
struct Proposal {
    /// None when no ready pod has a metric: upstream then leaves the scale alone.
    replicas: Option<u32>,
    why: String,
}

impl HpaConfig {
    /// `GetResourceReplicas`.
    fn replicas_for_cpu(&self, current: u32, pods: &PodGroups, request_cores: f64) -> Proposal {
        let request = millicores(request_cores);
        if pods.metrics.is_empty() || request <= 0 {
            let why = if request <= 0 {
                "no CPU request to measure utilisation against".to_owned()
            } else {
                format!(
                    "no CPU metric for any ready instance ({} not ready, {} not scraped yet)",
                    pods.unready, pods.missing
                )
            };
            return Proposal {
                replicas: None,
                why: format!("{why}: keep {current}"),
            };
        }
        let target = f64::from(self.target_utilization.max(1));
        // Upstream: utilisation in whole percent (integer division), then a float ratio.
        let utilization = |used: i64, pods: usize| -> i64 {
            let requested = request * i64::try_from(pods).unwrap_or(i64::MAX);
            used * 100 / requested
        };
        let used: i64 = pods.metrics.iter().sum();
        let ready = pods.metrics.len();
        let measured = utilization(used, ready);
        let ratio = measured as f64 / target;
        let mut why = format!(
            "cpu {measured}% of request over {ready} ready {}, target {}%",
            plural(ready, "pod"),
            self.target_utilization
        );
        let within = |ratio: f64| (1.0 - ratio).abs() <= self.tolerance;
        let ceil = |ratio: f64, pods: usize| (ratio * pods as f64).ceil() as u32;

        let rebalance_unready = pods.unready > 0 && ratio > 1.0;
        if !rebalance_unready && pods.missing == 0 {
            if within(ratio) {
                why.push_str(&format!(" (ratio {ratio:.2}, within tolerance)"));
                return Proposal {
                    replicas: Some(current),
                    why,
                };
            }
            return Proposal {
                replicas: Some(ceil(ratio, ready)),
                why,
            };
        }

        // Recount with the pods set aside, in the direction that makes scaling more cautious.
        let mut used_again = used;
        let mut counted = ready;
        if pods.missing > 0 {
            if ratio < 1.0 {
                // Scaling down: pods without a metric count at 100 % (or the target if higher).
                let full = request * i64::from(self.target_utilization.max(100)) / 100;
                used_again += full * i64::try_from(pods.missing).unwrap_or(i64::MAX);
                counted += pods.missing;
                why.push_str(&format!(
                    "; {} not scraped yet counted at 100%",
                    pods.missing
                ));
            } else if ratio > 1.0 {
                counted += pods.missing;
                why.push_str(&format!("; {} not scraped yet counted at 0%", pods.missing));
            }
        }
        if rebalance_unready {
            counted += pods.unready;
            why.push_str(&format!("; {} not ready counted at 0%", pods.unready));
        }
        let recounted = utilization(used_again, counted);
        let new_ratio = recounted as f64 / target;
        why.push_str(&format!(" gives {recounted}%"));
        if within(new_ratio) {
            why.push_str(" (within tolerance)");
            return Proposal {
                replicas: Some(current),
                why,
            };
        }
        if (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
            why.push_str(" (the other way: no change)");
            return Proposal {
                replicas: Some(current),
                why,
            };
        }
        let replicas = ceil(new_ratio, counted);
        if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
            // Counting more pods than the metric covered would reverse the direction.
            return Proposal {
                replicas: Some(current),
                why,
            };
        }
        Proposal {
            replicas: Some(replicas),
            why,
        }
    }
}

fn plural(count: usize, word: &str) -> String {
    if count == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

/// `stabilizeRecommendationWithBehaviors`: the lowest recommendation of the scale-up window caps
/// how far up, the highest of the scale-down window how far down. Records `proposed`.
fn stabilise(
    config: &HpaConfig,
    state: &mut ServiceState,
    now: Millis,
    current: u32,
    proposed: u32,
) -> (u32, String) {
    let up_window = config.scale_up.stabilization_window_ms;
    let down_window = config.scale_down.stabilization_window_ms;
    let mut up = proposed;
    let mut down = proposed;
    for &(at, recommendation) in &state.recommendations {
        // Upstream keeps recommendations strictly newer than now - window.
        if at.saturating_add(up_window) > now {
            up = up.min(recommendation);
        }
        if at.saturating_add(down_window) > now {
            down = down.max(recommendation);
        }
    }
    let stabilised = current.max(up).min(down);

    state.recommendations.push_back((now, proposed));
    let longest = up_window.max(down_window);
    while state
        .recommendations
        .front()
        .is_some_and(|&(at, _)| at.saturating_add(longest) <= now)
    {
        state.recommendations.pop_front();
    }

    let why = if stabilised == proposed {
        String::new()
    } else if proposed < current {
        format!(
            "{proposed} proposed, but the highest recommendation in the last {} s is {down}",
            down_window / 1000
        )
    } else {
        format!(
            "{proposed} proposed, but the lowest recommendation in the last {} s is {up}",
            up_window / 1000
        )
    };
    (stabilised, why)
}

/// `convertDesiredReplicasWithBehaviorRate`: the behaviour's rate limits and min/max.
fn limit_rate(
    config: &HpaConfig,
    state: &ServiceState,
    now: Millis,
    current: u32,
    desired: u32,
    min: u32,
    max: u32,
) -> (u32, String) {
    if desired > current {
        // Never below current: a limit already spent holds the count until events age out.
        let limit = scale_limit(&config.scale_up, state, now, current, Direction::Up).max(current);
        let allowed = max.min(limit);
        if desired > allowed {
            let why = if allowed == max {
                format!("capped at the maximum {max}")
            } else {
                format!("scale-up limited to {allowed} per period")
            };
            return (allowed, why);
        }
    } else if desired < current {
        let limit =
            scale_limit(&config.scale_down, state, now, current, Direction::Down).min(current);
        let allowed = min.max(limit);
        if desired < allowed {
            let why = if allowed == min {
                format!("held at the minimum {min}")
            } else {
                format!("scale-down limited to {allowed} per period")
            };
            return (allowed, why);
        }
    }
    (desired, String::new())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// `calculateScaleUpLimitWithScalingRules` and `calculateScaleDownLimitWithBehaviors`: each
/// policy allows a change from the count at the start of its period (current minus what was
/// added plus what was removed since); `selectPolicy` picks among them.
fn scale_limit(
    rules: &ScalingRules,
    state: &ServiceState,
    now: Millis,
    current: u32,
    direction: Direction,
) -> u32 {
    let current = i64::from(current);
    // Max picks the biggest change: the highest count up, the lowest down.
    let biggest = match (rules.select_policy, direction) {
        (SelectPolicy::Disabled, _) => return u32::try_from(current).unwrap_or(u32::MAX),
        (SelectPolicy::Max, Direction::Up) | (SelectPolicy::Min, Direction::Down) => true,
        (SelectPolicy::Min, Direction::Up) | (SelectPolicy::Max, Direction::Down) => false,
    };
    let mut result: Option<i64> = None;
    for policy in &rules.policies {
        let (added, removed) = state
            .scale_events
            .iter()
            .filter(|&&(at, _)| at.saturating_add(policy.period_ms) > now)
            .fold((0, 0), |(added, removed), &(_, change)| {
                if change > 0 {
                    (added + change, removed)
                } else {
                    (added, removed - change)
                }
            });
        let start = current - added + removed;
        let value = i64::from(policy.value);
        let proposed = match (policy.kind, direction) {
            (ScalingPolicyKind::Pods, Direction::Up) => start + value,
            (ScalingPolicyKind::Pods, Direction::Down) => start - value,
            // Rounded up on the way up, so that a small percentage still adds a pod.
            (ScalingPolicyKind::Percent, Direction::Up) => {
                (start as f64 * (1.0 + value as f64 / 100.0)).ceil() as i64
            }
            (ScalingPolicyKind::Percent, Direction::Down) => {
                (start as f64 * (1.0 - value as f64 / 100.0)) as i64
            }
        };
        result = Some(match result {
            None => proposed,
            Some(so_far) if biggest => so_far.max(proposed),
            Some(so_far) => so_far.min(proposed),
        });
    }
    // No policy allows no change.
    let limit = result.unwrap_or(current);
    u32::try_from(limit.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InstanceSample, Observation};

    const SERVICE: &str = "api";

    /// A pod in a hand-built history: created at `born` (seconds), ready from `ready` on.
    #[derive(Debug, Clone)]
    struct Pod {
        id: String,
        born: u64,
        ready: Option<u64>,
        cpu: f64,
    }

    /// `count` pods created long ago, ready, each using `cpu` cores.
    fn old_pods(count: usize, cpu: f64) -> Vec<Pod> {
        (0..count)
            .map(|index| Pod {
                id: format!("old-{index}"),
                born: 0,
                ready: Some(0),
                cpu,
            })
            .collect()
    }

    fn new_pod(id: &str, born: u64, ready: Option<u64>) -> Pod {
        Pod {
            id: id.to_owned(),
            born,
            ready,
            cpu: 0.0,
        }
    }

    fn second(at: u64, pods: &[Pod]) -> Observation {
        let instances = pods
            .iter()
            .filter(|pod| pod.born <= at)
            .map(|pod| InstanceSample {
                id: pod.id.clone(),
                ready: pod.ready.is_some_and(|ready| ready <= at),
                age_ms: (at - pod.born) * 1000,
                cpu_used: pod.cpu,
                cpu_limit: 1.0,
                ..InstanceSample::default()
            })
            .collect();
        let sample = ServiceSample {
            instances,
            ..ServiceSample::default()
        };
        Observation {
            at: at * 1000,
            services: [(SERVICE.to_owned(), sample)].into(),
            calls: Vec::new(),
        }
    }

    /// Bounds as a manifest gives them: 1 core requested per instance.
    fn scaling(min: u32, max: u32) -> ScalingConfig {
        let bounds = Bounds {
            min_instances: min,
            max_instances: max,
            cpu: 1.0,
            ..Bounds::default()
        };
        ScalingConfig {
            entry: SERVICE.to_owned(),
            slo: crate::Slo::default(),
            services: [(SERVICE.to_owned(), bounds)].into(),
            cpu_budget: None,
        }
    }

    /// Seconds `from..=to` of `pods_at(second)` pushed without asking the policy.
    fn fill(history: &mut History, from: u64, to: u64, pods_at: impl Fn(u64) -> Vec<Pod>) {
        for at in from..=to {
            history.push(second(at, &pods_at(at)));
        }
    }

    /// Seconds `from..=to` pushed and decided one by one, as the caller does; the decisions and
    /// the second each came in.
    fn drive(
        hpa: &mut Hpa,
        history: &mut History,
        config: &ScalingConfig,
        from: u64,
        to: u64,
        pods_at: impl Fn(u64) -> Vec<Pod>,
    ) -> Vec<(u64, Decision)> {
        let mut decisions = Vec::new();
        for at in from..=to {
            history.push(second(at, &pods_at(at)));
            for decision in hpa.decide(at * 1000, history, config) {
                decisions.push((at, decision));
            }
        }
        decisions
    }

    /// One sync at second 1000 over a minute of `pods`.
    fn sync_once(pods: &[Pod], config: &ScalingConfig) -> Decision {
        let mut history = History::default();
        fill(&mut history, 940, 999, |_| pods.to_vec());
        let mut hpa = Hpa::default();
        let mut decisions = drive(&mut hpa, &mut history, config, 1000, 1000, |_| {
            pods.to_vec()
        });
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        decisions.remove(0).1
    }

    /// HPA: desiredReplicas = ceil(ready pods × utilisation / target) — 3 pods at 92 % of
    /// their request with a 70 % target want ceil(3 × 92 / 70) = 4.
    #[test]
    fn scale_up_is_the_ceiling_of_pods_times_the_usage_ratio() {
        let decision = sync_once(&old_pods(3, 0.92), &scaling(1, 10));
        assert_eq!(decision.instances, 4);
        assert_eq!(decision.cpu, 1.0);
        assert_eq!(
            decision.reason,
            "cpu 92% of request over 3 ready pods, target 70%: 3 -> 4"
        );
    }

    /// HPA: tolerance 0.1 — a ratio of 76 / 70 = 1.086 changes nothing, 78 / 70 = 1.114 does.
    #[test]
    fn a_ratio_within_the_tolerance_changes_nothing() {
        let kept = sync_once(&old_pods(3, 0.76), &scaling(1, 10));
        assert_eq!(kept.instances, 3);
        assert!(kept.reason.contains("within tolerance"), "{}", kept.reason);
        assert!(kept.reason.ends_with("keep 3"), "{}", kept.reason);

        let scaled = sync_once(&old_pods(3, 0.78), &scaling(1, 10));
        assert_eq!(scaled.instances, 4);
    }

    /// HPA: utilisation is whole percent (integer division upstream) — 3 pods at 93.9 % read
    /// as 93 %: ceil(3 × 93 / 70) = 4, where the exact 93.9 % would give 5.
    #[test]
    fn utilisation_is_truncated_to_whole_percent() {
        let decision = sync_once(&old_pods(3, 0.939), &scaling(1, 10));
        assert!(
            decision.reason.starts_with("cpu 93%"),
            "{}",
            decision.reason
        );
        assert_eq!(decision.instances, 4);
    }

    /// HPA: --horizontal-pod-autoscaler-sync-period 15 s — a look at the first call, then one
    /// every 15 s, nothing in between.
    #[test]
    fn syncs_on_the_first_call_and_every_15_seconds() {
        let mut history = History::default();
        let config = scaling(1, 10);
        let mut hpa = Hpa::default();
        let decisions = drive(&mut hpa, &mut history, &config, 1000, 1031, |_| {
            old_pods(2, 0.7)
        });
        let seconds: Vec<u64> = decisions.iter().map(|(at, _)| *at).collect();
        assert_eq!(seconds, [1000, 1015, 1030]);
    }

    /// HPA: default scale-up behaviour, Pods 4 and Percent 100 per 15 s with selectPolicy Max —
    /// at most max(current + 4, 2 × current) per sync.
    #[test]
    fn scale_up_is_limited_to_four_pods_or_doubling_whichever_is_more() {
        // 400 % over 2 pods wants 12; +4 allows 6, doubling 4: 6.
        let small = sync_once(&old_pods(2, 4.0), &scaling(1, 100));
        assert_eq!(small.instances, 6);
        assert!(
            small.reason.contains("scale-up limited to 6"),
            "{}",
            small.reason
        );
        // 400 % over 10 pods wants 58; +4 allows 14, doubling 20: 20.
        let large = sync_once(&old_pods(10, 4.0), &scaling(1, 100));
        assert_eq!(large.instances, 20);
        // The maximum caps before the rate does.
        let capped = sync_once(&old_pods(10, 4.0), &scaling(1, 12));
        assert_eq!(capped.instances, 12);
        assert!(capped.reason.contains("maximum 12"), "{}", capped.reason);
    }

    /// HPA: replicas added earlier in a policy's period count against it — after +4 within the
    /// last 15 s, the Pods policy allows nothing more and only doubling from the period's start
    /// remains.
    #[test]
    fn replicas_added_within_the_period_use_up_the_limit() {
        let config = HpaConfig::default();
        let mut state = ServiceState::default();
        // 2 -> 6 ten seconds ago: the period started at 2.
        state.scale_events.push_back((90_000, 4));
        let limit = scale_limit(&config.scale_up, &state, 100_000, 6, Direction::Up);
        assert_eq!(limit, 6); // max(2 + 4, 2 × 2)
        let later = scale_limit(&config.scale_up, &state, 105_000, 6, Direction::Up);
        assert_eq!(later, 12); // the event left the period: max(6 + 4, 2 × 6)
    }

    /// HPA: scale-down stabilisation window 300 s — the count applied is the highest
    /// recommendation of the last 300 s, so it comes down step by step as they age out.
    #[test]
    fn scale_down_takes_the_highest_recommendation_of_the_last_300_seconds() {
        let mut history = History::default();
        let config = scaling(1, 10);
        let mut hpa = Hpa::default();
        // 70 % (recommend 4), then 52.5 % for one sync (3), then 35 % (2).
        let load = |at: u64| match at {
            ..=1000 => 0.70,
            1001..=1015 => 0.525,
            _ => 0.35,
        };
        fill(&mut history, 940, 999, |at| old_pods(4, load(at)));
        let decisions = drive(&mut hpa, &mut history, &config, 1000, 1315, |at| {
            old_pods(4, load(at))
        });
        for (at, decision) in &decisions {
            let expected = match at {
                ..=1285 => 4,
                1300 => 3, // the 4 of second 1000 is 300 s old; the 3 of 1015 is not
                _ => 2,
            };
            assert_eq!(decision.instances, expected, "at {at}: {}", decision.reason);
        }
        let (_, held) = &decisions[2];
        assert!(
            held.reason
                .contains("highest recommendation in the last 300 s is 4"),
            "{}",
            held.reason
        );
    }

    /// HPA: unready pods count at 0 % on scale-up — 6 ready pods at 100 % want 9, but with 2
    /// starting pods counted idle the 8 pods average 75 %, within tolerance: keep 8.
    #[test]
    fn unready_pods_count_as_idle_when_scaling_up() {
        let alone = sync_once(&old_pods(6, 1.0), &scaling(1, 20));
        assert_eq!(alone.instances, 9);

        let mut pods = old_pods(6, 1.0);
        pods.push(new_pod("starting-1", 995, None));
        pods.push(new_pod("starting-2", 995, None));
        let decision = sync_once(&pods, &scaling(1, 20));
        assert_eq!(decision.instances, 8);
        assert!(
            decision
                .reason
                .contains("2 not ready counted at 0% gives 75%"),
            "{}",
            decision.reason
        );
    }

    /// HPA: unready pods are left out when scaling down — 2 ready pods at 35 % and 2 starting
    /// ones: ceil(2 × 35 / 70) = 1 from the ready pods alone, held at the minimum 1 here.
    #[test]
    fn unready_pods_are_ignored_when_scaling_down() {
        let mut pods = old_pods(2, 0.35);
        pods.push(new_pod("starting-1", 995, None));
        pods.push(new_pod("starting-2", 995, None));
        let decision = sync_once(&pods, &scaling(1, 20));
        assert_eq!(decision.instances, 1);
        assert!(decision.reason.contains("4 -> 1"), "{}", decision.reason);
    }

    /// HPA: pods without metrics count at 100 % on scale-down — 3 pods at 28 % would want
    /// ceil(3 × 0.4) = 2, but with a just-started ready pod counted full the 4 pods average
    /// 46 %: ceil(4 × 46 / 70) = 3.
    #[test]
    fn pods_without_metrics_count_as_full_when_scaling_down() {
        let mut pods = old_pods(3, 0.28);
        pods.push(new_pod("fresh", 995, Some(995)));
        let decision = sync_once(&pods, &scaling(1, 20));
        assert_eq!(decision.instances, 3);
        assert!(
            decision
                .reason
                .contains("1 not scraped yet counted at 100% gives 46%"),
            "{}",
            decision.reason
        );
    }

    /// HPA: pods without metrics count at 0 % on scale-up — 3 pods at 100 % plus one not yet
    /// scraped average 75 %, within tolerance: keep 4.
    #[test]
    fn pods_without_metrics_count_as_idle_when_scaling_up() {
        let mut pods = old_pods(3, 1.0);
        pods.push(new_pod("fresh", 995, Some(995)));
        let decision = sync_once(&pods, &scaling(1, 20));
        assert_eq!(decision.instances, 4);
        assert!(
            decision.reason.contains("counted at 0%"),
            "{}",
            decision.reason
        );
    }

    /// HPA: within the CPU initialisation period, a pod whose metric window began before it
    /// turned ready is set aside (its CPU is start-up, not load).
    #[test]
    fn a_pod_ready_for_less_than_a_metric_window_is_set_aside() {
        let mut pods = old_pods(2, 0.35);
        pods.push(Pod {
            cpu: 3.0, // start-up burst
            ..new_pod("slow-starter", 900, Some(995))
        });
        let decision = sync_once(&pods, &scaling(1, 20));
        // Only the two settled pods are measured: 35 %, scale down (not up on the burst).
        assert!(
            decision.reason.starts_with("cpu 35%"),
            "{}",
            decision.reason
        );
        assert_eq!(decision.instances, 1);
    }

    /// HPA: pods being deleted are neither counted nor measured — a pod that was ready and no
    /// longer is, is draining.
    #[test]
    fn draining_pods_are_not_counted() {
        let mut history = History::default();
        let config = scaling(1, 20);
        fill(&mut history, 940, 999, |_| old_pods(3, 0.7));
        let mut pods = old_pods(3, 0.7);
        pods[2].ready = Some(2000); // not ready any more at 1000
        let mut hpa = Hpa::default();
        let decisions = drive(&mut hpa, &mut history, &config, 1000, 1000, |_| {
            pods.clone()
        });
        assert_eq!(decisions[0].1.instances, 2, "{}", decisions[0].1.reason);
    }

    /// HPA: minReplicas is at least 1 (no HPAScaleToZero) — idle pods stay at 1 with min 0, and
    /// a service with no instance at all is started at 1.
    #[test]
    fn never_goes_below_one() {
        let idle = sync_once(&old_pods(2, 0.0), &scaling(0, 10));
        assert_eq!(idle.instances, 1);
        assert!(idle.reason.contains("minimum 1"), "{}", idle.reason);

        let empty = sync_once(&[], &scaling(0, 10));
        assert_eq!(empty.instances, 1);
        let empty_min_3 = sync_once(&[], &scaling(3, 10));
        assert_eq!(empty_min_3.instances, 3);
    }

    /// HPA: no ready pod with a metric — upstream fails the metric and leaves the scale alone.
    #[test]
    fn no_metric_for_any_ready_pod_keeps_the_count() {
        let pods = vec![new_pod("a", 990, None), new_pod("b", 990, None)];
        let decision = sync_once(&pods, &scaling(1, 10));
        assert_eq!(decision.instances, 2);
        assert!(
            decision.reason.contains("no CPU metric"),
            "{}",
            decision.reason
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// HPA: whatever the load, decisions stay within [max(min, 1), max] and never grow
            /// by more than max(+4, ×2) in a sync, on a platform that does what it is told.
            #[test]
            fn decisions_respect_bounds_and_the_scale_up_rate(
                min in 0u32..4,
                extra in 0u32..30,
                cold_start in 0u64..20,
                loads in prop::collection::vec(0.0f64..40.0, 1..12),
            ) {
                let max = min.max(1) + extra;
                let config = scaling(min, max);
                let mut hpa = Hpa::default();
                let mut history = History::default();
                let mut pods: Vec<Pod> = Vec::new();
                let mut next_id = 0;
                for at in 0..(loads.len() as u64 * 40) {
                    // Each load (cores in total) lasts 40 s, shared by the ready pods.
                    let load = loads[(at / 40) as usize];
                    let ready = pods.iter().filter(|p| p.ready.is_some_and(|r| r <= at)).count();
                    for pod in &mut pods {
                        let is_ready = pod.ready.is_some_and(|r| r <= at);
                        pod.cpu = if is_ready { load / ready as f64 } else { 0.1 };
                    }
                    history.push(second(at, &pods));
                    let current = pods.len() as u32;
                    for decision in hpa.decide(at * 1000, &history, &config) {
                        prop_assert_eq!(decision.cpu, 1.0);
                        prop_assert!(decision.instances >= min.max(1), "{:?}", decision);
                        prop_assert!(decision.instances <= max, "{:?}", decision);
                        let limit = (current + 4).max(current * 2).max(min.max(1));
                        prop_assert!(decision.instances <= limit, "{} -> {:?}", current, decision);
                        // The platform: start pods that become ready later, stop the newest.
                        while (pods.len() as u32) < decision.instances {
                            pods.push(Pod {
                                id: format!("pod-{next_id}"),
                                born: at,
                                ready: Some(at + cold_start),
                                cpu: 0.0,
                            });
                            next_id += 1;
                        }
                        pods.truncate(decision.instances as usize);
                    }
                }
            }
        }
    }
}
