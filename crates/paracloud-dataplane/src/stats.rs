//! In-memory traffic counters per listener and per backend, their serializable snapshot, and the Prometheus text form.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Buckets of the latency histogram: bucket `i` holds latencies up to `BASE_US × 2^(i/4)`
/// (about 19% wide), the last one everything above.
pub const LATENCY_BUCKETS: usize = 81;
const BASE_US: f64 = 50.0;
const PER_OCTAVE: f64 = 4.0;

/// Upper bound of bucket `i` in microseconds (infinite for the last).
pub fn bucket_bound_us(i: usize) -> f64 {
    if i + 1 >= LATENCY_BUCKETS {
        f64::INFINITY
    } else {
        BASE_US * (i as f64 / PER_OCTAVE).exp2()
    }
}

/// The bucket a latency of `us` microseconds falls in.
pub fn bucket_index(us: u64) -> usize {
    let us = us as f64;
    if us <= BASE_US {
        return 0;
    }
    // The small epsilon keeps exact bounds in their own bucket despite rounding in log2.
    let i = ((us / BASE_US).log2() * PER_OCTAVE - 1e-9).ceil();
    (i as usize).min(LATENCY_BUCKETS - 1)
}

/// The latency (in milliseconds) under which a fraction `q` of the counted requests fall, to the
/// precision of a bucket (its upper bound; the last bucket reports its lower bound); 0 when empty.
pub fn quantile_ms(buckets: &[u64], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, &n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let bound = bucket_bound_us(i.min(LATENCY_BUCKETS - 2));
            return bound / 1000.0;
        }
    }
    bucket_bound_us(LATENCY_BUCKETS - 2) / 1000.0
}

/// The second (since the first call in this process) that `now` falls in, on tokio's clock.
pub(crate) fn second_of(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    now.saturating_duration_since(epoch).as_secs()
}

/// Requests, errors and latencies of one whole second.
#[derive(Debug, Clone)]
struct Second {
    index: u64,
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
}

impl Second {
    fn empty(index: u64) -> Self {
        Self {
            index,
            requests: 0,
            errors: 0,
            buckets: vec![0; LATENCY_BUCKETS],
        }
    }
}

/// The second being filled and the one before it, which is what `last_second` reports.
#[derive(Debug)]
struct Seconds {
    current: Second,
    previous: Second,
}

impl Seconds {
    fn at(&mut self, index: u64) -> &mut Second {
        if self.current.index != index {
            let current = std::mem::replace(&mut self.current, Second::empty(index));
            self.previous = if current.index + 1 == index {
                current
            } else {
                Second::empty(index.saturating_sub(1))
            };
        }
        &mut self.current
    }
}

impl Default for Seconds {
    fn default() -> Self {
        Self {
            current: Second::empty(0),
            previous: Second::empty(0),
        }
    }
}

