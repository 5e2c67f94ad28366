//! Each instance's capacity, measured online from its own completions and CPU (ConPaaS's
//! per-instance performance profiles): instances of one service differ when one shares a busy
//! core, runs on a slower CPU, or does more work per request (a cold cache, a larger shard).
//!
//! Every second that an instance answered requests, its CPU per request (core-seconds spent ÷
//! requests answered) enters a moving average. Its capacity is then the requests per second its
//! CPU allowance would serve at that cost. The data plane's weights follow the capacities of a
//! service's instances once each of them is measured; until then they follow the CPU limits.

use std::collections::BTreeMap;

/// A second counts when the instance answered at least this many requests in it: fewer give a
/// CPU per request dominated by what the instance does between requests.
pub const MIN_COMPLETIONS: u64 = 3;
/// Seconds counted before an instance's cost is trusted.
pub const MIN_SECONDS: u32 = 3;
/// Weight of the newest second in the moving average.
const ALPHA: f64 = 0.2;
/// A service's weights are shares of its total in steps of this fraction, so that the noise of
/// the measurement does not change the data plane's configuration every second.
const SHARE_STEP: f64 = 0.05;

/// One instance's measured CPU per request.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cost {
    /// Core-seconds per request, averaged.
    per_request: f64,
    /// Seconds counted so far.
    seconds: u32,
}

/// The measured cost of every instance, by the caller's key (such as `shop/api.2`).
#[derive(Debug, Clone, Default)]
pub struct Capacities {
    costs: BTreeMap<String, Cost>,
}

impl Capacities {
    /// Takes in one second of `instance`: `cpu_used` cores, `completions` requests answered.
    pub fn observe(&mut self, instance: &str, cpu_used: f64, completions: u64) {
        if completions < MIN_COMPLETIONS || !cpu_used.is_finite() || cpu_used <= 0.0 {
            return;
        }
        let cost = cpu_used / completions as f64;
        match self.costs.get_mut(instance) {
            Some(known) => {
                known.per_request += ALPHA * (cost - known.per_request);
                known.seconds = known.seconds.saturating_add(1);
            }
            None => {
                self.costs.insert(
                    instance.to_owned(),
                    Cost {
                        per_request: cost,
                        seconds: 1,
                    },
                );
            }
        }
    }

    /// Forgets the instances `keep` says are gone.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.costs.retain(|instance, _| keep(instance));
    }

    /// Core-seconds per request of `instance`, once measured for [`MIN_SECONDS`].
    pub fn cost(&self, instance: &str) -> Option<f64> {
        self.costs
            .get(instance)
            .filter(|c| c.seconds >= MIN_SECONDS)
            .map(|c| c.per_request)
    }

    /// Requests per second `instance` serves with `cores` of CPU, once measured.
    pub fn capacity(&self, instance: &str, cores: f64) -> Option<f64> {
        self.cost(instance).map(|cost| cores / cost)
    }

    /// Every measured cost, by instance.
    pub fn costs(&self) -> BTreeMap<String, f64> {
        self.costs
            .keys()
            .filter_map(|k| Some((k.clone(), self.cost(k)?)))
            .collect()
    }
}

/// The data plane's weights of one service's instances, given each one's weight from its CPU
/// (`cpu_weights`) and its measured capacity: the same total, shared in proportion to the
/// capacities (in steps of 5%, each at least 1). `None` when an instance is not measured yet:
/// then the CPU weights stay.
pub fn capacity_weights(cpu_weights: &[u32], capacities: &[Option<f64>]) -> Option<Vec<u32>> {
    if cpu_weights.is_empty() || cpu_weights.len() != capacities.len() {
        return None;
    }
    let capacities: Vec<f64> = capacities
        .iter()
        .map(|c| c.filter(|c| c.is_finite() && *c > 0.0))
        .collect::<Option<_>>()?;
    let total_capacity: f64 = capacities.iter().sum();
    let total_weight: f64 = cpu_weights.iter().map(|w| f64::from(*w)).sum();
    Some(
        capacities
            .iter()
            .map(|c| {
                let share = (c / total_capacity / SHARE_STEP).round() * SHARE_STEP;
                (total_weight * share)
                    .round()
                    .clamp(1.0, f64::from(u32::MAX)) as u32
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_instance_is_measured_after_a_few_busy_seconds() {
        let mut c = Capacities::default();
        c.observe("api.1", 0.5, 100);
        c.observe("api.1", 0.5, 100);
        assert_eq!(c.cost("api.1"), None, "two seconds are not enough");
        // An idle second (too few requests) does not count.
        c.observe("api.1", 0.01, 1);
        assert_eq!(c.cost("api.1"), None);
        c.observe("api.1", 0.5, 100);
        assert_eq!(c.cost("api.1"), Some(0.005));
        assert_eq!(c.capacity("api.1", 0.5), Some(100.0));
        assert_eq!(c.capacity("api.1", 1.0), Some(200.0));
    }

    #[test]
    fn the_average_follows_a_change_in_cost() {
        let mut c = Capacities::default();
        for _ in 0..5 {
            c.observe("api.1", 0.5, 100);
        }
        for _ in 0..30 {
            c.observe("api.1", 0.5, 50);
        }
        let cost = c.cost("api.1").unwrap();
        assert!((cost - 0.01).abs() < 0.0001, "{cost}");
        c.retain(|i| i != "api.1");
        assert_eq!(c.cost("api.1"), None);
    }

    #[test]
    fn weights_follow_capacities_and_keep_the_total() {
        // Same CPU, one instance three times as costly: a quarter and three quarters.
        assert_eq!(
            capacity_weights(&[500, 500], &[Some(300.0), Some(100.0)]),
            Some(vec![750, 250])
        );
        // Until each instance is measured, nothing changes.
        assert_eq!(capacity_weights(&[500, 500], &[Some(300.0), None]), None);
        assert_eq!(capacity_weights(&[], &[]), None);
        // A tiny share keeps a weight of its own.
        assert_eq!(
            capacity_weights(&[1000, 1000], &[Some(1000.0), Some(1.0)]),
            Some(vec![2000, 1])
        );
    }

    proptest! {
        #[test]
        fn weights_are_proportional_within_a_step(
            cpu in proptest::collection::vec(1u32..4000, 1..8),
            seed in proptest::collection::vec(0.1f64..1000.0, 8),
        ) {
            let capacities: Vec<Option<f64>> = seed[..cpu.len()].iter().map(|c| Some(*c)).collect();
            let weights = capacity_weights(&cpu, &capacities).unwrap();
            let total: f64 = cpu.iter().map(|w| f64::from(*w)).sum();
            let sum: f64 = capacities.iter().map(|c| c.unwrap()).sum();
            for (w, c) in weights.iter().zip(&capacities) {
                let wanted = total * c.unwrap() / sum;
                prop_assert!((f64::from(*w) - wanted).abs() <= total * SHARE_STEP / 2.0 + 1.0,
                    "{w} vs {wanted}");
                prop_assert!(*w >= 1);
            }
        }
    }
}
