//! The reconcile planner: a pure function from (desired, observed, now) to a plan of actions.
//!
//! The daemon gathers what it wants (applications and their services) and what it sees
//! (instances and their states), calls [`plan`], and executes the returned actions through its
//! driver. Nothing here does I/O or reads a clock: `now` is passed in, in milliseconds since the
//! Unix epoch, so the same code is stepped by tests with any timeline.

mod model;
mod planner;

pub use model::*;
pub use planner::{
    plan, restart_delay, restarts_after_exit, FAILOVER_AFTER_RESTARTS, STABLE_RUN_MS,
};
