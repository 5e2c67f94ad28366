//! One second of an application as its autoscaling policy sees it, built from two of the data
//! plane's snapshots and the instances' CPU use (pure: no clock, no I/O).
//!
//! The data plane counts per listener and per backend since it started; a second's figures are
//! the differences between the snapshot at its end and the one at its start. A counter that went
//! back (the data plane restarted) or that was not there before (a new listener or backend)
//! counts from zero. Time-averaged concurrency comes from Little's law: the latency summed over
//! the requests answered in the interval, divided by its length.

use std::collections::BTreeMap;

use crate::{service_of, CounterValues, ListenerSnapshot, Snapshot};
pub use paracloud_autoscale::observe::InstanceFacts;
use paracloud_autoscale::observe::{Call, InstanceSample, LatencySummary, ServiceSample, EXTERNAL};
use paracloud_autoscale::{Millis, Observation};
use paracloud_manifest::{Manifest, Protocol};

/// The two snapshots around one interval.
#[derive(Debug, Clone, Copy)]
pub struct Interval<'a> {
    pub previous: &'a Snapshot,
    pub current: &'a Snapshot,
    /// Its length; at least 1.
    pub elapsed_ms: Millis,
    /// When it ended (the observation's time).
    pub at: Millis,
}

/// The observation of `services` of application `manifest.app` over `interval`.
pub fn observation(
    manifest: &Manifest,
    services: &[&str],
    interval: Interval<'_>,
    instances: &[InstanceFacts],
) -> Observation {
    let elapsed_us = interval.elapsed_ms.max(1) as f64 * 1000.0;
    let samples = services
        .iter()
        .map(|service| {
            let sample = service_sample(manifest, service, interval, instances, elapsed_us);
            ((*service).to_owned(), sample)
        })
        .collect();
    Observation {
        at: interval.at,
        services: samples,
        calls: calls(&manifest.app, interval.current),
    }
}

/// The growth of a counter; from zero when it is new or went back.
fn delta(previous: Option<u64>, current: u64) -> u64 {
    match previous {
        Some(p) if current >= p => current - p,
        _ => current,
    }
}

/// One listener's or backend's counters now and at the start of the interval.
struct Pair<'a> {
    now: &'a CounterValues,
    before: Option<&'a CounterValues>,
    sum_us: (u64, Option<u64>),
    count: (u64, Option<u64>),
}

impl Pair<'_> {
    fn grew(&self, field: fn(&CounterValues) -> u64) -> u64 {
        delta(self.before.map(field), field(self.now))
    }

    fn responses(&self) -> u64 {
        self.grew(|c| c.responses_2xx + c.responses_3xx + c.responses_4xx + c.responses_5xx)
    }

    /// Answered: responses that were not the data plane's own error answers.
    fn answered(&self) -> u64 {
        self.responses().saturating_sub(self.grew(|c| c.errors))
    }

    /// Connections that ended in the interval.
    fn closed(&self) -> u64 {
        let before = self.before.map_or(0, |c| c.active);
        (self.grew(|c| c.accepted) + before).saturating_sub(self.now.active)
    }

    fn busy_us(&self) -> u64 {
        delta(self.sum_us.1, self.sum_us.0)
    }

    fn latency_count(&self) -> u64 {
        delta(self.count.1, self.count.0)
    }
}

fn listener_pair<'a>(now: &'a ListenerSnapshot, before: Option<&'a ListenerSnapshot>) -> Pair<'a> {
    Pair {
        now: &now.counters,
        before: before.map(|b| &b.counters),
        sum_us: (now.latency.sum_us, before.map(|b| b.latency.sum_us)),
        count: (now.latency.count, before.map(|b| b.latency.count)),
    }
}

/// The port in a listener's name, "shop/web:8080 published".
fn listener_port(name: &str) -> Option<u16> {
    let (_, rest) = name.split_once(':')?;
    rest.split(' ').next()?.parse().ok()
}

