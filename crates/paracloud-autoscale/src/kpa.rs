//! Knative's Pod Autoscaler (KPA) on request concurrency, with `config-autoscaler` defaults.
//!
//! What is reproduced, and from where (knative/serving):
//! - `pkg/autoscaler/scaling/autoscaler.go` `Scale`: desired pods from the stable (60 s) and
//!   panic (6 s) averages of concurrency over a target of 70 per pod, each kept within
//!   [floor(ready / max-scale-down-rate), ceil(ready × max-scale-up-rate)]; panic starts when the
//!   panic window wants twice the ready pods, never scales down while it lasts, and ends once a
//!   stable window has passed since it was last triggered. A new autoscaler over more than one
//!   ready pod starts in panic, holding them until it has seen enough.
//! - `pkg/reconciler/autoscaling/kpa/scaler.go` and `kpa.go`: min/max bounds, the initial scale
//!   kept until reached once, and scale to zero: a revision wanting 0 stays at 1 until it has
//!   been active for a stable window, then turns inactive (the activator takes the traffic) and
//!   goes to zero once inactive for the grace period; wanting 0 while activating applies nothing.
//! - The activator's poke: a revision at zero with requests arriving is decided at once, not at
//!   the next tick, and held requests count as demand.
//!
//! Upstream averages concurrency in per-second buckets over the part of the window it has data
//! for; here the mean of the per-second samples present in the window does the same.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Bounds, Decision, History, Millis, Policy, ScalingConfig, ServiceSample};

/// The KPA's parameters; `Default` gives `config-autoscaler`'s defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KpaConfig {
    /// How often the autoscaler decides (upstream's `tickInterval`).
    pub tick_interval_ms: Millis,
    /// `container-concurrency-target-default`: requests in flight per pod.
    pub container_concurrency_target_default: f64,
    /// `container-concurrency-target-percentage`: the share of the target aimed at.
    pub container_concurrency_target_percentage: f64,
    /// `stable-window`.
    pub stable_window_ms: Millis,
    /// `panic-window-percentage`: the panic window as a share of the stable window.
    pub panic_window_percentage: f64,
    /// `panic-threshold-percentage`: panic when the panic window wants this share of ready pods.
    pub panic_threshold_percentage: f64,
    /// `max-scale-up-rate`: at most this many times the ready pods in one decision.
    pub max_scale_up_rate: f64,
    /// `max-scale-down-rate`: at least the ready pods divided by this in one decision.
    pub max_scale_down_rate: f64,
    /// `enable-scale-to-zero` (a service also needs a minimum of 0).
    pub enable_scale_to_zero: bool,
    /// `scale-to-zero-grace-period`: how long inactive before the last pod goes.
    pub scale_to_zero_grace_period_ms: Millis,
    /// `initial-scale`: pods a new revision gets before any traffic, kept until all are ready.
    pub initial_scale: u32,
}

impl Default for KpaConfig {
    fn default() -> Self {
        Self {
            tick_interval_ms: 2_000,
            container_concurrency_target_default: 100.0,
            container_concurrency_target_percentage: 70.0,
            stable_window_ms: 60_000,
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            enable_scale_to_zero: true,
            scale_to_zero_grace_period_ms: 30_000,
            initial_scale: 1,
        }
    }
}

impl KpaConfig {
    /// Concurrency aimed at per pod: 100 × 70 % = 70 by default.
    pub fn target(&self) -> f64 {
        // Upstream floors the target at 0.01 so that it never divides by zero.
        (self.container_concurrency_target_default * self.container_concurrency_target_percentage
            / 100.0)
            .max(0.01)
    }

    /// 10 % of the 60 s stable window: 6 s by default.
    pub fn panic_window_ms(&self) -> Millis {
        ((self.stable_window_ms as f64 * self.panic_window_percentage / 100.0) as Millis).max(1000)
    }

    /// 200 % as a ratio: 2.
    pub fn panic_threshold(&self) -> f64 {
        self.panic_threshold_percentage / 100.0
    }
}

/// The Knative Pod Autoscaler: one decider per service, ticking together.
#[derive(Debug, Default)]
pub struct Kpa {
    pub config: KpaConfig,
    last_tick: Option<Millis>,
    services: BTreeMap<String, ServiceState>,
}

