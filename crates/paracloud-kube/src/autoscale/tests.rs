use serde_json::json;

use super::*;
use crate::resource::{ParacloudAppSpec, PodLoad, ServiceScale};

const MANIFEST: &str = r#"
app = "shop"
[autoscale]
policy = "hpa"
entry = "api"
[services.api]
image = "registry.example/api:1"
ports = [{ port = 8000, protocol = "http" }]
replicas = 2
resources = { cpu = 0.5 }
autoscale = { min = 1, max = 4, cpu_min = 0.25, cpu_max = 1 }
[services.api.revisions.canary]
weight = 10
[services.kv]
image = "registry.example/kv:1"
ports = [7000]
"#;

fn app(scale: BTreeMap<String, ServiceScale>) -> ParacloudApp {
    let mut app = ParacloudApp::new(
        "shop",
        ParacloudAppSpec {
            manifest: MANIFEST.to_owned(),
            registry: None,
            scale,
            weights: BTreeMap::new(),
            migrating: BTreeMap::new(),
            directories: Vec::new(),
        },
    );
    app.metadata.namespace = Some("team".into());
    app
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

/// A pod as the kubelet reports it: started `started` seconds into the test's time, its
/// container asking `cpu` in its spec and, when given, running with `applied` after a resize.
fn pod(name: &str, labels: Value, ready: bool, cpu: &str, applied: Option<&str>) -> Pod {
    let mut status = json!({
        "startTime": at(0).to_string(),
        "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
    });
    if let Some(applied) = applied {
        status["containerStatuses"] = json!([{
            "name": "api", "image": "registry.example/api:1", "imageID": "", "ready": ready,
            "restartCount": 0, "resources": { "limits": { "cpu": applied } },
        }]);
    }
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": "team", "labels": labels,
                      "creationTimestamp": at(-30).to_string() },
        "spec": { "containers": [{ "name": "api", "resources": { "limits": { "cpu": cpu } } }] },
        "status": status,
    }))
    .unwrap()
}

#[test]
fn pods_become_the_facts_of_their_service_with_the_cpu_the_kubelet_applied() {
    let manifest = crate::reconcile::manifest(&app(BTreeMap::new())).unwrap();
    let config = paracloud_manifest::scaling_config(&manifest).unwrap();
    let api = json!({ SERVICE_LABEL: "api" });
    let mut deleting = pod("api-gone", api.clone(), true, "500m", None);
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(5)));
    let pods = vec![
        pod("api-b", api.clone(), true, "500m", Some("750m")),
        pod("api-a", api.clone(), false, "500m", None),
        pod(
            "api-canary-x",
            json!({ SERVICE_LABEL: "api", REVISION_LABEL: "canary" }),
            true,
            "500m",
            None,
        ),
        pod("kv-0", json!({ SERVICE_LABEL: "kv" }), true, "1", None),
        pod("stranger", json!({ "app": "other" }), true, "1", None),
        deleting,
    ];
    let usage = BTreeMap::from([("api-b".to_owned(), 0.6), ("kv-0".to_owned(), 0.9)]);
    let reported = Reported {
        in_flight: Some(3),
        queue: None,
        capacity: Some(120.0),
    };
    let reports = BTreeMap::from([("api-b".to_owned(), reported.clone())]);
    let facts = instance_facts(&pods, &usage, &reports, at(20), &config);
    assert_eq!(
        facts,
        [
            InstanceFacts {
                service: "api".into(),
                name: "api-a".into(),
                ready: false,
                age_ms: 20_000,
                cpu_used: 0.0,
                cpu_limit: 0.5,
                reported: None,
                queries_per_second: None,
            },
            InstanceFacts {
                service: "api".into(),
                name: "api-b".into(),
                ready: true,
                age_ms: 20_000,
                cpu_used: 0.6,
                cpu_limit: 0.75,
                reported: Some(reported),
                queries_per_second: None,
            },
            // Every service of an autoscaled application is the policy's to scale.
            InstanceFacts {
                service: "kv".into(),
                name: "kv-0".into(),
                ready: true,
                age_ms: 20_000,
                cpu_used: 0.9,
                cpu_limit: 1.0,
                reported: None,
                queries_per_second: None,
            },
        ]
    );
}

#[test]
fn only_recent_load_reports_on_the_status_reach_the_autoscaler() {
    let mut app = app(BTreeMap::new());
    let load = |at: String, capacity: f64| PodLoad {
        in_flight: Some(1),
        queue: Some(0),
        capacity: Some(capacity),
        at,
    };
    app.status = Some(crate::resource::ParacloudAppStatus {
        load: BTreeMap::from([
            ("api-a".to_owned(), load(at(15).to_string(), 50.0)),
            // Older than the 5 s a report lasts.
            ("api-b".to_owned(), load(at(14).to_string(), 60.0)),
            // From a node whose clock is ahead: as just sent.
            ("api-c".to_owned(), load(at(22).to_string(), 70.0)),
            ("api-d".to_owned(), load("yesterday".into(), 80.0)),
        ]),
        ..Default::default()
    });
    let fresh = fresh_reports(&app, at(20));
    let capacities: Vec<(&str, Option<f64>)> = fresh
        .iter()
        .map(|(pod, r)| (pod.as_str(), r.capacity))
        .collect();
    assert_eq!(capacities, [("api-a", Some(50.0)), ("api-c", Some(70.0))]);
    assert_eq!(fresh["api-a"].in_flight, Some(1));
    app.status = None;
    assert!(fresh_reports(&app, at(20)).is_empty());
}

