//! The Paracloud operator: watches `ParacloudApp` resources and runs each application in its
//! namespace. What to do is decided by `paracloud_kube::reconcile` on what this crate observes;
//! this crate only reads the cluster and carries the decision out: server-side apply under its
//! own field manager, pruning, the scale and resize subresources, the finalizer, the status and
//! Events. One operator acts at a time, by a Lease (`lease`).

mod autoscale;
mod cluster;
pub mod dataplane;
mod follow;
mod lease;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};
use paracloud_kube::dataplane::DataplaneOptions;
use paracloud_kube::ParacloudApp;

pub use cluster::Error;
pub use follow::FollowOptions;
pub use lease::LeaseOptions;

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Lease that elects the one acting operator.
    pub lease: LeaseOptions,
    /// Where `/healthz` answers, for the kubelet's probe.
    pub health: Option<SocketAddr>,
    /// How often every application is looked at again, besides on changes.
    pub resync: Duration,
    /// Whether Paracloud's node agent runs on the nodes (pods then get their PaCI socket).
    pub paci: bool,
    /// Where each application's data plane serves its stats, to scale services to zero and
    /// back and to run the applications' autoscalers; `None`: not followed.
    pub follow: Option<FollowOptions>,
    /// Each application's data plane, run beside it; `None`: Services select the pods.
    pub dataplane: Option<DataplaneOptions>,
}

/// What every reconcile shares.
pub(crate) struct Context {
    pub(crate) client: Client,
    /// Whether the cluster has the pods' resize subresource; learnt at the first refusal.
    pub(crate) resize: AtomicBool,
    /// Who records the Events: the operator's pod.
    pub(crate) identity: String,
    pub(crate) resync: Duration,
    pub(crate) paci: bool,
    pub(crate) dataplane: Option<DataplaneOptions>,
}

/// Runs until the process is told to stop or loses its lease (the Deployment then starts it
/// again, as a follower).
pub async fn run(client: Client, options: Options) -> Result<()> {
    if let Some(addr) = options.health {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for /healthz"))?;
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let lease = lease::Elector::new(client.clone(), options.lease.clone());
    lease.acquire().await?;
    tracing::info!(identity = %options.lease.identity, "leading: reconciling ParacloudApps");
    let lost = lease.keep();

    let follower = options.follow.clone().map(|follow| {
        tokio::spawn(follow::follow_all(
            client.clone(),
            follow,
            options.lease.identity.clone(),
        ))
    });
    let context = Arc::new(Context {
        client: client.clone(),
        resize: AtomicBool::new(true),
        identity: options.lease.identity.clone(),
        resync: options.resync,
        paci: options.paci,
        dataplane: options.dataplane.clone(),
    });
    let owned = || watcher::Config::default().labels("app.kubernetes.io/managed-by=paracloud");
    let controller = Controller::new(
        Api::<ParacloudApp>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Deployment>::all(client.clone()), owned())
    .owns(Api::<StatefulSet>::all(client.clone()), owned())
    .owns(Api::<Job>::all(client.clone()), owned())
    .owns(Api::<Service>::all(client.clone()), owned())
    .owns(Api::<ConfigMap>::all(client.clone()), owned())
    .owns(Api::<PodDisruptionBudget>::all(client.clone()), owned())
    .owns(Api::<NetworkPolicy>::all(client.clone()), owned())
    .owns(Api::<ServiceAccount>::all(client.clone()), owned())
    .owns(Api::<Role>::all(client.clone()), owned())
    .owns(Api::<RoleBinding>::all(client.clone()), owned())
    .graceful_shutdown_on(async move {
        let _ = lost.await;
    })
    .shutdown_on_signal()
    .run(reconcile, error_policy, context)
    .for_each(|result| async move {
        match result {
            Ok((app, _)) => tracing::debug!(%app, "reconciled"),
            Err(e) => tracing::warn!("reconcile failed: {e}"),
        }
    });
    controller.await;
    if let Some(follower) = follower {
        follower.abort();
    }
    if lease.lost() {
        anyhow::bail!(
            "lost the lease {}: another operator leads now",
            options.lease.name
        );
    }
    Ok(())
}

async fn reconcile(app: Arc<ParacloudApp>, context: Arc<Context>) -> Result<Action, Error> {
    let resize = context.resize.load(Ordering::Relaxed);
    let observed = cluster::observe(
        &context.client,
        &app,
        resize,
        context.paci,
        context.dataplane.clone(),
    )
    .await?;
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let decision = paracloud_kube::reconcile::reconcile(&app, &observed, &now);
    match cluster::carry_out(&context, &app, &decision).await {
        Err(Error::NoResize) => {
            // An older cluster: CPU goes through the pod template instead, from the next pass.
            context.resize.store(false, Ordering::Relaxed);
            tracing::info!(
                "the cluster has no pods/resize subresource: CPU changes roll pods instead"
            );
            Ok(Action::requeue(Duration::from_millis(100)))
        }
        Err(e) => Err(e),
        Ok(()) => Ok(if decision.apply.is_empty() && decision.delete.is_empty() {
            Action::requeue(context.resync)
        } else {
            Action::requeue(Duration::from_secs(1))
        }),
    }
}

fn error_policy(app: Arc<ParacloudApp>, error: &Error, _context: Arc<Context>) -> Action {
    tracing::warn!(app = ?app.metadata.name, "reconcile failed: {error}");
    Action::requeue(Duration::from_secs(2))
}
