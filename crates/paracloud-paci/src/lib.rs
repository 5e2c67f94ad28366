//! The Paracloud interface (PaCI): what an instance and the platform say to each other over the
//! instance's own Unix socket, as plain data with its checks. No I/O here: the daemon serves these
//! messages, the SDK sends them.
//!
//! Every instance finds its socket at [`SOCKET_PATH`] (also in the [`ENV`] environment variable).
//! The socket speaks HTTP/1.1 with JSON bodies; every path starts with the protocol version
//! ([`VERSION`]). The socket is the identity: each instance sees only its own, so whatever comes
//! through it is about that instance and nothing else.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/whoami` | | [`Whoami`] |
//! | `GET /v1/peers?service=S` | | [`Peers`] (S: own service when left out) |
//! | `GET /v1/peers?service=S&watch=true` | | [`Peers`] as JSON lines, one now and one per change |
//! | `PUT /v1/load` | [`LoadReport`] | [`LoadReport`] as stored |
//! | `PUT /v1/weight` | [`WeightRequest`] | [`WeightAnswer`] |
//! | `PUT /v1/services/{service}/replicas` | [`ReplicasRequest`] | [`ReplicasAnswer`] |
//! | `GET /v1/events` | | [`PlatformEvent`] as JSON lines: those pending, then each new one |
//! | `POST /v1/events/{id}/ack` | [`Ack`] | [`AckAnswer`] |
//!
//! Errors are [`ErrorBody`] with a 4xx status: 400 for a body or query that is not valid, 404 for
//! an unknown path or event, 409 for a request the platform refuses in its current state (bounds).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The protocol version, the first segment of every path.
pub const VERSION: &str = "v1";

/// The paths of PaCI, written once: the daemon's router registers these patterns and the SDK
/// fills them (`{service}`, `{id}` percent-encoded by the transport's one encoder).
pub mod routes {
    pub const WHOAMI: &str = "/v1/whoami";
    /// Query: `service=S` (own service when left out), `watch=true` for a stream of changes.
    pub const PEERS: &str = "/v1/peers";
    pub const LOAD: &str = "/v1/load";
    pub const WEIGHT: &str = "/v1/weight";
    pub const REPLICAS: &str = "/v1/services/{service}/replicas";
    pub const EVENTS: &str = "/v1/events";
    pub const ACK: &str = "/v1/events/{id}/ack";
}
/// Where an instance finds its socket.
pub const SOCKET_PATH: &str = "/run/paracloud/paci.sock";
/// The directory of the socket inside an instance (mounted read-only).
pub const SOCKET_DIR: &str = "/run/paracloud";
/// The socket's file name.
pub const SOCKET_NAME: &str = "paci.sock";
/// The environment variable holding the socket's path.
pub const ENV: &str = "PARACLOUD_PACI";
/// The largest request body the platform reads (a migration's state travels in an ack).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// The most custom figures one load report may carry.
pub const MAX_CUSTOM: usize = 32;
/// The highest weight: an instance's full share.
pub const FULL_WEIGHT: u32 = 100;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// Who the instance is and what it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Whoami {
    pub app: String,
    pub service: String,
    /// The instance's name, such as `api.2`.
    pub instance: String,
    pub index: u32,
    /// The service revision the instance runs (raised by every change of its spec).
    pub revision: u64,
    pub resources: Resources,
    pub addresses: Addresses,
    /// Its current load-balancing weight in percent of its full share.
    pub weight: u32,
    /// The protocol version the platform speaks.
    pub paci: String,
    /// On Kubernetes, the pod the instance is (the node agent answers for it); absent on one
    /// machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

/// A pod's identity on Kubernetes: its namespace, name and uid, and the container that asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The container of the pod whose process asked.
    pub container: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU limit in cores; `None`: unlimited.
    pub cpu: Option<f64>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Process limit.
    pub pids: Option<u64>,
    /// Size of the writable layer in bytes; `None`: not limited.
    #[serde(default)]
    pub disk: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Addresses {
    /// The instance's own address on the application network.
    pub instance: Ipv4Addr,
    /// The service's stable address (balanced over its ready instances).
    pub service: Ipv4Addr,
    /// The ports the service declares.
    pub ports: Vec<u16>,
}

/// The instances of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    pub service: String,
    pub peers: Vec<Peer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub instance: String,
    pub index: u32,
    pub address: Ipv4Addr,
    /// Receiving traffic (running and healthy).
    pub ready: bool,
    /// The state `paracloud ps` shows: starting, running, unready, stopping, ...
    pub state: String,
    pub revision: u64,
}

