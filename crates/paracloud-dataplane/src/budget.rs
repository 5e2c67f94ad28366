//! The retry budget: retries may add at most a fixed share of the requests of the last ten seconds, plus a small floor.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

const SLOT: Duration = Duration::from_secs(1);
const SLOTS: usize = 10;

/// Requests and retries per one-second slot over a sliding ten-second window.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    percent: u64,
    floor: u64,
    /// (slot start, requests, retries), oldest first.
    slots: VecDeque<(Instant, u64, u64)>,
}

impl RetryBudget {
    pub(crate) fn new(percent: u32, floor: u32) -> Self {
        Self {
            percent: u64::from(percent),
            floor: u64::from(floor),
            slots: VecDeque::with_capacity(SLOTS + 1),
        }
    }

    fn slot(&mut self, now: Instant) -> &mut (Instant, u64, u64) {
        while self.slots.front().is_some_and(|&(start, _, _)| {
            now.saturating_duration_since(start) >= SLOT * SLOTS as u32
        }) {
            self.slots.pop_front();
        }
        let fresh = self
            .slots
            .back()
            .is_none_or(|&(start, _, _)| now.saturating_duration_since(start) >= SLOT);
        if fresh {
            self.slots.push_back((now, 0, 0));
        }
        self.slots.back_mut().expect("a slot was just ensured")
    }

    /// Counts one request.
    pub(crate) fn deposit(&mut self, now: Instant) {
        self.slot(now).1 += 1;
    }

    /// Takes one retry from the budget if it allows one.
    pub(crate) fn withdraw(&mut self, now: Instant) -> bool {
        self.slot(now);
        let (requests, retries) = self
            .slots
            .iter()
            .fold((0, 0), |(q, r), &(_, q1, r1)| (q + q1, r + r1));
        if (retries + 1) * 100 > requests * self.percent + self.floor * 100 {
            return false;
        }
        self.slot(now).2 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded_by_share_plus_floor_and_refill_over_time() {
        let mut budget = RetryBudget::new(20, 3);
        for _ in 0..100 {
            budget.deposit(Instant::now());
        }
        let granted = (0..100).filter(|_| budget.withdraw(Instant::now())).count();
        assert_eq!(granted, 23);
        tokio::time::advance(Duration::from_secs(11)).await;
        let granted = (0..100).filter(|_| budget.withdraw(Instant::now())).count();
        assert_eq!(granted, 3);
    }
}
