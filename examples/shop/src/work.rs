//! The api's CPU work: a chain of integer mixing rounds that no compiler can shortcut.

/// Requests above this many iterations are refused, so one request cannot hold a core for minutes.
pub const MAX_WORK: u64 = 100_000_000;

/// Default iterations per `/api/products` request.
pub const DEFAULT_WORK: u64 = 20_000;

/// Runs `iterations` rounds of the SplitMix64 finaliser, each fed by the previous one.
pub fn cpu_work(iterations: u64) -> u64 {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..iterations {
        let mut z = (state ^ i).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state = z ^ (z >> 31);
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_deterministic_and_depends_on_the_count() {
        assert_eq!(cpu_work(1000), cpu_work(1000));
        assert_ne!(cpu_work(1000), cpu_work(1001));
        assert_eq!(cpu_work(0), 0x9E37_79B9_7F4A_7C15);
    }
}
