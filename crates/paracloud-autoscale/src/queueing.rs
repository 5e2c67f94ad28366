//! Queueing formulas: Erlang B and C, the M/M/c response-time distribution, and a gamma fit for
//! the sum of response times along a request's path.

/// Erlang B: the probability that all `servers` are busy in an M/M/c/c loss system offered
/// `load` Erlangs. The recursion B(k) = a·B(k−1) / (k + a·B(k−1)) is stable for any size.
pub fn erlang_b(servers: u32, load: f64) -> f64 {
    let mut b = 1.0;
    for k in 1..=servers {
        b = load * b / (f64::from(k) + load * b);
    }
    b
}

/// Erlang C: the probability that an arrival waits in an M/M/c queue with `servers` servers
/// offered `load` Erlangs (arrival rate × mean service time). 1 when the queue is unstable
/// (`load >= servers`).
pub fn erlang_c(servers: u32, load: f64) -> f64 {
    let c = f64::from(servers);
    if servers == 0 || load >= c {
        return 1.0;
    }
    if load <= 0.0 {
        return 0.0;
    }
    let b = erlang_b(servers, load);
    c * b / (c - load * (1.0 - b))
}

/// The response time (wait plus service) of an M/M/c FCFS queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mmc {
    /// Probability of waiting (Erlang C).
    pub wait_probability: f64,
    /// Service rate of one server, per second.
    pub mu: f64,
    /// Rate at which the queue drains once every server is busy: c·μ − λ, per second.
    pub theta: f64,
}

impl Mmc {
    /// `None` when the queue is unstable (λ ≥ c·μ) or there is no server.
    pub fn new(servers: u32, arrival_rate: f64, service_rate: f64) -> Option<Self> {
        let capacity = f64::from(servers) * service_rate;
        if servers == 0 || service_rate <= 0.0 || arrival_rate >= capacity {
            return None;
        }
        let arrival_rate = arrival_rate.max(0.0);
        Some(Self {
            wait_probability: erlang_c(servers, arrival_rate / service_rate),
            mu: service_rate,
            theta: capacity - arrival_rate,
        })
    }

    /// Mean response time in seconds: C/(cμ − λ) + 1/μ.
    pub fn mean(&self) -> f64 {
        self.wait_probability / self.theta + 1.0 / self.mu
    }

    /// Variance of the response time in seconds²: the wait (0, or exponential at θ with
    /// probability C) and the exponential service are independent.
    pub fn variance(&self) -> f64 {
        let c = self.wait_probability;
        let wait = (2.0 * c - c * c) / (self.theta * self.theta);
        wait + 1.0 / (self.mu * self.mu)
    }

    /// P(response > t): with probability 1 − C just the service, exponential at μ; with
    /// probability C the sum of the exponential wait at θ and the service (hypoexponential).
    pub fn tail(&self, t: f64) -> f64 {
        let (mu, theta, c) = (self.mu, self.theta, self.wait_probability);
        let service = (-mu * t).exp();
        let both = if (mu - theta).abs() < 1e-9 * mu {
            (-mu * t).exp() * (1.0 + mu * t)
        } else {
            (mu * (-theta * t).exp() - theta * (-mu * t).exp()) / (mu - theta)
        };
        (1.0 - c) * service + c * both
    }

    /// The `p` quantile of the response time in seconds, by bisection on the tail.
    pub fn quantile(&self, p: f64) -> f64 {
        let target = 1.0 - p;
        let mut high = self.mean().max(1e-9);
        while self.tail(high) > target {
            high *= 2.0;
        }
        let mut low = 0.0;
        for _ in 0..100 {
            let mid = 0.5 * (low + high);
            if self.tail(mid) > target {
                low = mid;
            } else {
                high = mid;
            }
        }
        0.5 * (low + high)
    }
}

/// Mean and variance (seconds, seconds²) of the time a request spends in an M/M/1
/// processor-sharing server: a CPU shared by the requests in progress, which is how an instance
/// with a CPU quota serves concurrent requests. `service_time` is the mean time alone on the
/// server; `utilisation` below 1. The mean is that of FCFS, s/(1−ρ); the variance is larger by
/// (2+ρ)/(2−ρ) (from the conditional variance of Coffman, Muntz and Trotter, 1970, averaged over
/// exponential sizes): the long requests are the ones slowed down most.
pub fn processor_sharing(service_time: f64, utilisation: f64) -> Option<(f64, f64)> {
    if !(0.0..1.0).contains(&utilisation) || service_time <= 0.0 {
        return None;
    }
    let mean = service_time / (1.0 - utilisation);
    let variance = mean * mean * (2.0 + utilisation) / (2.0 - utilisation);
    Some((mean, variance))
}