/// What upstream keeps per revision: the decider's panic state and the PodAutoscaler's status.
#[derive(Debug)]
struct ServiceState {
    /// When panic was entered or last re-triggered; None when not panicking.
    panic_since: Option<Millis>,
    /// The most pods wanted during this panic: no fewer are asked for until it ends.
    max_panic_pods: u32,
    activity: Activity,
    /// The initial scale has been reached once.
    initialized: bool,
    /// The scale last applied (the Deployment's replicas).
    applied: u32,
}

/// The PodAutoscaler's Active condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    /// Wanting pods but none ready yet (requests wait in the activator).
    Activating,
    Active {
        since: Millis,
    },
    /// Wanting zero; the activator is in the path since then.
    Inactive {
        since: Millis,
    },
}

impl ServiceState {
    /// A new decider for a revision seen for the first time.
    fn new(now: Millis, ready: u32, instances: u32, initial_scale: u32) -> Self {
        Self {
            // Upstream: a new autoscaler over more than one ready pod starts panicking so that
            // it holds the current scale until it has metrics to decide on.
            panic_since: (ready > 1).then_some(now),
            max_panic_pods: ready,
            activity: if ready > 0 {
                Activity::Active { since: now }
            } else {
                Activity::Activating
            },
            // A revision already running its initial scale has reached it.
            initialized: ready >= initial_scale,
            applied: instances,
        }
    }
}

impl Kpa {
    pub fn new(config: KpaConfig) -> Self {
        Self {
            config,
            last_tick: None,
            services: BTreeMap::new(),
        }
    }
}

impl Policy for Kpa {
    fn name(&self) -> &'static str {
        "kpa"
    }

    fn decide(&mut self, now: Millis, history: &History, config: &ScalingConfig) -> Vec<Decision> {
        let tick = self
            .last_tick
            .is_none_or(|last| now >= last.saturating_add(self.config.tick_interval_ms));
        if tick {
            self.last_tick = Some(now);
        }
        let mut decisions = Vec::new();
        for (service, bounds) in &config.services {
            let known = history.service(service, history.len()).next_back();
            let ready = known.map_or(0, |sample| count(sample.ready_instances()));
            let state = self.services.entry(service.clone()).or_insert_with(|| {
                ServiceState::new(
                    now,
                    ready,
                    known.map_or(0, |s| count(s.instances.len())),
                    self.config.initial_scale,
                )
            });
            // Requests arriving or held this second: the activator reports them.
            let waiting = history
                .latest()
                .and_then(|observation| observation.services.get(service))
                .map(|sample| (sample.arrivals, sample.in_flight))
                .filter(|&(arrivals, in_flight)| arrivals > 0 || in_flight > 0);
            // The activator pokes the autoscaler of a revision at zero when requests come.
            let poke = state.applied == 0 && waiting.is_some();
            if tick || poke {
                let input = Input {
                    now,
                    service,
                    bounds,
                    history,
                    ready,
                    waiting,
                };
                decisions.push(scale(&self.config, state, &input));
            }
        }
        decisions
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What one decision for one service reads.
struct Input<'a> {
    now: Millis,
    service: &'a str,
    bounds: &'a Bounds,
    history: &'a History,
    ready: u32,
    /// Arrivals and requests in flight this second, when there are any.
    waiting: Option<(u64, u32)>,
}

/// Mean concurrency of the seconds observed within the last `window_ms`; 0 without any.
fn average_concurrency(history: &History, service: &str, window_ms: Millis) -> f64 {
    let seconds = usize::try_from(window_ms.div_ceil(1000)).unwrap_or(usize::MAX);
    let (sum, n) = history
        .service(service, seconds)
        .map(|sample: &ServiceSample| sample.concurrency)
        .fold((0.0, 0u32), |(sum, n), concurrency| {
            (sum + concurrency, n + 1)
        });
    if n == 0 {
        0.0
    } else {
        sum / f64::from(n)
    }
}

