use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::resource::{ParacloudAppSpec, ServiceScale};

const MANIFEST: &str = r#"
app = "shop"
[services.api]
image = "registry.example/api:1"
ports = [{ port = 8000, protocol = "http" }]
replicas = 2
[services.kv]
image = "registry.example/kv:1"
ports = [7000]
volumes = ["data:/data"]
"#;

fn time(seconds: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + seconds).unwrap())
}

fn app(manifest: &str) -> ParacloudApp {
    let mut app = ParacloudApp::new(
        "shop",
        ParacloudAppSpec {
            manifest: manifest.to_owned(),
            registry: None,
            scale: BTreeMap::new(),
            weights: BTreeMap::new(),
            migrating: BTreeMap::new(),
            directories: Vec::new(),
        },
    );
    app.metadata.namespace = Some("team".into());
    app.metadata.uid = Some("uid-1".into());
    app.metadata.generation = Some(1);
    app.metadata.finalizers = Some(vec![FINALIZER.into()]);
    app
}

/// The cluster after an apply: each object as the API server keeps it, with what it adds
/// (defaults, a uid) and the workloads' status as their controllers write it.
fn applied(objects: &[Object], ready: impl Fn(&str) -> u64) -> Observed {
    let objects = objects
        .iter()
        .map(|o| {
            let mut body = o.body.clone();
            body["metadata"]["uid"] = json!(format!("uid-{}", o.key.name));
            body["metadata"]["resourceVersion"] = json!("42");
            if matches!(o.key.kind.as_str(), "Deployment" | "StatefulSet") {
                body["spec"]["revisionHistoryLimit"] = json!(10);
                body["status"] = json!({ "readyReplicas": ready(&o.key.name), "replicas": 2 });
            }
            Object {
                key: o.key.clone(),
                body,
            }
        })
        .collect();
    Observed {
        objects,
        pods: Vec::new(),
        resize: true,
        paci: false,
        dataplane: None,
    }
}

const AUTOSCALED: &str = r#"
app = "shop"
[autoscale]
entry = "api"
[services.api]
image = "registry.example/api:1"
ports = [{ port = 8000, protocol = "http" }]
replicas = 2
resources = { cpu = 1 }
"#;

/// A running pod of a workload, with its container's CPU limit.
fn pod(workload: &str, n: u32, cpu: &str) -> Object {
    Object::from_body(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{workload}-{n}"),
            "namespace": "team",
            "labels": { "paracloud.dev/app": "shop", "paracloud.dev/workload": workload },
        },
        "spec": { "containers": [{ "name": workload, "resources": { "limits": { "cpu": cpu } } }] },
    }))
    .unwrap()
}

fn condition<'a>(status: &'a ParacloudAppStatus, kind: &str) -> &'a Condition {
    status.conditions.iter().find(|c| c.type_ == kind).unwrap()
}

#[test]
fn a_new_application_gets_its_finalizer_and_all_its_objects_owned_by_it() {
    let mut app = app(MANIFEST);
    app.metadata.finalizers = None;
    let d = reconcile(&app, &Observed::default(), &time(0));
    assert_eq!(d.finalizer, FinalizerStep::Add);
    assert!(d.delete.is_empty());
    let kinds: Vec<String> = d.apply.iter().map(|o| o.key.to_string()).collect();
    for expected in [
        "Deployment team/api",
        "StatefulSet team/kv",
        "Service team/api",
        "NetworkPolicy team/kv",
        "PodDisruptionBudget team/api",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} not in {kinds:?}"
        );
    }
    for object in &d.apply {
        assert_eq!(object.key.namespace.as_deref(), Some("team"));
        assert_eq!(
            object.body["metadata"]["ownerReferences"][0]["uid"],
            "uid-1"
        );
        assert_eq!(
            object.body["metadata"]["ownerReferences"][0]["controller"],
            true
        );
    }
    let status = d.status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.service_count, 2);
    assert_eq!(condition(&status, "Progressing").reason, "Applying");
    assert_eq!(condition(&status, "Ready").status, "False");
    assert_eq!(condition(&status, "Degraded").status, "False");
    assert_eq!(d.notes[0].reason, "Applied");
}

