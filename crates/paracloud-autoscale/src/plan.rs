//! The planner: the cheapest allocation (instances and CPU per instance, per service) whose
//! predicted end-to-end response time meets the SLO, by branch and bound over per-service
//! options.
//!
//! Each instance is a processor-sharing server: its `k` cores are shared by the requests in
//! progress, one request using at most one core, and it gets `1/c` of the service's requests
//! (the data plane's least-loaded picking does better than that split, so the model errs on the
//! safe side; its calibration takes the rest). A request visits service `s` `V_s` times on
//! average; the end-to-end time is the sum of those visits, whose means and variances add up,
//! and its percentile is read from a gamma fit.

use crate::queueing::{gamma_quantile, processor_sharing, Mmc};

/// One service as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceLoad {
    pub name: String,
    /// Requests per second expected at this service.
    pub arrival_rate: f64,
    /// CPU-seconds one request needs at this service (its own work, not its callees').
    pub demand: f64,
    /// Visits per end-to-end request.
    pub visits: f64,
    pub min_instances: u32,
    pub max_instances: u32,
    /// The CPU sizes per instance the planner may choose, in cores, ascending.
    pub cpu_sizes: Vec<f64>,
}

/// Instances and CPU per instance for one service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allocation {
    pub instances: u32,
    pub cpu: f64,
}

/// What the planner weighs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanTarget {
    /// The end-to-end response time to stay under, in seconds.
    pub latency: f64,
    /// Its percentile, as a fraction.
    pub percentile: f64,
    /// The highest utilisation planned for any service: headroom for the noise of arrivals.
    pub max_utilisation: f64,
    /// What one instance costs besides its CPU, in cores (memory, start-up, a process).
    pub instance_cost: f64,
    /// The cores every service of the plan may hold together (`f64::INFINITY`: no limit). On
    /// one machine it is the machine's cores: beyond them, instances share cores the model
    /// counts as theirs alone, and the prediction no longer holds.
    pub cpu_budget: f64,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// One per service, in the order given.
    pub allocations: Vec<Allocation>,
    /// Predicted end-to-end percentile in seconds (infinite when some service is overloaded).
    pub predicted: f64,
    /// Whether the prediction meets the target; when not, the plan is the largest allocation
    /// the bounds and the CPU budget allow.
    pub feasible: bool,
    pub cost: f64,
}

/// The response time of one visit at one service under one allocation: (mean, variance) in
/// seconds; `None` when the allocation cannot carry the load.
pub fn visit_time(service: &ServiceLoad, allocation: Allocation) -> Option<(f64, f64)> {
    if service.arrival_rate <= 0.0 {
        return Some((0.0, 0.0));
    }
    if allocation.instances == 0 || service.demand <= 0.0 {
        return if service.demand <= 0.0 {
            Some((0.0, 0.0))
        } else {
            None
        };
    }
    let per_instance = service.arrival_rate / f64::from(allocation.instances);
    let utilisation = per_instance * service.demand / allocation.cpu;
    let cores = allocation.cpu.floor();
    if cores < 2.0 {
        let alone = service.demand / allocation.cpu.min(1.0);
        return processor_sharing(alone, utilisation);
    }
    // Several whole cores: requests run side by side until the cores are taken, like the
    // servers of an M/M/s queue; sharing a core beyond that spreads the times as PS does.
    let queue = Mmc::new(
        cores as u32,
        per_instance,
        cores / allocation.cpu / service.demand,
    )?;
    let spread = (2.0 + utilisation) / (2.0 - utilisation);
    Some((queue.mean(), queue.variance() * spread))
}

/// Utilisation of one service under one allocation.
pub fn utilisation(service: &ServiceLoad, allocation: Allocation) -> f64 {
    let capacity = f64::from(allocation.instances) * allocation.cpu;
    if service.arrival_rate <= 0.0 || service.demand <= 0.0 {
        0.0
    } else if capacity <= 0.0 {
        f64::INFINITY
    } else {
        service.arrival_rate * service.demand / capacity
    }
}

