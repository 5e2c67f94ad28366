//! When each service last had traffic, from the data plane's own snapshots (pure): what scales a
//! service with `scale_to_zero` to zero, on one machine (the daemon's follower) and in a cluster
//! (the operator's).

use std::collections::BTreeMap;

use crate::{service_of, Snapshot};

/// Milliseconds, of whatever clock the caller follows.
pub type Millis = u64;

/// When each service ("app/service") last had traffic, from the data plane's snapshots.
#[derive(Debug, Default)]
pub struct IdleTracker {
    services: BTreeMap<String, Activity>,
}

#[derive(Debug, Clone, Copy)]
struct Activity {
    /// Requests, connections and held requests counted so far, over all its listeners.
    seen: u64,
    /// When `seen` last changed, or something was open or in flight.
    at: Millis,
}

impl IdleTracker {
    /// Takes in one snapshot at `now`; returns how long each service has been without traffic.
    /// A service first seen counts as active now; so does one whose counters went back (the
    /// data plane restarted).
    pub fn observe(&mut self, snapshot: &Snapshot, now: Millis) -> BTreeMap<String, Millis> {
        let mut totals: BTreeMap<String, (u64, bool)> = BTreeMap::new();
        for listener in &snapshot.listeners {
            let c = &listener.counters;
            let entry = totals
                .entry(service_of(&listener.name).to_owned())
                .or_default();
            entry.0 += c.requests + c.accepted + c.held;
            entry.1 |= c.active > 0 || c.in_flight > 0;
        }
        self.services
            .retain(|service, _| totals.contains_key(service));
        let mut idle_for = BTreeMap::new();
        for (service, (seen, busy)) in totals {
            let activity = self
                .services
                .entry(service.clone())
                .or_insert(Activity { seen, at: now });
            if busy || seen != activity.seen {
                *activity = Activity { seen, at: now };
            }
            idle_for.insert(service, now.saturating_sub(activity.at));
        }
        idle_for
    }

    /// Counts traffic for `service` now (a request is waiting for it).
    pub fn touch(&mut self, service: &str, now: Millis) {
        if let Some(activity) = self.services.get_mut(service) {
            activity.at = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CounterValues, ListenerSnapshot};

    fn snapshot(listeners: &[(&str, CounterValues)]) -> Snapshot {
        Snapshot {
            listeners: listeners
                .iter()
                .map(|(name, counters)| ListenerSnapshot {
                    name: (*name).into(),
                    bind: "127.0.0.1:1".parse().unwrap(),
                    udp: false,
                    bound: true,
                    counters: *counters,
                    latency: Default::default(),
                    last_second: Default::default(),
                    backends: Vec::new(),
                })
                .collect(),
            calls: Vec::new(),
        }
    }

    fn requests(n: u64) -> CounterValues {
        CounterValues {
            requests: n,
            ..CounterValues::default()
        }
    }

    #[test]
    fn a_service_is_idle_from_its_last_request_over_all_its_listeners() {
        let mut idle = IdleTracker::default();
        let both = |a, b| {
            snapshot(&[
                ("shop/web:8080", requests(a)),
                ("shop/web:8080 published", requests(b)),
            ])
        };
        assert_eq!(idle.observe(&both(0, 0), 1_000)["shop/web"], 0);
        assert_eq!(idle.observe(&both(0, 0), 5_000)["shop/web"], 4_000);
        assert_eq!(idle.observe(&both(0, 3), 6_000)["shop/web"], 0);
        assert_eq!(idle.observe(&both(0, 3), 9_000)["shop/web"], 3_000);
        idle.touch("shop/web", 9_500);
        assert_eq!(idle.observe(&both(0, 3), 10_000)["shop/web"], 500);
    }

    #[test]
    fn open_connections_and_a_restarted_data_plane_count_as_traffic() {
        let mut idle = IdleTracker::default();
        idle.observe(&snapshot(&[("shop/kv:7000", requests(9))]), 0);
        let open = CounterValues {
            requests: 9,
            active: 1,
            ..CounterValues::default()
        };
        assert_eq!(
            idle.observe(&snapshot(&[("shop/kv:7000", open)]), 60_000)["shop/kv"],
            0
        );
        assert_eq!(
            idle.observe(&snapshot(&[("shop/kv:7000", requests(0))]), 70_000)["shop/kv"],
            0,
            "counters that went back are a new data plane"
        );
    }
}