#[test]
fn once_applied_and_ready_nothing_is_applied_again_and_the_application_is_ready() {
    let app = app(MANIFEST);
    let first = reconcile(&app, &Observed::default(), &time(0));
    let observed = applied(&first.apply, |_| 2);
    let second = reconcile(&app, &observed, &time(5));
    assert!(
        second.apply.is_empty(),
        "{:?}",
        second.apply.iter().map(|o| &o.key).collect::<Vec<_>>()
    );
    assert!(second.delete.is_empty());
    assert!(second.notes.is_empty());
    let status = second.status.unwrap();
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "AllReady")
    );
    assert_eq!(condition(&status, "Progressing").reason, "Complete");
    assert_eq!(
        status.services["api"],
        ServiceStatus {
            replicas: 2,
            ready: 2
        }
    );
}

#[test]
fn pods_not_yet_ready_keep_the_application_progressing_and_say_which() {
    let app = app(MANIFEST);
    let first = reconcile(&app, &Observed::default(), &time(0));
    let observed = applied(&first.apply, |name| if name == "api" { 1 } else { 2 });
    let status = reconcile(&app, &observed, &time(5)).status.unwrap();
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ServicesNotReady")
    );
    assert!(ready.message.contains("api 1/2"), "{}", ready.message);
    assert_eq!(condition(&status, "Progressing").reason, "RollingOut");
}

#[test]
fn a_stuck_rollout_is_degraded_with_the_controllers_reason() {
    let app = app(MANIFEST);
    let first = reconcile(&app, &Observed::default(), &time(0));
    let mut observed = applied(&first.apply, |_| 2);
    let api = observed
        .objects
        .iter_mut()
        .find(|o| o.key.kind == "Deployment")
        .unwrap();
    api.body["status"]["conditions"] = json!([{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"api-5d\" has timed out progressing" }]);
    let status = reconcile(&app, &observed, &time(5)).status.unwrap();
    let degraded = condition(&status, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "WorkloadFailed")
    );
    assert!(degraded.message.contains("timed out progressing"));
}

#[test]
fn a_bad_manifest_changes_nothing_running_and_says_where_it_is_wrong() {
    let good = app(MANIFEST);
    let first = reconcile(&good, &Observed::default(), &time(0));
    let observed = applied(&first.apply, |_| 2);
    let ready = reconcile(&good, &observed, &time(1));

    let mut bad = app(
        "app = \"shop\"\n[services.api]\nimage = \"registry.example/api:1\"\nreplicas = \"many\"\n",
    );
    bad.metadata.generation = Some(2);
    bad.status = ready.status;
    let d = reconcile(&bad, &observed, &time(2));
    assert!(
        d.apply.is_empty() && d.delete.is_empty(),
        "a bad manifest touched the cluster"
    );
    let status = d.status.unwrap();
    let degraded = condition(&status, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidManifest")
    );
    assert!(
        degraded.message.contains("replicas"),
        "{}",
        degraded.message
    );
    // What ran still runs, and is still ready.
    assert_eq!(condition(&status, "Ready").status, "True");
    assert_eq!(d.notes[0].kind, "Warning");
    // Said once: the next reconcile of the same bad spec records no second event.
    let mut again = bad.clone();
    again.status = Some(status);
    assert!(reconcile(&again, &observed, &time(3)).notes.is_empty());
}

#[test]
fn a_service_removed_from_the_manifest_has_its_objects_deleted_and_no_other_resources() {
    let app = app(MANIFEST);
    let first = reconcile(&app, &Observed::default(), &time(0));
    let mut observed = applied(&first.apply, |_| 2);
    // Another resource's object with the same labels is not ours to delete.
    let mut foreign = observed.objects[0].clone();
    foreign.key.name = "foreign".into();
    foreign.body["metadata"]["ownerReferences"][0]["uid"] = json!("uid-2");
    observed.objects.push(foreign);

    let smaller = crate::reconcile::tests::app("app = \"shop\"\n[services.api]\nimage = \"registry.example/api:1\"\nports = [{ port = 8000, protocol = \"http\" }]\nreplicas = 2\n");
    let d = reconcile(&smaller, &observed, &time(5));
    let deleted: Vec<String> = d.delete.iter().map(ToString::to_string).collect();
    assert!(
        deleted.contains(&"StatefulSet team/kv".to_owned()),
        "{deleted:?}"
    );
    assert!(
        deleted.contains(&"Service team/kv".to_owned()),
        "{deleted:?}"
    );
    assert!(
        !deleted.iter().any(|k| k.contains("foreign")),
        "{deleted:?}"
    );
    assert!(!deleted.iter().any(|k| k.ends_with("/api")), "{deleted:?}");
    assert_eq!(
        d.notes.iter().find(|n| n.reason == "Pruned").unwrap().kind,
        "Normal"
    );
}

