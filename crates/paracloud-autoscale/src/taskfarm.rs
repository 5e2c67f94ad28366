//! How many workers a task farm runs: a bag of independent tasks, a goal (a deadline, or a
//! budget in instance time), and the run times learned as tasks complete.
//!
//! The model is the list-scheduling bound: whatever order run times come in, `n` workers that
//! each take the next task as they become free finish `W` of work, whose longest task takes
//! `p`, within `W / n + p × (n − 1) / n` (Graham, 1966). It is what a deadline needs: a bound,
//! not an average. The work left is estimated from the mean run time of the tasks done so far
//! (and of the ones running longer than that mean, which are known to take at least as long),
//! with a margin for the spread of run times and for a mean learned from few tasks (see
//! `work_left`); until a first task completes, a task is taken to be as long as the longest one
//! running, and at least [`FIRST_GUESS_MS`].
//!
//! - With a deadline, the farm runs the fewest workers whose bound still meets it: each worker
//!   more costs a tail of idle time and a start, and finishes no sooner than it needs to.
//! - With a budget, it runs the most workers whose cost still fits what is left of it: `n`
//!   workers cost about `W + p × (n − 1) + n × start` instance time, the work itself plus each
//!   worker's idle tail and start.
//!
//! A plan is recomputed each second from fresh facts, so the count follows what is learned.

use crate::Millis;

/// What a task is taken to last before any has completed.
pub const FIRST_GUESS_MS: Millis = 1_000;

/// What a batch is run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Every task done by this time.
    Deadline { at: Millis },
    /// As soon as it can, within this much instance time (workers × milliseconds).
    Budget { instance_ms: u64 },
}

/// What is known of a batch now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FarmFacts {
    pub now: Millis,
    /// The run times of the tasks done (succeeded, or failed for good).
    pub done: Vec<Millis>,
    /// How long each running task has been running.
    pub running: Vec<Millis>,
    /// Tasks waiting for a worker, retries included.
    pub pending: u32,
    /// Instance time spent so far.
    pub spent_ms: u64,
    /// The most workers the farm may run.
    pub max_workers: u32,
    /// How long a new worker takes to start.
    pub start_ms: Millis,
}

/// How many workers to run, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FarmPlan {
    pub workers: u32,
    /// When the bound says the batch will be done with them.
    pub finish_by: Millis,
    /// Whether the goal is met by the bound (false: the deadline cannot be met even with every
    /// worker, or the budget does not pay for one more task).
    pub meets_goal: bool,
    pub reason: String,
}

/// The mean run time of a task and the longest one, as far as they are known.
pub fn run_times(facts: &FarmFacts) -> (Millis, Millis) {
    let longest_running = facts.running.iter().copied().max().unwrap_or(0);
    if facts.done.is_empty() {
        let guess = longest_running.max(FIRST_GUESS_MS);
        return (guess, guess);
    }
    let done_mean = facts.done.iter().sum::<u64>() / facts.done.len() as u64;
    // Running tasks already longer than the mean are known to be longer: count them at what
    // they have run so far.
    let longer: Vec<Millis> = facts
        .running
        .iter()
        .copied()
        .filter(|&t| t > done_mean)
        .collect();
    let count = (facts.done.len() + longer.len()) as u64;
    let mean = (facts.done.iter().sum::<u64>() + longer.iter().sum::<u64>()) / count;
    let longest = facts
        .done
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(longest_running)
        .max(mean);
    (mean.max(1), longest.max(1))
}

/// How far above its estimate the work left may be, in standard deviations: the estimate is
/// exceeded one time in twenty (a one-sided 95 % bound).
const MARGIN_SIGMAS: f64 = 1.64;

/// The work left, in milliseconds of one worker: the pending tasks at the mean, what the
/// running ones have left of it, and a margin for what is not known yet.
///
/// The margin: `m` waiting tasks drawn from run times of spread `σ` sum to `m × mean` give or
/// take `σ √m`, and a mean learned from `k` tasks is itself off by about `σ / √k`, which `m`
/// tasks multiply; together `σ √(m + m² / k)`, taken [`MARGIN_SIGMAS`] times. It shrinks as
/// tasks complete.
fn work_left(facts: &FarmFacts, mean: Millis) -> u64 {
    let m = f64::from(facts.pending);
    let k = facts.done.len() as f64;
    let margin = if k >= 2.0 {
        let sigma = spread(&facts.done);
        MARGIN_SIGMAS * sigma * (m + m * m / k).sqrt()
    } else {
        0.0
    };
    u64::from(facts.pending) * mean
        + margin.round() as u64
        + facts
            .running
            .iter()
            .map(|&t| mean.saturating_sub(t).max(mean / 10))
            .sum::<u64>()
}

/// The standard deviation of run times (of a sample: divided by `n - 1`).
fn spread(times: &[Millis]) -> f64 {
    let n = times.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean = times.iter().sum::<u64>() as f64 / n;
    let squares: f64 = times.iter().map(|&t| (t as f64 - mean).powi(2)).sum();
    (squares / (n - 1.0)).sqrt()
}

