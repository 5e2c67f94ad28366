//! Backend picking: power of two choices by load (active work × measured latency) per unit of weight, as a pure function.

use std::cmp::Ordering;

use rand::Rng;

/// What the picker needs to know about one backend at the moment of the pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Connections (TCP) or requests (HTTP) currently open to this backend.
    pub active: u64,
    /// Latency estimate (an EWMA, in microseconds); 0 while unknown, as for TCP backends.
    pub latency_us: u64,
    /// Relative weight; a weight of 0 is only picked when every candidate has weight 0.
    pub weight: u32,
    /// False while the backend recently failed to connect, or was already tried for this
    /// connection; such backends are only picked when no available one is left.
    pub available: bool,
}

/// Picks a backend index, or `None` when `candidates` is empty.
///
/// Two candidates are drawn without replacement with probability proportional to their weight.
/// When both latencies are known, each has the cost `(active + 1) × latency / weight` and the
/// cheaper one wins with probability `higher / (lower + higher)`: a backend ten times cheaper gets
/// about 91% of the contested picks, while a backend whose estimate is stale-high (say from a
/// cold first request) still gets a share and is measured again instead of being locked out.
/// Otherwise (TCP, or a backend not yet measured) the one with fewer active connections per unit
/// of weight wins outright, ties going to the first draw. Weights shape the spread both when idle
/// and under load. The pool is narrowed first to available backends with a weight, then to any
/// backend with a weight, then to all: a pick is always made when a backend exists, because trying
/// a doubtful backend beats refusing the client.
pub fn pick<R: Rng + ?Sized>(candidates: &[Candidate], rng: &mut R) -> Option<usize> {
    let tiers: [&dyn Fn(&Candidate) -> bool; 3] =
        [&|c| c.available && c.weight > 0, &|c| c.weight > 0, &|_| {
            true
        }];
    let pool: Vec<usize> = tiers.iter().find_map(|keep| {
        let pool: Vec<usize> = (0..candidates.len())
            .filter(|&i| keep(&candidates[i]))
            .collect();
        (!pool.is_empty()).then_some(pool)
    })?;
    if pool.len() == 1 {
        return Some(pool[0]);
    }
    let first = draw(candidates, &pool, None, rng);
    let second = draw(candidates, &pool, Some(first), rng);
    let (a, b) = (&candidates[first], &candidates[second]);
    if a.latency_us > 0 && b.latency_us > 0 {
        let (cost_a, cost_b) = (cost(a), cost(b));
        // The ticket falls below `cost_b` (and `a` wins) with probability cost_b / total.
        let ticket = rng.random_range(0..cost_a + cost_b);
        return Some(if ticket < cost_b { first } else { second });
    }
    match compare_load(b, a) {
        Ordering::Less => Some(second),
        _ => Some(first),
    }
}

/// `(active + 1) × latency / weight`, scaled to stay an integer; at least 1.
fn cost(c: &Candidate) -> u128 {
    let scaled = u128::from(c.active + 1) * u128::from(c.latency_us) * 1_000;
    (scaled / u128::from(effective_weight(c))).max(1)
}

/// The weight used for drawing and for load: at least 1, so all-zero pools still work.
fn effective_weight(c: &Candidate) -> u64 {
    u64::from(c.weight.max(1))
}

/// Orders two candidates by `active / weight` without floating point. Idle backends tie, so the
/// weighted draw alone decides between them and the idle spread follows the weights too.
fn compare_load(a: &Candidate, b: &Candidate) -> Ordering {
    let left = u128::from(a.active) * u128::from(effective_weight(b));
    let right = u128::from(b.active) * u128::from(effective_weight(a));
    left.cmp(&right)
}

