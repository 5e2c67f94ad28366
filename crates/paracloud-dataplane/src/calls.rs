//! The call graph: who called which service, counted per HTTP request or TCP connection.
//!
//! A connection's client address is looked up in a table of instance addresses, built from the
//! backends of every configured listener at each config load (never per request).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::time::Instant;
use tracing::debug;

use crate::stats::{second_of, CallSnapshot};
use crate::Listener;

/// The caller of a client address that belongs to no configured backend.
pub const EXTERNAL_CALLER: &str = "external";

/// The service ("app/service") a listener name stands for: the name up to its port (or first
/// space), e.g. "shop/web" for "shop/web:8080 published".
pub fn service_of(listener_name: &str) -> &str {
    listener_name
        .split([':', ' '])
        .next()
        .unwrap_or(listener_name)
}

/// Calls of one (caller, callee) pair.
#[derive(Debug, Default)]
struct Pair {
    total: AtomicU64,
    /// Index of the second being filled, its count, and the count of the second before it.
    seconds: Mutex<(u64, u64, u64)>,
}

impl Pair {
    fn count(&self, second: u64) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut seconds) = self.seconds.lock() {
            roll(&mut seconds, second);
            seconds.1 += 1;
        }
    }

    fn last_second(&self, second: u64) -> u64 {
        self.seconds.lock().map_or(0, |mut seconds| {
            roll(&mut seconds, second);
            seconds.2
        })
    }
}

/// Moves `seconds` on to `second`: the current count becomes the previous one when adjacent.
fn roll(seconds: &mut (u64, u64, u64), second: u64) {
    let (index, current, _) = *seconds;
    if index != second {
        let previous = if index + 1 == second { current } else { 0 };
        *seconds = (second, 0, previous);
    }
}

/// Callee → counters of one caller.
type Callees = HashMap<Arc<str>, Arc<Pair>>;

/// Instance addresses and the call counters, shared by every listener of one data plane.
#[derive(Debug)]
pub(crate) struct CallGraph {
    /// Instance IP → its service; replaced as a whole on each config load.
    owners: RwLock<Arc<HashMap<IpAddr, Arc<str>>>>,
    /// Caller → callee → counters; pairs are only ever added.
    pairs: RwLock<HashMap<Arc<str>, Callees>>,
    external: Arc<str>,
}

impl Default for CallGraph {
    fn default() -> Self {
        Self {
            owners: RwLock::default(),
            pairs: RwLock::default(),
            external: Arc::from(EXTERNAL_CALLER),
        }
    }
}

