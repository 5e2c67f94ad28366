//! The autoscaler in the cluster: for an application with an `[autoscale]` table, at each
//! snapshot its data plane sends (once a second), one observation of its services (the data
//! plane's figures, its pods, and metrics-server's CPU use), its policy's decisions, and those
//! that change something written to the resource's `spec.scale`, each an Event with the
//! policy's reason. The reconcile carries them out: the scale subresource for pods, in-place
//! resize for CPU.
//!
//! What to decide is pure and shared with the daemon: the policies (`paracloud_autoscale`), the
//! observation (`paracloud_dataplane::observe`), and the pods and changes
//! (`paracloud_kube::autoscale`).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use paracloud_autoscale::{History, Millis, Policy, PolicyKind};
use paracloud_dataplane::observe::{observation, Interval};
use paracloud_dataplane::Snapshot;
use paracloud_kube::autoscale::{changes, fresh_reports, instance_facts, pod_usage};
use paracloud_kube::names::APP_LABEL;
use paracloud_kube::reconcile::Note;
use paracloud_kube::ParacloudApp;

/// Snapshots further apart than this are not one second: the next observation starts over.
const MAX_INTERVAL_MS: Millis = 5_000;

/// metrics-server's resource: each pod's CPU and memory use over its last window.
fn pod_metrics() -> ApiResource {
    ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    }
}

/// One application's policy and what it has seen.
#[derive(Default)]
pub(crate) struct Autoscaler {
    policy: Option<(PolicyKind, Box<dyn Policy + Send>)>,
    history: History,
    /// The data plane's last snapshot and when it came.
    previous: Option<(Millis, Snapshot)>,
    /// Whether metrics-server answered last time (its absence is said once).
    metrics: Option<bool>,
}

impl Autoscaler {
    /// Takes in the data plane's `snapshot` of `app` as it is now: observes the second since the
    /// last one, asks the policy, and writes what changes. An application without `[autoscale]`
    /// (any longer) is left alone.
    pub(crate) async fn step(
        &mut self,
        client: &Client,
        app: &ParacloudApp,
        identity: &str,
        snapshot: Snapshot,
    ) -> Result<(), String> {
        let now = Timestamp::now();
        let now_ms = u64::try_from(now.as_millisecond()).unwrap_or(0);
        let interval = self
            .previous
            .take()
            .map(|(at, previous)| (now_ms.saturating_sub(at), previous))
            .filter(|(elapsed, _)| (1..=MAX_INTERVAL_MS).contains(elapsed));
        let result = match interval {
            Some((elapsed_ms, previous)) => {
                let interval = Interval {
                    previous: &previous,
                    current: &snapshot,
                    elapsed_ms,
                    at: now_ms,
                };
                self.decide(client, app, identity, now, Some(interval))
                    .await
            }
            None => self.decide(client, app, identity, now, None).await,
        };
        self.previous = Some((now_ms, snapshot));
        result
    }

    /// Follows the policy the manifest names, and over `interval` (none for the first
    /// snapshot) observes, decides and writes the changes.
    async fn decide(
        &mut self,
        client: &Client,
        app: &ParacloudApp,
        identity: &str,
        now: Timestamp,
        interval: Option<Interval<'_>>,
    ) -> Result<(), String> {
        let manifest = paracloud_kube::reconcile::manifest(app).map_err(|e| e.to_string())?;
        let (Some(kind), Some(config)) = (
            manifest.autoscale.as_ref().map(|a| a.policy),
            paracloud_manifest::scaling_config(&manifest),
        ) else {
            self.policy = None;
            return Ok(());
        };
        if self.policy.as_ref().is_none_or(|(k, _)| *k != kind) {
            self.policy = Some((kind, kind.build()));
            let note = Note {
                kind: "Normal",
                reason: "AutoscalerStarted",
                message: format!(
                    "autoscaler {} follows {}: SLO p{} under {} ms at {}",
                    kind.name(),
                    app.name_any(),
                    (config.slo.percentile * 100.0).round(),
                    config.slo.latency_ms,
                    config.entry
                ),
            };
            crate::cluster::record(client, identity, app, &note)
                .await
                .map_err(|e| e.to_string())?;
        }
        let Some(interval) = interval else {
            return Ok(());
        };
        let namespace = app.namespace().unwrap_or_default();
        let selector = ListParams::default().labels(&format!("{APP_LABEL}={}", app.name_any()));
        let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
            .list(&selector)
            .await
            .map_err(|e| format!("cannot list the pods: {e}"))?;
        let usage = self.usage(client, &namespace, &selector).await;
        // The pods' own reports (PaCI `load`), as their nodes' agents wrote them on the status.
        let reports = fresh_reports(app, now);
        let facts = instance_facts(&pods.items, &usage, &reports, now, &config);
        let services: Vec<&str> = config.services.keys().map(String::as_str).collect();
        self.history
            .push(observation(&manifest, &services, interval, &facts));
        let Some((_, policy)) = self.policy.as_mut() else {
            return Ok(());
        };
        let decisions = policy.decide(interval.at, &self.history, &config);
        let apps: Api<ParacloudApp> = Api::namespaced(client.clone(), &namespace);
        for change in changes(app, &manifest, &config, decisions, self.history.latest()) {
            apps.patch(
                &app.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&change.patch()),
            )
            .await
            .map_err(|e| format!("cannot scale {}: {e}", change.service))?;
            let note = change.note(kind.name());
            tracing::info!(app = %app.name_any(), "{}", note.message);
            crate::cluster::record(client, identity, app, &note)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Each pod's CPU use from metrics-server; none where it does not run (the policies then
    /// go by the data plane's figures alone).
    async fn usage(
        &mut self,
        client: &Client,
        namespace: &str,
        selector: &ListParams,
    ) -> std::collections::BTreeMap<String, f64> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &pod_metrics());
        match api.list(selector).await {
            Ok(list) => {
                self.metrics = Some(true);
                let values: Vec<serde_json::Value> = list
                    .items
                    .iter()
                    .filter_map(|m| serde_json::to_value(m).ok())
                    .collect();
                pod_usage(&values)
            }
            Err(e) => {
                if self.metrics != Some(false) {
                    tracing::warn!(
                        namespace,
                        "no CPU use from metrics-server (metrics.k8s.io): {e}; autoscaling on the data plane's figures alone"
                    );
                }
                self.metrics = Some(false);
                Default::default()
            }
        }
    }
}
