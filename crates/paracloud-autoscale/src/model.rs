//! The model policy: a queueing model of the whole application, re-planned every second.
//!
//! Each second it estimates, from what it observed, every service's CPU demand per request
//! (CPU used ÷ requests answered), its visits per end-to-end request, and how long an instance
//! takes to start; predicts the entry's load one start-up time ahead (level, trend and bursts);
//! and asks the planner for the cheapest allocation whose predicted end-to-end percentile meets
//! the SLO. CPU comes first: while new instances start, the running ones get the CPU the plan
//! needs at once (a cgroup quota change), and give it back once the instances are ready.
//! Scaling in waits until the plan has asked for less for a while, so the policy does not flap;
//! a service with no requests for its idle time goes to zero, and comes back with the first.

use std::collections::{BTreeMap, VecDeque};

use crate::observe::{Observation, ServiceSample};
use crate::plan::{self, Allocation, PlanTarget, ServiceLoad};
use crate::{Decision, History, Millis, Policy, ScalingConfig};

/// The model policy's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Plan for this fraction of the SLO: room for the model's error and the arrivals' noise.
    pub slo_fraction: f64,
    /// The SLO is judged second by second, and the percentile of the hundred-odd requests of
    /// one second scatters around the long-run one. The plan keeps a stricter long-run
    /// percentile under the SLO: the one whose tail is this many times thinner (p95 with 4:
    /// p98.75), so that few seconds miss.
    pub tail_tightening: f64,
    /// When the SLO is below what the service times allow, aim this far above that floor.
    pub floor_margin: f64,
    /// The highest utilisation planned for any service.
    pub max_utilisation: f64,
    /// What an instance costs besides its CPU, in cores.
    pub instance_cost: f64,
    /// CPU sizes per instance the policy picks from, in cores (clipped to each service's range).
    pub cpu_sizes: Vec<f64>,
    /// Seconds of observations the demand and visit estimates average over.
    pub estimate_window: usize,
    /// Seconds the plan must ask for fewer instances before they are drained.
    pub scale_in_delay: usize,
    /// Seconds the plan must ask for less CPU before it is taken back.
    pub cpu_down_delay: usize,
    /// A second whose arrivals exceed the recent mean by this factor (and by more than noise)
    /// is a burst: planned for at once.
    pub burst_factor: f64,
    /// Instance start time assumed until one has been seen.
    pub default_startup_ms: Millis,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            slo_fraction: 0.8,
            tail_tightening: 16.0,
            floor_margin: 1.3,
            max_utilisation: 0.85,
            instance_cost: 0.5,
            cpu_sizes: vec![0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0],
            estimate_window: 10,
            scale_in_delay: 30,
            cpu_down_delay: 20,
            burst_factor: 1.5,
            default_startup_ms: 1000,
        }
    }
}

/// Seconds over which observed and predicted times are compared.
const CALIBRATION_SECONDS: usize = 60;

/// The model policy. See the module documentation.
#[derive(Debug, Default)]
pub struct ModelPolicy {
    pub config: ModelConfig,
    services: BTreeMap<String, Tracked>,
    /// Start-up time estimate (EWMA), milliseconds.
    startup_ms: Option<f64>,
    /// Observed ÷ predicted end-to-end percentile, smoothed: corrects what the queueing model
    /// gets wrong about this application (load balancing, service-time shapes).
    calibration: Option<f64>,
    /// Per second of the last minute: (predicted, observed) mean end-to-end time, each times
    /// the requests answered, and those requests.
    calibration_window: VecDeque<(f64, f64, u64)>,
    /// What the latest plan predicts: [`Policy::predicted_latency`].
    predicted: Option<f64>,
}

/// What the policy remembers about one service.
#[derive(Debug, Default)]
struct Tracked {
    demand: Option<f64>,
    visits: Option<f64>,
    /// When it last had requests arriving or in flight.
    last_busy: Option<Millis>,
    /// The plan's recent wishes: (instances, cpu), newest last.
    wishes: VecDeque<(u32, f64)>,
    /// Instances not yet seen ready, by id.
    starting: BTreeMap<String, ()>,
    /// What it was last told.
    decided: Option<(u32, f64)>,
}