#[test]
fn a_pod_being_deleted_is_drained_within_what_is_left_of_its_prestop_sleep() {
    let mut pod = pod("web-a", json!({}), true, "1", None);
    pod.spec.as_mut().unwrap().containers[0].lifecycle = serde_json::from_value(json!({
        "preStop": { "sleep": { "seconds": 5 } }
    }))
    .unwrap();
    let left = |pod: &Pod, now: i64| crate::paci::drain_left(pod, "api", at(now)).as_millis();
    assert_eq!(
        left(&pod, 10),
        1_000,
        "not being deleted: at least a second"
    );
    // Deleted at 10 s with a grace period of 15 s: the window runs from 10 s to 15 s.
    pod.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(25)));
    pod.metadata.deletion_grace_period_seconds = Some(15);
    assert_eq!(left(&pod, 10), 5_000);
    assert_eq!(left(&pod, 12), 3_000);
    assert_eq!(
        left(&pod, 20),
        1_000,
        "past the window: still told, at once"
    );
    assert_eq!(
        crate::paci::drain_left(&pod, "other", at(10)).as_millis(),
        1_000,
        "a container without a window"
    );
}

#[test]
fn a_nodes_reports_are_applied_as_its_own_part_of_the_status() {
    let report = paracloud_paci::LoadReport {
        in_flight: Some(2),
        queue: None,
        capacity: Some(40.5),
        custom: BTreeMap::from([("warm".to_owned(), 1.0)]),
    };
    let loads = BTreeMap::from([("web-a".to_owned(), crate::paci::pod_load(&report, at(3)))]);
    assert_eq!(
        crate::paci::load_apply("shop", &loads),
        json!({
            "apiVersion": "paracloud.dev/v1alpha1",
            "kind": "ParacloudApp",
            "metadata": { "name": "shop" },
            "status": { "load": { "web-a": {
                "inFlight": 2, "capacity": 40.5, "at": at(3).to_string(),
            } } },
        })
    );
}

#[test]
fn metrics_servers_usage_is_summed_over_a_pods_containers() {
    let usage = pod_usage(&[
        json!({ "metadata": { "name": "api-a" }, "containers": [
            { "name": "api", "usage": { "cpu": "250000000n", "memory": "10Mi" } },
            { "name": "side", "usage": { "cpu": "5m" } },
        ]}),
        json!({ "metadata": { "name": "api-b" }, "containers": [] }),
        json!({ "containers": [] }),
    ]);
    assert_eq!(usage.len(), 2);
    assert!((usage["api-a"] - 0.255).abs() < 1e-9, "{usage:?}");
    assert_eq!(usage["api-b"], 0.0);
}

fn decision(instances: u32, cpu: f64) -> Decision {
    Decision {
        service: "api".into(),
        instances,
        cpu,
        reason: "CPU use 90% of the request, target 70%".into(),
    }
}

#[test]
fn decisions_are_measured_against_the_resources_scale_and_become_its_patch_and_event() {
    let scaled = app(BTreeMap::from([(
        "api".to_owned(),
        ServiceScale {
            replicas: Some(3),
            cpu: None,
        },
    )]));
    let manifest = crate::reconcile::manifest(&scaled).unwrap();
    let config = paracloud_manifest::scaling_config(&manifest).unwrap();
    assert_eq!(
        current(&scaled, &manifest, "api"),
        Some(Current {
            replicas: 3,
            cpu: Some(0.5)
        })
    );
    // Three pods already: no change. Beyond the bounds: kept within them.
    assert!(changes(&scaled, &manifest, &config, vec![decision(3, 0.5)], None).is_empty());
    let change = changes(&scaled, &manifest, &config, vec![decision(9, 8.0)], None);
    assert_eq!(
        change,
        [ServiceChange {
            service: "api".into(),
            replicas: Some((3, 4)),
            cpu: Some((Some(0.5), 1.0)),
            reason: decision(0, 0.0).reason,
        }]
    );
    assert_eq!(
        change[0].patch(),
        json!({ "spec": { "scale": { "api": { "replicas": 4, "cpu": 1.0 } } } })
    );
    let note = change[0].note("hpa");
    assert_eq!((note.kind, note.reason), ("Normal", AUTOSCALED));
    assert_eq!(
        note.message,
        "api: autoscaler hpa: pods 3 -> 4, cpu per pod 0.5 -> 1: CPU use 90% of the request, target 70%"
    );
    // A service the application does not have is left alone.
    let ghost = Decision {
        service: "ghost".into(),
        ..decision(5, 1.0)
    };
    assert!(changes(&scaled, &manifest, &config, vec![ghost], None).is_empty());
    // A service under a migration is the migration's until it ends.
    let mut migrating = scaled.clone();
    migrating
        .spec
        .migrating
        .insert("api".into(), vec!["api-a".into()]);
    assert!(changes(&migrating, &manifest, &config, vec![decision(9, 8.0)], None).is_empty());
}

#[test]
fn a_service_with_requests_under_way_is_not_taken_to_zero() {
    let source = MANIFEST.replace(
        "autoscale = { min = 1, max = 4",
        "scale_to_zero = \"1m\"\nautoscale = { min = 0, max = 4",
    );
    let mut zero = app(BTreeMap::new());
    zero.spec.manifest = source;
    let manifest = crate::reconcile::manifest(&zero).unwrap();
    let config = paracloud_manifest::scaling_config(&manifest).unwrap();
    let quiet = changes(&zero, &manifest, &config, vec![decision(0, f64::NAN)], None);
    assert_eq!(quiet[0].replicas, Some((2, 0)));
    let mut busy = Observation::default();
    busy.services.insert(
        "api".into(),
        paracloud_autoscale::ServiceSample {
            in_flight: 1,
            ..Default::default()
        },
    );
    assert!(changes(
        &zero,
        &manifest,
        &config,
        vec![decision(0, f64::NAN)],
        Some(&busy)
    )
    .is_empty());
}