/// How long `workers` take for `work` whose longest task is `longest`, at worst.
fn bound(work: u64, longest: Millis, workers: u32) -> Millis {
    let n = u64::from(workers.max(1));
    work.div_ceil(n) + longest * (n - 1) / n
}

/// The workers to run now for `goal`.
pub fn plan(goal: Goal, facts: &FarmFacts) -> FarmPlan {
    let tasks_left = facts.pending + facts.running.len() as u32;
    if tasks_left == 0 {
        return FarmPlan {
            workers: 0,
            finish_by: facts.now,
            meets_goal: true,
            reason: "every task is done".into(),
        };
    }
    let (mean, longest) = run_times(facts);
    let work = work_left(facts, mean);
    // More workers than tasks would idle; more than allowed are not there.
    let most = facts.max_workers.min(tasks_left).max(1);
    let learned = if facts.done.is_empty() {
        format!(
            "no task done yet, so one is taken to last {}",
            seconds(mean)
        )
    } else {
        format!(
            "{} done, {} on average, the longest {}",
            facts.done.len(),
            seconds(mean),
            seconds(longest)
        )
    };
    match goal {
        Goal::Deadline { at } => {
            let left = at.saturating_sub(facts.now);
            let fits = |n: u32| facts.start_ms + bound(work, longest, n) <= left;
            match (1..=most).find(|&n| fits(n)) {
                Some(n) => FarmPlan {
                    workers: n,
                    finish_by: facts.now + facts.start_ms + bound(work, longest, n),
                    meets_goal: true,
                    reason: format!(
                        "{} {} {} ({} of work) within the {} left ({learned})",
                        count(n, "worker"),
                        if n == 1 { "finishes" } else { "finish" },
                        count(tasks_left, "task"),
                        seconds(work),
                        seconds(left)
                    ),
                },
                None => FarmPlan {
                    workers: most,
                    finish_by: facts.now + facts.start_ms + bound(work, longest, most),
                    meets_goal: false,
                    reason: format!(
                        "{}, the most it may run, {} up to {} for {}, more than the {} left ({learned})",
                        count(most, "worker"),
                        if most == 1 { "needs" } else { "need" },
                        seconds(facts.start_ms + bound(work, longest, most)),
                        count(tasks_left, "task"),
                        seconds(left)
                    ),
                },
            }
        }
        Goal::Budget { instance_ms } => {
            let left = instance_ms.saturating_sub(facts.spent_ms);
            let cost = |n: u32| work + longest * u64::from(n - 1) + u64::from(n) * facts.start_ms;
            let busy = facts.running.len() as u32;
            let chosen = (1..=most).rev().find(|&n| cost(n) <= left);
            let workers = chosen.unwrap_or(1).max(busy.min(most));
            FarmPlan {
                workers,
                finish_by: facts.now + facts.start_ms + bound(work, longest, workers),
                meets_goal: chosen.is_some(),
                reason: match chosen {
                    Some(n) => format!(
                        "{} {} about {} of the {} left ({learned})",
                        count(n, "worker"),
                        if n == 1 { "costs" } else { "cost" },
                        seconds(cost(n)),
                        seconds(left)
                    ),
                    None => format!(
                        "{} need about {} of work, more than the {} of budget left ({learned})",
                        count(tasks_left, "task"),
                        seconds(work),
                        seconds(left)
                    ),
                },
            }
        }
    }
}

