//! A pod's migration on a cluster, make before break (docs/kubernetes.md, "Migration"), as
//! plain data: which pods may move and how, the successor among a service's pods, and the
//! changes that add it, keep it out of the data plane's picking until it holds the state
//! (`spec.migrating`) and take the old pod away. The ReplicaSet makes the successor when the
//! service's `spec.scale` grows by one, and removes the pod of the lowest
//! `controller.kubernetes.io/pod-deletion-cost` when it shrinks back.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use paracloud_manifest::{Manifest, MigrateMethod};
use serde_json::{json, Value};

use crate::names::{APP_LABEL, REVISION_LABEL};
use crate::ParacloudApp;

/// The annotation a ReplicaSet reads to choose which of its ready pods goes first when it
/// shrinks: the lowest cost goes first.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// A migration that may go ahead.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The service, as the manifest names it.
    pub service: String,
    pub via: MigrateMethod,
    /// The service's pods now (the resource's scale, else the manifest's).
    pub replicas: u32,
}

/// Whether a pod's `Ready` condition is true.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Checks that `pod` of the application `app` may be migrated `via` (the service's `migrate`
/// when `None`): a ready pod of a service's own ReplicaSet, by a method that works across nodes.
pub fn plan(
    app: &ParacloudApp,
    manifest: &Manifest,
    pod: &Pod,
    via: Option<MigrateMethod>,
) -> Result<Plan, String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if labels.get(APP_LABEL) != Some(&manifest.app) {
        return Err(format!(
            "pod {name} is not one of {}'s: `paracloud --kubernetes ps` lists them",
            manifest.app
        ));
    }
    let Some((service, spec)) = crate::names::service_of(manifest, &labels) else {
        return Err(format!(
            "pod {name} runs no service of {}'s manifest",
            manifest.app
        ));
    };
    if let Some(revision) = labels.get(REVISION_LABEL) {
        return Err(format!(
            "pod {name} runs revision {revision} of {service}: a revision's pods are not migrated on a cluster; migrate a pod of the service itself"
        ));
    }
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.kind.as_str());
    match owner {
        Some("ReplicaSet") => {}
        Some("StatefulSet") => {
            return Err(format!(
                "pod {name} is a StatefulSet's: it keeps its name and volume, so it is not moved beside itself; `kubectl delete pod {name}` restarts it in place"
            ))
        }
        Some(kind) => {
            return Err(format!(
                "pod {name} is made by a {kind}, not a ReplicaSet: only a long-running service's pods are migrated"
            ))
        }
        None => {
            return Err(format!(
                "pod {name} has no controller to make its successor: only the pods of a service's Deployment are migrated"
            ))
        }
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(format!("pod {name} is being deleted already"));
    }
    if !is_ready(pod) {
        return Err(format!(
            "pod {name} is not ready: only a serving pod is migrated (`paracloud --kubernetes ps` shows its state)"
        ));
    }
    let via = via.unwrap_or(spec.migrate);
    if app.spec.migrating.contains_key(service) {
        return Err(format!(
            "a migration of {service} is under way (the resource's spec.migrating): wait for it to end; if it was interrupted, end it with {} and check the service's pods",
            end_command(app, service)
        ));
    }
    if via == MigrateMethod::Criu {
        return Err(
            "--via criu does not work on a cluster: a CRIU image does not move between nodes; use --via paci (the application hands its state over) or --via restart"
                .into(),
        );
    }
    let replicas = crate::autoscale::current(app, manifest, service)
        .map(|c| c.replicas)
        .unwrap_or(spec.replicas);
    if replicas >= paracloud_manifest::MAX_INSTANCES {
        return Err(format!(
            "{service} runs {replicas} pods, the most a service may: its successor would be one more; scale it down first"
        ));
    }
    Ok(Plan {
        service: service.clone(),
        via,
        replicas,
    })
}

/// The pod of `pods` that was not among `before` and is not being deleted: the successor the
/// ReplicaSet made (the first by name, should there be several).
pub fn successor<'a>(before: &BTreeSet<String>, pods: &'a [Pod]) -> Option<&'a Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.metadata
                .name
                .as_ref()
                .is_some_and(|n| !before.contains(n))
        })
        .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
}

/// The merge patch of the resource that sets `service`'s pods to `replicas`.
pub fn scale_patch(service: &str, replicas: u32) -> Value {
    json!({ "spec": { "scale": { service: { "replicas": replicas } } } })
}

/// The command that ends a migration of `service` by hand, should its CLI have stopped
/// mid-way: the mark removed from the resource.
pub fn end_command(app: &ParacloudApp, service: &str) -> String {
    format!(
        "`kubectl patch paracloudapp {} -n {} --type merge -p '{}'`",
        app.metadata.name.clone().unwrap_or_default(),
        app.metadata.namespace.clone().unwrap_or_default(),
        serving_patch(service, None)
    )
}

/// The merge patch of the resource that marks `service` as under a migration, with the pods
/// that take requests meanwhile (the data plane gives the others none), or (`None`) ends it.
pub fn serving_patch(service: &str, serving: Option<&[String]>) -> Value {
    json!({ "spec": { "migrating": { service: serving } } })
}

