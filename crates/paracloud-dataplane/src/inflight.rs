//! The guard that counts an HTTP request in flight at its listener and backend, shared by both HTTP paths.

use std::sync::Arc;

use crate::forward::{BackendState, ListenerState};

/// Counts a request in flight at its listener (and backend, once one answers) until dropped,
/// which is when the response body has been sent or abandoned.
pub(crate) struct InFlight {
    pub(crate) listener: Arc<ListenerState>,
    pub(crate) backend: Option<Arc<BackendState>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.listener.counters.request_done();
        if let Some(backend) = &self.backend {
            backend.counters.request_done();
        }
    }
}
