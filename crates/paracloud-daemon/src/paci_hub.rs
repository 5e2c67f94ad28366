//! The instances' PaCI state the rest of the daemon shares: events waiting for an answer with
//! their deadlines and open event streams (`paracloud_paci_events`, which the node agent shares),
//! the latest load reports, and where each instance's socket lives. The sockets' servers (`paci`)
//! and the engine both use it; it uses neither.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use paracloud_paci::LoadReport;
use paracloud_reconcile::{InstanceKey, Millis};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::clock::now_ms;
use crate::sync::lock;

pub use paracloud_autoscale::REPORT_TTL_MS;
pub use paracloud_paci_events::{describe_answer, AckError, Answer, Events};

struct Channel {
    server: Option<AbortHandle>,
    load: Option<(Millis, LoadReport)>,
}

impl Channel {
    fn new() -> Self {
        Self {
            server: None,
            load: None,
        }
    }
}

/// The daemon's side of every instance's PaCI: servers, events, reported load.
pub struct Hub {
    /// The events sent to the instances and waiting for their answers.
    pub events: Events<InstanceKey>,
    channels: Mutex<HashMap<InstanceKey, Channel>>,
    /// Bumped whenever the routes are pushed (instances came, went, or changed readiness).
    pub(crate) changes: watch::Sender<u64>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            events: Events::new(now_ms),
            channels: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
        }
    }
}

/// Where the host side of an instance's socket directory is.
pub fn socket_dir(root: &std::path::Path, key: &InstanceKey) -> PathBuf {
    root.join("paci").join(key.id())
}

impl Hub {
    /// Something about the instances changed: peer streams look again.
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether the instance has a PaCI server already.
    pub fn serving(&self, key: &InstanceKey) -> bool {
        lock(&self.channels)
            .get(key)
            .is_some_and(|c| c.server.is_some())
    }

    pub(crate) fn set_server(&self, key: &InstanceKey, server: AbortHandle) {
        let mut channels = lock(&self.channels);
        let channel = channels.entry(key.clone()).or_insert_with(Channel::new);
        if let Some(old) = channel.server.replace(server) {
            old.abort();
        }
    }

    /// Stops serving an instance that is gone; its pending events end unanswered.
    pub fn forget(&self, key: &InstanceKey) {
        self.events.forget(key);
        if let Some(channel) = lock(&self.channels).remove(key) {
            if let Some(server) = channel.server {
                server.abort();
            }
        }
    }

    /// The instance's last load report, if recent.
    pub fn load(&self, key: &InstanceKey, now: Millis) -> Option<LoadReport> {
        let channels = lock(&self.channels);
        let (at, report) = channels.get(key)?.load.as_ref()?;
        (now.saturating_sub(*at) <= REPORT_TTL_MS).then(|| report.clone())
    }

    pub(crate) fn set_load(&self, key: &InstanceKey, report: LoadReport, now: Millis) {
        lock(&self.channels)
            .entry(key.clone())
            .or_insert_with(Channel::new)
            .load = Some((now, report));
    }
}