/// What an instance says about its load; every field is optional, and what is left out is
/// unknown (the platform measures it itself).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadReport {
    /// Requests it is working on.
    #[serde(default)]
    pub in_flight: Option<u32>,
    /// Requests waiting inside it.
    #[serde(default)]
    pub queue: Option<u32>,
    /// Requests per second it can serve with its current resources.
    #[serde(default)]
    pub capacity: Option<f64>,
    /// Figures of its own, by name (letters, digits, `_`, `.`, `-`).
    #[serde(default)]
    pub custom: BTreeMap<String, f64>,
}

impl LoadReport {
    /// Checks the figures; the error says which one is wrong and how to fix it.
    pub fn check(&self) -> Result<(), String> {
        if self.in_flight.is_none()
            && self.queue.is_none()
            && self.capacity.is_none()
            && self.custom.is_empty()
        {
            return Err(
                "the report is empty: give at least one of in_flight, queue, capacity or custom"
                    .into(),
            );
        }
        if let Some(capacity) = self.capacity {
            if !capacity.is_finite() || capacity <= 0.0 {
                return Err(format!(
                    "capacity {capacity} is not a positive number of requests per second; leave it out when unknown"
                ));
            }
        }
        if self.custom.len() > MAX_CUSTOM {
            return Err(format!(
                "custom has {} figures, more than the {MAX_CUSTOM} a report may carry",
                self.custom.len()
            ));
        }
        for (name, value) in &self.custom {
            check_name(name).map_err(|e| format!("custom figure {name:?}: {e}"))?;
            if !value.is_finite() {
                return Err(format!(
                    "custom figure {name}: {value} is not a finite number"
                ));
            }
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a name has 1 to 64 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed in a name (letters, digits, '_', '.', '-')"
        ));
    }
    Ok(())
}

/// A new load-balancing weight for the instance, in percent of its full share (which follows its
/// CPU); `null` returns to the full share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightRequest {
    pub weight: Option<u32>,
}

impl WeightRequest {
    pub fn check(&self) -> Result<u32, String> {
        match self.weight {
            None => Ok(FULL_WEIGHT),
            Some(w) if w <= FULL_WEIGHT => Ok(w),
            Some(w) => Err(format!(
                "weight {w} is more than {FULL_WEIGHT}: it is a percent of the instance's full share (0 takes it out of the picking while others can serve, null returns to the full share)"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightAnswer {
    /// The weight now applied, in percent of the full share.
    pub weight: u32,
}

/// Instances wanted for a service of the instance's application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicasRequest {
    pub replicas: u32,
    /// Why, recorded in the event log.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicasAnswer {
    pub service: String,
    pub replicas: u32,
    /// The bounds the manifest gives the service.
    pub min: u32,
    pub max: u32,
}

/// What a service's instances may be asked to number: the manifest's `autoscale` bounds. A
/// service without them may not be scaled through PaCI.
pub fn check_replicas(
    service: &str,
    asked: u32,
    bounds: Option<(u32, u32)>,
) -> Result<(u32, u32), String> {
    let Some((min, max)) = bounds else {
        return Err(format!(
            "service {service} has no scaling bounds, so its instances cannot be asked for: give it `autoscale = {{ min = 1, max = 4 }}` in the manifest (with an [autoscale] table)"
        ));
    };
    if asked < min || asked > max {
        return Err(format!(
            "{asked} instances of {service} is outside its bounds {min}..={max} (the manifest's `autoscale` for the service); ask for a number within them"
        ));
    }
    Ok((min, max))
}

/// An event the platform sends an instance, to be acknowledged by its deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformEvent {
    pub id: u64,
    /// When the platform goes on without an answer (milliseconds since the epoch).
    pub deadline: Millis,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of platform events, and what happens when the deadline passes without an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The instance leaves the routes and will be stopped: finish what is under way, hand off
    /// connections. Without an answer it gets its stop signal at the deadline.
    Drain { reason: String },
    /// A new instance takes over: put the state to hand over in the ack's `state` (and stop
    /// changing it; requests still arriving should go to `to`). Without an answer the migration
    /// is abandoned: the new instance is removed and this one keeps serving.
    Migrate { to: Target },
    /// The state another instance handed over; load it, then acknowledge. Without an answer the
    /// migration is abandoned as for `migrate`.
    Restore {
        from: String,
        state: serde_json::Value,
    },
    /// The instance's CPU or memory limit changed (resize thread pools). Nothing waits for it.
    Resize {
        cpu: Option<f64>,
        memory: Option<u64>,
    },
    /// Save what must survive a restart (to a volume) now. Without an answer the platform goes on
    /// at the deadline.
    Checkpoint { reason: String },
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Drain { .. } => "drain",
            EventKind::Migrate { .. } => "migrate",
            EventKind::Restore { .. } => "restore",
            EventKind::Resize { .. } => "resize",
            EventKind::Checkpoint { .. } => "checkpoint",
        }
    }
}

/// Where a migrating instance's successor is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub instance: String,
    pub address: Ipv4Addr,
}