/// The end-to-end percentile (seconds) of an allocation of every service.
pub fn predict(services: &[ServiceLoad], allocations: &[Allocation], percentile: f64) -> f64 {
    let mut mean = 0.0;
    let mut variance = 0.0;
    for (service, allocation) in services.iter().zip(allocations) {
        match visit_time(service, *allocation) {
            Some((m, v)) => {
                mean += service.visits * m;
                variance += service.visits * v;
            }
            None => return f64::INFINITY,
        }
    }
    end_to_end(mean, variance, percentile)
}

/// The mean end-to-end time (seconds) of an allocation of every service.
pub fn mean_time(services: &[ServiceLoad], allocations: &[Allocation]) -> f64 {
    let mut mean = 0.0;
    for (service, allocation) in services.iter().zip(allocations) {
        match visit_time(service, *allocation) {
            Some((m, _)) => mean += service.visits * m,
            None => return f64::INFINITY,
        }
    }
    mean
}

/// The end-to-end percentile with nothing waiting anywhere: every visit alone on an instance of
/// the largest size. No allocation does better; an SLO below it cannot be met by scaling.
pub fn floor(services: &[ServiceLoad], percentile: f64) -> f64 {
    let mut mean = 0.0;
    let mut variance = 0.0;
    for service in services
        .iter()
        .filter(|s| s.arrival_rate > 0.0 && s.demand > 0.0)
    {
        let largest = service.cpu_sizes.last().copied().unwrap_or(1.0);
        if let Some((m, v)) = processor_sharing(service.demand / largest.min(1.0), 0.0) {
            mean += service.visits * m;
            variance += service.visits * v;
        }
    }
    end_to_end(mean, variance, percentile)
}

/// Never below the mean, which keeps the bound the search prunes with safe.
fn end_to_end(mean: f64, variance: f64, percentile: f64) -> f64 {
    gamma_quantile(mean, variance, percentile).max(mean)
}

/// The cores an allocation holds.
pub fn cores(allocation: Allocation) -> f64 {
    f64::from(allocation.instances) * allocation.cpu
}

/// Whether allocations holding `cores` together fit the budget (with room for rounding).
fn within(cores: f64, target: &PlanTarget) -> bool {
    cores <= target.cpu_budget + 1e-9
}

/// The cost of an allocation: cores plus the cost of each instance.
pub fn cost(allocation: Allocation, target: &PlanTarget) -> f64 {
    f64::from(allocation.instances) * (allocation.cpu + target.instance_cost)
}

/// Whether an allocation may be chosen at all for this service: within bounds, under the
/// utilisation cap, and within the CPU budget on its own.
pub fn admissible(service: &ServiceLoad, allocation: Allocation, target: &PlanTarget) -> bool {
    let instances_in_bounds = allocation.instances >= service.min_instances
        && allocation.instances <= service.max_instances;
    let needs_one = service.arrival_rate > 0.0 && allocation.instances == 0;
    instances_in_bounds
        && !needs_one
        && utilisation(service, allocation) <= target.max_utilisation
        && within(cores(allocation), target)
}

#[derive(Debug, Clone, Copy)]
struct Option_ {
    allocation: Allocation,
    cost: f64,
    cores: f64,
    mean: f64,
    variance: f64,
}

