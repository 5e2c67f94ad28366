//! The instances' PaCI state the rest of the daemon shares: events waiting for an answer with
//! their deadlines, open event streams, the latest load reports, and where each instance's socket
//! lives. The sockets' servers (`paci`) and the engine both use it; it uses neither.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paracloud_paci::{Ack, AckAnswer, EventKind, LoadReport, PlatformEvent};
use paracloud_reconcile::{InstanceKey, Millis};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::AbortHandle;

use crate::clock::now_ms;
use crate::sync::lock;

pub use paracloud_autoscale::REPORT_TTL_MS;

/// How an instance answered an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// It acknowledged by the deadline.
    Acked(Ack),
    /// It answered with an error: it could not do what was asked.
    Refused(String),
    /// No event stream of the instance was open: it does not take part in PaCI (yet).
    NotListening,
    /// The deadline passed without an answer.
    NoAnswer,
}

struct Pending {
    event: PlatformEvent,
    reply: oneshot::Sender<Ack>,
}

struct Channel {
    server: Option<AbortHandle>,
    events: broadcast::Sender<PlatformEvent>,
    /// Open event streams.
    listeners: watch::Sender<usize>,
    pending: BTreeMap<u64, Pending>,
    load: Option<(Millis, LoadReport)>,
}

impl Channel {
    fn new() -> Self {
        Self {
            server: None,
            events: broadcast::channel(64).0,
            listeners: watch::channel(0).0,
            pending: BTreeMap::new(),
            load: None,
        }
    }
}

/// The daemon's side of every instance's PaCI: servers, pending events, reported load.
pub struct Hub {
    next_id: AtomicU64,
    channels: Mutex<HashMap<InstanceKey, Channel>>,
    /// Bumped whenever the routes are pushed (instances came, went, or changed readiness).
    pub(crate) changes: watch::Sender<u64>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            // Ids start from the clock, so that an id an instance kept from before a daemon
            // restart never names a new event (a thousand ids a millisecond to spare).
            next_id: AtomicU64::new(now_ms().saturating_mul(1000)),
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

    /// Whether an event stream of the instance is open.
    pub fn listening(&self, key: &InstanceKey) -> bool {
        lock(&self.channels)
            .get(key)
            .is_some_and(|c| *c.listeners.borrow() > 0)
    }

    /// Waits up to `wait` for the instance to open an event stream.
    pub async fn wait_listening(&self, key: &InstanceKey, wait: Duration) -> bool {
        let mut rx = lock(&self.channels)
            .entry(key.clone())
            .or_insert_with(Channel::new)
            .listeners
            .subscribe();
        tokio::time::timeout(wait, rx.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Sends an event and waits for its answer until `deadline` has passed.
    pub async fn send(&self, key: &InstanceKey, kind: EventKind, deadline: Duration) -> Answer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let event = PlatformEvent {
            id,
            deadline: now_ms() + deadline.as_millis() as Millis,
            kind,
        };
        let (reply, answer) = oneshot::channel();
        {
            let mut channels = lock(&self.channels);
            let channel = channels.entry(key.clone()).or_insert_with(Channel::new);
            if *channel.listeners.borrow() == 0 {
                return Answer::NotListening;
            }
            channel.pending.insert(
                id,
                Pending {
                    event: event.clone(),
                    reply,
                },
            );
            let _ = channel.events.send(event);
        }
        let result = tokio::time::timeout(deadline, answer).await;
        if let Some(channel) = lock(&self.channels).get_mut(key) {
            channel.pending.remove(&id);
        }
        match result {
            Ok(Ok(Ack {
                error: Some(error), ..
            })) => Answer::Refused(error),
            Ok(Ok(ack)) => Answer::Acked(ack),
            Ok(Err(_)) | Err(_) => Answer::NoAnswer,
        }
    }

    /// Sends an event nobody waits for (resize): it is answered or expires on its own.
    pub fn notify(self: &Arc<Self>, key: &InstanceKey, kind: EventKind, deadline: Duration) {
        if !self.listening(key) {
            return;
        }
        let hub = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            hub.send(&key, kind, deadline).await;
        });
    }

    pub(crate) fn ack(&self, key: &InstanceKey, id: u64, ack: Ack) -> Result<AckAnswer, AckError> {
        let mut channels = lock(&self.channels);
        let pending = channels.get_mut(key).map(|c| &mut c.pending);
        let Some(pending) = pending else {
            return Err(AckError::NoEvent(id));
        };
        let Some(entry) = pending.get(&id) else {
            return Err(AckError::NoEvent(id));
        };
        ack.check(&entry.event.kind).map_err(AckError::Invalid)?;
        let entry = pending.remove(&id).ok_or(AckError::NoEvent(id))?;
        let before = entry.event.deadline.saturating_sub(now_ms());
        let _ = entry.reply.send(ack);
        Ok(AckAnswer {
            id,
            before_deadline_ms: before,
        })
    }

    /// The instance's pending events and a receiver of the next ones, counted as its listener
    /// while the returned guard lives; None while another stream of the instance is open (the
    /// stream is the instance's own: one at a time).
    pub(crate) fn subscribe(
        &self,
        key: &InstanceKey,
    ) -> Option<(
        Vec<PlatformEvent>,
        broadcast::Receiver<PlatformEvent>,
        ListenerGuard,
    )> {
        let mut channels = lock(&self.channels);
        let channel = channels.entry(key.clone()).or_insert_with(Channel::new);
        if *channel.listeners.borrow() > 0 {
            return None;
        }
        let receiver = channel.events.subscribe();
        let now = now_ms();
        let pending = channel
            .pending
            .values()
            .filter(|p| p.event.deadline > now)
            .map(|p| p.event.clone())
            .collect();
        channel.listeners.send_modify(|n| *n += 1);
        let guard = ListenerGuard(channel.listeners.clone());
        Some((pending, receiver, guard))
    }
}

/// Counts an open event stream while it lives.
pub(crate) struct ListenerGuard(watch::Sender<usize>);

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Why an answer to an event was not taken.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("no event {0} waits for this instance's answer: it was answered already, its deadline passed (the platform went on without the answer), or it was sent to another instance")]
    NoEvent(u64),
    #[error("{0}")]
    Invalid(String),
}

/// An instance's answer to a PaCI event, for the event log.
pub fn describe_answer(what: &str, answer: &Answer, took: Duration) -> String {
    let ms = took.as_millis();
    match answer {
        Answer::Acked(_) => format!("{what}: acknowledged in {ms} ms"),
        Answer::Refused(error) => format!("{what}: refused after {ms} ms: {error}"),
        Answer::NotListening => format!("{what}: the instance does not follow its PaCI events"),
        Answer::NoAnswer => {
            format!("{what}: no answer by its deadline ({ms} ms); the platform went on without it")
        }
    }
}