/// An instance's answer to an event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// Why it could not do what was asked; the platform then goes on as without an answer.
    #[serde(default)]
    pub error: Option<String>,
    /// For `migrate`: the state handed to the next instance.
    #[serde(default)]
    pub state: Option<serde_json::Value>,
}

impl Ack {
    /// Checks an answer to an event of `kind`.
    pub fn check(&self, kind: &EventKind) -> Result<(), String> {
        match (kind, &self.state, &self.error) {
            (EventKind::Migrate { .. }, None, None) => Err(
                "an answer to migrate carries the state to hand over in `state` (any JSON value), or says why not in `error`"
                    .into(),
            ),
            (EventKind::Migrate { .. }, _, _) => Ok(()),
            (_, Some(_), _) => Err(format!(
                "only an answer to migrate carries `state`; this event is {}",
                kind.name()
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckAnswer {
    pub id: u64,
    /// Milliseconds the answer came before the deadline.
    pub before_deadline_ms: u64,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_load_report_names_what_is_wrong() {
        assert!(LoadReport::default().check().unwrap_err().contains("empty"));
        let bad = LoadReport {
            capacity: Some(-1.0),
            ..LoadReport::default()
        };
        assert!(bad.check().unwrap_err().contains("capacity -1"));
        let bad = LoadReport {
            custom: [("hit rate".to_string(), 0.5)].into(),
            ..LoadReport::default()
        };
        assert!(bad.check().unwrap_err().contains("' ' is not allowed"));
        let good = LoadReport {
            in_flight: Some(3),
            queue: Some(0),
            capacity: Some(250.0),
            custom: [("hit_rate".to_string(), 0.5)].into(),
        };
        assert_eq!(good.check(), Ok(()));
        let unknown = serde_json::from_str::<LoadReport>(r#"{"inflight": 3}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field `inflight`"));
    }

    #[test]
    fn weights_are_percents_and_null_is_full() {
        assert_eq!(WeightRequest { weight: None }.check(), Ok(100));
        assert_eq!(WeightRequest { weight: Some(0) }.check(), Ok(0));
        assert!(WeightRequest { weight: Some(101) }
            .check()
            .unwrap_err()
            .contains("more than 100"));
    }

    #[test]
    fn replicas_stay_within_the_manifest_bounds() {
        assert_eq!(check_replicas("api", 3, Some((1, 4))), Ok((1, 4)));
        assert!(check_replicas("api", 5, Some((1, 4)))
            .unwrap_err()
            .contains("outside its bounds 1..=4"));
        assert!(check_replicas("api", 2, None)
            .unwrap_err()
            .contains("no scaling bounds"));
    }

    #[test]
    fn a_migrate_answer_carries_state_and_only_it() {
        let migrate = EventKind::Migrate {
            to: Target {
                instance: "kv.2".into(),
                address: Ipv4Addr::new(10, 0, 0, 17),
            },
        };
        assert!(Ack::default().check(&migrate).is_err());
        let with_state = Ack {
            state: Some(serde_json::json!({"a": "1"})),
            error: None,
        };
        assert_eq!(with_state.check(&migrate), Ok(()));
        let drain = EventKind::Drain {
            reason: "scale-in".into(),
        };
        assert!(with_state.check(&drain).unwrap_err().contains("drain"));
        assert_eq!(Ack::default().check(&drain), Ok(()));
    }

    #[test]
    fn events_are_flat_json_with_their_kind() {
        let event = PlatformEvent {
            id: 7,
            deadline: 1000,
            kind: EventKind::Resize {
                cpu: Some(1.5),
                memory: None,
            },
        };
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(
            text,
            r#"{"id":7,"deadline":1000,"kind":"resize","cpu":1.5,"memory":null}"#
        );
        assert_eq!(serde_json::from_str::<PlatformEvent>(&text).unwrap(), event);
    }

    proptest! {
        #[test]
        fn any_report_is_checked_without_panic(
            in_flight in proptest::option::of(any::<u32>()),
            capacity in proptest::option::of(any::<f64>()),
            custom in proptest::collection::btree_map(".{0,8}", any::<f64>(), 0..40),
        ) {
            let report = LoadReport { in_flight, queue: None, capacity, custom };
            if report.check().is_ok() {
                prop_assert!(report.capacity.is_none_or(|c| c.is_finite() && c > 0.0));
                prop_assert!(report.custom.len() <= MAX_CUSTOM);
            }
        }
    }
}
