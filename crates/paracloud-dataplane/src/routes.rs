//! The routes of the stats socket, as types: the data plane's server answers at their paths and
//! the control plane sends them (`paracloud_api::Client` or any [`paracloud_unix_http`] client).

use hyper::body::Incoming;
use hyper::Method;
use paracloud_unix_http::{JsonLines, Route};

use crate::{Snapshot, WatchEvent};

/// `GET /stats`: every counter and histogram now, as JSON.
#[derive(Debug, Clone)]
pub struct GetStats;

impl Route for GetStats {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/stats";
    type Body = ();
    type Answer = Snapshot;
}

/// `GET /metrics`: the same figures as Prometheus text.
#[derive(Debug, Clone)]
pub struct Metrics;

impl Route for Metrics {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/metrics";
    type Body = ();
    type Answer = Incoming;
}

/// `GET /watch`: a stream of [`WatchEvent`]s, one JSON line each: waiting requests at once, a
/// snapshot each second.
#[derive(Debug, Clone)]
pub struct Watch;

impl Route for Watch {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/watch";
    type Body = ();
    type Answer = JsonLines<WatchEvent>;
}