impl Policy for ModelPolicy {
    fn name(&self) -> &'static str {
        "model"
    }

    fn predicted_latency(&self) -> Option<f64> {
        self.predicted
    }

    fn decide(&mut self, now: Millis, history: &History, config: &ScalingConfig) -> Vec<Decision> {
        let Some(latest) = history.latest() else {
            return Vec::new();
        };
        self.learn(now, history, latest, config);
        let loads = self.loads(history, config);
        let target = self.target(config, &loads);
        let plan = plan::plan(&loads, &target);
        self.predicted = plan.predicted.is_finite().then_some(plan.predicted);
        self.calibrate(history, &loads, config);
        let bottleneck = bottleneck(&loads, &plan.allocations);

        let mut decisions = Vec::new();
        for (load, planned) in loads.iter().zip(&plan.allocations) {
            let name = &load.name;
            let bounds = config.bounds(name);
            let sample = latest.services.get(name).cloned().unwrap_or_default();
            let tracked = self.services.entry(name.clone()).or_default();
            let current = current(&sample, tracked);

            let idle = bounds.min_instances == 0
                && sample.in_flight == 0
                && tracked
                    .last_busy
                    .is_none_or(|busy| now.saturating_sub(busy) >= bounds.idle_ms);
            let known = tracked.demand.is_some();
            // Without an estimate there is nothing to plan with: keep what runs, but never
            // leave requests waiting on a service at zero.
            let wish = if idle {
                Allocation {
                    instances: 0,
                    cpu: current.1,
                }
            } else if !known {
                let waiting = sample.arrivals > 0 || sample.in_flight > 0;
                Allocation {
                    instances: current.0.max(u32::from(waiting)).max(bounds.min_instances),
                    cpu: current.1,
                }
            } else {
                *planned
            };
            tracked.wishes.push_back((wish.instances, wish.cpu));
            let keep = self.config.scale_in_delay.max(self.config.cpu_down_delay);
            while tracked.wishes.len() > keep {
                tracked.wishes.pop_front();
            }
            // Scale out at once, scale in only what the plan has not wanted for a while.
            let instances = if idle {
                0
            } else {
                recent_max(&tracked.wishes, self.config.scale_in_delay, |w| w.0)
            };
            let ready = sample.ready_instances() as u32;
            let planned_capacity = f64::from(instances) * wish.cpu;
            // CPU first: until the new instances are ready, the ready ones carry the plan.
            let cpu_now = if ready > 0 && ready < instances && known {
                size_at_least(planned_capacity / f64::from(ready), &load.cpu_sizes)
            } else {
                wish.cpu
            };
            // Less CPU only once the plan has wanted less for a few seconds.
            let cpu = cpu_now.max(recent_max_f(&tracked.wishes, self.config.cpu_down_delay));
            let cpu = cpu.clamp(bounds.cpu_min, bounds.cpu_max);
            let instances = instances.clamp(bounds.min_instances, bounds.max_instances);
            if (instances, cpu) == current {
                continue;
            }
            tracked.decided = Some((instances, cpu));
            decisions.push(Decision {
                service: name.clone(),
                instances,
                cpu,
                reason: reason(
                    load,
                    current,
                    (instances, cpu),
                    ready,
                    &plan,
                    bottleneck.as_deref() == Some(name),
                    idle,
                    known,
                    config,
                ),
            });
        }
        decisions
    }
}