impl CallGraph {
    /// Rebuilds the address table from the backends of `listeners`. An address listed under two
    /// services (only possible when instances share an IP, as on loopback) goes to the
    /// alphabetically first, so the outcome does not depend on the listeners' order.
    pub(crate) fn rebuild<'a>(&self, listeners: impl IntoIterator<Item = &'a Listener>) {
        let mut owners: HashMap<IpAddr, Arc<str>> = HashMap::new();
        for listener in listeners {
            let service: Arc<str> = Arc::from(service_of(&listener.name));
            // A revision's instances call as their service does.
            let revision_backends = listener.revisions.iter().flat_map(|r| &r.backends);
            for backend in listener.backends.iter().chain(revision_backends) {
                let ip = backend.addr.ip().to_canonical();
                match owners.get_mut(&ip) {
                    Some(owner) if **owner != *service => {
                        debug!(%ip, first = %owner, second = %service, "address listed under two services");
                        if *service < **owner {
                            *owner = service.clone();
                        }
                    }
                    Some(_) => {}
                    None => {
                        owners.insert(ip, service.clone());
                    }
                }
            }
        }
        if let Ok(mut slot) = self.owners.write() {
            *slot = Arc::new(owners);
        }
    }

    /// The service owning `ip`, or [`EXTERNAL_CALLER`].
    fn caller(&self, ip: IpAddr) -> Arc<str> {
        let ip = ip.to_canonical();
        self.owners
            .read()
            .ok()
            .and_then(|owners| owners.get(&ip).cloned())
            .unwrap_or_else(|| self.external.clone())
    }

    /// Counts one call from the client at `ip` to service `callee` at `now`.
    pub(crate) fn count(&self, ip: IpAddr, callee: &Arc<str>, now: Instant) {
        let caller = self.caller(ip);
        let second = second_of(now);
        let found = self
            .pairs
            .read()
            .ok()
            .and_then(|pairs| pairs.get(&caller)?.get(callee).cloned());
        let pair = match found {
            Some(pair) => pair,
            None => {
                let Ok(mut pairs) = self.pairs.write() else {
                    return;
                };
                pairs
                    .entry(caller)
                    .or_default()
                    .entry(callee.clone())
                    .or_default()
                    .clone()
            }
        };
        pair.count(second);
    }

    /// Every pair counted so far, sorted by caller then callee.
    pub(crate) fn snapshot(&self, now: Instant) -> Vec<CallSnapshot> {
        let second = second_of(now);
        let Ok(pairs) = self.pairs.read() else {
            return Vec::new();
        };
        let mut sorted: BTreeMap<(&str, &str), &Pair> = BTreeMap::new();
        for (from, callees) in pairs.iter() {
            for (to, pair) in callees {
                sorted.insert((from, to), pair);
            }
        }
        sorted
            .into_iter()
            .map(|((from, to), pair)| CallSnapshot {
                from: from.to_owned(),
                to: to.to_owned(),
                requests: pair.total.load(Ordering::Relaxed),
                last_second: pair.last_second(second),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::{Backend, Protocol};

    fn listener(name: &str, addrs: &[&str]) -> Listener {
        Listener {
            name: name.into(),
            bind: "127.0.0.1:1".parse().unwrap(),
            protocol: Protocol::Http,
            backends: addrs
                .iter()
                .enumerate()
                .map(|(i, addr)| Backend {
                    id: format!("x.{i}"),
                    addr: addr.parse::<SocketAddr>().unwrap(),
                    weight: 1,
                })
                .collect(),
            revisions: Vec::new(),
        }
    }

    #[test]
    fn the_service_is_the_name_up_to_the_port() {
        assert_eq!(service_of("shop/api:8000"), "shop/api");
        assert_eq!(service_of("shop/web:8080 published"), "shop/web");
        assert_eq!(service_of("shop/web (published)"), "shop/web");
        assert_eq!(service_of("plain"), "plain");
    }

    #[tokio::test(start_paused = true)]
    async fn callers_are_found_by_ip_and_unknown_ones_are_external() {
        let graph = CallGraph::default();
        graph.rebuild(&[
            listener("app/web:80", &["10.0.0.2:80", "10.0.0.3:80"]),
            listener("app/web:8080 published", &["10.0.0.2:80"]),
            listener("app/api:8000", &["10.0.0.4:8000"]),
        ]);
        let api: Arc<str> = Arc::from("app/api");
        let web: Arc<str> = Arc::from("app/web");
        let now = Instant::now();
        for ip in ["10.0.0.2", "10.0.0.3", "::ffff:10.0.0.3"] {
            graph.count(ip.parse().unwrap(), &api, now);
        }
        graph.count("10.0.0.9".parse().unwrap(), &web, now);
        graph.count("10.0.0.4".parse().unwrap(), &web, now);
        let calls = graph.snapshot(now);
        let pairs: Vec<(&str, &str, u64)> = calls
            .iter()
            .map(|c| (c.from.as_str(), c.to.as_str(), c.requests))
            .collect();
        assert_eq!(
            pairs,
            [
                ("app/api", "app/web", 1),
                ("app/web", "app/api", 3),
                ("external", "app/web", 1)
            ]
        );
        assert!(calls.iter().all(|c| c.last_second == 0));
        tokio::time::advance(Duration::from_secs(1)).await;
        let calls = graph.snapshot(Instant::now());
        assert_eq!(calls[1].last_second, 3);
        // After a reload without web's instances, they are external callers.
        graph.rebuild(&[listener("app/api:8000", &["10.0.0.4:8000"])]);
        graph.count("10.0.0.2".parse().unwrap(), &api, Instant::now());
        let calls = graph.snapshot(Instant::now());
        assert_eq!(
            (calls[2].from.as_str(), calls[2].to.as_str()),
            ("external", "app/api")
        );
        assert_eq!(calls[2].requests, 1);
    }

    #[test]
    fn a_shared_address_goes_to_the_first_service_whatever_the_order() {
        let a = listener("app/b:1", &["127.0.0.1:1"]);
        let b = listener("app/a:1", &["127.0.0.1:2"]);
        for order in [[&a, &b], [&b, &a]] {
            let graph = CallGraph::default();
            graph.rebuild(order);
            assert_eq!(&*graph.caller("127.0.0.1".parse().unwrap()), "app/a");
        }
    }
}
