//! Splitting a service's requests between it and its revisions: by header, else by weight.
//!
//! A request whose `x-paracloud-revision` header names a revision goes to that revision (waiting
//! for it like any request waits for a backend). Every other request goes to the service itself
//! or to one of its revisions by weight, chosen by smooth weighted round robin (as nginx's
//! upstream module does): over any run of `total weight` requests each side gets exactly its
//! share, interleaved rather than in bursts, so a 10% canary sees one request in ten from the
//! start. A side with no ready instance gets no share while others have one (a revision scaled to
//! zero must not make requests wait); when no side has one, requests wait for the service itself,
//! which is what wakes a service scaled to zero.

/// The request header that routes a request to a named revision.
pub const REVISION_HEADER: &str = "x-paracloud-revision";

/// Which side of a listener serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The service itself.
    Main,
    /// Its revision at this index of the listener's revisions.
    Revision(usize),
}

/// The state of a smooth weighted round robin over a fixed list of weights.
#[derive(Debug, Default)]
pub(crate) struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    /// The index of the next choice among `weights` (zero weights are never chosen); `None` when
    /// every weight is zero. The state restarts when the number of weights changes.
    pub(crate) fn next(&mut self, weights: &[u32]) -> Option<usize> {
        if self.current.len() != weights.len() {
            self.current = vec![0; weights.len()];
        }
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        if total == 0 {
            return None;
        }
        let mut best: Option<usize> = None;
        for (i, &weight) in weights.iter().enumerate() {
            if weight == 0 {
                continue;
            }
            self.current[i] += i64::from(weight);
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }
}

/// Chooses the side of a request: `header` is its `x-paracloud-revision` value, `revisions` the
/// listener's revisions (name and percent), `ready(side)` whether a side has a ready backend.
pub(crate) fn choose(
    header: Option<&str>,
    revisions: &[(&str, u32)],
    ready: impl Fn(Side) -> bool,
    smooth: &mut SmoothWeighted,
) -> Side {
    if let Some(wanted) = header {
        if let Some(i) = revisions.iter().position(|(name, _)| *name == wanted) {
            return Side::Revision(i);
        }
    }
    let revision_total: u32 = revisions.iter().map(|(_, w)| *w).sum();
    let sides: Vec<Side> = std::iter::once(Side::Main)
        .chain((0..revisions.len()).map(Side::Revision))
        .collect();
    let weights: Vec<u32> = sides
        .iter()
        .map(|&side| {
            let weight = match side {
                Side::Main => 100u32.saturating_sub(revision_total),
                Side::Revision(i) => revisions[i].1,
            };
            if ready(side) {
                weight
            } else {
                0
            }
        })
        .collect();
    match smooth.next(&weights) {
        Some(i) => sides[i],
        // No weighted side is ready: wait for the service itself.
        None => Side::Main,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_ten_percent_canary_gets_one_request_in_ten_interleaved() {
        let mut smooth = SmoothWeighted::default();
        let picks: Vec<Side> = (0..20)
            .map(|_| choose(None, &[("canary", 10)], |_| true, &mut smooth))
            .collect();
        let canary: Vec<usize> = picks
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == Side::Revision(0))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(canary.len(), 2);
        assert_eq!(canary[1] - canary[0], 10, "spread, not bunched: {canary:?}");
    }

    #[test]
    fn the_header_names_a_revision_whatever_its_weight_and_readiness() {
        let mut smooth = SmoothWeighted::default();
        let revisions = [("canary", 10), ("test", 0)];
        assert_eq!(
            choose(Some("test"), &revisions, |_| false, &mut smooth),
            Side::Revision(1)
        );
        assert_eq!(
            choose(Some("canary"), &revisions, |_| true, &mut smooth),
            Side::Revision(0)
        );
        // An unknown name is an ordinary request.
        assert_eq!(
            choose(Some("nope"), &[("test", 0)], |_| true, &mut smooth),
            Side::Main
        );
    }

    #[test]
    fn a_side_without_ready_backends_gets_no_share_and_nothing_ready_waits_for_main() {
        let mut smooth = SmoothWeighted::default();
        let only_canary = |side: Side| side == Side::Revision(0);
        for _ in 0..10 {
            assert_eq!(
                choose(None, &[("canary", 10)], only_canary, &mut smooth),
                Side::Revision(0)
            );
        }
        assert_eq!(
            choose(None, &[("canary", 10)], |_| false, &mut smooth),
            Side::Main
        );
        // A header-only revision never takes unrouted requests, even when main is not ready.
        assert_eq!(
            choose(None, &[("test", 0)], |s| s != Side::Main, &mut smooth),
            Side::Main
        );
    }

    proptest! {
        #[test]
        fn every_run_of_total_weight_choices_gives_each_its_exact_share(
            weights in proptest::collection::vec(0u32..20, 1..6),
            rounds in 1usize..4,
        ) {
            let total: u32 = weights.iter().sum();
            let mut smooth = SmoothWeighted::default();
            if total == 0 {
                prop_assert_eq!(smooth.next(&weights), None);
                return Ok(());
            }
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..total as usize * rounds {
                counts[smooth.next(&weights).unwrap()] += 1;
            }
            let expected: Vec<u32> = weights.iter().map(|w| w * rounds as u32).collect();
            prop_assert_eq!(counts, expected);
        }
    }
}
