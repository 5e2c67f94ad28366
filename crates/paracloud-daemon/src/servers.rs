//! The catalogue's database servers as they describe themselves: each health check of a
//! PostgreSQL, MariaDB or Redis instance prints the queries its server ran and, on a replica,
//! how far behind the primary it is (`paracloud_manifest::catalog::server_load`). Kept here by
//! instance id, for the follower (the service's requests are its queries), `describe` and
//! `GET /metrics`.

use std::collections::HashMap;
use std::sync::Mutex;

use paracloud_autoscale::queries::{QueryMeter, STALE_MS};
use paracloud_manifest::catalog::ServerLoad;
use paracloud_reconcile::Millis;

use crate::sync::lock;

/// What one server said lately.
#[derive(Debug, Default)]
struct Said {
    meter: QueryMeter,
    /// The queries so far and, on a replica, its lag, at the last reading.
    latest: Option<(Millis, ServerLoad)>,
}

/// The figures of every database server that printed some, by instance id.
#[derive(Debug, Default)]
pub struct Servers {
    said: Mutex<HashMap<String, Said>>,
}

/// One server's figures for `describe`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerFigures {
    pub queries_per_second: Option<f64>,
    pub queries: u64,
    pub lag_ms: Option<u64>,
}

impl Servers {
    /// What the health check of instance `id` printed at `at`; output without a `load` line
    /// is nothing to keep.
    pub fn heard(&self, id: &str, output: &str, at: Millis) {
        let Some(load) = paracloud_manifest::catalog::server_load(output) else {
            return;
        };
        let mut said = lock(&self.said);
        let said = said.entry(id.to_owned()).or_default();
        said.meter.read(at, load.queries);
        said.latest = Some((at, load));
    }

    /// The queries per second instance `id` ran lately, when its server says.
    pub fn queries_per_second(&self, id: &str, now: Millis) -> Option<f64> {
        lock(&self.said).get(id)?.meter.rate(now)
    }

    /// Instance `id`'s figures, while its last reading is recent.
    pub fn figures(&self, id: &str, now: Millis) -> Option<ServerFigures> {
        let said = lock(&self.said);
        let said = said.get(id)?;
        let (at, load) = said.latest?;
        (now.saturating_sub(at) <= STALE_MS).then(|| ServerFigures {
            queries_per_second: said.meter.rate(now),
            queries: load.queries,
            lag_ms: load.lag_ms,
        })
    }

    /// Every server's recent figures, by instance id.
    pub fn all(&self, now: Millis) -> HashMap<String, ServerFigures> {
        let ids: Vec<String> = lock(&self.said).keys().cloned().collect();
        ids.into_iter()
            .filter_map(|id| Some((id.clone(), self.figures(&id, now)?)))
            .collect()
    }

    /// Forgets the instances `keep` says are gone.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.said).retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_health_checks_give_its_rate_and_lag_while_they_are_recent() {
        let servers = Servers::default();
        servers.heard("a-db-read-1", "load queries=100 lag_ms=20\n", 1_000);
        servers.heard("a-db-read-1", "not a figure\n", 1_500);
        servers.heard("a-db-read-1", "load queries=400 lag_ms=0\n", 2_000);
        assert_eq!(
            servers.figures("a-db-read-1", 2_000),
            Some(ServerFigures {
                queries_per_second: Some(300.0),
                queries: 400,
                lag_ms: Some(0),
            })
        );
        assert_eq!(
            servers.queries_per_second("a-db-read-1", 2_000),
            Some(300.0)
        );
        assert_eq!(servers.figures("a-db-read-1", 2_001 + STALE_MS), None);
        assert_eq!(servers.figures("a-web-1", 2_000), None);
        servers.retain(|id| id != "a-db-read-1");
        assert!(servers.all(2_000).is_empty());
    }
}