/// Draws one index of `pool` (other than `skip`) with probability proportional to its weight.
fn draw<R: Rng + ?Sized>(
    candidates: &[Candidate],
    pool: &[usize],
    skip: Option<usize>,
    rng: &mut R,
) -> usize {
    let eligible = || pool.iter().copied().filter(|&i| Some(i) != skip);
    let total: u64 = eligible().map(|i| effective_weight(&candidates[i])).sum();
    let mut ticket = rng.random_range(0..total);
    for i in eligible() {
        let w = effective_weight(&candidates[i]);
        if ticket < w {
            return i;
        }
        ticket -= w;
    }
    unreachable!("the ticket is below the total weight of the eligible candidates")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn candidate() -> impl Strategy<Value = Candidate> {
        (0u64..1_000, 0u64..100_000, 0u32..10, any::<bool>()).prop_map(
            |(active, latency_us, weight, available)| Candidate {
                active,
                latency_us,
                weight,
                available,
            },
        )
    }

    fn idle(weight: u32) -> Candidate {
        Candidate {
            active: 0,
            latency_us: 0,
            weight,
            available: true,
        }
    }

    #[test]
    fn empty_list_picks_nothing() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(pick(&[], &mut rng), None);
    }

    #[test]
    fn unavailable_backends_are_avoided_while_another_is_available() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut list = vec![idle(1); 4];
        for c in &mut list[..3] {
            c.available = false;
        }
        for _ in 0..200 {
            assert_eq!(pick(&list, &mut rng), Some(3));
        }
    }

    proptest! {
        #[test]
        fn never_picks_out_of_range(list in prop::collection::vec(candidate(), 0..20), seed: u64) {
            let mut rng = StdRng::seed_from_u64(seed);
            match pick(&list, &mut rng) {
                None => prop_assert!(list.is_empty()),
                Some(i) => prop_assert!(i < list.len()),
            }
        }

        #[test]
        fn one_backend_is_always_picked(c in candidate(), seed: u64) {
            let mut rng = StdRng::seed_from_u64(seed);
            prop_assert_eq!(pick(&[c], &mut rng), Some(0));
        }

        #[test]
        fn spread_follows_weights(weights in prop::collection::vec(1u32..5, 2..5), seed: u64) {
            // Connections accumulate as they would under a steady stream of long requests.
            let mut rng = StdRng::seed_from_u64(seed);
            let mut list: Vec<Candidate> = weights.iter().map(|&w| idle(w)).collect();
            let rounds = 4_000u64;
            for _ in 0..rounds {
                let i = pick(&list, &mut rng).unwrap();
                list[i].active += 1;
            }
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            for (c, &w) in list.iter().zip(&weights) {
                let expected = rounds as f64 * f64::from(w) / total as f64;
                let got = c.active as f64;
                prop_assert!((got - expected).abs() <= expected * 0.1 + 5.0,
                    "weight {} got {} expected {:.0} ({:?})", w, got, expected, weights);
            }
        }

        #[test]
        fn idle_spread_follows_weights(w0 in 1u32..5, w1 in 1u32..5, seed: u64) {
            // With nothing active the draw alone decides: still proportional to weight.
            let mut rng = StdRng::seed_from_u64(seed);
            let list = [idle(w0), idle(w1)];
            let rounds = 4_000u32;
            let zeros = (0..rounds).filter(|_| pick(&list, &mut rng) == Some(0)).count();
            let share = f64::from(w0) / f64::from(w0 + w1);
            let expected = f64::from(rounds) * share;
            // Six standard deviations of the binomial: never flaky, still far from uniform.
            let band = 6.0 * (f64::from(rounds) * share * (1.0 - share)).sqrt();
            prop_assert!((zeros as f64 - expected).abs() <= band,
                "weights {}:{} picked the first {} times, expected {:.0}", w0, w1, zeros, expected);
        }

        #[test]
        fn far_less_loaded_backend_wins_between_two(low in 0u64..100, extra in 1u64..1_000, seed: u64) {
            let mut rng = StdRng::seed_from_u64(seed);
            let high = 2 * (low + 1) + extra;
            let list = [Candidate { active: high, ..idle(1) }, Candidate { active: low, ..idle(1) }];
            for _ in 0..20 {
                prop_assert_eq!(pick(&list, &mut rng), Some(1));
            }
        }

        #[test]
        fn much_lower_latency_times_in_flight_is_preferred(
            active in 0u64..50,
            latency in 1u64..10_000,
            factor in 10u64..100,
            seed: u64,
        ) {
            // The slow backend has the same in-flight count but `factor` times the latency:
            // the fast one should get at least 10/11 of the picks (bar six standard deviations).
            let mut rng = StdRng::seed_from_u64(seed);
            let fast = Candidate { active, latency_us: latency, ..idle(1) };
            let slow = Candidate { active, latency_us: latency * factor, ..idle(1) };
            for list in [[fast, slow], [slow, fast]] {
                let want = if list[0] == fast { 0 } else { 1 };
                let wins = (0..400).filter(|_| pick(&list, &mut rng) == Some(want)).count();
                prop_assert!(wins >= 325, "fast picked {} of 400", wins);
            }
        }

        #[test]
        fn in_flight_offsets_latency(latency in 1u64..10_000, seed: u64) {
            // Twice as fast but with five requests waiting (cost 6 against 2) loses three times
            // out of four to an idle peer.
            let mut rng = StdRng::seed_from_u64(seed);
            let busy = Candidate { active: 5, latency_us: latency, ..idle(1) };
            let idle_slow = Candidate { latency_us: latency * 2, ..idle(1) };
            let wins = (0..400).filter(|_| pick(&[busy, idle_slow], &mut rng) == Some(1)).count();
            prop_assert!(wins >= 245, "idle peer picked {} of 400", wins);
        }

        #[test]
        fn similar_latencies_share_the_load(
            latency in 100u64..10_000,
            jitter in 0u64..10,
            seed: u64,
        ) {
            // Costs within 10% of each other: both backends get close to half.
            let mut rng = StdRng::seed_from_u64(seed);
            let a = Candidate { latency_us: latency, ..idle(1) };
            let b = Candidate { latency_us: latency + latency * jitter / 100, ..idle(1) };
            let firsts = (0..400).filter(|_| pick(&[a, b], &mut rng) == Some(0)).count();
            prop_assert!((100..=300).contains(&firsts), "first picked {} of 400", firsts);
        }

        #[test]
        fn the_single_most_loaded_backend_is_never_picked(
            others in prop::collection::vec(0u64..100, 1..10),
            seed: u64,
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut list: Vec<Candidate> =
                others.iter().map(|&a| Candidate { active: a, ..idle(1) }).collect();
            list.push(Candidate { active: 1_000, ..idle(1) });
            for _ in 0..20 {
                prop_assert_ne!(pick(&list, &mut rng), Some(list.len() - 1));
            }
        }
    }
}
