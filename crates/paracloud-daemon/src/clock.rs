//! The daemon's clock. Everything in the daemon that needs the time reads it here or from
//! tokio's clock: wall-clock milliseconds since the epoch, as tokio's monotonic clock moves from
//! the moment the daemon first asked. In a test whose runtime pauses tokio's time, the daemon's
//! time stands still and advances only as the test advances it, so backoffs, deadlines and
//! timeouts are tested in milliseconds, deterministically.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use paracloud_reconcile::Millis;
use tokio::time::Instant;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    static ANCHOR: OnceLock<(Millis, Instant)> = OnceLock::new();
    let (wall, at) = ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis);
        (wall, Instant::now())
    });
    wall + Instant::now().saturating_duration_since(*at).as_millis() as Millis
}
