//! Locks of the daemon's in-memory state.

use std::sync::{Mutex, MutexGuard};

/// Takes `m`. Every critical section of the daemon only moves plain values, so a lock poisoned
/// by a panic elsewhere still holds consistent data: it is taken all the same.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