fn service_sample(
    manifest: &Manifest,
    service: &str,
    interval: Interval<'_>,
    instances: &[InstanceFacts],
    elapsed_us: f64,
) -> ServiceSample {
    let full = format!("{}/{service}", manifest.app);
    let spec = manifest.services.get(service);
    let is_http = |listener: &ListenerSnapshot| {
        let port = listener_port(&listener.name);
        spec.is_some_and(|s| {
            s.ports
                .iter()
                .any(|p| Some(p.port) == port && p.protocol == Protocol::Http)
        })
    };
    let mut sample = ServiceSample::default();
    let mut busy_us = 0u64;
    let mut answered_latency = (0u64, 0u64);
    // Percentiles are not additive: those of the busiest listener stand for the service.
    let mut busiest: Option<&ListenerSnapshot> = None;
    let mut per_instance: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
    for listener in interval
        .current
        .listeners
        .iter()
        .filter(|l| service_of(&l.name) == full)
    {
        let before = interval
            .previous
            .listeners
            .iter()
            .find(|l| l.name == listener.name);
        let pair = listener_pair(listener, before);
        let http = is_http(listener);
        if http {
            sample.arrivals += pair.grew(|c| c.requests);
            sample.completions += pair.answered();
            sample.dropped += pair.grew(|c| c.errors);
            busy_us += pair.busy_us();
            answered_latency.0 += pair.busy_us();
            answered_latency.1 += pair.latency_count();
            sample.in_flight += u32::try_from(listener.counters.in_flight).unwrap_or(u32::MAX);
            if busiest.is_none_or(|b| listener.last_second.requests > b.last_second.requests) {
                busiest = Some(listener);
            }
        } else {
            sample.arrivals += pair.grew(|c| c.accepted);
            sample.completions += pair.closed();
            sample.dropped += pair.grew(|c| c.errors);
            // No latency for a TCP connection: its concurrency is the connections open now.
            busy_us += (listener.counters.active as f64 * elapsed_us) as u64;
            sample.in_flight += u32::try_from(listener.counters.active).unwrap_or(u32::MAX);
        }
        for backend in &listener.backends {
            let before = before.and_then(|l| l.backend(&backend.id));
            let pair = Pair {
                now: &backend.counters,
                before: before.map(|b| &b.counters),
                sum_us: (backend.latency.sum_us, before.map(|b| b.latency.sum_us)),
                count: (backend.latency.count, before.map(|b| b.latency.count)),
            };
            let entry = per_instance.entry(backend.id.as_str()).or_default();
            if http {
                entry.0 += pair.answered();
                entry.1 += pair.busy_us() as f64 / elapsed_us;
            } else {
                entry.0 += pair.closed();
                entry.1 += backend.counters.active as f64;
            }
        }
    }
    sample.concurrency = busy_us as f64 / elapsed_us;
    if answered_latency.1 > 0 {
        sample.latency.mean_ms = answered_latency.0 as f64 / answered_latency.1 as f64 / 1000.0;
    }
    if let Some(b) = busiest.filter(|b| b.last_second.requests > 0) {
        sample.latency = LatencySummary {
            mean_ms: sample.latency.mean_ms,
            p50_ms: b.last_second.p50_ms,
            p95_ms: b.last_second.p95_ms,
            p99_ms: b.last_second.p99_ms,
        };
    }
    sample.instances = instances
        .iter()
        .filter(|i| i.service == service)
        .map(|i| {
            let (completions, concurrency) = per_instance
                .get(i.name.as_str())
                .copied()
                .unwrap_or_default();
            InstanceSample {
                id: i.name.clone(),
                ready: i.ready,
                age_ms: i.age_ms,
                cpu_used: i.cpu_used,
                cpu_limit: i.cpu_limit,
                completions,
                concurrency,
                reported: i.reported.clone(),
            }
        })
        .collect();
    count_queries(&mut sample, instances, service, elapsed_us);
    sample
}

