//! Measures simulation speed: the shop under two hours at 300 requests a second, with a fixed
//! allocation that keeps up. Run with `cargo run --release -p paracloud-sim --example speed`.

use std::time::Instant;

use paracloud_autoscale::{Decision, History, Millis, Policy, ScalingConfig};
use paracloud_sim::{simulate_with, Model, Options, Trace};

/// Sets the allocation once, at the first second.
struct Fixed;

impl Policy for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }

    fn decide(&mut self, now: Millis, _: &History, _: &ScalingConfig) -> Vec<Decision> {
        if now != 1000 {
            return Vec::new();
        }
        [("web", 2, 0.5), ("api", 4, 1.0), ("kv", 2, 0.5)]
            .into_iter()
            .map(|(service, instances, cpu)| Decision {
                service: service.to_owned(),
                instances,
                cpu,
                reason: "enough for 300 requests a second".to_owned(),
            })
            .collect()
    }
}

fn main() {
    let model = Model::parse(include_str!("../../../examples/shop/sim.toml"), "sim.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    let trace = Trace::Counts {
        bucket_us: 1_000_000,
        counts: vec![300.0; 7200],
    };
    let started = Instant::now();
    let outcome = simulate_with(&model, &trace, &mut Fixed, 1, &Options::default());
    let wall = started.elapsed().as_secs_f64();
    // Every entry request visits web, api and kv twice.
    let visits = outcome.requests as f64 * 4.0;
    println!(
        "{} entry requests ({} service visits) in {wall:.2} s: {:.0} entry requests/s, {:.0} visits/s; p95 {:.1} ms, {} SLO-violation seconds",
        outcome.requests,
        visits,
        outcome.requests as f64 / wall,
        visits / wall,
        outcome.p95_ms,
        outcome.slo_violation_seconds
    );
}
