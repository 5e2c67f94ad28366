//! The platform's side of PaCI events (docs/paci.md): an event is sent to an instance's open
//! event stream and waits for its answer until its deadline; the stream is the instance's own,
//! one at a time; ids are never reused. The daemon keeps one [`Events`] for its instances, the
//! Kubernetes node agent one for its node's pods; each serves `GET /v1/events` and
//! `POST /v1/events/{id}/ack` from it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::Stream;
use paracloud_paci::{Ack, AckAnswer, EventKind, PlatformEvent};
use tokio::sync::{broadcast, oneshot, watch};

/// Milliseconds since the epoch, on the clock the owner gives.
pub type Millis = u64;

/// How long an instance has to answer a `resize`: a notice, nothing waits for its answer. The
/// same on one machine and on a cluster's nodes.
pub const RESIZE_DEADLINE: Duration = Duration::from_secs(5);

/// How long an instance has to answer `migrate` or `restore`, on one machine and on a
/// cluster's nodes alike.
pub const HANDOVER_DEADLINE: Duration = Duration::from_secs(10);

/// What a second stream of an instance gets while one is open.
pub const STREAM_OPEN: &str = "an event stream of this instance is already open: the stream is the instance's own, one at a time; read events from the open one (or close it first)";

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

/// Why an answer to an event was not taken.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("no event {0} waits for this instance's answer: it was answered already, its deadline passed (the platform went on without the answer), or it was sent to another instance")]
    NoEvent(u64),
    #[error("{0}")]
    Invalid(String),
}

struct Pending {
    event: PlatformEvent,
    reply: oneshot::Sender<Ack>,
}

struct Channel {
    events: broadcast::Sender<PlatformEvent>,
    /// Open event streams.
    listeners: watch::Sender<usize>,
    pending: BTreeMap<u64, Pending>,
}

impl Channel {
    fn new() -> Self {
        Self {
            events: broadcast::channel(64).0,
            listeners: watch::channel(0).0,
            pending: BTreeMap::new(),
        }
    }
}

struct Inner<K> {
    next_id: AtomicU64,
    now: fn() -> Millis,
    channels: Mutex<BTreeMap<K, Channel>>,
}

/// The events of every instance, by the owner's key for an instance. Cloning shares them.
pub struct Events<K> {
    inner: Arc<Inner<K>>,
}