/// The `p` quantile of the standard normal distribution (Acklam's rational approximation,
/// relative error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The `p` quantile of the gamma distribution with the given mean and variance, by the
/// Wilson–Hilferty cube-root approximation. A request's end-to-end time is a sum of per-service
/// response times (each a mixture of exponentials); its mean and variance add up, and a gamma
/// with those two moments fits such sums closely (within about 1% at p95 for one exponential).
pub fn gamma_quantile(mean: f64, variance: f64, p: f64) -> f64 {
    if mean <= 0.0 {
        return 0.0;
    }
    if variance <= 0.0 {
        return mean;
    }
    let shape = mean * mean / variance;
    let z = normal_quantile(p);
    let h = 1.0 / (9.0 * shape);
    let cube = (1.0 - h + z * h.sqrt()).max(0.0);
    mean * cube * cube * cube
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(actual: f64, expected: f64, relative: f64) {
        assert!(
            (actual - expected).abs() <= relative * expected.abs(),
            "{actual} is not within {relative} of {expected}"
        );
    }

    /// Published table values: Erlang C for 10 agents offered 8 Erlangs is 0.4092; for 2 servers
    /// at 1 Erlang it is 1/3; for one server it is the utilisation.
    #[test]
    fn erlang_c_matches_known_values() {
        close(erlang_c(10, 8.0), 0.4092, 0.001);
        close(erlang_c(2, 1.0), 1.0 / 3.0, 1e-12);
        close(erlang_c(1, 0.5), 0.5, 1e-12);
        assert_eq!(erlang_c(3, 3.0), 1.0);
        assert_eq!(erlang_c(3, 0.0), 0.0);
    }

    /// Erlang B for 5 servers at 3 Erlangs is 0.1101 (standard table).
    #[test]
    fn erlang_b_matches_the_table() {
        close(erlang_b(5, 3.0), 0.1101, 0.001);
    }

    /// M/M/1: the response time is exponential at μ − λ, so the mean is 1/(μ−λ), the variance
    /// its square and the p95 ln(20)/(μ−λ).
    #[test]
    fn mm1_response_time_is_exponential() {
        let q = Mmc::new(1, 50.0, 100.0).unwrap();
        close(q.mean(), 1.0 / 50.0, 1e-9);
        close(q.variance(), 1.0 / 2500.0, 1e-9);
        close(q.quantile(0.95), 20f64.ln() / 50.0, 1e-6);
    }

    #[test]
    fn an_unstable_queue_has_no_response_time() {
        assert!(Mmc::new(2, 200.0, 100.0).is_none());
        assert!(Mmc::new(0, 1.0, 100.0).is_none());
    }

    /// M/M/1-PS: E[T] = s/(1−ρ) and E[T²] = 4s²/((2−ρ)(1−ρ)²); alone on the server the time is
    /// the exponential service itself.
    #[test]
    fn processor_sharing_moments() {
        let (mean, variance) = processor_sharing(0.010, 0.5).unwrap();
        close(mean, 0.020, 1e-12);
        close(variance + mean * mean, 4.0 * 0.0001 / (1.5 * 0.25), 1e-12);
        let (mean, variance) = processor_sharing(0.010, 0.0).unwrap();
        close(mean, 0.010, 1e-12);
        close(variance, 0.0001, 1e-12);
        assert!(processor_sharing(0.010, 1.0).is_none());
    }

    #[test]
    fn normal_quantiles_match_the_table() {
        close(normal_quantile(0.95), 1.644_853_6, 1e-6);
        close(normal_quantile(0.99), 2.326_347_9, 1e-6);
        close(normal_quantile(0.5).abs() + 1.0, 1.0, 1e-9);
        close(normal_quantile(0.001), -3.090_232_3, 1e-6);
    }

    /// One exponential (gamma of shape 1): p95 = ln(20)·mean ≈ 2.9957·mean.
    #[test]
    fn gamma_fit_of_an_exponential() {
        close(gamma_quantile(1.0, 1.0, 0.95), 20f64.ln(), 0.01);
    }

    proptest! {
        /// More servers never make waiting likelier, and the waiting probability is a
        /// probability.
        #[test]
        fn erlang_c_falls_with_servers(servers in 1u32..60, load_fraction in 0.01f64..0.99) {
            let load = load_fraction * f64::from(servers);
            let c = erlang_c(servers, load);
            prop_assert!((0.0..=1.0).contains(&c));
            prop_assert!(erlang_c(servers + 1, load) <= c + 1e-12);
        }

        /// The quantile inverts the tail, and quantiles grow with p.
        #[test]
        fn mmc_quantile_inverts_the_tail(
            servers in 1u32..20,
            utilisation in 0.05f64..0.95,
            mu in 1.0f64..1000.0,
            p in 0.5f64..0.999,
        ) {
            let q = Mmc::new(servers, utilisation * f64::from(servers) * mu, mu).unwrap();
            let t = q.quantile(p);
            prop_assert!((q.tail(t) - (1.0 - p)).abs() < 1e-6);
            prop_assert!(q.quantile((p + 1.0) / 2.0) >= t);
            prop_assert!(t >= 0.0);
        }
    }
}