/// The allocations worth considering for one service: admissible, not dominated by a cheaper
/// one that is at least as fast, and no more instances once waiting has become negligible
/// (more would only cost).
fn options(service: &ServiceLoad, target: &PlanTarget) -> Vec<Option_> {
    let mut all = Vec::new();
    for &cpu in &service.cpu_sizes {
        let mut instances = service.min_instances;
        if service.arrival_rate > 0.0 && service.demand > 0.0 {
            let needed = service.arrival_rate * service.demand / (cpu * target.max_utilisation);
            instances = instances.max(needed.ceil() as u32).max(1);
            // The ceiling above can land a hair under the cap through rounding.
            while instances <= service.max_instances
                && !admissible(service, Allocation { instances, cpu }, target)
            {
                instances += 1;
            }
        }
        while instances <= service.max_instances {
            let allocation = Allocation { instances, cpu };
            let Some((mean, variance)) = visit_time(service, allocation) else {
                instances += 1;
                continue;
            };
            if !within(cores(allocation), target) {
                break;
            }
            all.push(Option_ {
                allocation,
                cost: cost(allocation, target),
                cores: cores(allocation),
                mean: service.visits * mean,
                variance: service.visits * variance,
            });
            if service.arrival_rate <= 0.0
                || utilisation(service, allocation) < NEGLIGIBLE_UTILISATION
            {
                break;
            }
            instances += 1;
        }
    }
    all.sort_by(|a, b| a.cost.total_cmp(&b.cost).then(a.mean.total_cmp(&b.mean)));
    let mut kept: Vec<Option_> = Vec::new();
    for option in all {
        let dominated = kept.iter().any(|k| {
            k.cost <= option.cost
                && k.mean <= option.mean
                && k.variance <= option.variance
                && k.cores <= option.cores
        });
        if !dominated {
            kept.push(option);
        }
    }
    kept
}

/// Below this utilisation, another instance buys nothing worth its cost (the time is within 5%
/// of the service time alone).
const NEGLIGIBLE_UTILISATION: f64 = 0.05;

/// Nodes the search may visit before it settles for the best plan found so far.
const SEARCH_BUDGET: usize = 200_000;

/// The cheapest allocation meeting the target within the CPU budget, or, when none does, the
/// largest the bounds and the budget allow.
pub fn plan(services: &[ServiceLoad], target: &PlanTarget) -> Plan {
    let per_service: Vec<Vec<Option_>> = services.iter().map(|s| options(s, target)).collect();
    if per_service.iter().any(Vec::is_empty) {
        return largest(services, target);
    }
    // Search the services with the fewest options first: the tree stays narrow at the top.
    let mut order: Vec<usize> = (0..services.len()).collect();
    order.sort_by_key(|&i| per_service[i].len());
    let suffix = |pick: &dyn Fn(&Option_) -> f64| {
        let mut sums = vec![0.0; order.len() + 1];
        for depth in (0..order.len()).rev() {
            let best = per_service[order[depth]]
                .iter()
                .map(pick)
                .fold(f64::INFINITY, f64::min);
            sums[depth] = sums[depth + 1] + best;
        }
        sums
    };
    let search = Search {
        options: &per_service,
        order: &order,
        min_cost: suffix(&|o| o.cost),
        min_mean: suffix(&|o| o.mean),
        min_variance: suffix(&|o| o.variance),
        min_cores: suffix(&|o| o.cores),
        target,
    };
    let mut state = SearchState {
        chosen: vec![0; services.len()],
        best: None,
        nodes: 0,
    };
    search.descend(0, Sums::default(), &mut state);
    match state.best {
        Some((cost, chosen)) => {
            let allocations: Vec<Allocation> = chosen
                .iter()
                .enumerate()
                .map(|(i, &o)| per_service[i][o].allocation)
                .collect();
            Plan {
                predicted: predict(services, &allocations, target.percentile),
                allocations,
                feasible: true,
                cost,
            }
        }
        None => largest(services, target),
    }
}

struct Search<'a> {
    options: &'a [Vec<Option_>],
    order: &'a [usize],
    /// Lower bounds of what the services from a depth on add, indexed by depth.
    min_cost: Vec<f64>,
    min_mean: Vec<f64>,
    min_variance: Vec<f64>,
    min_cores: Vec<f64>,
    target: &'a PlanTarget,
}

/// What the services chosen so far add up to.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    cost: f64,
    mean: f64,
    variance: f64,
    cores: f64,
}

struct SearchState {
    chosen: Vec<usize>,
    best: Option<(f64, Vec<usize>)>,
    nodes: usize,
}

