//! A database server's queries per second, from its own count of the queries it ran, read at
//! each of its health checks (pure: the readings come with their times).
//!
//! A database's clients keep their connections open and send many queries down each, so the
//! data plane's count of connections says nothing of its load. The server's own count does. A
//! server publishes it in steps (PostgreSQL's statistics about once a second), so the rate is
//! taken over the readings of the last few seconds rather than between two.

use std::collections::VecDeque;

use crate::Millis;

/// Readings older than this are left out of the rate.
pub const WINDOW_MS: Millis = 4_000;

/// A rate whose latest reading is older than this is no longer given: the server stopped
/// answering its health checks, or is gone.
pub const STALE_MS: Millis = 5_000;

/// One server's readings of its query count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryMeter {
    /// (when, queries so far), oldest first, within [`WINDOW_MS`] of the newest.
    readings: VecDeque<(Millis, u64)>,
}

impl QueryMeter {
    /// A reading of the server's count at `at`. A count that went back (the server started
    /// again) starts the readings over; a reading not later than the last is ignored.
    pub fn read(&mut self, at: Millis, queries: u64) {
        if let Some(&(last_at, last)) = self.readings.back() {
            if at <= last_at {
                return;
            }
            if queries < last {
                self.readings.clear();
            }
        }
        self.readings.push_back((at, queries));
        while self
            .readings
            .front()
            .is_some_and(|&(first, _)| at - first > WINDOW_MS)
        {
            self.readings.pop_front();
        }
    }

    /// Queries per second over the readings kept, at `now`: `None` before two readings, or
    /// once the latest is stale.
    pub fn rate(&self, now: Millis) -> Option<f64> {
        let (&(first_at, first), &(last_at, last)) =
            (self.readings.front()?, self.readings.back()?);
        if last_at == first_at || now.saturating_sub(last_at) > STALE_MS {
            return None;
        }
        Some((last - first) as f64 * 1000.0 / (last_at - first_at) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_rate_is_taken_over_the_last_seconds_of_readings() {
        let mut meter = QueryMeter::default();
        assert_eq!(meter.rate(0), None);
        meter.read(1_000, 100);
        assert_eq!(meter.rate(1_000), None, "one reading is no rate");
        // The server publishes its count in steps: 0, then 200 in a second, then 0 again.
        meter.read(2_000, 100);
        meter.read(3_000, 300);
        meter.read(4_000, 300);
        assert_eq!(meter.rate(4_000), Some(200.0 / 3.0));
        // Readings older than the window leave it.
        meter.read(6_000, 500);
        assert_eq!(meter.rate(6_000), Some(400.0 / 4.0));
    }

    #[test]
    fn a_server_started_again_starts_its_readings_over() {
        let mut meter = QueryMeter::default();
        meter.read(1_000, 5_000);
        meter.read(2_000, 6_000);
        meter.read(3_000, 10);
        assert_eq!(meter.rate(3_000), None);
        meter.read(4_000, 110);
        assert_eq!(meter.rate(4_000), Some(100.0));
    }

    #[test]
    fn a_server_that_stopped_answering_has_no_rate() {
        let mut meter = QueryMeter::default();
        meter.read(1_000, 0);
        meter.read(2_000, 50);
        assert_eq!(meter.rate(2_000 + STALE_MS), Some(50.0));
        assert_eq!(meter.rate(2_001 + STALE_MS), None);
        // A reading out of order is ignored.
        meter.read(1_500, 1_000_000);
        assert_eq!(meter.rate(2_000), Some(50.0));
    }

    proptest! {
        /// Whatever the readings, the rate is finite and not negative.
        #[test]
        fn the_rate_is_finite_and_never_negative(
            steps in prop::collection::vec((1u64..3_000, 0u64..1_000_000, any::<bool>()), 1..40)
        ) {
            let mut meter = QueryMeter::default();
            let (mut at, mut count) = (0u64, 0u64);
            for (elapsed, added, restart) in steps {
                at += elapsed;
                count = if restart { added } else { count + added };
                meter.read(at, count);
                if let Some(rate) = meter.rate(at) {
                    prop_assert!(rate.is_finite() && rate >= 0.0);
                }
            }
        }

        /// A server that runs the same number of queries between readings taken at the same
        /// interval has exactly that rate.
        #[test]
        fn a_steady_server_has_its_rate(
            interval in 100u64..2_000, per_reading in 0u64..100_000, readings in 2usize..30
        ) {
            let mut meter = QueryMeter::default();
            for n in 0..readings as u64 {
                meter.read(n * interval, n * per_reading);
            }
            let at = (readings as u64 - 1) * interval;
            let rate = meter.rate(at).expect("two readings or more");
            let wanted = per_reading as f64 * 1000.0 / interval as f64;
            prop_assert!((rate - wanted).abs() <= wanted * 1e-9, "{rate} against {wanted}");
        }
    }
}