/// Live counters, updated with relaxed atomics from the connection and request tasks.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) failed_connects: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) datagrams_in: AtomicU64,
    pub(crate) datagrams_out: AtomicU64,
    pub(crate) requests: AtomicU64,
    responses: [AtomicU64; 4],
    pub(crate) errors: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) retries: AtomicU64,
    held: AtomicU64,
    held_us: AtomicU64,
    held_max_us: AtomicU64,
    latency: Vec<AtomicU64>,
    latency_sum_us: AtomicU64,
    seconds: Mutex<Seconds>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            accepted: AtomicU64::new(0),
            active: AtomicU64::new(0),
            failed_connects: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            datagrams_in: AtomicU64::new(0),
            datagrams_out: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            responses: Default::default(),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            held: AtomicU64::new(0),
            held_us: AtomicU64::new(0),
            held_max_us: AtomicU64::new(0),
            latency: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            latency_sum_us: AtomicU64::new(0),
            seconds: Mutex::new(Seconds::default()),
        }
    }
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts one more active connection until the guard is dropped.
    pub(crate) fn open(&self) -> ActiveGuard<'_> {
        Self::add(&self.active, 1);
        ActiveGuard(&self.active)
    }

    /// Counts the arrival of one request (the caller tracks `in_flight` with an owned guard).
    pub(crate) fn request(&self, now: Instant) {
        Self::add(&self.requests, 1);
        Self::add(&self.in_flight, 1);
        if let Ok(mut seconds) = self.seconds.lock() {
            seconds.at(second_of(now)).requests += 1;
        }
    }

    /// Ends one request counted by [`Counters::request`].
    pub(crate) fn request_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a response with `status`, `latency_us` after its request arrived.
    pub(crate) fn response(&self, now: Instant, status: u16, latency_us: u64) {
        let class = usize::from(status / 100).clamp(2, 5) - 2;
        Self::add(&self.responses[class], 1);
        let bucket = bucket_index(latency_us);
        Self::add(&self.latency[bucket], 1);
        Self::add(&self.latency_sum_us, latency_us);
        if let Ok(mut seconds) = self.seconds.lock() {
            seconds.at(second_of(now)).buckets[bucket] += 1;
        }
    }

    /// Counts a request (or TCP connection) that waited `us` microseconds for a backend to
    /// become ready (a cold start) and then got one.
    pub(crate) fn held(&self, us: u64) {
        Self::add(&self.held, 1);
        Self::add(&self.held_us, us);
        self.held_max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Counts a request that failed (no usable answer from a backend).
    pub(crate) fn error(&self, now: Instant) {
        Self::add(&self.errors, 1);
        if let Ok(mut seconds) = self.seconds.lock() {
            seconds.at(second_of(now)).errors += 1;
        }
    }

    pub(crate) fn read(&self) -> CounterValues {
        let responses = |i: usize| Self::get(&self.responses[i]);
        CounterValues {
            accepted: Self::get(&self.accepted),
            active: Self::get(&self.active),
            failed_connects: Self::get(&self.failed_connects),
            bytes_in: Self::get(&self.bytes_in),
            bytes_out: Self::get(&self.bytes_out),
            datagrams_in: Self::get(&self.datagrams_in),
            datagrams_out: Self::get(&self.datagrams_out),
            requests: Self::get(&self.requests),
            responses_2xx: responses(0),
            responses_3xx: responses(1),
            responses_4xx: responses(2),
            responses_5xx: responses(3),
            errors: Self::get(&self.errors),
            in_flight: Self::get(&self.in_flight),
            retries: Self::get(&self.retries),
            held: Self::get(&self.held),
            held_us: Self::get(&self.held_us),
            held_max_us: Self::get(&self.held_max_us),
        }
    }

    pub(crate) fn latency(&self) -> LatencySnapshot {
        let buckets: Vec<u64> = self.latency.iter().map(Self::get).collect();
        LatencySnapshot::of(buckets, Self::get(&self.latency_sum_us))
    }

    pub(crate) fn last_second(&self, now: Instant) -> LastSecond {
        let Ok(mut seconds) = self.seconds.lock() else {
            return LastSecond::default();
        };
        seconds.at(second_of(now));
        let last = &seconds.previous;
        LastSecond {
            requests: last.requests,
            errors: last.errors,
            p50_ms: quantile_ms(&last.buckets, 0.50),
            p95_ms: quantile_ms(&last.buckets, 0.95),
            p99_ms: quantile_ms(&last.buckets, 0.99),
        }
    }
}

/// Decrements an `active` counter when dropped, so every exit path of a connection counts.
pub(crate) struct ActiveGuard<'a>(&'a AtomicU64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counter values at one moment. `bytes_in` flows from clients to backends, `bytes_out` back
/// (for HTTP listeners: body bytes only; for UDP ones: datagram payloads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CounterValues {
    /// Connections accepted (listener) or successfully connected (TCP backend); for UDP, flows
    /// begun (listener) or given to the backend.
    pub accepted: u64,
    /// Client connections open (listener) or forwarded TCP connections open (backend); for UDP,
    /// flows open.
    pub active: u64,
    pub failed_connects: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// UDP datagrams relayed from clients to backends.
    #[serde(default)]
    pub datagrams_in: u64,
    /// UDP datagrams relayed from backends back to clients.
    #[serde(default)]
    pub datagrams_out: u64,
    /// HTTP requests received (listener) or sent, retries included (backend).
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub responses_2xx: u64,
    #[serde(default)]
    pub responses_3xx: u64,
    #[serde(default)]
    pub responses_4xx: u64,
    /// At a listener this includes the data plane's own 502 and 503 answers.
    #[serde(default)]
    pub responses_5xx: u64,
    /// Requests that got no usable answer: from this backend (backend), or at all (listener).
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub in_flight: u64,
    /// Requests sent again to another backend.
    #[serde(default)]
    pub retries: u64,
    /// Requests (HTTP) or connections (TCP) that arrived while their side of the listener had no
    /// ready instance, waited for one (a cold start, e.g. of a service scaled to zero), and got
    /// one.
    #[serde(default)]
    pub held: u64,
    /// Their total wait, in microseconds.
    #[serde(default)]
    pub held_us: u64,
    /// The longest of their waits, in microseconds: the worst cold start seen.
    #[serde(default)]
    pub held_max_us: u64,
}

