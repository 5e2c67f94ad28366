//! The drain signal as the tasks of connections and listeners wait for it.

use tokio::sync::watch;

/// Completes once `draining` is set; never when its sender went away without setting it.
pub(crate) async fn until_draining(draining: &mut watch::Receiver<bool>) {
    if draining.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}