impl ModelPolicy {
    pub fn new(config: ModelConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Updates the estimates from the newest observations.
    fn learn(
        &mut self,
        now: Millis,
        history: &History,
        latest: &Observation,
        config: &ScalingConfig,
    ) {
        let window = self.config.estimate_window;
        let entry_arrivals: u64 = history
            .service(&config.entry, window)
            .map(|s| s.arrivals)
            .sum();
        for name in config.services.keys() {
            let tracked = self.services.entry(name.clone()).or_default();
            let samples: Vec<&ServiceSample> = history.service(name, window).collect();
            let completions: u64 = samples.iter().map(|s| s.completions).sum();
            let cpu: f64 = samples.iter().map(|s| s.cpu_used()).sum();
            if completions >= 5 && cpu > 0.0 {
                tracked.demand = Some(cpu / completions as f64);
            }
            let arrivals: u64 = samples.iter().map(|s| s.arrivals).sum();
            if entry_arrivals >= 10 {
                tracked.visits = Some(arrivals as f64 / entry_arrivals as f64);
            }
            let Some(sample) = latest.services.get(name) else {
                continue;
            };
            // What the instances say they can serve (PaCI) beats what is inferred from CPU.
            if let Some(demand) = sample.reported_demand() {
                tracked.demand = Some(demand);
            }
            if sample.arrivals > 0 || sample.in_flight > 0 || tracked.last_busy.is_none() {
                tracked.last_busy = Some(now);
            }
            // Start-up time: the age at which an instance is first seen ready.
            for instance in &sample.instances {
                if !instance.ready {
                    tracked.starting.insert(instance.id.clone(), ());
                } else if tracked.starting.remove(&instance.id).is_some() {
                    let seen = instance.age_ms as f64;
                    self.startup_ms = Some(match self.startup_ms {
                        Some(old) => 0.7 * old + 0.3 * seen,
                        None => seen,
                    });
                }
            }
            tracked
                .starting
                .retain(|id, _| sample.instances.iter().any(|i| &i.id == id));
        }
    }

    /// Seconds ahead the plan must hold: one instance start plus the second until the next
    /// decision.
    fn horizon(&self) -> f64 {
        self.startup_ms
            .unwrap_or(self.config.default_startup_ms as f64)
            / 1000.0
            + 1.0
    }

    /// The load each service is planned for.
    fn loads(&self, history: &History, config: &ScalingConfig) -> Vec<ServiceLoad> {
        let entry = predict_rate(
            history,
            &config.entry,
            self.horizon(),
            self.config.burst_factor,
        );
        config
            .services
            .iter()
            .map(|(name, bounds)| {
                let tracked = self.services.get(name);
                let visits = tracked
                    .and_then(|t| t.visits)
                    .unwrap_or(if *name == config.entry { 1.0 } else { 0.0 });
                // A service also called from elsewhere than the entry's requests (a worker fed
                // by a queue) keeps at least its own recent rate.
                let own = predict_rate(history, name, self.horizon(), self.config.burst_factor);
                let sizes: Vec<f64> = self
                    .config
                    .cpu_sizes
                    .iter()
                    .copied()
                    .filter(|&c| c >= bounds.cpu_min - 1e-9 && c <= bounds.cpu_max + 1e-9)
                    .collect();
                ServiceLoad {
                    name: name.clone(),
                    arrival_rate: (visits * entry).max(own),
                    demand: tracked.and_then(|t| t.demand).unwrap_or(0.0),
                    visits,
                    min_instances: bounds.min_instances,
                    max_instances: bounds.max_instances,
                    cpu_sizes: if sizes.is_empty() {
                        vec![bounds.cpu]
                    } else {
                        sizes
                    },
                }
            })
            .collect()
    }

    /// What the plan aims for. When the SLO is tighter than the service times themselves allow
    /// (a request alone on an idle instance would already miss it often), capacity cannot buy
    /// it: the plan aims a margin above that floor instead of asking for every instance there is.
    fn target(&self, config: &ScalingConfig, loads: &[ServiceLoad]) -> PlanTarget {
        let percentile = 1.0 - (1.0 - config.slo.percentile) / self.config.tail_tightening;
        let wanted = config.slo.latency_ms / 1000.0 * self.config.slo_fraction
            / self.calibration.unwrap_or(1.0);
        let reachable = plan::floor(loads, percentile) * self.config.floor_margin;
        PlanTarget {
            latency: wanted.max(reachable),
            percentile,
            max_utilisation: self.config.max_utilisation,
            instance_cost: self.config.instance_cost,
            cpu_budget: config.cpu_budget.unwrap_or(f64::INFINITY),
        }
    }

    /// Compares, over the last minute, the mean end-to-end time observed at the entry with what
    /// the model predicts for each second's arrivals and what ran in it. The mean is used rather
    /// than the percentile because it is steady even at a few requests a second.
    fn calibrate(&mut self, history: &History, loads: &[ServiceLoad], config: &ScalingConfig) {
        let Some(latest) = history.latest() else {
            return;
        };
        let Some(entry) = latest.services.get(&config.entry) else {
            return;
        };
        let mut running = Vec::with_capacity(loads.len());
        let mut seen = Vec::with_capacity(loads.len());
        for load in loads {
            let sample = latest.services.get(&load.name).cloned().unwrap_or_default();
            let ready = sample.ready_instances() as u32;
            let cpu = sample
                .instances
                .iter()
                .find(|i| i.ready)
                .map_or(0.0, |i| i.cpu_limit);
            running.push(Allocation {
                instances: ready,
                cpu,
            });
            seen.push(ServiceLoad {
                arrival_rate: sample.arrivals as f64,
                ..load.clone()
            });
        }
        let predicted = plan::mean_time(&seen, &running);
        let observed = entry.latency.mean_ms / 1000.0;
        if entry.completions > 0 && predicted.is_finite() && predicted > 0.0 && observed > 0.0 {
            let weight = entry.completions as f64;
            self.calibration_window.push_back((
                predicted * weight,
                observed * weight,
                entry.completions,
            ));
        } else {
            self.calibration_window.push_back((0.0, 0.0, 0));
        }
        while self.calibration_window.len() > CALIBRATION_SECONDS {
            self.calibration_window.pop_front();
        }
        let (predicted, observed, answered) = self
            .calibration_window
            .iter()
            .fold((0.0, 0.0, 0), |(p, o, n), s| (p + s.0, o + s.1, n + s.2));
        if answered >= 30 && predicted > 0.0 {
            self.calibration = Some((observed / predicted).clamp(0.7, 3.0));
        }
    }
}

/// What a service has now: (instances, cpu per instance), from the observation, or from the
/// last decision while the observation does not show it yet.
fn current(sample: &ServiceSample, tracked: &Tracked) -> (u32, f64) {
    let instances = sample.instances.len() as u32;
    let cpu = sample
        .instances
        .first()
        .map(|i| i.cpu_limit)
        .or(tracked.decided.map(|d| d.1))
        .unwrap_or(1.0);
    (instances, cpu)
}

/// The entry's rate expected one horizon ahead: the higher of the recent level and the last
/// second, plus the rising trend over the last ten seconds carried forward; a burst (a second
/// well above the recent mean, beyond Poisson noise) counts in full at once.
fn predict_rate(history: &History, service: &str, horizon: f64, burst_factor: f64) -> f64 {
    let series: Vec<f64> = history
        .service(service, 10)
        .map(|s| s.arrivals as f64)
        .collect();
    let Some(&last) = series.last() else {
        return 0.0;
    };
    let n = series.len() as f64;
    let mean = series.iter().sum::<f64>() / n;
    let level = series.iter().rev().take(3).sum::<f64>() / n.min(3.0);
    let slope = if series.len() >= 3 {
        let x_mean = (n - 1.0) / 2.0;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (i, y) in series.iter().enumerate() {
            let dx = i as f64 - x_mean;
            sxy += dx * (y - mean);
            sxx += dx * dx;
        }
        sxy / sxx
    } else {
        0.0
    };
    let burst = last > burst_factor * mean && last - mean > 3.0 * mean.sqrt();
    // Arrivals burstier than Poisson (a spread beyond √mean) need room for their usual peaks.
    let spread = (series.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / n).sqrt();
    let usual_peak = mean + 3.0 * (spread - mean.sqrt()).max(0.0);
    let base = if burst {
        last
    } else {
        level.max(last).max(usual_peak)
    };
    base + slope.max(0.0) * horizon
}

fn recent_max(wishes: &VecDeque<(u32, f64)>, seconds: usize, pick: fn(&(u32, f64)) -> u32) -> u32 {
    wishes
        .iter()
        .rev()
        .take(seconds)
        .map(pick)
        .max()
        .unwrap_or(0)
}

fn recent_max_f(wishes: &VecDeque<(u32, f64)>, seconds: usize) -> f64 {
    wishes
        .iter()
        .rev()
        .take(seconds)
        .map(|w| w.1)
        .fold(0.0, f64::max)
}

/// The smallest size at least `cpu`, or the largest there is.
fn size_at_least(cpu: f64, sizes: &[f64]) -> f64 {
    sizes
        .iter()
        .copied()
        .find(|&s| s >= cpu - 1e-9)
        .or(sizes.last().copied())
        .unwrap_or(cpu)
}

/// The service that contributes most to the end-to-end time under the plan.
fn bottleneck(loads: &[ServiceLoad], allocations: &[Allocation]) -> Option<String> {
    loads
        .iter()
        .zip(allocations)
        .filter(|(l, _)| l.arrival_rate > 0.0 && l.demand > 0.0)
        .map(|(l, a)| {
            let share = plan::visit_time(l, *a).map_or(f64::INFINITY, |(mean, _)| mean * l.visits);
            (l.name.clone(), share)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(name, _)| name)
}

#[allow(clippy::too_many_arguments)] // one sentence built from the parts of one decision
fn reason(
    load: &ServiceLoad,
    from: (u32, f64),
    to: (u32, f64),
    ready: u32,
    plan: &plan::Plan,
    bottleneck: bool,
    idle: bool,
    known: bool,
    config: &ScalingConfig,
) -> String {
    let change = format!("{}×{} → {}×{} cpu", from.0, from.1, to.0, to.1);
    if idle {
        return format!("no requests for the idle time: {change}");
    }
    if !known {
        return format!("requests waiting and no demand estimate yet: {change}");
    }
    let mut text = format!(
        "{:.0} req/s expected ({:.2} visits), {:.1} ms cpu each: {change}; p{:.0} {:.0} ms predicted (SLO {:.0} ms)",
        load.arrival_rate,
        load.visits,
        load.demand * 1000.0,
        config.slo.percentile * 100.0,
        plan.predicted * 1000.0,
        config.slo.latency_ms,
    );
    if !plan.feasible {
        match config.cpu_budget {
            Some(cores) => text.push_str(&format!(
                ", beyond the bounds and the machine's {cores} cores: the largest allocation within them"
            )),
            None => text.push_str(", beyond the bounds: largest allocation"),
        }
    }
    if to.0 > ready && to.1 > from.1 {
        text.push_str(", cpu raised while instances start");
    }
    if bottleneck {
        text.push_str(", bottleneck");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{InstanceSample, LatencySummary};
    use crate::{Bounds, Slo};

    fn config(services: &[&str]) -> ScalingConfig {
        ScalingConfig {
            entry: services[0].into(),
            slo: Slo::default(),
            services: services
                .iter()
                .map(|s| (s.to_string(), Bounds::default()))
                .collect(),
            cpu_budget: None,
        }
    }

    /// One second of a service whose `instances` instances of `cpu` cores answered `rate`
    /// requests needing `demand` CPU-seconds each.
    fn sample(rate: u64, demand: f64, instances: u32, cpu: f64) -> ServiceSample {
        ServiceSample {
            arrivals: rate,
            completions: rate,
            latency: LatencySummary {
                mean_ms: 10.0,
                p50_ms: 8.0,
                p95_ms: 30.0,
                p99_ms: 40.0,
            },
            concurrency: 1.0,
            instances: (0..instances)
                .map(|i| InstanceSample {
                    id: format!("i{i}"),
                    ready: true,
                    age_ms: 60_000,
                    cpu_used: rate as f64 * demand / f64::from(instances),
                    cpu_limit: cpu,
                    completions: rate / u64::from(instances),
                    concurrency: 1.0,
                    reported: None,
                })
                .collect(),
            ..ServiceSample::default()
        }
    }

    fn second(at: Millis, services: Vec<(&str, ServiceSample)>) -> Observation {
        Observation {
            at,
            services: services
                .into_iter()
                .map(|(n, s)| (n.to_string(), s))
                .collect(),
            calls: Vec::new(),
        }
    }

    /// Runs the policy over `seconds` seconds of a steady application, applying its decisions
    /// to the instance counts the next observation shows.
    fn steady(
        policy: &mut ModelPolicy,
        config: &ScalingConfig,
        load: &dyn Fn(Millis) -> Vec<(&'static str, u64, f64)>,
        seconds: u64,
    ) -> BTreeMap<String, (u32, f64)> {
        let mut history = History::default();
        let mut running: BTreeMap<String, (u32, f64)> = config
            .services
            .keys()
            .map(|s| (s.clone(), (1, 1.0)))
            .collect();
        for t in 1..=seconds {
            let now = t * 1000;
            let services = load(now)
                .into_iter()
                .map(|(name, rate, demand)| {
                    let (n, cpu) = running[name];
                    (name, sample(rate, demand, n, cpu))
                })
                .collect();
            history.push(second(now, services));
            for d in policy.decide(now, &history, config) {
                running.insert(d.service, (d.instances, d.cpu));
            }
        }
        running
    }

    /// Instances that report their capacity through PaCI are believed over the CPU they use:
    /// a service whose CPU says 10 ms a request but whose instances say they serve 20 requests
    /// a second on their core (50 ms each, say a lock or an external limit) is planned on 50 ms.
    #[test]
    fn reported_capacity_replaces_the_measured_demand() {
        let config = config(&["api"]);
        let mut policy = ModelPolicy::default();
        let mut history = History::default();
        for t in 1..=10 {
            let mut api = sample(40, 0.010, 2, 1.0);
            for instance in &mut api.instances {
                instance.reported = Some(crate::Reported {
                    capacity: Some(20.0),
                    ..crate::Reported::default()
                });
            }
            history.push(second(t * 1000, vec![("api", api)]));
            policy.decide(t * 1000, &history, &config);
        }
        let demand = policy.services["api"].demand.unwrap();
        assert!((demand - 0.05).abs() < 1e-9, "{demand}");
        let mut measured = ModelPolicy::default();
        let mut history = History::default();
        for t in 1..=10 {
            history.push(second(t * 1000, vec![("api", sample(40, 0.010, 2, 1.0))]));
            measured.decide(t * 1000, &history, &config);
        }
        let demand = measured.services["api"].demand.unwrap();
        assert!((demand - 0.010).abs() < 1e-9, "{demand}");
    }

    /// The ConPaaS scenario: the entry is light, the store behind it does the work. When the
    /// store's work per request grows, the capacity goes to the store, not to the entry.
    #[test]
    fn the_model_finds_the_moving_bottleneck() {
        let config = config(&["web", "api", "kv"]);
        let mut policy = ModelPolicy::default();
        let before = |_| vec![("web", 100, 0.001), ("api", 100, 0.010), ("kv", 200, 0.001)];
        let first = steady(&mut policy, &config, &before, 60);
        let capacity = |a: (u32, f64)| f64::from(a.0) * a.1;
        assert!(
            capacity(first["api"]) > capacity(first["kv"]),
            "api does the work first: {first:?}"
        );
        let after = |_| vec![("web", 100, 0.001), ("api", 100, 0.002), ("kv", 200, 0.012)];
        let second = steady(&mut policy, &config, &after, 90);
        assert!(
            capacity(second["kv"]) >= 200.0 * 0.012 / 0.85,
            "kv gets enough capacity: {second:?}"
        );
        assert!(
            capacity(second["kv"]) > capacity(second["api"]),
            "then kv does: {second:?}"
        );
        assert!(
            capacity(second["web"]) <= 1.0,
            "the entry stays small: {second:?}"
        );
    }

    /// On a machine of 2 cores, a load that would take 3.3 cores of kv gets the 2 cores and
    /// no more once the plan settles: the decisions say the SLO is beyond the machine's cores.
    #[test]
    fn the_model_plans_within_the_machines_cores() {
        let machine = ScalingConfig {
            cpu_budget: Some(2.0),
            ..config(&["web", "kv"])
        };
        let mut policy = ModelPolicy::default();
        let load = |_| vec![("web", 100, 0.001), ("kv", 280, 0.010)];
        let settled = steady(&mut policy, &machine, &load, 90);
        let cores: f64 = settled.values().map(|a| f64::from(a.0) * a.1).sum();
        assert!(cores <= 2.0 + 1e-9, "{settled:?}");
        assert!(
            settled["kv"].0 as f64 * settled["kv"].1 > settled["web"].0 as f64 * settled["web"].1,
            "kv, the bottleneck, holds the most: {settled:?}"
        );
        let unlimited = steady(
            &mut ModelPolicy::default(),
            &config(&["web", "kv"]),
            &load,
            90,
        );
        let cores: f64 = unlimited.values().map(|a| f64::from(a.0) * a.1).sum();
        assert!(cores > 3.0, "without the budget: {unlimited:?}");
    }

    /// A database's requests are the queries its servers ran: the primary takes the writes
    /// and stays one instance, growing in CPU alone; the read replicas take the reads, and more
    /// reads per page take more replicas.
    #[test]
    fn reads_scale_with_replicas_and_writes_do_not() {
        let database = |reads_per_page: u64| {
            let config = ScalingConfig {
                services: [
                    ("web".to_owned(), Bounds::default()),
                    (
                        "db".to_owned(),
                        Bounds {
                            max_instances: 1,
                            ..Bounds::default()
                        },
                    ),
                    (
                        "db-read".to_owned(),
                        Bounds {
                            max_instances: 8,
                            cpu_max: 1.0,
                            ..Bounds::default()
                        },
                    ),
                ]
                .into(),
                ..config(&["web"])
            };
            // 100 pages a second, each 2 writes of 2 ms and its reads of 0.5 ms.
            let load = move |_| {
                vec![
                    ("web", 100, 0.001),
                    ("db", 200, 0.002),
                    ("db-read", 100 * reads_per_page, 0.0005),
                ]
            };
            steady(&mut ModelPolicy::default(), &config, &load, 90)
        };
        let few = database(10);
        let many = database(40);
        for plan in [&few, &many] {
            assert_eq!(plan["db"].0, 1, "one primary: {plan:?}");
        }
        assert!(
            many["db-read"].0 > few["db-read"].0,
            "4 times the reads take more replicas: {few:?} then {many:?}"
        );
        let cores =
            |plan: &BTreeMap<String, (u32, f64)>| f64::from(plan["db-read"].0) * plan["db-read"].1;
        assert!(cores(&many) >= 2.0 / 0.85, "2 cores of reads: {many:?}");
    }

    /// Decisions are not repeated while nothing changes: a steady load gives a few actions at
    /// the start and then none.
    #[test]
    fn a_steady_load_does_not_flap() {
        let config = config(&["api"]);
        let mut policy = ModelPolicy::default();
        let mut history = History::default();
        let mut running = (1u32, 1.0f64);
        let mut changes = Vec::new();
        for t in 1..=300u64 {
            // ±5% of noise around 150 req/s of 10 ms each: 1.5 cores.
            let rate = 150 + (t * 7919 % 15) - 7;
            history.push(second(
                t * 1000,
                vec![("api", sample(rate, 0.010, running.0, running.1))],
            ));
            for d in policy.decide(t * 1000, &history, &config) {
                running = (d.instances, d.cpu);
                changes.push(t);
            }
        }
        let late = changes.iter().filter(|&&t| t > 60).count();
        assert_eq!(late, 0, "changes after the first minute: {changes:?}");
        assert!(f64::from(running.0) * running.1 >= 1.5 / 0.85);
    }

    /// CPU first: on a burst, the running instance gets more CPU in the same second as more
    /// instances are asked for.
    #[test]
    fn a_burst_raises_cpu_at_once_and_asks_for_instances() {
        let config = config(&["api"]);
        let mut policy = ModelPolicy::default();
        let mut history = History::default();
        for t in 1..=30u64 {
            history.push(second(t * 1000, vec![("api", sample(20, 0.010, 1, 0.5))]));
            policy.decide(t * 1000, &history, &config);
        }
        history.push(second(31_000, vec![("api", sample(200, 0.010, 1, 0.5))]));
        let decisions = policy.decide(31_000, &history, &config);
        let api = decisions
            .iter()
            .find(|d| d.service == "api")
            .expect("a decision");
        assert!(api.instances >= 2, "{api:?}");
        assert!(api.cpu > 0.5, "{api:?}");
        assert!(api.reason.contains("cpu raised"), "{}", api.reason);
    }

    /// Scale to zero after the idle time when allowed, and back with the first request.
    #[test]
    fn an_idle_service_goes_to_zero_and_comes_back() {
        let mut config = config(&["api"]);
        config.services.get_mut("api").unwrap().min_instances = 0;
        config.services.get_mut("api").unwrap().idle_ms = 20_000;
        let mut policy = ModelPolicy::default();
        let mut history = History::default();
        let mut running = 1u32;
        let mut zero_at = None;
        for t in 1..=60u64 {
            let rate = if t <= 10 { 20 } else { 0 };
            history.push(second(
                t * 1000,
                vec![("api", sample(rate, 0.010, running, 1.0))],
            ));
            for d in policy.decide(t * 1000, &history, &config) {
                running = d.instances;
                if running == 0 && zero_at.is_none() {
                    zero_at = Some(t);
                }
            }
        }
        let zero_at = zero_at.expect("went to zero");
        assert!((30..=32).contains(&zero_at), "at {zero_at}");
        let mut waking = sample(0, 0.010, 0, 1.0);
        waking.arrivals = 1;
        waking.in_flight = 1;
        history.push(second(61_000, vec![("api", waking)]));
        let decisions = policy.decide(61_000, &history, &config);
        assert_eq!(decisions.first().map(|d| d.instances), Some(1));
    }
}