impl Search<'_> {
    fn descend(&self, depth: usize, sums: Sums, state: &mut SearchState) {
        let Sums {
            cost,
            mean,
            variance,
            cores,
        } = sums;
        state.nodes += 1;
        if state.nodes > SEARCH_BUDGET && state.best.is_some() {
            return;
        }
        let best_cost = state.best.as_ref().map_or(f64::INFINITY, |b| b.0);
        if cost + self.min_cost[depth] >= best_cost - 1e-12
            || !within(cores + self.min_cores[depth], self.target)
        {
            return;
        }
        let lower = end_to_end(
            mean + self.min_mean[depth],
            variance + self.min_variance[depth],
            self.target.percentile,
        );
        // The mean alone is a safe bound; the percentile of the lower bounds usually is too.
        if mean + self.min_mean[depth] > self.target.latency {
            return;
        }
        if depth == self.order.len() {
            if lower <= self.target.latency {
                state.best = Some((cost, state.chosen.clone()));
            }
            return;
        }
        let service = self.order[depth];
        for (index, option) in self.options[service].iter().enumerate() {
            state.chosen[service] = index;
            let sums = Sums {
                cost: cost + option.cost,
                mean: mean + option.mean,
                variance: variance + option.variance,
                cores: cores + option.cores,
            };
            self.descend(depth + 1, sums, state);
        }
    }
}

