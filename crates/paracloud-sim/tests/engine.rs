//! The simulation engine against queueing theory and its own rules, driven by scripted policies.

use std::time::Duration;

use paracloud_autoscale::{Decision, History, Millis, Observation, Policy, ScalingConfig};
use paracloud_sim::{
    simulate, simulate_with, Model, Options, Outcome, Platform, Shape, Trace, TracedRequest,
};

/// A test policy: makes the scripted decisions at their times, and keeps every observation.
#[derive(Default)]
struct Scripted {
    steps: Vec<(Millis, Decision)>,
    seen: Vec<Observation>,
}

impl Scripted {
    fn new(steps: &[(Millis, &str, u32, f64)]) -> Self {
        Self {
            steps: steps
                .iter()
                .map(|&(at, service, instances, cpu)| {
                    (
                        at,
                        Decision {
                            service: service.to_owned(),
                            instances,
                            cpu,
                            reason: format!("scripted at {at} ms"),
                        },
                    )
                })
                .collect(),
            seen: Vec::new(),
        }
    }

    /// The observation made at the end of second `t`.
    fn at(&self, t: u64) -> &Observation {
        self.seen.iter().find(|o| o.at == t * 1000).unwrap()
    }
}

impl Policy for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn decide(&mut self, now: Millis, history: &History, _: &ScalingConfig) -> Vec<Decision> {
        self.seen.push(history.latest().unwrap().clone());
        self.steps
            .iter()
            .filter(|(at, _)| *at == now)
            .map(|(_, d)| d.clone())
            .collect()
    }
}