impl<K> std::fmt::Debug for Events<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl<K> Clone for Events<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Ord + Clone + Send + Sync + 'static> Events<K> {
    /// Events timed by `now`; ids start from it, so that an id an instance kept from before
    /// its platform restarted never names a new event (a thousand ids a millisecond to spare).
    pub fn new(now: fn() -> Millis) -> Self {
        Self {
            inner: Arc::new(Inner {
                next_id: AtomicU64::new(now().saturating_mul(1000)),
                now,
                channels: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    fn channels(&self) -> MutexGuard<'_, BTreeMap<K, Channel>> {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The instance is gone: its pending events end unanswered, its stream ends.
    pub fn forget(&self, key: &K) {
        self.channels().remove(key);
    }

    /// Whether an event stream of the instance is open.
    pub fn listening(&self, key: &K) -> bool {
        self.channels()
            .get(key)
            .is_some_and(|c| *c.listeners.borrow() > 0)
    }

    /// Waits up to `wait` for the instance to open an event stream.
    pub async fn wait_listening(&self, key: &K, wait: Duration) -> bool {
        let mut rx = self
            .channels()
            .entry(key.clone())
            .or_insert_with(Channel::new)
            .listeners
            .subscribe();
        tokio::time::timeout(wait, rx.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Sends an event and waits for its answer until `deadline` has passed.
    pub async fn send(&self, key: &K, kind: EventKind, deadline: Duration) -> Answer {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let event = PlatformEvent {
            id,
            deadline: (self.inner.now)() + deadline.as_millis() as Millis,
            kind,
        };
        let (reply, answer) = oneshot::channel();
        {
            let mut channels = self.channels();
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
        if let Some(channel) = self.channels().get_mut(key) {
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

    /// Sends an event nobody waits for (`resize`): it is answered or expires on its own. Whether
    /// it was sent (the instance follows its events).
    pub fn notify(&self, key: &K, kind: EventKind, deadline: Duration) -> bool {
        if !self.listening(key) {
            return false;
        }
        let events = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            events.send(&key, kind, deadline).await;
        });
        true
    }

    /// The instance's answer to event `id`.
    pub fn ack(&self, key: &K, id: u64, ack: Ack) -> Result<AckAnswer, AckError> {
        let mut channels = self.channels();
        let Some(pending) = channels.get_mut(key).map(|c| &mut c.pending) else {
            return Err(AckError::NoEvent(id));
        };
        let Some(entry) = pending.get(&id) else {
            return Err(AckError::NoEvent(id));
        };
        ack.check(&entry.event.kind).map_err(AckError::Invalid)?;
        let entry = pending.remove(&id).ok_or(AckError::NoEvent(id))?;
        let before = entry.event.deadline.saturating_sub((self.inner.now)());
        let _ = entry.reply.send(ack);
        Ok(AckAnswer {
            id,
            before_deadline_ms: before,
        })
    }

    /// The instance's event stream: the events waiting for its answer, then each new one;
    /// counted as its listener while it lives. None while another stream of the instance is
    /// open ([`STREAM_OPEN`]).
    pub fn subscribe(&self, key: &K) -> Option<impl Stream<Item = PlatformEvent> + Send + 'static> {
        let mut channels = self.channels();
        let channel = channels.entry(key.clone()).or_insert_with(Channel::new);
        if *channel.listeners.borrow() > 0 {
            return None;
        }
        let receiver = channel.events.subscribe();
        let now = (self.inner.now)();
        let pending: Vec<PlatformEvent> = channel
            .pending
            .values()
            .filter(|p| p.event.deadline > now)
            .map(|p| p.event.clone())
            .collect();
        channel.listeners.send_modify(|n| *n += 1);
        let guard = ListenerGuard(channel.listeners.clone());
        let state = (pending.into_iter(), receiver, guard);
        Some(futures::stream::unfold(
            state,
            |(mut pending, mut receiver, guard)| async move {
                if let Some(event) = pending.next() {
                    return Some((event, (pending, receiver, guard)));
                }
                loop {
                    match receiver.recv().await {
                        Ok(event) => return Some((event, (pending, receiver, guard))),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }
}

/// Counts an open event stream while it lives.
struct ListenerGuard(watch::Sender<usize>);

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// An event's id from its path, or what is wrong with it.
pub fn event_id(text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| {
        format!("event id {text:?} is not a number: use the `id` of an event from GET /v1/events")
    })
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

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn clock() -> Millis {
        1_000
    }

    fn resize() -> EventKind {
        EventKind::Resize {
            cpu: Some(0.5),
            memory: None,
        }
    }

    #[tokio::test]
    async fn an_event_reaches_the_one_open_stream_and_its_answer_comes_back() {
        let events: Events<&str> = Events::new(clock);
        assert_eq!(
            events.send(&"a", resize(), Duration::from_secs(1)).await,
            Answer::NotListening
        );
        let mut stream = Box::pin(events.subscribe(&"a").unwrap());
        assert!(events.subscribe(&"a").is_none(), "one stream at a time");
        assert!(events.listening(&"a") && !events.listening(&"b"));
        let sender = events.clone();
        let sent =
            tokio::spawn(async move { sender.send(&"a", resize(), Duration::from_secs(5)).await });
        let event = stream.next().await.unwrap();
        assert_eq!(event.kind, resize());
        assert_eq!(event.deadline, 6_000);
        assert!(matches!(
            events.ack(&"b", event.id, Ack::default()),
            Err(AckError::NoEvent(_))
        ));
        let answer = events.ack(&"a", event.id, Ack::default()).unwrap();
        assert_eq!(answer.before_deadline_ms, 5_000);
        assert_eq!(sent.await.unwrap(), Answer::Acked(Ack::default()));
        assert!(
            events.ack(&"a", event.id, Ack::default()).is_err(),
            "a second answer"
        );
        drop(stream);
        assert!(!events.listening(&"a"));
        assert!(
            events.subscribe(&"a").is_some(),
            "a new stream once the first closed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_event_ends_at_its_deadline_and_a_refusal_says_why() {
        let events: Events<u32> = Events::new(clock);
        let mut stream = Box::pin(events.subscribe(&1).unwrap());
        assert_eq!(
            events.send(&1, resize(), Duration::from_millis(200)).await,
            Answer::NoAnswer
        );
        let first = stream.next().await.unwrap();
        let sender = events.clone();
        let sent =
            tokio::spawn(async move { sender.send(&1, resize(), Duration::from_secs(5)).await });
        let second = stream.next().await.unwrap();
        assert_ne!(first.id, second.id, "ids are never reused");
        let refusal = Ack {
            error: Some("no".into()),
            ..Default::default()
        };
        events.ack(&1, second.id, refusal).unwrap();
        assert_eq!(sent.await.unwrap(), Answer::Refused("no".into()));
        assert_eq!(
            event_id("x").unwrap_err(),
            "event id \"x\" is not a number: use the `id` of an event from GET /v1/events"
        );
    }
}