/// Every service at its most capable allocation within bounds; then, while together they hold
/// more cores than the budget, the service that loses the least gives up one step (an instance,
/// or a CPU size at its fewest instances): the one whose utilisation stays lowest after it.
fn largest(services: &[ServiceLoad], target: &PlanTarget) -> Plan {
    let mut allocations: Vec<Allocation> = services
        .iter()
        .map(|s| Allocation {
            instances: s.max_instances,
            cpu: s.cpu_sizes.last().copied().unwrap_or(1.0),
        })
        .collect();
    while !within(allocations.iter().copied().map(cores).sum(), target) {
        let smaller = services
            .iter()
            .zip(&allocations)
            .enumerate()
            .filter_map(|(i, (service, allocation))| {
                let step = step_down(service, *allocation)?;
                Some((utilisation(service, step), i, step))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let Some((_, i, step)) = smaller else { break };
        allocations[i] = step;
    }
    Plan {
        predicted: predict(services, &allocations, target.percentile),
        cost: allocations.iter().map(|a| cost(*a, target)).sum(),
        allocations,
        feasible: false,
    }
}

/// One step smaller than `allocation`: an instance fewer while above the service's fewest, then
/// the next smaller CPU size; `None` at the smallest (an idle service keeps its fewest).
fn step_down(service: &ServiceLoad, allocation: Allocation) -> Option<Allocation> {
    let fewest = service
        .min_instances
        .max(u32::from(service.arrival_rate > 0.0));
    if allocation.instances > fewest {
        return Some(Allocation {
            instances: allocation.instances - 1,
            ..allocation
        });
    }
    let cpu = service
        .cpu_sizes
        .iter()
        .copied()
        .rfind(|&size| size < allocation.cpu)?;
    Some(Allocation { cpu, ..allocation })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target(latency: f64) -> PlanTarget {
        PlanTarget {
            latency,
            percentile: 0.95,
            max_utilisation: 0.85,
            instance_cost: 0.25,
            cpu_budget: f64::INFINITY,
        }
    }

    fn service(name: &str, rate: f64, demand: f64, visits: f64, max: u32) -> ServiceLoad {
        ServiceLoad {
            name: name.into(),
            arrival_rate: rate,
            demand,
            visits,
            min_instances: 1,
            max_instances: max,
            cpu_sizes: vec![0.5, 1.0, 2.0],
        }
    }

    /// Every combination of the allocations the planner weighs: the answer its branch and bound
    /// must match. Those are the admissible ones within bounds, with no more instances of a
    /// size once the utilisation is negligible: more would only cost, and their gain (a hair of
    /// variance) can tip a target that lies within that hair of the prediction, which the
    /// planner does not chase.
    fn brute_force(services: &[ServiceLoad], target: &PlanTarget) -> Option<f64> {
        let choices: Vec<Vec<Allocation>> = services
            .iter()
            .map(|s| {
                let mut choices = Vec::new();
                for &cpu in &s.cpu_sizes {
                    for instances in s.min_instances..=s.max_instances {
                        let allocation = Allocation { instances, cpu };
                        if !admissible(s, allocation, target) {
                            continue;
                        }
                        choices.push(allocation);
                        if s.arrival_rate <= 0.0
                            || utilisation(s, allocation) < NEGLIGIBLE_UTILISATION
                        {
                            break;
                        }
                    }
                }
                choices
            })
            .collect();
        let mut best: Option<f64> = None;
        let mut index = vec![0usize; services.len()];
        if choices.iter().any(Vec::is_empty) {
            return None;
        }
        loop {
            let allocations: Vec<Allocation> = index
                .iter()
                .enumerate()
                .map(|(s, &i)| choices[s][i])
                .collect();
            let total: f64 = allocations.iter().copied().map(cores).sum();
            if within(total, target)
                && predict(services, &allocations, target.percentile) <= target.latency
            {
                let c: f64 = allocations.iter().map(|a| cost(*a, target)).sum();
                if best.is_none_or(|b| c < b) {
                    best = Some(c);
                }
            }
            let mut s = 0;
            loop {
                if s == services.len() {
                    return best;
                }
                index[s] += 1;
                if index[s] < choices[s].len() {
                    break;
                }
                index[s] = 0;
                s += 1;
            }
        }
    }

    #[test]
    fn one_service_at_half_load_needs_one_instance() {
        // 50 req/s × 10 ms = 0.5 cores: one 1-core instance is at 50%, its p95 well under 100 ms.
        // Half a core would be at 100%: not allowed.
        let services = [service("api", 50.0, 0.010, 1.0, 10)];
        let plan = plan(&services, &target(0.100));
        assert!(plan.feasible);
        assert_eq!(
            plan.allocations,
            [Allocation {
                instances: 1,
                cpu: 1.0
            }]
        );
        // Processor sharing at ρ = 0.5: mean 20 ms, variance 20² × 2.5 / 1.5 ms².
        let expected = gamma_quantile(0.020, 0.0004 * 2.5 / 1.5, 0.95);
        assert!(
            (plan.predicted - expected).abs() < 1e-9,
            "{}",
            plan.predicted
        );
    }

    /// The ConPaaS argument: the bottleneck is the service with the most work per request, not
    /// the entry. The planner gives the capacity to kv, which is called three times per request.
    #[test]
    fn capacity_goes_to_the_bottleneck_behind_the_entry() {
        let services = [
            service("web", 100.0, 0.001, 1.0, 10),
            service("api", 100.0, 0.002, 1.0, 10),
            service("kv", 300.0, 0.008, 3.0, 20),
        ];
        let plan = plan(&services, &target(0.200));
        assert!(plan.feasible);
        let capacity = |a: Allocation| f64::from(a.instances) * a.cpu;
        assert!(capacity(plan.allocations[2]) >= 300.0 * 0.008 / 0.85);
        assert!(capacity(plan.allocations[2]) > 4.0 * capacity(plan.allocations[0]));
        assert_eq!(brute_force(&services, &target(0.200)), Some(plan.cost));
    }

    #[test]
    fn an_impossible_target_gives_the_largest_allocation() {
        let services = [service("api", 50.0, 0.010, 1.0, 3)];
        // The service time alone is 10 ms mean: a 5 ms p95 cannot be met.
        let plan = plan(&services, &target(0.005));
        assert!(!plan.feasible);
        assert_eq!(
            plan.allocations,
            [Allocation {
                instances: 3,
                cpu: 2.0
            }]
        );
    }

    #[test]
    fn an_idle_service_allowed_zero_costs_nothing() {
        let mut idle = service("batch", 0.0, 0.010, 0.0, 5);
        idle.min_instances = 0;
        let services = [service("api", 10.0, 0.010, 1.0, 5), idle];
        let plan = plan(&services, &target(0.200));
        assert_eq!(plan.allocations[1].instances, 0);
    }

    /// On one machine of 4 cores, kv cannot have the 8 cores it would take alone: the plan
    /// fits all three services into the 4, and says it cannot meet the SLO there.
    #[test]
    fn the_plan_fits_the_machine() {
        let services = [
            service("web", 100.0, 0.001, 1.0, 10),
            service("api", 100.0, 0.002, 1.0, 10),
            service("kv", 300.0, 0.008, 3.0, 20),
        ];
        let unlimited = plan(&services, &target(0.200));
        let total = |p: &Plan| p.allocations.iter().copied().map(cores).sum::<f64>();
        assert!(total(&unlimited) > 3.0, "{unlimited:?}");
        let machine = PlanTarget {
            cpu_budget: 3.0,
            ..target(0.200)
        };
        let fitted = plan(&services, &machine);
        assert!(!fitted.feasible, "{fitted:?}");
        assert!(total(&fitted) <= 3.0, "{fitted:?}");
        // Each service keeps an instance; kv, the bottleneck, keeps the most cores.
        assert!(fitted.allocations.iter().all(|a| a.instances >= 1));
        assert!(cores(fitted.allocations[2]) >= cores(fitted.allocations[0]));
        // With enough cores for the plan, the budget changes nothing.
        let roomy = PlanTarget {
            cpu_budget: total(&unlimited),
            ..target(0.200)
        };
        assert_eq!(plan(&services, &roomy), unlimited);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// With a CPU budget too, branch and bound finds brute force's cheapest plan; and
        /// whatever it answers holds no more cores than the budget, unless the services'
        /// smallest allocations alone do.
        #[test]
        fn the_planner_matches_brute_force_within_a_budget(
            loads in prop::collection::vec((1.0f64..200.0, 0.0005f64..0.02, 0.5f64..3.0), 1..=3),
            latency_ms in 20.0f64..400.0,
            budget in 1.0f64..12.0,
        ) {
            let services: Vec<ServiceLoad> = loads
                .iter()
                .enumerate()
                .map(|(i, &(rate, demand, visits))| service(&format!("s{i}"), rate, demand, visits, 5))
                .collect();
            let target = PlanTarget { cpu_budget: budget, ..target(latency_ms / 1000.0) };
            let plan = plan(&services, &target);
            match brute_force(&services, &target) {
                Some(best) => {
                    prop_assert!(plan.feasible);
                    prop_assert!((plan.cost - best).abs() < 1e-9, "plan {} vs brute force {}", plan.cost, best);
                }
                None => prop_assert!(!plan.feasible),
            }
            let total: f64 = plan.allocations.iter().copied().map(cores).sum();
            let smallest = services.len() as f64 * 0.5;
            prop_assert!(total <= budget.max(smallest) + 1e-9, "{total} cores for a budget of {budget}");
        }

        /// On small applications the branch and bound finds exactly the cost of the cheapest
        /// feasible allocation that exhaustive search finds.
        #[test]
        fn the_planner_matches_brute_force(
            loads in prop::collection::vec((1.0f64..200.0, 0.0005f64..0.02, 0.5f64..3.0), 1..=3),
            latency_ms in 20.0f64..400.0,
        ) {
            let services: Vec<ServiceLoad> = loads
                .iter()
                .enumerate()
                .map(|(i, &(rate, demand, visits))| service(&format!("s{i}"), rate, demand, visits, 5))
                .collect();
            let target = target(latency_ms / 1000.0);
            let plan = plan(&services, &target);
            match brute_force(&services, &target) {
                Some(best) => {
                    prop_assert!(plan.feasible);
                    prop_assert!((plan.cost - best).abs() < 1e-9, "plan {} vs brute force {}", plan.cost, best);
                    prop_assert!(plan.predicted <= target.latency);
                }
                None => prop_assert!(!plan.feasible),
            }
        }
    }
}