#[test]
fn deletion_removes_the_objects_first_and_the_finalizer_last() {
    let mut app = app(MANIFEST);
    let first = reconcile(&app, &Observed::default(), &time(0));
    let observed = applied(&first.apply, |_| 2);
    app.metadata.deletion_timestamp = Some(time(10));
    let d = reconcile(&app, &observed, &time(10));
    assert_eq!(d.finalizer, FinalizerStep::Keep);
    assert_eq!(d.delete.len(), first.apply.len());
    assert!(d.apply.is_empty() && d.status.is_none());

    let d = reconcile(&app, &Observed::default(), &time(11));
    assert_eq!(d.finalizer, FinalizerStep::Remove);
    assert!(d.delete.is_empty());
}

#[test]
fn the_scale_set_after_the_manifest_wins_and_an_unknown_service_there_is_refused() {
    let mut app = app(MANIFEST);
    app.spec.scale.insert(
        "api".into(),
        ServiceScale {
            replicas: Some(5),
            cpu: Some(1.5),
        },
    );
    let d = reconcile(&app, &Observed::default(), &time(0));
    let api = d.apply.iter().find(|o| o.key.kind == "Deployment").unwrap();
    assert_eq!(api.body["spec"]["replicas"], 5);
    assert_eq!(
        api.body["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "1500m"
    );

    app.spec.scale.insert(
        "nope".into(),
        ServiceScale {
            replicas: Some(1),
            cpu: None,
        },
    );
    let d = reconcile(&app, &Observed::default(), &time(0));
    assert!(d.apply.is_empty());
    assert_eq!(
        condition(d.status.as_ref().unwrap(), "Degraded").reason,
        "UnknownService"
    );
}

#[test]
fn a_condition_keeps_its_transition_time_while_its_status_holds() {
    let mut app = app(MANIFEST);
    let first = reconcile(&app, &Observed::default(), &time(0));
    let observed = applied(&first.apply, |_| 1);
    app.status = reconcile(&app, &observed, &time(5)).status;
    let later = reconcile(&app, &observed, &time(9)).status.unwrap();
    assert_eq!(condition(&later, "Ready").last_transition_time, time(5));
    let observed = applied(&first.apply, |_| 2);
    app.status = Some(later);
    let ready = reconcile(&app, &observed, &time(12)).status.unwrap();
    assert_eq!(condition(&ready, "Ready").last_transition_time, time(12));
}

#[test]
fn contains_ignores_what_the_server_adds_but_not_a_changed_value() {
    let want = json!({ "spec": { "replicas": 2, "ports": [{ "port": 80 }] } });
    assert!(contains(
        &json!({ "spec": { "replicas": 2, "ports": [{ "port": 80, "protocol": "TCP" }], "x": 1 }, "status": {} }),
        &want
    ));
    assert!(!contains(
        &json!({ "spec": { "replicas": 3, "ports": [{ "port": 80 }] } }),
        &want
    ));
    assert!(!contains(
        &json!({ "spec": { "replicas": 2, "ports": [] } }),
        &want
    ));
}

#[test]
fn an_autoscaled_workload_leaves_replicas_to_the_scale_subresource() {
    let mut app = app(AUTOSCALED);
    let first = reconcile(&app, &Observed::default(), &time(0));
    let api = first
        .apply
        .iter()
        .find(|o| o.key.kind == "Deployment")
        .unwrap();
    assert!(
        api.body["spec"].get("replicas").is_none(),
        "{}",
        api.body["spec"]
    );
    // Not created yet: nothing to scale.
    assert!(first.scale.is_empty());

    // Created, the API server defaulted it to one pod: the manifest's two go through /scale.
    let mut observed = applied(&first.apply, |_| 1);
    for o in &mut observed.objects {
        if o.key.kind == "Deployment" {
            o.body["spec"]["replicas"] = json!(1);
        }
    }
    let d = reconcile(&app, &observed, &time(1));
    assert!(
        d.apply.is_empty(),
        "{:?}",
        d.apply.iter().map(|o| &o.key).collect::<Vec<_>>()
    );
    assert_eq!(d.scale.len(), 1);
    assert_eq!(
        (d.scale[0].key.name.as_str(), d.scale[0].replicas),
        ("api", 2)
    );

    // The autoscaler (or `paracloud scale`) writes the resource's scale; it goes the same way.
    app.spec.scale.insert(
        "api".into(),
        ServiceScale {
            replicas: Some(6),
            cpu: None,
        },
    );
    let d = reconcile(&app, &observed, &time(2));
    assert_eq!(d.scale[0].replicas, 6);
    assert!(d
        .notes
        .iter()
        .any(|n| n.reason == "Scaled" && n.message.contains("6 pods")));
}

#[test]
fn cpu_changes_in_place_where_the_cluster_resizes_pods_and_rolls_where_it_cannot() {
    let mut app = app(AUTOSCALED);
    app.spec.scale.insert(
        "api".into(),
        ServiceScale {
            replicas: None,
            cpu: Some(1.5),
        },
    );
    let resizing = Observed {
        resize: true,
        ..Observed::default()
    };
    let first = reconcile(&app, &resizing, &time(0));
    let mut observed = applied(&first.apply, |_| 2);
    observed.pods = vec![
        pod("api", 1, "1"),
        pod("api", 2, "1500m"),
        pod("other", 1, "1"),
    ];
    let d = reconcile(&app, &observed, &time(1));
    // The template keeps the manifest's CPU (no rollout); the one pod not yet at 1.5 is resized.
    let api = first
        .apply
        .iter()
        .find(|o| o.key.kind == "Deployment")
        .unwrap();
    assert_eq!(
        api.body["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "1"
    );
    assert!(d.apply.is_empty());
    assert_eq!(
        d.resize,
        vec![Resize {
            namespace: "team".into(),
            pod: "api-1".into(),
            container: "api".into(),
            cpu: "1500m".into()
        }]
    );

    // A cluster without the resize subresource: the pod template changes, and the pods roll.
    observed.resize = false;
    let d = reconcile(&app, &observed, &time(2));
    assert!(d.resize.is_empty());
    let api = d.apply.iter().find(|o| o.key.kind == "Deployment").unwrap();
    assert_eq!(
        api.body["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "1500m"
    );
}

#[test]
fn a_resource_cannot_reach_the_node_through_the_operator() {
    // A node directory, named as the deploying machine found it.
    let mut app = app("app = \"shop\"\n[services.api]\nimage = \"registry.example/api:1\"\nvolumes = [\"/etc:/host-etc:ro\"]\n");
    app.spec.directories = vec!["/etc".into()];
    let d = reconcile(&app, &Observed::default(), &time(0));
    assert!(
        d.apply.is_empty(),
        "{:?}",
        d.apply.iter().map(|o| &o.key).collect::<Vec<_>>()
    );
    let degraded = condition(d.status.as_ref().unwrap(), "Degraded");
    assert_eq!(degraded.reason, "NotAllowed");
    assert!(
        degraded.message.contains("services.api.volumes: /etc"),
        "{}",
        degraded.message
    );

    // A capability beyond the baseline.
    let app = app_with_caps("[\"SYS_ADMIN\", \"NET_BIND_SERVICE\"]");
    let d = reconcile(&app, &Observed::default(), &time(0));
    assert!(d.apply.is_empty());
    let degraded = condition(d.status.as_ref().unwrap(), "Degraded");
    assert!(
        degraded.message.contains("services.api.cap_add: SYS_ADMIN"),
        "{}",
        degraded.message
    );

    // What the baseline allows is applied.
    let app = app_with_caps("[\"NET_BIND_SERVICE\"]");
    assert!(!reconcile(&app, &Observed::default(), &time(0))
        .apply
        .is_empty());
}

fn app_with_caps(caps: &str) -> ParacloudApp {
    app(&format!(
        "app = \"shop\"\n[services.api]\nimage = \"registry.example/api:1\"\ncap_add = {caps}\n"
    ))
}
