//! What every accepted connection and UDP flow holds of the data plane.

use tokio::sync::{mpsc, watch};

use crate::http::Upstream;

/// What every accepted connection holds: `in_flight` keeps the drain's channel open until the
/// connection ends, `upstream` is the shared pooled HTTP client, `draining` says when to wind
/// down.
#[derive(Clone)]
pub(crate) struct Shared {
    /// Never sent on: held for the channel to close when the last holder goes.
    _in_flight: mpsc::Sender<()>,
    pub(crate) upstream: Upstream,
    pub(crate) draining: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn new(
        in_flight: mpsc::Sender<()>,
        upstream: Upstream,
        draining: watch::Receiver<bool>,
    ) -> Self {
        Self {
            _in_flight: in_flight,
            upstream,
            draining,
        }
    }
}