fn model(text: &str) -> Model {
    Model::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn shop() -> Model {
    model(include_str!("../../../examples/shop/sim.toml"))
}

fn steady(rate: f64, seconds: usize) -> Trace {
    Trace::Counts {
        bucket_us: 1_000_000,
        counts: vec![rate; seconds],
    }
}

fn requests(times_ms: &[u64]) -> Trace {
    Trace::Requests {
        duration_us: times_ms.iter().max().map_or(0, |t| t * 1000 + 1),
        requests: times_ms
            .iter()
            .map(|t| TracedRequest {
                at_us: t * 1000,
                size: 1.0,
            })
            .collect(),
    }
}

#[test]
fn the_same_seed_gives_the_same_outcome_and_another_seed_another() {
    let trace = Shape::FlashCrowd {
        base: 100.0,
        factor: 4.0,
        at: 10.0,
        rise: 2.0,
        decay: 10.0,
        seconds: 40,
    }
    .trace(1);
    let run = |seed| {
        let mut policy = Scripted::new(&[(11_000, "api", 6, 1.0), (30_000, "api", 2, 1.5)]);
        simulate(&shop(), &trace, &mut policy, seed)
    };
    let a = run(7);
    assert_eq!(a, run(7));
    assert_ne!(a, run(8));
    assert!(a.requests > 5000, "{}", a.requests);
    assert_eq!(a.actions, 2);
}

#[test]
fn every_arrival_is_answered_dropped_or_still_in_flight() {
    let mut m = shop();
    m.services.get_mut("api").unwrap().max_in_flight = Some(20);
    let options = Options {
        drain: Duration::ZERO,
        ..Options::default()
    };
    // api can answer 250 requests a second: 400 overload it.
    let out = simulate_with(
        &m,
        &steady(400.0, 20),
        &mut Scripted::default(),
        3,
        &options,
    );
    assert_eq!(
        out.requests,
        out.answered + out.dropped + out.in_flight,
        "{out:?}"
    );
    assert!(out.dropped > 1000 && out.in_flight > 0, "{out:?}");
    assert!(out.slo_violation_seconds > 0);
}

#[test]
fn one_instance_matches_the_mm1_queue() {
    // M/M/1 processor sharing, ρ = 0.5: mean response time D / (1 - ρ) = 20 ms.
    let m = model(
        "entry = \"a\"\n[services.a]\ndemand = \"10ms\"\ncpu = 1\nmin = 1\nmax = 1\ncpu_min = 1\ncpu_max = 1\n",
    );
    let out = simulate(&m, &steady(50.0, 4000), &mut Scripted::default(), 11);
    assert!(out.answered > 190_000, "{}", out.answered);
    let want = 20.0;
    assert!(
        (out.mean_ms / want - 1.0).abs() < 0.05,
        "mean {} ms, want {want} ms",
        out.mean_ms
    );
    // Response times of M/M/1-PS are not exponential, but the CPU is busy half the time.
    assert_eq!(out.dropped, 0);
}

#[test]
fn power_of_two_choices_spreads_the_load() {
    let m = model("entry = \"a\"\n[services.a]\ndemand = \"10ms\"\ninstances = 4\n");
    let mut policy = Scripted::default();
    simulate(&m, &steady(200.0, 100), &mut policy, 5);
    let mut per_instance = std::collections::BTreeMap::<String, u64>::new();
    for o in &policy.seen {
        for i in &o.services["a"].instances {
            *per_instance.entry(i.id.clone()).or_default() += i.completions;
        }
    }
    assert_eq!(per_instance.len(), 4, "{per_instance:?}");
    let mean = per_instance.values().sum::<u64>() as f64 / 4.0;
    for (id, n) in &per_instance {
        assert!(
            (*n as f64 / mean - 1.0).abs() < 0.05,
            "{id}: {n} vs mean {mean}"
        );
    }
    let o = policy.at(50);
    let cpu: f64 = o.services["a"].cpu_used();
    assert!(
        (cpu - 2.0).abs() < 0.5,
        "200/s of 10 ms is 2 cores, used {cpu}"
    );
}

#[test]
fn requests_held_at_zero_are_served_once_an_instance_starts() {
    let m = model(
        "entry = \"a\"\n[services.a]\ndemand = \"1ms\"\ninstances = 0\nscale_to_zero = \"30s\"\nstartup = \"1s\"\n",
    );
    let mut policy = Scripted::default();
    let out = simulate(&m, &requests(&[500, 510, 520]), &mut policy, 1);
    assert_eq!((out.answered, out.dropped), (3, 0), "{out:?}");
    assert!(out.p99_ms >= 480.0 && out.p99_ms < 5000.0, "{}", out.p99_ms);
    assert!(
        out.decisions[0].reason.starts_with("platform:"),
        "{:?}",
        out.decisions
    );
    assert_eq!(
        out.actions, 0,
        "the platform's wake-up is not the policy's action"
    );
    assert_eq!(policy.at(1).services["a"].arrivals, 3);
    assert_eq!(policy.at(1).services["a"].instances.len(), 1);
}

#[test]
fn requests_held_longer_than_five_seconds_are_dropped() {
    let m = model(
        "entry = \"a\"\n[services.a]\ndemand = \"1ms\"\ninstances = 0\nscale_to_zero = \"30s\"\nstartup = \"30s\"\n",
    );
    let out = simulate(&m, &requests(&[500, 510, 520]), &mut Scripted::default(), 1);
    assert_eq!((out.answered, out.dropped), (0, 3), "{out:?}");
    assert_eq!(
        out.timeline[5].dropped, 3,
        "dropped at 5.5 s: {:?}",
        out.timeline[5]
    );
    assert_eq!(out.slo_violation_seconds, 1);
}

#[test]
fn arrivals_beyond_max_in_flight_are_dropped() {
    let m = model(
        "entry = \"a\"\n[services.a]\ndemand = \"1s\"\ndistribution = \"constant\"\nmax_in_flight = 2\n",
    );
    let mut policy = Scripted::default();
    let out = simulate(&m, &requests(&[0, 1, 2, 3, 4]), &mut policy, 1);
    assert_eq!((out.answered, out.dropped), (2, 3), "{out:?}");
    // Two requests share the one core: both take 2 s.
    assert!((out.p99_ms - 2000.0).abs() < 25.0, "{}", out.p99_ms);
    assert_eq!(policy.at(1).services["a"].dropped, 3);
}

#[test]
fn a_dropped_call_fails_its_callers_up_to_the_entry() {
    let m = model(
        "entry = \"a\"\n[services.a]\ndemand = \"1ms\"\ncalls = { b = 1 }\n[services.b]\ndemand = \"1s\"\ndistribution = \"constant\"\nmax_in_flight = 1\n",
    );
    let mut policy = Scripted::default();
    let out = simulate(&m, &requests(&[0, 100, 200]), &mut policy, 1);
    assert_eq!((out.answered, out.dropped), (1, 2), "{out:?}");
    let first = policy.at(1);
    assert_eq!(first.services["b"].dropped, 2);
    assert_eq!(first.services["a"].dropped, 2);
    assert_eq!(first.services["a"].in_flight, 1);
}

#[test]
fn decisions_apply_within_bounds_and_cost_what_exists() {
    let m = model(
        "entry = \"a\"\n[services.a]\ndemand = \"1ms\"\nmax = 5\ncpu = 1\ncpu_max = 2\nstartup = \"100ms\"\n",
    );
    let mut policy = Scripted::new(&[
        (2_000, "a", 3, 1.0),
        (3_000, "a", 3, 1.0), // changes nothing: not an action
        (5_000, "a", 1, 1.0),
        (7_000, "a", 1, 9.0), // clamped to cpu_max
        (8_000, "nobody", 4, 1.0),
    ]);
    let out = simulate(&m, &steady(0.0, 10), &mut policy, 1);
    assert_eq!(out.actions, 3);
    assert_eq!(out.seconds, 10);
    // 1 instance for 2 s, 3 for 3 s, then 1 for 5 s; 1 core each until 7 s, then 2.
    assert!(
        (out.instance_seconds - 16.0).abs() < 1e-6,
        "{}",
        out.instance_seconds
    );
    assert!((out.cpu_seconds - 19.0).abs() < 1e-6, "{}", out.cpu_seconds);
    let d: Vec<(u64, u32, f64)> = out
        .decisions
        .iter()
        .map(|d| (d.at_ms, d.instances, d.cpu))
        .collect();
    assert_eq!(d, vec![(2000, 3, 1.0), (5000, 1, 1.0), (7000, 1, 2.0)]);
    let starting = &policy.at(2).services["a"].instances;
    assert_eq!(starting.len(), 1, "decisions apply after the observation");
    let after = &policy.at(3).services["a"].instances;
    assert_eq!(after.iter().filter(|i| i.ready).count(), 3, "{after:?}");
    assert_eq!(out.timeline[2].instances, vec![3]);
    assert_eq!(out.timeline[7].cpu, vec![2.0]);
}

fn on(platform: Platform) -> Options {
    Options {
        platform,
        ..Options::default()
    }
}

#[test]
fn on_a_cluster_new_pods_take_seconds_to_become_ready() {
    let m = model("entry = \"a\"\n[services.a]\ndemand = \"1ms\"\nmax = 40\nstartup = \"100ms\"\n");
    let run = |platform: Platform| {
        let mut policy = Scripted::new(&[(2_000, "a", 31, 1.0)]);
        simulate_with(&m, &steady(10.0, 40), &mut policy, 5, &on(platform));
        policy
    };
    // Local: ready within a second (100 ms mean).
    let local = run(Platform::local());
    let ready = |p: &Scripted, t: u64| {
        p.at(t).services["a"]
            .instances
            .iter()
            .filter(|i| i.ready)
            .count()
    };
    assert_eq!(ready(&local, 3), 31);
    // Cluster: none of the 30 new pods within a second (the pod start alone is above a second
    // for all but a sliver), all of them within 20 s, and about 5 s on average.
    let cluster = run(Platform::cluster());
    assert_eq!(ready(&cluster, 3), 1);
    assert_eq!(ready(&cluster, 22), 31);
    let mut first_ready = std::collections::BTreeMap::new();
    for o in &cluster.seen {
        for i in o.services["a"].instances.iter().filter(|i| i.ready) {
            first_ready.entry(i.id.clone()).or_insert(i.age_ms);
        }
    }
    // Ages are seen at whole seconds: each is the start rounded up to one. a.1 was there from
    // the start.
    let ages: Vec<u64> = first_ready
        .iter()
        .filter(|(id, _)| *id != "a.1")
        .map(|(_, &age)| age)
        .collect();
    assert_eq!(ages.len(), 30, "{first_ready:?}");
    let mean = ages.iter().sum::<u64>() as f64 / ages.len() as f64;
    assert!(mean > 4_500.0 && mean < 7_500.0, "{mean} {ages:?}");
}

#[test]
fn on_a_cluster_a_cpu_change_applies_after_about_a_second() {
    let m = model(
        "entry = \"a\"\n[services.a]\ndemand = \"1ms\"\ninstances = 3\nmax = 3\ncpu = 1\ncpu_max = 2\n",
    );
    let run = |platform: Platform| {
        let mut policy = Scripted::new(&[(2_000, "a", 3, 2.0)]);
        let out = simulate_with(&m, &steady(0.0, 10), &mut policy, 3, &on(platform));
        (policy, out)
    };
    let limits = |p: &Scripted, t: u64| -> Vec<f64> {
        p.at(t).services["a"]
            .instances
            .iter()
            .map(|i| i.cpu_limit)
            .collect()
    };
    let (local, local_out) = run(Platform::local());
    assert_eq!(limits(&local, 3), vec![2.0; 3]);
    // 3 instances × (2 s at 1 core + 8 s at 2).
    assert!((local_out.cpu_seconds - 54.0).abs() < 1e-6, "{local_out:?}");
    let (cluster, cluster_out) = run(Platform::cluster());
    assert_eq!(limits(&cluster, 2), vec![1.0; 3], "asked for, not applied");
    assert_eq!(limits(&cluster, 4), vec![2.0; 3], "applied within 1.5 s");
    // Each instance kept its 1 core for 0.5 to 1.5 s longer; what is asked for shows at once.
    let late = local_out.cpu_seconds - cluster_out.cpu_seconds;
    assert!((1.5..=4.5).contains(&late), "{late}");
    assert_eq!(cluster_out.timeline[2].cpu, vec![2.0]);
    assert_eq!(cluster_out.instance_seconds, local_out.instance_seconds);
}

#[test]
fn a_delayed_resize_still_makes_the_work_faster() {
    // One instance with 4 requests in flight at a time, 1 core: taking it to 4 cores shortens
    // the answers, a second later on a cluster than locally.
    let m = model(
        "entry = \"a\"\n[services.a]\ndemand = \"20ms\"\ndistribution = \"constant\"\nmin = 1\nmax = 1\ncpu = 1\ncpu_max = 4\n",
    );
    let run = |platform: Platform| {
        let mut policy = Scripted::new(&[(5_000, "a", 1, 4.0)]);
        simulate_with(&m, &steady(40.0, 20), &mut policy, 2, &on(platform));
        policy
    };
    for platform in [Platform::local(), Platform::cluster()] {
        let p = run(platform.clone());
        let before = p.at(4).services["a"].latency.mean_ms;
        let after = p.at(10).services["a"].latency.mean_ms;
        assert!(after < before, "{}: {before} → {after}", platform.name);
    }
}

#[test]
fn the_cluster_profile_is_deterministic_under_the_seed() {
    let trace = Shape::FlashCrowd {
        base: 100.0,
        factor: 4.0,
        at: 10.0,
        rise: 2.0,
        decay: 10.0,
        seconds: 40,
    }
    .trace(1);
    let run = |seed, platform: Platform| {
        let mut policy = Scripted::new(&[(11_000, "api", 6, 1.5), (30_000, "api", 2, 1.0)]);
        simulate_with(&shop(), &trace, &mut policy, seed, &on(platform))
    };
    let a = run(7, Platform::cluster());
    assert_eq!(a, run(7, Platform::cluster()));
    assert_ne!(a, run(8, Platform::cluster()));
    // The arrivals are the same whatever the platform; what the platform changes is the rest.
    let local = run(7, Platform::local());
    assert_eq!(a.requests, local.requests);
    assert_ne!(a, local);
    assert_eq!(
        local,
        simulate(
            &shop(),
            &trace,
            &mut Scripted::new(&[(11_000, "api", 6, 1.5), (30_000, "api", 2, 1.0)]),
            7
        )
    );
}

#[test]
fn a_phase_change_shifts_the_work() {
    let m = model(
        "entry = \"a\"\n[services.a]\ndemand = \"1ms\"\ndistribution = \"constant\"\ncpu = 2\ncpu_max = 2\nphases = [{ at = \"10s\", demand = \"10ms\" }]\n",
    );
    let mut policy = Scripted::default();
    simulate(&m, &steady(100.0, 20), &mut policy, 1);
    let before = policy.at(5).services["a"].cpu_used();
    let after = policy.at(15).services["a"].cpu_used();
    assert!((before - 0.1).abs() < 0.04, "{before}");
    assert!((after - 1.0).abs() < 0.3, "{after}");
}

#[test]
fn observations_count_calls_and_concurrency() {
    let m = model(
        "entry = \"a\"\n[services.a]\ndemand = \"2ms\"\ncalls = { b = 1.5 }\n[services.b]\ndemand = \"4ms\"\ninstances = 2\n",
    );
    let mut policy = Scripted::default();
    let out = simulate(&m, &steady(100.0, 60), &mut policy, 9);
    let (mut external, mut a_to_b) = (0, 0);
    for o in &policy.seen {
        for c in &o.calls {
            match (c.from.as_str(), c.to.as_str()) {
                ("external", "a") => external += c.count,
                ("a", "b") => a_to_b += c.count,
                other => panic!("unexpected call {other:?}"),
            }
        }
    }
    assert_eq!(external, out.requests);
    let ratio = a_to_b as f64 / external as f64;
    assert!((ratio - 1.5).abs() < 0.03, "{ratio}");
    // Little's law at b: concurrency = arrival rate × response time.
    let o = policy.at(30);
    let b = &o.services["b"];
    assert!(
        b.concurrency > 0.3 && b.concurrency < 1.5,
        "{}",
        b.concurrency
    );
    assert!(b.latency.p95_ms > b.latency.p50_ms && b.latency.p50_ms > 0.0);
    assert_eq!(b.instances.len(), 2);
    let a = &o.services["a"];
    assert!(
        a.latency.mean_ms > b.latency.mean_ms,
        "a's latency includes b's"
    );
}

#[test]
fn the_timeline_and_outcome_serialise() {
    let out: Outcome = simulate(&shop(), &steady(50.0, 5), &mut Scripted::default(), 1);
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(json["services"], serde_json::json!(["api", "kv", "web"]));
    // Five seconds of trace, and the second in which the last requests finished.
    assert_eq!(
        json["timeline"].as_array().unwrap().len() as u64,
        out.seconds
    );
    assert!(out.seconds == 5 || out.seconds == 6, "{}", out.seconds);
    assert_eq!(out.slo_violation_seconds, 0);
    assert!(out.p95_ms > 10.0 && out.p95_ms < 100.0, "{}", out.p95_ms);
}