/// Cumulative latency histogram from request arrival to response headers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LatencySnapshot {
    pub count: u64,
    pub sum_us: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Count per bucket (see [`bucket_bound_us`]); left out of the JSON form.
    #[serde(skip)]
    pub buckets: Vec<u64>,
}

impl LatencySnapshot {
    fn of(buckets: Vec<u64>, sum_us: u64) -> Self {
        Self {
            count: buckets.iter().sum(),
            sum_us,
            p50_ms: quantile_ms(&buckets, 0.50),
            p95_ms: quantile_ms(&buckets, 0.95),
            p99_ms: quantile_ms(&buckets, 0.99),
            buckets,
        }
    }
}

/// Figures of the last whole second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LastSecond {
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// Counters of every listener currently configured, and the call graph.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub listeners: Vec<ListenerSnapshot>,
    /// Calls per (caller, callee) service pair since the data plane started, sorted by `from`
    /// then `to`; absent from figures of older data planes.
    #[serde(default)]
    pub calls: Vec<CallSnapshot>,
}

/// Calls from one caller to one service: HTTP requests, or TCP connections, that arrived at any
/// listener of the callee.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct CallSnapshot {
    /// The calling service ("app/service"): the service whose instance owns the client's IP
    /// address (an address of a backend of some configured listener, port ignored), or
    /// `"external"` ([`crate::EXTERNAL_CALLER`]) when no configured backend has that address.
    pub from: String,
    /// The called service: the "app/service" part of the listener's name.
    pub to: String,
    /// Calls counted since the data plane started.
    pub requests: u64,
    /// Calls counted in the last whole second.
    pub last_second: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListenerSnapshot {
    pub name: String,
    #[schema(value_type = String)]
    pub bind: SocketAddr,
    /// A UDP listener (which may share its address with a TCP one).
    #[serde(default)]
    pub udp: bool,
    /// False while the address could not be bound (retried on the next reload).
    pub bound: bool,
    #[serde(flatten)]
    pub counters: CounterValues,
    #[serde(default)]
    pub latency: LatencySnapshot,
    #[serde(default)]
    pub last_second: LastSecond,
    pub backends: Vec<BackendSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackendSnapshot {
    pub id: String,
    #[schema(value_type = String)]
    pub addr: SocketAddr,
    #[serde(flatten)]
    pub counters: CounterValues,
    #[serde(default)]
    pub latency: LatencySnapshot,
    #[serde(default)]
    pub last_second: LastSecond,
    /// The picker's latency estimate (decaying EWMA), 0 while unknown.
    #[serde(default)]
    pub ewma_ms: f64,
    /// True while skipped after failures.
    #[serde(default)]
    pub ejected: bool,
    /// Its weight in the picking: its CPU in thousandths of a core, or its share of the
    /// service's total by measured capacity, scaled by a weight set through PaCI.
    #[serde(default)]
    pub weight: u32,
}

impl Snapshot {
    /// The TCP or HTTP listener bound to `bind`, if configured.
    pub fn listener(&self, bind: SocketAddr) -> Option<&ListenerSnapshot> {
        self.listeners.iter().find(|l| l.bind == bind && !l.udp)
    }

    /// The UDP listener bound to `bind`, if configured.
    pub fn udp_listener(&self, bind: SocketAddr) -> Option<&ListenerSnapshot> {
        self.listeners.iter().find(|l| l.bind == bind && l.udp)
    }

    /// The call counters from service `from` (or `"external"`) to service `to`, if any call was
    /// counted.
    pub fn call(&self, from: &str, to: &str) -> Option<&CallSnapshot> {
        self.calls.iter().find(|c| c.from == from && c.to == to)
    }

    /// The snapshot in Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut series: Vec<(String, &CounterValues, &LatencySnapshot)> = Vec::new();
        for l in &self.listeners {
            let name = escape(&l.name);
            series.push((format!("listener=\"{name}\""), &l.counters, &l.latency));
            for b in &l.backends {
                let labels = format!("listener=\"{name}\",backend=\"{}\"", escape(&b.id));
                series.push((labels, &b.counters, &b.latency));
            }
        }
        let mut out = String::new();
        type Field = fn(&CounterValues) -> u64;
        let simple: [(&str, &str, &str, Field); 8] = [
            (
                "paracloud_requests_total",
                "counter",
                "HTTP requests received by a listener or sent to a backend.",
                |c| c.requests,
            ),
            (
                "paracloud_errors_total",
                "counter",
                "HTTP requests that got no usable answer.",
                |c| c.errors,
            ),
            (
                "paracloud_retries_total",
                "counter",
                "HTTP requests sent again to another backend.",
                |c| c.retries,
            ),
            (
                "paracloud_in_flight",
                "gauge",
                "HTTP requests under way.",
                |c| c.in_flight,
            ),
            (
                "paracloud_connections_total",
                "counter",
                "Connections accepted by a listener or made to a backend (UDP: flows begun).",
                |c| c.accepted,
            ),
            (
                "paracloud_active_connections",
                "gauge",
                "Connections open (UDP: flows open).",
                |c| c.active,
            ),
            (
                "paracloud_failed_connects_total",
                "counter",
                "Connects to backends that failed.",
                |c| c.failed_connects,
            ),
            (
                "paracloud_held_total",
                "counter",
                "Requests or connections that waited for an instance to become ready (cold starts).",
                |c| c.held,
            ),
        ];
        for (family, kind, help, field) in simple {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
            for (labels, c, _) in &series {
                let _ = writeln!(out, "{family}{{{labels}}} {}", field(c));
            }
        }
        // Times in seconds, Prometheus's base unit (promtool refuses others).
        type Seconds = fn(&CounterValues) -> f64;
        let times: [(&str, &str, &str, Seconds); 2] = [
            (
                "paracloud_held_seconds_total",
                "counter",
                "Total time requests or connections waited for an instance to become ready.",
                |c| c.held_us as f64 / 1e6,
            ),
            (
                "paracloud_held_max_seconds",
                "gauge",
                "The longest wait of a request or connection for an instance to become ready.",
                |c| c.held_max_us as f64 / 1e6,
            ),
        ];
        for (family, kind, help, field) in times {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
            for (labels, c, _) in &series {
                let _ = writeln!(out, "{family}{{{labels}}} {}", field(c));
            }
        }
        let family = "paracloud_responses_total";
        let _ = writeln!(
            out,
            "# HELP {family} HTTP responses by status class.\n# TYPE {family} counter"
        );
        for (labels, c, _) in &series {
            let classes = [
                ("2xx", c.responses_2xx),
                ("3xx", c.responses_3xx),
                ("4xx", c.responses_4xx),
                ("5xx", c.responses_5xx),
            ];
            for (class, n) in classes {
                let _ = writeln!(out, "{family}{{{labels},class=\"{class}\"}} {n}");
            }
        }
        let family = "paracloud_bytes_total";
        let _ = writeln!(
            out,
            "# HELP {family} Bytes forwarded; in is client to backend.\n# TYPE {family} counter"
        );
        for (labels, c, _) in &series {
            let _ = writeln!(out, "{family}{{{labels},direction=\"in\"}} {}", c.bytes_in);
            let _ = writeln!(
                out,
                "{family}{{{labels},direction=\"out\"}} {}",
                c.bytes_out
            );
        }
        let family = "paracloud_datagrams_total";
        let _ = writeln!(
            out,
            "# HELP {family} UDP datagrams relayed; in is client to backend.\n# TYPE {family} counter"
        );
        for (labels, c, _) in &series {
            let _ = writeln!(
                out,
                "{family}{{{labels},direction=\"in\"}} {}",
                c.datagrams_in
            );
            let _ = writeln!(
                out,
                "{family}{{{labels},direction=\"out\"}} {}",
                c.datagrams_out
            );
        }
        let family = "paracloud_request_duration_seconds";
        let _ = writeln!(out, "# HELP {family} Time from request arrival to response headers.\n# TYPE {family} histogram");
        for (labels, _, latency) in &series {
            let mut cumulative = 0;
            for (i, n) in latency.buckets.iter().enumerate() {
                cumulative += n;
                // Every fourth bound (a doubling) is exposed; the counts stay exact.
                if i % 4 == 0 && i + 1 < LATENCY_BUCKETS {
                    let le = bucket_bound_us(i) / 1e6;
                    let _ = writeln!(out, "{family}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                }
            }
            let _ = writeln!(
                out,
                "{family}_bucket{{{labels},le=\"+Inf\"}} {}",
                latency.count
            );
            let _ = writeln!(
                out,
                "{family}_sum{{{labels}}} {}",
                latency.sum_us as f64 / 1e6
            );
            let _ = writeln!(out, "{family}_count{{{labels}}} {}", latency.count);
        }
        let family = "paracloud_calls_total";
        let _ = writeln!(
            out,
            "# HELP {family} HTTP requests or TCP connections from a caller service (or external) to a service.\n# TYPE {family} counter"
        );
        for call in &self.calls {
            let _ = writeln!(
                out,
                "{family}{{from=\"{}\",to=\"{}\"}} {}",
                escape(&call.from),
                escape(&call.to),
                call.requests
            );
        }
        out
    }
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl ListenerSnapshot {
    /// The backend with instance name `id`, if in the current list.
    pub fn backend(&self, id: &str) -> Option<&BackendSnapshot> {
        self.backends.iter().find(|b| b.id == id)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bounds_fall_in_their_own_bucket() {
        for i in 0..LATENCY_BUCKETS - 1 {
            let bound = bucket_bound_us(i) as u64;
            assert!(bucket_index(bound) <= i, "bound {bound} of bucket {i}");
            assert!(
                bucket_index(bound + 1) >= i,
                "{} after bucket {i}",
                bound + 1
            );
        }
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_one_bucket() {
        let mut buckets = vec![0; LATENCY_BUCKETS];
        for us in 1..=1000u64 {
            buckets[bucket_index(us * 10)] += 1;
        }
        let p50 = quantile_ms(&buckets, 0.5);
        assert!((5.0..=5.0 * 1.2).contains(&p50), "{p50}");
        let p99 = quantile_ms(&buckets, 0.99);
        assert!((9.9..=9.9 * 1.2).contains(&p99), "{p99}");
        assert_eq!(quantile_ms(&vec![0; LATENCY_BUCKETS], 0.5), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn last_second_reports_the_previous_whole_second() {
        let counters = Counters::default();
        // Whatever the alignment of the seconds, one second later the previous one is this one.
        let now = Instant::now();
        for _ in 0..3 {
            counters.request(now);
            counters.response(now, 200, 2_000);
        }
        counters.error(now);
        assert_eq!(counters.last_second(now).requests, 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        let last = counters.last_second(Instant::now());
        assert_eq!((last.requests, last.errors), (3, 1));
        assert!(last.p50_ms >= 2.0 && last.p50_ms <= 2.4, "{last:?}");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(counters.last_second(Instant::now()), LastSecond::default());
    }

    #[test]
    fn figures_without_calls_still_parse() {
        let old: Snapshot = serde_json::from_str(r#"{"listeners":[]}"#).unwrap();
        assert!(old.calls.is_empty());
    }

    #[test]
    fn prometheus_has_one_type_line_per_family_and_exact_counts() {
        let counters = Counters::default();
        let now = Instant::now();
        for _ in 0..7 {
            counters.request(now);
            counters.response(now, 204, 300);
        }
        let snapshot = Snapshot {
            listeners: vec![ListenerSnapshot {
                name: "shop/\"web\"".into(),
                bind: "127.0.0.1:1".parse().unwrap(),
                udp: false,
                bound: true,
                counters: counters.read(),
                latency: counters.latency(),
                last_second: LastSecond::default(),
                backends: vec![],
            }],
            calls: vec![CallSnapshot {
                from: "app/web".into(),
                to: "app/api".into(),
                requests: 3,
                last_second: 1,
            }],
        };
        let text = snapshot.to_prometheus();
        assert!(
            text.contains("paracloud_calls_total{from=\"app/web\",to=\"app/api\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("paracloud_requests_total{listener=\"shop/\\\"web\\\"\"} 7\n"),
            "{text}"
        );
        assert!(text.contains(
            "paracloud_request_duration_seconds_count{listener=\"shop/\\\"web\\\"\"} 7\n"
        ));
        assert!(text.contains("le=\"+Inf\"} 7\n"));
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.dedup();
        assert_eq!(types.len(), unique.len());
        assert_eq!(types.len(), 15);
    }
}