/// One decision: the decider (`autoscaler.go` `Scale`), then the scaler (`scaler.go`).
fn scale(config: &KpaConfig, state: &mut ServiceState, input: &Input) -> Decision {
    let now = input.now;
    // Upstream divides by at least one pod, so that a revision at zero can scale up.
    let ready = f64::from(input.ready.max(1));
    let target = config.target();
    let stable = average_concurrency(input.history, input.service, config.stable_window_ms);
    let panic = average_concurrency(input.history, input.service, config.panic_window_ms());

    let max_scale_up = (config.max_scale_up_rate * ready).ceil();
    // A revision is always reachable here (routed), so scale-down is limited by the rate.
    let max_scale_down = (ready / config.max_scale_down_rate).floor();
    let mut stable_pods = (stable / target).ceil();
    let mut panic_pods = (panic / target).ceil();
    let mut why = Vec::new();
    if let Some((arrivals, in_flight)) = input.waiting {
        if stable_pods < 1.0 {
            // Held requests are in the activator's reports even before any pod served them.
            why.push(format!(
                "activator: {arrivals} arriving, {in_flight} in flight"
            ));
            stable_pods = 1.0;
            panic_pods = panic_pods.max(1.0);
        }
    }
    let limit = |pods: f64| pods.max(max_scale_down).min(max_scale_up) as u32;
    let desired_stable = limit(stable_pods);
    let desired_panic = limit(panic_pods);
    why.push(format!(
        "concurrency {stable:.1} over {} s, {panic:.1} over {} s, target {target:.0} per pod, {} ready",
        config.stable_window_ms / 1000,
        config.panic_window_ms() / 1000,
        input.ready
    ));
    if desired_stable as f64 > stable_pods {
        why.push(format!(
            "scale-down limited to {desired_stable} (rate {})",
            config.max_scale_down_rate
        ));
    } else if (desired_stable as f64) < stable_pods {
        why.push(format!("scale-up limited to {desired_stable}"));
    }

    // Upstream compares the unclamped panic count with the ready pods.
    let over_threshold = panic_pods / ready >= config.panic_threshold();
    match state.panic_since {
        None if over_threshold => {
            why.push(format!(
                "panic: the {} s window wants {panic_pods} pods, {:.0}% of the ready ones",
                config.panic_window_ms() / 1000,
                panic_pods / ready * 100.0
            ));
            state.panic_since = Some(now);
        }
        Some(_) if over_threshold => state.panic_since = Some(now),
        Some(since) if since.saturating_add(config.stable_window_ms) < now => {
            why.push(format!(
                "panic over: {} s without crossing {}%",
                config.stable_window_ms / 1000,
                config.panic_threshold_percentage
            ));
            state.panic_since = None;
            state.max_panic_pods = 0;
        }
        _ => {}
    }
    let mut desired = desired_stable;
    if state.panic_since.is_some() {
        // The bigger of the two: the stable window may want more than the panic one.
        desired = desired.max(desired_panic);
        if desired < state.max_panic_pods {
            why.push(format!(
                "panicking: no scale-down below {} (wants {desired})",
                state.max_panic_pods
            ));
        } else {
            state.max_panic_pods = desired;
            why.push(format!("panicking: want {desired}"));
        }
        desired = state.max_panic_pods;
    }

    // The scaler: bounds, initial scale, then scale to zero.
    let min = input.bounds.min_instances;
    let max = input.bounds.max_instances.max(min);
    let floor = if state.initialized {
        min
    } else {
        min.max(config.initial_scale)
    };
    let mut want = desired.max(floor).min(max);
    if want > desired {
        why.push(if floor > min {
            format!("initial scale {floor} not reached yet")
        } else {
            format!("held at the minimum {min}")
        });
    } else if want < desired {
        why.push(format!("capped at the maximum {max}"));
    }
    // Whether `want` is applied; upstream may decide 0 and leave the Deployment as it is.
    let mut apply = true;
    // Upstream's "scale unknown" (-1): nothing decided, the Active condition stays as it is.
    let mut unknown = false;
    if want == 0 {
        if !config.enable_scale_to_zero {
            want = 1;
            why.push("scale to zero disabled".to_owned());
        } else {
            match state.activity {
                Activity::Activating => {
                    apply = false;
                    unknown = true;
                    why.push("activating: nothing to apply".to_owned());
                }
                Activity::Active { since }
                    if now.saturating_sub(since) < config.stable_window_ms =>
                {
                    want = 1;
                    why.push(format!(
                        "active for {} s, less than the stable window: keep 1",
                        now.saturating_sub(since) / 1000
                    ));
                }
                Activity::Active { .. } => {
                    apply = false;
                    why.push(format!(
                        "no traffic: inactive, {} s grace before zero",
                        config.scale_to_zero_grace_period_ms / 1000
                    ));
                }
                Activity::Inactive { since }
                    if now.saturating_sub(since) >= config.scale_to_zero_grace_period_ms =>
                {
                    why.push(format!(
                        "inactive for the {} s grace period",
                        config.scale_to_zero_grace_period_ms / 1000
                    ));
                }
                Activity::Inactive { since } => {
                    apply = false;
                    why.push(format!(
                        "inactive for {} s of the {} s grace period",
                        now.saturating_sub(since) / 1000,
                        config.scale_to_zero_grace_period_ms / 1000
                    ));
                }
            }
        }
    }

    let before = state.applied;
    let instances = if apply {
        want
    } else {
        // Not applied: the Deployment keeps its replicas (within the bounds, as upstream's
        // would be).
        before.max(min).min(max)
    };
    state.applied = instances;

    // `computeActiveCondition`, with `want` as decided even when not applied.
    let min_ready = min.max(1);
    state.activity = match (unknown, want, state.activity) {
        (true, _, Activity::Inactive { since }) | (false, 0, Activity::Inactive { since }) => {
            Activity::Inactive { since }
        }
        (false, 0, _) => Activity::Inactive { since: now },
        (_, _, Activity::Active { since }) if input.ready >= min_ready => {
            Activity::Active { since }
        }
        _ if input.ready >= min_ready => Activity::Active { since: now },
        _ => Activity::Activating,
    };
    if input.ready >= config.initial_scale {
        state.initialized = true;
    }

    let change = if instances == before {
        format!("keep {instances}")
    } else {
        format!("{before} -> {instances}")
    };
    Decision {
        service: input.service.to_owned(),
        instances,
        // The KPA scales out only; the size stays what the manifest asks for.
        cpu: input.bounds.cpu,
        reason: format!("{}: {change}", why.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InstanceSample, Observation};

    const SERVICE: &str = "fn";

    /// One second of traffic: mean concurrency and requests arriving (and held in flight).
    #[derive(Debug, Clone, Copy)]
    struct Load {
        concurrency: f64,
        arrivals: u64,
    }

    fn busy(concurrency: f64) -> Load {
        Load {
            concurrency,
            arrivals: concurrency.ceil() as u64,
        }
    }

    fn idle() -> Load {
        busy(0.0)
    }

    /// Requests arriving at a service with no pod: held, not yet counted as concurrency.
    fn arriving(arrivals: u64) -> Load {
        Load {
            concurrency: 0.0,
            arrivals,
        }
    }

    fn second(at: u64, ready: u32, starting: u32, load: Load) -> Observation {
        let pod = |id: String, ready: bool| InstanceSample {
            id,
            ready,
            age_ms: 600_000,
            cpu_limit: 1.0,
            ..InstanceSample::default()
        };
        let instances = (0..ready)
            .map(|index| pod(format!("ready-{index}"), true))
            .chain((0..starting).map(|index| pod(format!("starting-{index}"), false)))
            .collect();
        let sample = ServiceSample {
            arrivals: load.arrivals,
            concurrency: load.concurrency,
            in_flight: load.concurrency.round() as u32 + u32::from(load.arrivals > 0),
            instances,
            ..ServiceSample::default()
        };
        Observation {
            at: at * 1000,
            services: [(SERVICE.to_owned(), sample)].into(),
            calls: Vec::new(),
        }
    }

    fn scaling(min: u32, max: u32) -> ScalingConfig {
        let bounds = Bounds {
            min_instances: min,
            max_instances: max,
            cpu: 0.5,
            ..Bounds::default()
        };
        ScalingConfig {
            entry: SERVICE.to_owned(),
            slo: crate::Slo::default(),
            services: [(SERVICE.to_owned(), bounds)].into(),
            cpu_budget: None,
        }
    }

    /// A KPA over one service whose ready pods are fixed, or follow its decisions at once.
    struct Run {
        kpa: Kpa,
        history: History,
        config: ScalingConfig,
        ready: u32,
        follow: bool,
    }

    impl Run {
        fn new(min: u32, max: u32, ready: u32, follow: bool) -> Self {
            Self {
                kpa: Kpa::default(),
                history: History::default(),
                config: scaling(min, max),
                ready,
                follow,
            }
        }

        /// Seconds pushed without asking the KPA (history from before it started).
        fn fill(&mut self, from: u64, to: u64, load: impl Fn(u64) -> Load) {
            for at in from..=to {
                self.history.push(second(at, self.ready, 0, load(at)));
            }
        }

        /// Seconds pushed and decided one by one; the decisions with their second.
        fn drive(
            &mut self,
            from: u64,
            to: u64,
            load: impl Fn(u64) -> Load,
        ) -> Vec<(u64, Decision)> {
            let mut decisions = Vec::new();
            for at in from..=to {
                self.history.push(second(at, self.ready, 0, load(at)));
                for decision in self.kpa.decide(at * 1000, &self.history, &self.config) {
                    if self.follow {
                        self.ready = decision.instances;
                    }
                    decisions.push((at, decision));
                }
            }
            decisions
        }
    }

    fn at(decisions: &[(u64, Decision)], second: u64) -> &Decision {
        match decisions.iter().find(|(at, _)| *at == second) {
            Some((_, decision)) => decision,
            None => panic!("no decision at {second}: {decisions:?}"),
        }
    }

    /// KPA: target 70 per pod (container-concurrency-target-default 100 × 70 %) — 280 in
    /// flight over 4 pods keeps 4, 281 wants ceil(281 / 70) = 5.
    #[test]
    fn the_target_is_70_requests_in_flight_per_pod() {
        for (concurrency, expected) in [(280.0, 4), (281.0, 5)] {
            let mut run = Run::new(1, 20, 4, false);
            run.fill(900, 999, |_| busy(concurrency));
            let decisions = run.drive(1000, 1000, |_| busy(concurrency));
            let decision = at(&decisions, 1000);
            assert_eq!(decision.instances, expected, "{}", decision.reason);
            assert_eq!(decision.cpu, 0.5);
        }
    }

    /// KPA: the stable window is 60 s and the panic window 10 % of it (6 s) — a 6 s burst to
    /// 280 over 4 pods moves the stable average to 91 (2 pods) while the panic window alone
    /// would want 4; without panic the stable count is used.
    #[test]
    fn stable_decisions_average_60_seconds_and_panic_ones_6() {
        let mut run = Run::new(1, 20, 4, false);
        let load = |at: u64| busy(if at >= 1115 { 280.0 } else { 70.0 });
        run.fill(900, 999, load);
        let decisions = run.drive(1000, 1120, load);
        let decision = at(&decisions, 1120);
        assert!(
            decision
                .reason
                .contains("concurrency 91.0 over 60 s, 280.0 over 6 s"),
            "{}",
            decision.reason
        );
        assert_eq!(decision.instances, 2, "{}", decision.reason);
    }

    /// KPA: panic-threshold-percentage 200 — over 3 ready pods, a panic window wanting 5 pods
    /// (167 %) does not panic, one wanting 6 (200 %) does and gets its 6 at once.
    #[test]
    fn panic_starts_when_the_panic_window_wants_twice_the_ready_pods() {
        for (burst, expected, panics) in [(350.0, 2, false), (420.0, 6, true)] {
            let mut run = Run::new(1, 20, 3, false);
            let load = move |at: u64| busy(if at >= 1095 { burst } else { 70.0 });
            run.fill(900, 999, load);
            let decisions = run.drive(1000, 1100, load);
            let decision = at(&decisions, 1100);
            assert_eq!(decision.instances, expected, "{}", decision.reason);
            assert_eq!(
                decision.reason.contains("panic:"),
                panics,
                "{}",
                decision.reason
            );
        }
    }

    /// KPA: no scale-down while panicking, and panic ends once a stable window (60 s) has
    /// passed since it was last triggered — after a burst at 1100 the 6 pods are held through
    /// 1160 although the load is back to 70, and released at the first tick after.
    #[test]
    fn panic_holds_the_scale_then_ends_a_stable_window_later() {
        let mut run = Run::new(1, 20, 3, false);
        let load = |at: u64| {
            busy(if (1095..=1100).contains(&at) {
                420.0
            } else {
                70.0
            })
        };
        run.fill(900, 999, load);
        let decisions = run.drive(1000, 1170, load);
        for (second, decision) in decisions
            .iter()
            .filter(|(at, _)| (1100..=1160).contains(at))
        {
            assert_eq!(decision.instances, 6, "at {second}: {}", decision.reason);
        }
        assert!(at(&decisions, 1110)
            .reason
            .contains("no scale-down below 6"));
        let released = at(&decisions, 1162);
        assert!(
            released.reason.contains("panic over"),
            "{}",
            released.reason
        );
        assert_eq!(released.instances, 1, "{}", released.reason);
    }

    /// KPA: max-scale-down-rate 2 — at most halving the ready pods per decision (10 -> 5 ->
    /// 2 -> 1), after the panic a new autoscaler starts in over more than one ready pod.
    #[test]
    fn scale_down_at_most_halves_the_ready_pods() {
        let mut run = Run::new(1, 20, 10, true);
        run.fill(900, 999, |_| idle());
        let decisions = run.drive(1000, 1066, |_| idle());
        // Starting panic holds the 10 pods a stable window.
        assert_eq!(at(&decisions, 1000).instances, 10);
        assert_eq!(at(&decisions, 1060).instances, 10);
        let first = at(&decisions, 1062);
        assert_eq!(first.instances, 5, "{}", first.reason);
        assert!(
            first.reason.contains("scale-down limited to 5"),
            "{}",
            first.reason
        );
        assert_eq!(at(&decisions, 1064).instances, 2);
        assert_eq!(at(&decisions, 1066).instances, 1);
    }

    /// KPA: max-scale-up-rate 1000 and bounds — a burst is not rate-limited in practice but is
    /// capped by the service's maximum.
    #[test]
    fn scale_up_is_capped_by_the_maximum() {
        let mut run = Run::new(1, 8, 1, false);
        run.fill(900, 999, |_| busy(70.0));
        let decisions = run.drive(1000, 1000, |_| busy(3500.0));
        let decision = at(&decisions, 1000);
        assert_eq!(decision.instances, 8, "{}", decision.reason);
        assert!(decision.reason.contains("maximum 8"), "{}", decision.reason);
    }

    /// KPA: scale to zero — with min 0, the last pod stays for the stable window of no traffic
    /// (60 s), then while inactive for the scale-to-zero-grace-period (30 s), then goes.
    #[test]
    fn scales_to_zero_after_the_grace_period_when_min_is_zero() {
        let mut run = Run::new(0, 10, 1, true);
        let load = |at: u64| busy(if at < 1010 { 10.0 } else { 0.0 });
        run.fill(900, 999, load);
        let decisions = run.drive(1000, 1102, load);
        // The last request in flight at 1009 leaves the stable window at 1069.
        for (second, decision) in decisions.iter().filter(|(at, _)| *at < 1100) {
            assert_eq!(decision.instances, 1, "at {second}: {}", decision.reason);
        }
        assert!(at(&decisions, 1070).reason.contains("inactive"));
        assert!(at(&decisions, 1098)
            .reason
            .contains("inactive for 28 s of the 30 s grace"));
        let zero = at(&decisions, 1100);
        assert_eq!(zero.instances, 0, "{}", zero.reason);
        assert!(zero.reason.ends_with("1 -> 0"), "{}", zero.reason);
    }

    /// KPA: scale to zero needs min-scale 0 — with a minimum of 1 the idle pod stays.
    #[test]
    fn never_scales_to_zero_with_a_minimum() {
        let mut run = Run::new(1, 10, 1, true);
        let load = |at: u64| busy(if at < 1010 { 10.0 } else { 0.0 });
        run.fill(900, 999, load);
        let decisions = run.drive(1000, 1200, load);
        assert!(decisions
            .iter()
            .all(|(_, decision)| decision.instances == 1));
    }

    /// KPA: the activator pokes the autoscaler of a revision at zero — requests arriving at an
    /// odd second are decided at that second, not at the next 2 s tick, and get a pod.
    #[test]
    fn arrivals_wake_a_service_at_zero_at_once() {
        let mut run = Run::new(0, 10, 1, true);
        let load = |at: u64| busy(if at < 1010 { 10.0 } else { 0.0 });
        run.fill(900, 999, load);
        let decisions = run.drive(1000, 1100, load);
        assert_eq!(at(&decisions, 1100).instances, 0);

        // At zero, idle: nothing between ticks; then requests at 1105.
        let woken = run.drive(
            1101,
            1105,
            |at| if at == 1105 { arriving(3) } else { idle() },
        );
        let seconds: Vec<u64> = woken.iter().map(|(at, _)| *at).collect();
        assert_eq!(seconds, [1102, 1104, 1105]);
        let decision = at(&woken, 1105);
        assert_eq!(decision.instances, 1, "{}", decision.reason);
        assert!(
            decision.reason.contains("activator: 3 arriving"),
            "{}",
            decision.reason
        );
    }

    /// KPA: the autoscaler ticks every 2 s — decisions at the first call and every 2 s, none in
    /// between while pods are up.
    #[test]
    fn decides_every_2_seconds() {
        let mut run = Run::new(1, 10, 1, false);
        run.fill(900, 999, |_| busy(35.0));
        let decisions = run.drive(1000, 1007, |_| busy(35.0));
        let seconds: Vec<u64> = decisions.iter().map(|(at, _)| *at).collect();
        assert_eq!(seconds, [1000, 1002, 1004, 1006]);
    }

    /// KPA: initial-scale 1 — a new revision gets a pod before any traffic, kept until ready,
    /// and scale to zero only starts once it is.
    #[test]
    fn a_new_revision_starts_at_the_initial_scale() {
        let mut run = Run::new(0, 10, 0, false);
        let decisions = run.drive(1000, 1004, |_| idle());
        for (second, decision) in &decisions {
            assert_eq!(decision.instances, 1, "at {second}: {}", decision.reason);
        }
        assert!(decisions[0].1.reason.contains("initial scale 1"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// KPA: whatever the traffic, decisions stay within the bounds, never drop below
            /// half the ready pods (max-scale-down-rate 2) unless the maximum says so, and come
            /// only at 2 s ticks or when requests reach a service at zero.
            #[test]
            fn decisions_respect_bounds_rates_and_ticks(
                min in 0u32..3,
                extra in 0u32..20,
                cold_start in 0u64..10,
                loads in prop::collection::vec(
                    prop_oneof![Just(0.0f64), 0.0f64..1500.0], 1..20),
            ) {
                let max = min + extra.max(1);
                let config = scaling(min, max);
                let mut kpa = Kpa::default();
                let mut history = History::default();
                // Pods by the second they turn ready; the newest last.
                let mut pods: Vec<u64> = Vec::new();
                let mut applied: Option<u32> = None;
                let mut last_tick: Option<u64> = None;
                for at in 0..(loads.len() as u64 * 10) {
                    let load = busy(loads[(at / 10) as usize]);
                    let ready = pods.iter().filter(|&&r| r <= at).count() as u32;
                    let starting = pods.len() as u32 - ready;
                    history.push(second(at, ready, starting, load));
                    for decision in kpa.decide(at * 1000, &history, &config) {
                        prop_assert_eq!(decision.cpu, 0.5);
                        prop_assert!(decision.instances >= min, "{:?}", decision);
                        prop_assert!(decision.instances <= max, "{:?}", decision);
                        prop_assert!(
                            decision.instances >= (ready / 2).min(max),
                            "{} ready -> {:?}", ready, decision
                        );
                        let tick = last_tick.is_none_or(|last| at >= last + 2);
                        if tick {
                            last_tick = Some(at);
                        } else {
                            prop_assert_eq!(applied, Some(0), "off-tick {:?}", decision);
                            prop_assert!(load.arrivals > 0);
                        }
                        applied = Some(decision.instances);
                        while (pods.len() as u32) < decision.instances {
                            pods.push(at + cold_start);
                        }
                        pods.truncate(decision.instances as usize);
                    }
                }
            }
        }
    }
}
