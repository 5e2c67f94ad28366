//! In-memory traffic counters per listener and per backend, and their serializable snapshot.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Live counters, updated with relaxed atomics from the connection tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) failed_connects: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts one more active connection until the guard is dropped.
    pub(crate) fn open(&self) -> ActiveGuard<'_> {
        Self::add(&self.active, 1);
        ActiveGuard(&self.active)
    }

    pub(crate) fn read(&self) -> CounterValues {
        CounterValues {
            accepted: Self::get(&self.accepted),
            active: Self::get(&self.active),
            failed_connects: Self::get(&self.failed_connects),
            bytes_in: Self::get(&self.bytes_in),
            bytes_out: Self::get(&self.bytes_out),
        }
    }
}

/// Decrements an `active` counter when dropped, so every exit path of a connection counts.
pub(crate) struct ActiveGuard<'a>(&'a AtomicU64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counter values at one moment. `bytes_in` flows from clients to backends, `bytes_out` back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterValues {
    /// Connections accepted (listener) or successfully connected (backend).
    pub accepted: u64,
    pub active: u64,
    pub failed_connects: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Counters of every listener currently configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub listeners: Vec<ListenerSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSnapshot {
    pub name: String,
    pub bind: SocketAddr,
    /// False while the address could not be bound (retried on the next reload).
    pub bound: bool,
    #[serde(flatten)]
    pub counters: CounterValues,
    pub backends: Vec<BackendSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSnapshot {
    pub id: String,
    pub addr: SocketAddr,
    #[serde(flatten)]
    pub counters: CounterValues,
}

impl Snapshot {
    /// The listener bound to `bind`, if configured.
    pub fn listener(&self, bind: SocketAddr) -> Option<&ListenerSnapshot> {
        self.listeners.iter().find(|l| l.bind == bind)
    }
}

impl ListenerSnapshot {
    /// The backend with instance name `id`, if in the current list.
    pub fn backend(&self, id: &str) -> Option<&BackendSnapshot> {
        self.backends.iter().find(|b| b.id == id)
    }
}