/// A database's requests are the queries its servers say they ran: its clients send many down
/// each connection, which is all the data plane sees. Where any instance of `service` gave a
/// rate, each instance's requests in the interval are its own queries (none for one not
/// measured yet), and the service's arrivals and completions their sum.
fn count_queries(
    sample: &mut ServiceSample,
    instances: &[InstanceFacts],
    service: &str,
    elapsed_us: f64,
) {
    let rates: BTreeMap<&str, f64> = instances
        .iter()
        .filter(|i| i.service == service)
        .filter_map(|i| Some((i.name.as_str(), i.queries_per_second?)))
        .collect();
    if rates.is_empty() {
        return;
    }
    let seconds = elapsed_us / 1e6;
    for instance in &mut sample.instances {
        let rate = rates.get(instance.id.as_str()).copied().unwrap_or(0.0);
        instance.completions = (rate * seconds).round() as u64;
    }
    let queries = sample.instances.iter().map(|i| i.completions).sum();
    sample.arrivals = queries;
    sample.completions = queries;
}

/// Calls into the application's services in the last second, by caller: one of its services,
/// or [`EXTERNAL`] for clients outside it (other applications included).
fn calls(app: &str, current: &Snapshot) -> Vec<Call> {
    let prefix = format!("{app}/");
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for call in current.calls.iter().filter(|c| c.last_second > 0) {
        let Some(to) = call.to.strip_prefix(&prefix) else {
            continue;
        };
        let from = call.from.strip_prefix(&prefix).unwrap_or(EXTERNAL);
        *counts.entry((from.to_owned(), to.to_owned())).or_default() += call.last_second;
    }
    counts
        .into_iter()
        .map(|((from, to), count)| Call { from, to, count })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::{BackendSnapshot, CallSnapshot, LastSecond, LatencySnapshot};
    use paracloud_manifest::{parse, FileSystem, Origin};

    use super::*;

    struct AnyFs;

    impl FileSystem for AnyFs {
        fn exists(&self, _: &std::path::Path) -> bool {
            true
        }
        fn is_dir(&self, _: &std::path::Path) -> bool {
            true
        }
    }

    fn shop() -> Manifest {
        let source = r#"app = "shop"
[autoscale]
policy = "hpa"
[services.web]
image = "host"
command = "web"
ports = [{ port = 8080, protocol = "http", publish = 8080 }]
[services.kv]
image = "host"
command = "kv"
ports = [7000]
"#;
        let origin = Origin {
            file: "paracloud.toml".into(),
            base_dir: "/".into(),
        };
        parse(source, &origin, &AnyFs).unwrap()
    }

    fn counters(requests: u64, ok: u64, errors: u64, in_flight: u64) -> CounterValues {
        CounterValues {
            requests,
            responses_2xx: ok,
            responses_5xx: errors,
            errors,
            in_flight,
            ..CounterValues::default()
        }
    }

    fn latency(count: u64, sum_ms: u64) -> LatencySnapshot {
        LatencySnapshot {
            count,
            sum_us: sum_ms * 1000,
            ..LatencySnapshot::default()
        }
    }

    fn backend(id: &str, counters: CounterValues, latency: LatencySnapshot) -> BackendSnapshot {
        BackendSnapshot {
            id: id.into(),
            addr: "10.0.0.16:8080".parse().unwrap(),
            counters,
            latency,
            last_second: LastSecond::default(),
            ewma_ms: 0.0,
            ejected: false,
            weight: 1000,
        }
    }

    fn listener(
        name: &str,
        counters: CounterValues,
        latency: LatencySnapshot,
        p95_ms: f64,
        backends: Vec<BackendSnapshot>,
    ) -> ListenerSnapshot {
        ListenerSnapshot {
            name: name.into(),
            bind: "127.0.0.1:8080".parse().unwrap(),
            udp: false,
            bound: true,
            counters,
            latency,
            last_second: LastSecond {
                requests: counters.requests,
                p95_ms,
                ..LastSecond::default()
            },
            backends,
        }
    }

    fn call(from: &str, to: &str, last_second: u64) -> CallSnapshot {
        CallSnapshot {
            from: from.into(),
            to: to.into(),
            requests: 1000,
            last_second,
        }
    }

    fn facts(name: &str, ready: bool) -> InstanceFacts {
        InstanceFacts {
            service: name.split('.').next().unwrap().into(),
            name: name.into(),
            ready,
            age_ms: 5_000,
            cpu_used: 0.4,
            cpu_limit: 0.5,
            reported: None,
            queries_per_second: None,
        }
    }

    /// Web behind its service address and its published port, two instances, one of them new in
    /// this second; kv over TCP; calls from outside, from web, and from another application.
    #[test]
    fn a_second_is_the_difference_of_two_snapshots() {
        let before = Snapshot {
            listeners: vec![
                listener(
                    "shop/web:8080 published",
                    counters(100, 95, 5, 3),
                    latency(95, 1_000),
                    0.0,
                    vec![backend(
                        "web.1",
                        counters(100, 100, 0, 3),
                        latency(100, 1_000),
                    )],
                ),
                listener(
                    "shop/web:8080",
                    counters(10, 10, 0, 0),
                    latency(10, 100),
                    0.0,
                    vec![backend("web.1", counters(10, 10, 0, 0), latency(10, 100))],
                ),
                listener(
                    "shop/kv:7000",
                    CounterValues {
                        accepted: 4,
                        active: 2,
                        ..CounterValues::default()
                    },
                    LatencySnapshot::default(),
                    0.0,
                    vec![],
                ),
            ],
            calls: vec![],
        };
        let after = Snapshot {
            listeners: vec![
                // 50 arrivals, 44 answered, 2 failed (data-plane 502s), 500 ms of latency summed
                // over the 46 responses: a concurrency of 0.5 over the second.
                listener(
                    "shop/web:8080 published",
                    counters(150, 139, 7, 4),
                    latency(141, 1_500),
                    120.0,
                    vec![
                        backend("web.1", counters(130, 125, 0, 2), latency(125, 1_300)),
                        backend("web.2", counters(20, 20, 0, 1), latency(20, 200)),
                    ],
                ),
                // Few requests: its p95 does not stand for the service.
                listener(
                    "shop/web:8080",
                    counters(12, 12, 0, 0),
                    latency(12, 120),
                    900.0,
                    vec![backend("web.1", counters(12, 12, 0, 0), latency(12, 120))],
                ),
                listener(
                    "shop/kv:7000",
                    CounterValues {
                        accepted: 10,
                        active: 3,
                        ..CounterValues::default()
                    },
                    LatencySnapshot::default(),
                    0.0,
                    vec![backend(
                        "kv.1",
                        CounterValues {
                            accepted: 6,
                            active: 3,
                            ..CounterValues::default()
                        },
                        LatencySnapshot::default(),
                    )],
                ),
                listener(
                    "other/web:80",
                    counters(999, 999, 0, 0),
                    latency(999, 9_990),
                    1.0,
                    vec![],
                ),
            ],
            calls: vec![
                call("external", "shop/web", 50),
                call("shop/web", "shop/kv", 6),
                call("other/web", "shop/kv", 1),
                call("shop/web", "other/web", 7),
                call("external", "shop/kv", 0),
            ],
        };
        let instances = [
            facts("web.1", true),
            facts("web.2", true),
            facts("web.3", false),
            facts("kv.1", true),
        ];
        let observation = observation(
            &shop(),
            &["kv", "web"],
            Interval {
                previous: &before,
                current: &after,
                elapsed_ms: 1_000,
                at: 42_000,
            },
            &instances,
        );
        assert_eq!(observation.at, 42_000);

        let web = &observation.services["web"];
        assert_eq!(
            (web.arrivals, web.completions, web.dropped, web.in_flight),
            (52, 44 + 2, 2, 4),
            "both listeners: 50 + 2 arrivals; 44 + 2 answered"
        );
        assert!((web.concurrency - 0.52).abs() < 1e-9, "{}", web.concurrency);
        assert!((web.latency.mean_ms - 520.0 / 48.0).abs() < 1e-9);
        assert_eq!(web.latency.p95_ms, 120.0, "the busiest listener's");
        let by_id: BTreeMap<&str, &InstanceSample> =
            web.instances.iter().map(|i| (i.id.as_str(), i)).collect();
        assert_eq!(by_id.len(), 3, "a starting instance is observed too");
        assert_eq!(by_id["web.1"].completions, 25 + 2);
        assert!((by_id["web.1"].concurrency - 0.32).abs() < 1e-9);
        assert_eq!(
            by_id["web.2"].completions, 20,
            "new in this second: counted from zero"
        );
        assert!((by_id["web.2"].concurrency - 0.2).abs() < 1e-9);
        assert_eq!(
            (by_id["web.3"].completions, by_id["web.3"].ready),
            (0, false)
        );
        assert_eq!(
            (by_id["web.1"].cpu_used, by_id["web.1"].cpu_limit),
            (0.4, 0.5)
        );

        let kv = &observation.services["kv"];
        assert_eq!(
            (kv.arrivals, kv.completions, kv.in_flight),
            (6, 5, 3),
            "TCP: connections accepted and ended"
        );
        assert_eq!(kv.concurrency, 3.0, "the connections open");
        assert_eq!(kv.instances[0].completions, 3);
        assert_eq!(kv.instances[0].concurrency, 3.0);

        assert_eq!(
            observation.calls,
            vec![
                Call {
                    from: "external".into(),
                    to: "kv".into(),
                    count: 1
                },
                Call {
                    from: "external".into(),
                    to: "web".into(),
                    count: 50
                },
                Call {
                    from: "web".into(),
                    to: "kv".into(),
                    count: 6
                },
            ],
            "another application is outside; calls out of the app are not its"
        );
    }

    /// A database's clients keep one connection open and send their queries down it: the
    /// service's requests are the queries its servers say they ran.
    #[test]
    fn a_databases_requests_are_the_queries_its_servers_ran() {
        let kv = |accepted, active| {
            listener(
                "shop/kv:7000",
                CounterValues {
                    accepted,
                    active,
                    ..CounterValues::default()
                },
                LatencySnapshot::default(),
                0.0,
                vec![],
            )
        };
        let before = Snapshot {
            listeners: vec![kv(1, 1)],
            calls: vec![],
        };
        let after = Snapshot {
            listeners: vec![kv(1, 1)],
            calls: vec![],
        };
        let measured = InstanceFacts {
            queries_per_second: Some(250.0),
            ..facts("kv.1", true)
        };
        let instances = [measured, facts("kv.2", true), facts("web.1", true)];
        let observation = observation(
            &shop(),
            &["kv", "web"],
            Interval {
                previous: &before,
                current: &after,
                elapsed_ms: 2_000,
                at: 2_000,
            },
            &instances,
        );
        let kv = &observation.services["kv"];
        assert_eq!(
            (kv.arrivals, kv.completions, kv.in_flight),
            (500, 500, 1),
            "250 queries a second for two seconds, down the one connection still open"
        );
        let by_id: BTreeMap<&str, u64> = kv
            .instances
            .iter()
            .map(|i| (i.id.as_str(), i.completions))
            .collect();
        assert_eq!(
            by_id,
            BTreeMap::from([("kv.1", 500), ("kv.2", 0)]),
            "a server not measured yet ran none that count"
        );
        let web = &observation.services["web"];
        assert_eq!(
            (web.arrivals, web.completions),
            (0, 0),
            "another service's figures are its own"
        );
    }

    #[test]
    fn counters_that_went_back_are_a_new_data_plane() {
        let snapshot = |requests| Snapshot {
            listeners: vec![listener(
                "shop/web:8080 published",
                counters(requests, requests, 0, 0),
                latency(requests, requests),
                1.0,
                vec![],
            )],
            calls: vec![],
        };
        let observe = |before: &Snapshot, after: &Snapshot| {
            observation(
                &shop(),
                &["web"],
                Interval {
                    previous: before,
                    current: after,
                    elapsed_ms: 1_000,
                    at: 1,
                },
                &[],
            )
        };
        let web = |o: Observation| o.services["web"].arrivals;
        assert_eq!(web(observe(&snapshot(500), &snapshot(7))), 7);
        assert_eq!(web(observe(&Snapshot::default(), &snapshot(9))), 9);
        assert_eq!(web(observe(&snapshot(9), &snapshot(9))), 0);
    }

    #[test]
    fn a_listener_name_carries_its_port() {
        assert_eq!(listener_port("shop/web:8080 published"), Some(8080));
        assert_eq!(listener_port("shop/kv:7000"), Some(7000));
        assert_eq!(listener_port("shop/kv"), None);
    }
}