/// The merge patch of a pod that makes it the first its ReplicaSet removes.
pub fn first_to_go() -> Value {
    json!({ "metadata": { "annotations": { DELETION_COST: i32::MIN.to_string() } } })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
app = "shop"
[services.web]
image = "web:1"
replicas = 2
migrate = "paci"
[services.api]
image = "api:1"
"#;

    fn app(scale: Value) -> ParacloudApp {
        serde_json::from_value(json!({
            "apiVersion": "paracloud.dev/v1alpha1", "kind": "ParacloudApp",
            "metadata": { "name": "shop", "namespace": "ns" },
            "spec": { "manifest": MANIFEST, "scale": scale },
        }))
        .unwrap()
    }

    fn pod(name: &str, service: &str, owner: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": { "paracloud.dev/app": "shop", "paracloud.dev/service": service },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": owner, "name": "x",
                                      "uid": "u", "controller": true }],
            },
            "status": { "phase": "Running",
                        "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] },
        }))
        .unwrap()
    }

    fn manifest() -> Manifest {
        crate::reconcile::manifest(&app(json!({}))).unwrap()
    }

    #[test]
    fn a_ready_pod_of_a_replicaset_moves_by_its_services_method_with_its_scale() {
        let plan = plan(
            &app(json!({})),
            &manifest(),
            &pod("web-a", "web", "ReplicaSet", true),
            None,
        );
        assert_eq!(
            plan,
            Ok(Plan {
                service: "web".into(),
                via: MigrateMethod::Paci,
                replicas: 2
            })
        );
        let scaled = app(json!({ "web": { "replicas": 5 } }));
        let api = plan_of(&scaled, &pod("api-a", "api", "ReplicaSet", true), None);
        assert_eq!(
            api.map(|p| (p.via, p.replicas)),
            Ok((MigrateMethod::Restart, 1))
        );
        let web = plan_of(
            &scaled,
            &pod("web-a", "web", "ReplicaSet", true),
            Some(MigrateMethod::Restart),
        );
        assert_eq!(
            web.map(|p| (p.via, p.replicas)),
            Ok((MigrateMethod::Restart, 5))
        );
    }

    fn plan_of(app: &ParacloudApp, pod: &Pod, via: Option<MigrateMethod>) -> Result<Plan, String> {
        plan(app, &manifest(), pod, via)
    }

    #[test]
    fn pods_that_cannot_move_beside_themselves_are_refused_with_the_way_out() {
        let app = app(json!({}));
        let mut other = pod("db-0", "web", "ReplicaSet", true);
        other
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(APP_LABEL.into(), "blog".into());
        let mut revision = pod("web-r", "web", "ReplicaSet", true);
        revision
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(REVISION_LABEL.into(), "2".into());
        let mut deleted = pod("web-d", "web", "ReplicaSet", true);
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let mut orphan = pod("web-o", "web", "ReplicaSet", true);
        orphan.metadata.owner_references = None;
        for (pod, via, expected) in [
            (other, None, "pod db-0 is not one of shop's"),
            (
                pod("x-a", "cache", "ReplicaSet", true),
                None,
                "pod x-a runs no service of shop's manifest",
            ),
            (revision, None, "pod web-r runs revision 2 of web"),
            (
                pod("web-0", "web", "StatefulSet", true),
                None,
                "`kubectl delete pod web-0` restarts it in place",
            ),
            (
                pod("web-j", "web", "Job", true),
                None,
                "made by a Job, not a ReplicaSet",
            ),
            (orphan, None, "pod web-o has no controller"),
            (deleted, None, "pod web-d is being deleted already"),
            (
                pod("web-u", "web", "ReplicaSet", false),
                None,
                "pod web-u is not ready",
            ),
            (
                pod("web-a", "web", "ReplicaSet", true),
                Some(MigrateMethod::Criu),
                "--via criu does not work on a cluster",
            ),
        ] {
            let refused = plan_of(&app, &pod, via).unwrap_err();
            assert!(refused.contains(expected), "{refused}");
        }
        let mut busy = self::app(json!({}));
        busy.spec
            .migrating
            .insert("web".into(), vec!["web-b".into()]);
        let refused = plan_of(&busy, &pod("web-a", "web", "ReplicaSet", true), None).unwrap_err();
        assert!(
            refused.contains("a migration of web is under way"),
            "{refused}"
        );
        assert!(
            refused.contains(r#"-p '{"spec":{"migrating":{"web":null}}}'"#),
            "{refused}"
        );
        let full = self::app(json!({ "web": { "replicas": paracloud_manifest::MAX_INSTANCES } }));
        let refused = plan_of(&full, &pod("web-a", "web", "ReplicaSet", true), None).unwrap_err();
        assert!(refused.contains("the most a service may"), "{refused}");
    }

    #[test]
    fn the_successor_is_the_new_pod_that_is_not_going() {
        let before: BTreeSet<String> = ["web-a".to_owned(), "web-b".to_owned()].into();
        let mut going = pod("web-c", "web", "ReplicaSet", false);
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let mut pods = vec![pod("web-a", "web", "ReplicaSet", true), going];
        assert!(successor(&before, &pods).is_none());
        pods.push(pod("web-x", "web", "ReplicaSet", false));
        pods.push(pod("web-n", "web", "ReplicaSet", false));
        assert_eq!(
            successor(&before, &pods).and_then(|p| p.metadata.name.clone()),
            Some("web-n".into())
        );
    }

    #[test]
    fn the_patches_set_scale_the_serving_pods_and_the_lowest_deletion_cost() {
        assert_eq!(
            scale_patch("web", 3),
            json!({ "spec": { "scale": { "web": { "replicas": 3 } } } })
        );
        assert_eq!(
            serving_patch("web", Some(&["web-a".to_owned(), "web-z".to_owned()])),
            json!({ "spec": { "migrating": { "web": ["web-a", "web-z"] } } })
        );
        assert_eq!(
            serving_patch("web", None),
            json!({ "spec": { "migrating": { "web": null } } })
        );
        assert_eq!(
            first_to_go(),
            json!({ "metadata": { "annotations": {
                "controller.kubernetes.io/pod-deletion-cost": "-2147483648" } } })
        );
    }
}
