//! Leader election through a `coordination.k8s.io/v1` Lease, as Kubernetes' own controllers do:
//! the holder renews it; another takes it only once it has expired, and a write made on a stale
//! read is refused by its resourceVersion (409), so two never lead at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

#[derive(Debug, Clone)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// This operator's name in the lease: its pod's.
    pub identity: String,
    /// How long a lease holds without renewal.
    pub duration: Duration,
}

pub(crate) struct Elector {
    api: Api<Lease>,
    options: LeaseOptions,
    lost: Arc<AtomicBool>,
}

impl Elector {
    pub(crate) fn new(client: Client, options: LeaseOptions) -> Elector {
        Elector {
            api: Api::namespaced(client, &options.namespace),
            options,
            lost: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Waits until this operator holds the lease.
    pub(crate) async fn acquire(&self) -> anyhow::Result<()> {
        loop {
            match self.try_hold().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => tracing::warn!("lease {}: {e}", self.options.name),
            }
            tokio::time::sleep(self.options.duration / 3).await;
        }
    }

    /// Renews the lease in the background; the receiver completes when it could not be renewed
    /// in time, or another took it.
    pub(crate) fn keep(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let elector = Elector {
            api: self.api.clone(),
            options: self.options.clone(),
            lost: self.lost.clone(),
        };
        tokio::spawn(async move {
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(elector.options.duration / 3).await;
                match elector.try_hold().await {
                    Ok(true) => last = tokio::time::Instant::now(),
                    Ok(false) => break,
                    Err(e) if last.elapsed() < elector.options.duration => {
                        tracing::warn!(
                            "lease {}: renewal failed, retrying: {e}",
                            elector.options.name
                        )
                    }
                    Err(_) => break,
                }
            }
            elector.lost.store(true, Ordering::SeqCst);
            let _ = tx.send(());
        });
        rx
    }

    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Takes or renews the lease; `false` while another holds it.
    async fn try_hold(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = i32::try_from(self.options.duration.as_secs()).unwrap_or(15);
        let Some(mut lease) = self.api.get_opt(&self.options.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.options.name.clone()),
                    namespace: Some(self.options.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.options.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let mine = spec.holder_identity.as_deref() == Some(self.options.identity.as_str());
        let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
            let held = u64::try_from(spec.lease_duration_seconds.unwrap_or(seconds)).unwrap_or(15);
            renewed.0 + Duration::from_secs(held) < now
        });
        if !mine && !expired {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(self.options.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds);
        // Replaced with the resourceVersion read: a concurrent taker makes this a 409.
        match self
            .api
            .replace(&self.options.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
