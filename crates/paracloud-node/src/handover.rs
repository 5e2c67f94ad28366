//! A migration's PaCI handover between pods (docs/kubernetes.md, "Migration"): whoever
//! migrates a pod asks the agent of the old pod's node to send it `migrate` and hand back the
//! state it answers with, then the agent of the new pod's node to send the new pod `restore`
//! with that state. The agent's own API takes these (`POST /v1/events`, root on the node alone);
//! `drain` and `resize` stay the agent's own to send.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paracloud_paci::EventKind;
use paracloud_paci_events::{describe_answer, Answer, HANDOVER_DEADLINE};
use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::capsules::find_pod;

/// The longest a request may wait for a pod to open its event stream.
pub const MAX_LISTEN_WAIT: Duration = Duration::from_secs(60);

/// `POST /v1/events`: an event for a pod, or (without one) whether the pod follows its events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// The pod's uid, or `NAMESPACE/NAME`.
    pub pod: String,
    /// `migrate` or `restore`; none asks only whether the pod follows its events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventKind>,
    /// How long to wait for the pod to open its event stream, in milliseconds (a pod just
    /// started opens it soon after it is ready).
    #[serde(default)]
    pub wait_listening_ms: u64,
}

/// The answer to an [`EventRequest`] the pod took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventAnswer {
    /// Whether the pod follows its events.
    pub listening: bool,
    /// From the event's sending to its acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
    /// The state a pod answered `migrate` with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
}

/// Why an event was not taken; the API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The pod does not follow its events, or it refused the event.
    #[error("{0}")]
    Refused(String),
    /// No answer by the deadline.
    #[error("{0}")]
    NoAnswer(String),
}

/// Sends the request's event to its pod and waits for the answer (for `migrate`, the state).
pub async fn send(
    agent: &Arc<Agent>,
    caller_uid: Option<u32>,
    request: EventRequest,
) -> Result<EventAnswer, HandoverError> {
    let wait = Duration::from_millis(request.wait_listening_ms);
    if wait > MAX_LISTEN_WAIT {
        return Err(HandoverError::BadRequest(format!(
            "wait_listening_ms {} is above {} (a minute): a pod opens its event stream soon after it is ready",
            request.wait_listening_ms,
            MAX_LISTEN_WAIT.as_millis()
        )));
    }
    if let Some(kind) = &request.event {
        if !matches!(kind, EventKind::Migrate { .. } | EventKind::Restore { .. }) {
            return Err(HandoverError::BadRequest(format!(
                "event {} is not one to send on request: only migrate and restore are (the agent sends drain and resize itself)",
                kind.name()
            )));
        }
    }
    let pods = agent.pods();
    let pod = find_pod(&pods, &request.pod).ok_or_else(|| {
        HandoverError::NotFound(format!(
            "no pod {:?} on this node (give its uid or NAMESPACE/NAME; GET /v1/pods lists them)",
            request.pod
        ))
    })?;
    if !pod.wants_paci() {
        return Err(HandoverError::Refused(format!(
            "pod {}/{} has no PaCI socket: render it with PaCI (the installed operator does) to migrate it through PaCI",
            pod.pod.namespace, pod.pod.name
        )));
    }
    let uid = pod.pod.uid.clone();
    let name = format!("{}/{}", pod.pod.namespace, pod.pod.name);
    let listening = agent.events.listening(&uid)
        || (!wait.is_zero() && agent.events.wait_listening(&uid, wait).await);
    let Some(kind) = request.event else {
        return Ok(EventAnswer {
            listening,
            ..EventAnswer::default()
        });
    };
    let what = format!("{} to pod {name}", kind.name());
    let sent = Instant::now();
    let answer = agent.events.send(&uid, kind, HANDOVER_DEADLINE).await;
    let took = sent.elapsed();
    let described = describe_answer(&what, &answer, took);
    tracing::info!("{described} (asked by uid {caller_uid:?})");
    match answer {
        Answer::Acked(ack) => Ok(EventAnswer {
            listening: true,
            took_ms: Some(took.as_millis() as u64),
            state: ack.state,
        }),
        Answer::NoAnswer => Err(HandoverError::NoAnswer(described)),
        Answer::NotListening | Answer::Refused(_) => Err(HandoverError::Refused(described)),
    }
}
