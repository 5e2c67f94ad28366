//! The drafts of services: each service as checked on its own, with the source positions the
//! checks that span services (dependencies, published ports, the autoscaler's bounds) point at.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::model::Service;
use crate::reader::Span;

/// A checked service plus the source positions the whole-application checks point at.
pub(crate) struct Draft {
    pub(crate) service: Service,
    /// Whether the table has a `health` key (even a broken one), so that a `healthy` dependency on
    /// it is not reported twice.
    pub(crate) has_health: bool,
    /// Each dependency with the span and field of its entry.
    pub(crate) depends_spans: BTreeMap<String, (Span, String)>,
    /// Each published host address with where it is written.
    pub(crate) publishes: Vec<Published>,
    /// Its `autoscale` bounds as written, checked against the application's `[autoscale]` later.
    pub(crate) autoscale: Option<ScalingDraft>,
    /// Whether `replicas` is written (else an autoscaled service starts within its bounds).
    pub(crate) replicas_written: bool,
    /// Each network it names with where it is written.
    pub(crate) network_spans: BTreeMap<String, Span>,
}

/// A host address a port is published on, and where the manifest says so.
pub(crate) struct Published {
    pub(crate) addr: SocketAddr,
    /// A UDP address clashes only with UDP ones, a TCP or HTTP one only with TCP or HTTP ones.
    pub(crate) udp: bool,
    pub(crate) span: Span,
    pub(crate) field: String,
}

/// A service's `autoscale` table as written: each bound with where it is written.
pub(crate) struct ScalingDraft {
    pub(crate) span: Span,
    pub(crate) field: String,
    pub(crate) min: Option<(u32, Span)>,
    pub(crate) max: Option<(u32, Span)>,
    pub(crate) cpu_min: Option<(f64, Span)>,
    pub(crate) cpu_max: Option<(f64, Span)>,
}