/// `n` things, in words: `1 worker`, `3 workers`.
fn count(n: u32, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

fn seconds(ms: Millis) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts(done: &[Millis], running: &[Millis], pending: u32) -> FarmFacts {
        FarmFacts {
            now: 0,
            done: done.to_vec(),
            running: running.to_vec(),
            pending,
            spent_ms: 0,
            max_workers: 16,
            start_ms: 500,
        }
    }

    #[test]
    fn the_fewest_workers_that_meet_the_deadline() {
        // 20 tasks of 3 s: 60 s of work. 10 s left: 60/n + 3(n-1)/n + 0.5 <= 10 needs n = 9.
        let plan = plan(Goal::Deadline { at: 10_000 }, &facts(&[3_000; 4], &[], 20));
        assert_eq!(plan.workers, 9, "{}", plan.reason);
        assert!(plan.meets_goal);
        assert!(plan.finish_by <= 10_000);
        assert!(
            plan.reason.contains("4 done, 3.0s on average"),
            "{}",
            plan.reason
        );
        // A far deadline needs one.
        let relaxed = super::plan(Goal::Deadline { at: 100_000 }, &facts(&[3_000; 4], &[], 20));
        assert_eq!(relaxed.workers, 1);
    }

    #[test]
    fn a_deadline_out_of_reach_gets_every_worker_and_says_so() {
        let plan = plan(Goal::Deadline { at: 5_000 }, &facts(&[3_000], &[], 100));
        assert_eq!(plan.workers, 16);
        assert!(!plan.meets_goal);
        assert!(
            plan.reason.contains("the most it may run"),
            "{}",
            plan.reason
        );
    }

    #[test]
    fn before_any_task_is_done_the_longest_running_one_is_the_guess() {
        let early = plan(Goal::Deadline { at: 30_000 }, &facts(&[], &[], 40));
        assert_eq!(
            run_times(&facts(&[], &[], 40)),
            (FIRST_GUESS_MS, FIRST_GUESS_MS)
        );
        let later = plan(
            Goal::Deadline { at: 30_000 },
            &facts(&[], &[4_000, 4_000], 38),
        );
        assert!(
            later.workers > early.workers,
            "tasks that run long raise the count: {} then {}",
            early.workers,
            later.workers
        );
    }

    #[test]
    fn running_tasks_longer_than_the_mean_raise_it() {
        let (mean, longest) = run_times(&facts(&[1_000, 1_000], &[7_000, 500], 0));
        assert_eq!(
            mean, 3_000,
            "(1000 + 1000 + 7000) / 3: the short running one is not known yet"
        );
        assert_eq!(longest, 7_000);
    }

    #[test]
    fn a_budget_buys_the_most_workers_it_pays_for() {
        // 10 tasks of 2 s: 20 s of work; n workers cost 20 + 2(n-1) + 0.5n seconds.
        let mut known = facts(&[2_000; 2], &[], 10);
        let plan = plan(
            Goal::Budget {
                instance_ms: 30_000,
            },
            &known,
        );
        assert_eq!(
            plan.workers, 4,
            "20 + 6 + 2 = 28 <= 30 < 20 + 8 + 2.5: {}",
            plan.reason
        );
        assert!(plan.meets_goal);
        known.spent_ms = 29_000;
        let spent = super::plan(
            Goal::Budget {
                instance_ms: 30_000,
            },
            &known,
        );
        assert_eq!(spent.workers, 1);
        assert!(!spent.meets_goal, "{}", spent.reason);
    }

    #[test]
    fn a_mean_learned_from_few_varied_tasks_asks_for_a_margin_that_shrinks_as_more_complete() {
        // Run times of 0.5 s and 2.5 s: a mean of 1.5 s, a spread of about 1.41 s.
        let few = facts(&[500, 2_500], &[], 30);
        let many = facts(&[500, 2_500].repeat(10), &[], 30);
        let steady = facts(&[1_500, 1_500], &[], 30);
        let work = |f: &FarmFacts| work_left(f, run_times(f).0);
        assert_eq!(work(&steady), 45_000, "30 tasks at 1.5 s, nothing unknown");
        assert!(work(&few) > work(&many), "{} / {}", work(&few), work(&many));
        assert!(work(&many) > work(&steady), "{}", work(&many));
        let at = Goal::Deadline { at: 40_000 };
        assert!(plan(at, &few).workers > plan(at, &steady).workers);
        assert!((spread(&[500, 2_500]) - 1414.2).abs() < 0.1);
    }

    #[test]
    fn no_task_left_needs_no_worker() {
        let plan = plan(Goal::Deadline { at: 1 }, &facts(&[5; 3], &[], 0));
        assert_eq!(plan.workers, 0);
    }

    proptest! {
        /// Whatever the facts, the count is within what the farm may run and what is left to
        /// run; and a plan that says it meets a deadline finishes by it.
        #[test]
        fn plans_stay_within_bounds(
            done in proptest::collection::vec(1u64..100_000, 0..20),
            running in proptest::collection::vec(0u64..100_000, 0..10),
            pending in 0u32..500,
            max_workers in 1u32..64,
            at in 0u64..1_000_000,
            budget in 0u64..10_000_000,
        ) {
            let facts = FarmFacts {
                now: 0,
                done,
                running,
                pending,
                spent_ms: 0,
                max_workers,
                start_ms: 700,
            };
            let left = facts.pending + facts.running.len() as u32;
            for goal in [Goal::Deadline { at }, Goal::Budget { instance_ms: budget }] {
                let plan = plan(goal, &facts);
                prop_assert!(plan.workers <= max_workers.min(left.max(1)));
                prop_assert_eq!(plan.workers == 0, left == 0);
                if let (Goal::Deadline { at }, true) = (goal, plan.meets_goal) {
                    prop_assert!(plan.finish_by <= at);
                }
            }
        }

        /// More time never asks for more workers.
        #[test]
        fn a_later_deadline_never_needs_more_workers(
            done in proptest::collection::vec(1u64..10_000, 1..10),
            pending in 1u32..200,
            at in 1_000u64..500_000,
            later in 0u64..500_000,
        ) {
            let facts = FarmFacts { done, pending, max_workers: 32, start_ms: 300, ..FarmFacts::default() };
            let sooner = plan(Goal::Deadline { at }, &facts);
            let after = plan(Goal::Deadline { at: at + later }, &facts);
            prop_assert!(after.workers <= sooner.workers);
        }
    }
}
