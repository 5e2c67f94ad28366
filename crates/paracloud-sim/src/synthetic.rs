//! Synthetic traces: step, ramp, diurnal cycle and flash crowd, in requests per second, seeded.

use std::f64::consts::PI;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::trace::{rng, Trace};

/// A load shape; rates in requests per second, times in seconds. Each makes a trace of one-second
/// buckets lasting `seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "shape")]
pub enum Shape {
    /// `before` until `at`, then `after`.
    Step {
        before: f64,
        after: f64,
        at: f64,
        seconds: u64,
    },
    /// `from` until `start`, linearly to `to` over `len`, then `to`.
    Ramp {
        from: f64,
        to: f64,
        start: f64,
        len: f64,
        seconds: u64,
    },
    /// A day-like cycle: `mean + amplitude * sin`, lowest at time 0 and every `period`, times a
    /// random factor of mean 1 and standard deviation `noise` drawn per second.
    Diurnal {
        mean: f64,
        amplitude: f64,
        period: f64,
        noise: f64,
        seconds: u64,
    },
    /// `base`, then at `at` a rise over `rise` seconds to `base * factor`, decaying back to
    /// `base` exponentially with time constant `decay`.
    FlashCrowd {
        base: f64,
        factor: f64,
        at: f64,
        rise: f64,
        decay: f64,
        seconds: u64,
    },
}

impl Shape {
    /// The rate at time `t` seconds, without noise.
    pub fn rate(&self, t: f64) -> f64 {
        let rate = match *self {
            Shape::Step {
                before, after, at, ..
            } => {
                if t < at {
                    before
                } else {
                    after
                }
            }
            Shape::Ramp {
                from,
                to,
                start,
                len,
                ..
            } => {
                if t < start {
                    from
                } else if len <= 0.0 || t >= start + len {
                    to
                } else {
                    from + (to - from) * (t - start) / len
                }
            }
            Shape::Diurnal {
                mean,
                amplitude,
                period,
                ..
            } => {
                let phase = if period > 0.0 {
                    2.0 * PI * t / period
                } else {
                    0.0
                };
                mean - amplitude * phase.cos()
            }
            Shape::FlashCrowd {
                base,
                factor,
                at,
                rise,
                decay,
                ..
            } => {
                let extra = base * (factor - 1.0);
                if t < at {
                    base
                } else if t < at + rise {
                    base + extra * (t - at) / rise
                } else if decay > 0.0 {
                    base + extra * (-(t - at - rise.max(0.0)) / decay).exp()
                } else {
                    base
                }
            }
        };
        if rate.is_finite() {
            rate.max(0.0)
        } else {
            0.0
        }
    }

    fn seconds(&self) -> u64 {
        match *self {
            Shape::Step { seconds, .. }
            | Shape::Ramp { seconds, .. }
            | Shape::Diurnal { seconds, .. }
            | Shape::FlashCrowd { seconds, .. } => seconds,
        }
    }

    /// The trace of this shape: one bucket per second, at the rate of the middle of the second;
    /// only `Diurnal` uses `seed`, for its noise.
    pub fn trace(&self, seed: u64) -> Trace {
        let mut random = rng(seed, 0x5EED);
        let noise = match *self {
            Shape::Diurnal { noise, .. } if noise > 0.0 && noise.is_finite() => noise,
            _ => 0.0,
        };
        let counts = (0..self.seconds())
            .map(|s| {
                let rate = self.rate(s as f64 + 0.5);
                if noise == 0.0 {
                    return rate;
                }
                // Box-Muller: one standard normal from two uniforms.
                let u1: f64 = random.random();
                let u2: f64 = random.random();
                let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * PI * u2).cos();
                (rate * (1.0 + noise * z)).max(0.0)
            })
            .collect();
        Trace::Counts {
            bucket_us: 1_000_000,
            counts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(trace: &Trace) -> Vec<f64> {
        match trace {
            Trace::Counts { counts, .. } => counts.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_step_jumps_once() {
        let c = counts(
            &Shape::Step {
                before: 10.0,
                after: 50.0,
                at: 3.0,
                seconds: 6,
            }
            .trace(1),
        );
        assert_eq!(c, vec![10.0, 10.0, 10.0, 50.0, 50.0, 50.0]);
    }

    #[test]
    fn a_ramp_climbs_linearly() {
        let c = counts(
            &Shape::Ramp {
                from: 0.0,
                to: 100.0,
                start: 1.0,
                len: 4.0,
                seconds: 7,
            }
            .trace(1),
        );
        assert_eq!(c, vec![0.0, 12.5, 37.5, 62.5, 87.5, 100.0, 100.0]);
    }

    #[test]
    fn a_diurnal_cycle_peaks_at_half_period_and_its_noise_follows_the_seed() {
        let shape = Shape::Diurnal {
            mean: 100.0,
            amplitude: 50.0,
            period: 100.0,
            noise: 0.0,
            seconds: 100,
        };
        let c = counts(&shape.trace(1));
        assert!(c[0] < 51.0 && c[49] > 149.0 && c[99] < 51.0, "{c:?}");
        let mean = c.iter().sum::<f64>() / c.len() as f64;
        assert!((mean - 100.0).abs() < 1e-6);
        let noisy = Shape::Diurnal {
            mean: 100.0,
            amplitude: 50.0,
            period: 100.0,
            noise: 0.1,
            seconds: 100,
        };
        assert_eq!(noisy.trace(3), noisy.trace(3));
        assert_ne!(noisy.trace(3), noisy.trace(4));
        let n = counts(&noisy.trace(3));
        let spread = n
            .iter()
            .zip(&c)
            .map(|(a, b)| (a / b - 1.0).powi(2))
            .sum::<f64>()
            / 100.0;
        assert!(
            spread.sqrt() > 0.05 && spread.sqrt() < 0.2,
            "{}",
            spread.sqrt()
        );
    }

    #[test]
    fn a_flash_crowd_spikes_then_decays_to_the_base() {
        let shape = Shape::FlashCrowd {
            base: 10.0,
            factor: 5.0,
            at: 10.0,
            rise: 2.0,
            decay: 5.0,
            seconds: 60,
        };
        let c = counts(&shape.trace(1));
        assert_eq!(c[5], 10.0);
        assert!((shape.rate(12.0) - 50.0).abs() < 1e-9);
        assert!(c[11] > 10.0 && c[11] < 50.0);
        assert!(c[13] > c[20] && c[20] > c[30]);
        assert!((c[59] - 10.0).abs() < 0.01, "{}", c[59]);
    }
}
