//! The operator against a stand-in API server that follows the real API's semantics (no cluster
//! can run here): an application comes up, is scaled and resized, survives a user's edit and a
//! lost watch history, and goes without leaving anything; one operator leads at a time; and the
//! requests it makes are exactly what its ClusterRole and Role grant.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use paracloud_kube::ParacloudApp;
use paracloud_kube_standin::{Gvr, ObjectRef, Options, StandIn};
use serde_json::{json, Value};

/// Every kind the operator makes: a Deployment with its env ConfigMap, Service, disruption
/// budget and network policy; a StatefulSet; a Job; all autoscaled, so that pod counts go
/// through the scale subresources.
const EVERY_KIND: &str = r#"
app = "every"
[autoscale]
entry = "api"
[services.api]
image = "registry.example/api:1"
env = { MODE = "fast" }
ports = [{ port = 8000, protocol = "http" }]
replicas = 2
resources = { cpu = 1 }
[services.kv]
image = "registry.example/kv:1"
ports = [7000]
volumes = ["data:/data"]
replicas = 2
[services.init]
image = "registry.example/api:1"
command = ["migrate"]
restart = "no"
"#;

const PLAIN: &str = r#"
app = "plain"
[services.api]
image = "registry.example/api:1"
ports = [{ port = 8000, protocol = "http" }]
replicas = 2
resources = { cpu = 1 }
"#;

/// A stand-in cluster with the custom resource's definition and the namespaces installed.
async fn cluster(options: Options) -> StandIn {
    let standin = StandIn::start(options).await.unwrap();
    let client = standin.client();
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(
            &PostParams::default(),
            &paracloud_kube::resource::definition(),
        )
        .await
        .unwrap();
    for ns in ["paracloud-system", "team"] {
        let namespace: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": ns } })).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
    }
    standin
}

/// An operator on a runtime of its own, ended (all its tasks) when the handle is dropped.
struct Operator {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<String>>>,
}

impl Operator {
    fn start(standin: &StandIn, identity: &str) -> Operator {
        let client_url = standin.url();
        let identity = identity.to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let config = kube::Config::new(client_url.parse().unwrap());
                let client = kube::Client::try_from(config).unwrap();
                let options = paracloud_operator::Options {
                    lease: paracloud_operator::LeaseOptions {
                        namespace: "paracloud-system".into(),
                        name: "paracloud-operator".into(),
                        identity,
                        duration: Duration::from_secs(3),
                    },
                    health: None,
                    resync: Duration::from_secs(1),
                    follow: None,
                    paci: true,
                    // Each application with its data plane, as `k8s install` runs the operator.
                    dataplane: Some(paracloud_kube::dataplane::DataplaneOptions {
                        image: "registry.example/paracloud:1".into(),
                    }),
                };
                tokio::select! {
                    result = paracloud_operator::run(client, options) => result.err().map(|e| e.to_string()),
                    _ = stopped => None,
                }
            })
        });
        Operator {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Waits for the operator to end by itself; its error, if any.
    fn ended(mut self, within: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        let thread = self.thread.take().unwrap();
        while !thread.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the operator did not end"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        thread.join().unwrap()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn app_ref(name: &str) -> ObjectRef {
    ObjectRef::new(
        Gvr::new("paracloud.dev", "v1alpha1", "paracloudapps"),
        "team",
        name,
    )
}

/// The user's `kubectl apply` of a ParacloudApp (not one of the operator's requests).
fn deploy(standin: &StandIn, name: &str, manifest: &str) {
    standin
        .apply_as(
            "kubectl",
            &app_ref(name),
            json!({
                "apiVersion": "paracloud.dev/v1alpha1",
                "kind": "ParacloudApp",
                "metadata": { "name": name, "namespace": "team" },
                "spec": { "manifest": manifest },
            }),
        )
        .unwrap();
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn get(standin: &StandIn, group: &str, plural: &str, name: &str) -> Option<Value> {
    let version = if group == "paracloud.dev" {
        "v1alpha1"
    } else {
        "v1"
    };
    standin.object(group, version, plural, "team", name)
}

fn condition(app: &Value, kind: &str) -> Option<(String, String)> {
    app["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"].as_str().unwrap().to_owned(),
                c["reason"].as_str().unwrap().to_owned(),
            )
        })
}

/// A pod of a workload, as its ReplicaSet would make it.
fn make_pod(standin: &StandIn, app: &str, workload: &str, n: u32, cpu: &str) {
    let name = format!("{workload}-{n}");
    standin
        .apply_as(
            "replicaset-controller",
            &ObjectRef::new(Gvr::new("", "v1", "pods"), "team", &name),
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": "team",
                    "labels": { "paracloud.dev/app": app, "paracloud.dev/workload": workload },
                },
                "spec": { "containers": [{
                    "name": workload,
                    "image": "registry.example/api:1",
                    "resources": { "limits": { "cpu": cpu }, "requests": { "cpu": cpu } },
                }] },
            }),
        )
        .unwrap();
    standin.set_pod_ready("team", &name, true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_comes_up_scales_resizes_and_goes_with_exactly_the_requests_its_roles_grant()
{
    let standin = cluster(Options::default()).await;
    standin.clear_requests();
    let _operator = Operator::start(&standin, "operator-1");
    deploy(&standin, "every", EVERY_KIND);

    // Applied server-side under the operator's field manager, owned by the resource.
    let api = eventually("the api Deployment", || {
        get(&standin, "apps", "deployments", "api")
    })
    .await;
    assert_eq!(
        api["metadata"]["ownerReferences"][0]["kind"],
        "ParacloudApp"
    );
    let managers: Vec<&Value> = api["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert!(
        managers
            .iter()
            .any(|m| m["manager"] == "paracloud" && m["operation"] == "Apply"),
        "{managers:?}"
    );
    for (group, plural, name) in [
        ("", "services", "api"),
        ("", "configmaps", "api-env"),
        ("apps", "statefulsets", "kv"),
        ("batch", "jobs", "init"),
        ("policy", "poddisruptionbudgets", "api"),
        ("networking.k8s.io", "networkpolicies", "kv"),
    ] {
        eventually(&format!("{plural}/{name}"), || {
            get(&standin, group, plural, name)
        })
        .await;
    }
    // The finalizer is on before anything is made.
    let app = get(&standin, "paracloud.dev", "paracloudapps", "every").unwrap();
    assert_eq!(app["metadata"]["finalizers"][0], "paracloud.dev/cleanup");

    // Autoscaled: created without replicas (the API server made one), then scaled to the
    // manifest's two through the scale subresource.
    for (group, plural, name) in [
        ("apps", "deployments", "api"),
        ("apps", "statefulsets", "kv"),
    ] {
        eventually(&format!("{name} at 2 replicas"), || {
            get(&standin, group, plural, name).filter(|o| o["spec"]["replicas"] == 2)
        })
        .await;
    }
    let app = get(&standin, "paracloud.dev", "paracloudapps", "every").unwrap();
    assert_eq!(condition(&app, "Ready").unwrap().0, "False");

    // The data plane runs beside the application, and its Services lead to it.
    let role = eventually("the data plane's Role", || {
        get(
            &standin,
            "rbac.authorization.k8s.io",
            "roles",
            "every-dataplane",
        )
    })
    .await;
    assert_eq!(role["rules"][0]["resources"][0], "endpointslices");
    let service = get(&standin, "", "services", "api").unwrap();
    assert_eq!(
        service["spec"]["selector"]["paracloud.dev/component"],
        "dataplane"
    );
    assert!(get(&standin, "", "services", "api-pods").is_some());

    // A node's agent writes its pods' load reports on the status; the operator's own status
    // writes leave them.
    let load = json!({ "capacity": 30.0, "at": "2026-01-01T00:00:00Z" });
    standin
        .apply_as(
            "paracloud-node-agent/node-1",
            &app_ref("every").subresource("status"),
            json!({
                "apiVersion": "paracloud.dev/v1alpha1", "kind": "ParacloudApp",
                "metadata": { "name": "every", "namespace": "team" },
                "status": { "load": { "api-x": load } },
            }),
        )
        .unwrap();

    // The cluster's controllers report the pods ready: so does the resource.
    standin.set_deployment_ready("team", "api").unwrap();
    standin
        .set_deployment_ready("team", "every-dataplane")
        .unwrap();
    standin
        .set_status(
            "kube-controller-manager",
            &Gvr::new("apps", "v1", "statefulsets"),
            "team",
            "kv",
            json!({ "replicas": 2, "readyReplicas": 2 }),
        )
        .unwrap();
    standin
        .set_status(
            "kube-controller-manager",
            &Gvr::new("batch", "v1", "jobs"),
            "team",
            "init",
            json!({ "succeeded": 1 }),
        )
        .unwrap();
    let app = eventually("the application Ready", || {
        get(&standin, "paracloud.dev", "paracloudapps", "every")
            .filter(|a| condition(a, "Ready") == Some(("True".into(), "AllReady".into())))
    })
    .await;
    assert_eq!(app["status"]["services"]["api"]["ready"], 2);
    assert_eq!(condition(&app, "Progressing").unwrap().1, "Complete");
    assert_eq!(app["status"]["load"]["api-x"], load);
    // ... nor take them for a change of their own to write back (each write is a watch event,
    // and another pass).
    let before = standin.requests().len();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let rewrites = standin.requests()[before..]
        .iter()
        .filter(|r| r.subresource.as_deref() == Some("status") && r.verb.as_str() == "patch")
        .count();
    assert_eq!(rewrites, 0, "the status is written again and again");

    // CPU in place: the resource's scale asks 1.5 cores; the running pod is resized, the
    // template stays (no rollout).
    make_pod(&standin, "every", "api", 1, "1");
    standin
        .merge_patch_as(
            "kubectl",
            &app_ref("every"),
            json!({ "spec": { "scale": { "api": { "cpu": 1.5, "replicas": 3 } } } }),
        )
        .unwrap();
    eventually("the pod resized in place", || {
        standin
            .object("", "v1", "pods", "team", "api-1")
            .filter(|p| p["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1500m")
    })
    .await;
    eventually("api at 3 replicas", || {
        get(&standin, "apps", "deployments", "api").filter(|o| o["spec"]["replicas"] == 3)
    })
    .await;
    let api = get(&standin, "apps", "deployments", "api").unwrap();
    assert_eq!(
        api["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "1"
    );

    // What it did is on the resource's Events.
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(standin.client(), "team")
        .list(&Default::default())
        .await
        .unwrap();
    let reasons: BTreeSet<String> = events
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons.contains("Applied") && reasons.contains("Scaled"),
        "{reasons:?}"
    );

    // Deleted by the user: the objects go first, then the finalizer, then the resource.
    Api::<ParacloudApp>::namespaced(standin.client(), "team")
        .delete("every", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the resource gone", || {
        get(&standin, "paracloud.dev", "paracloudapps", "every")
            .is_none()
            .then_some(())
    })
    .await;
    for (group, plural, name) in [
        ("apps", "deployments", "api"),
        ("apps", "statefulsets", "kv"),
        ("batch", "jobs", "init"),
        ("", "services", "api"),
        ("", "configmaps", "api-env"),
        ("policy", "poddisruptionbudgets", "kv"),
        ("networking.k8s.io", "networkpolicies", "api"),
        ("apps", "deployments", "every-dataplane"),
        ("", "serviceaccounts", "every-dataplane"),
        ("rbac.authorization.k8s.io", "roles", "every-dataplane"),
        (
            "rbac.authorization.k8s.io",
            "rolebindings",
            "every-dataplane",
        ),
    ] {
        assert!(
            get(&standin, group, plural, name).is_none(),
            "{plural}/{name} left behind"
        );
    }

    // Wait for a lease renewal, then compare what was asked with what the roles grant. This
    // test's own requests (listing the Events, deleting the resource as its user) are not the
    // operator's.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let used: BTreeSet<(String, String, String)> = standin
        .requests()
        .into_iter()
        .filter(|r| {
            !(r.resource == "paracloudapps"
                && r.subresource.is_none()
                && r.verb.as_str() == "delete")
        })
        .filter(|r| !(r.resource == "events" && r.verb.as_str() == "list"))
        .map(|r| r.rbac())
        .collect();
    let granted: BTreeSet<(String, String, String)> =
        paracloud_kube::access::operator_permissions()
            .into_iter()
            .map(|p| p.triple())
            .collect();
    // The autoscaler's read of metrics-server follows a data plane, which this test runs
    // without: the cluster data plane's autoscaling test checks it.
    let unused: Vec<_> = granted
        .difference(&used)
        .filter(|(group, resource, verb)| {
            (group.as_str(), resource.as_str(), verb.as_str()) != ("metrics.k8s.io", "pods", "list")
        })
        .collect();
    let ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(
        unused.is_empty() && ungranted.is_empty(),
        "granted but never used: {unused:?}\nused but not granted: {ungranted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_in_place_resize_cpu_changes_roll_the_pods_instead() {
    let standin = cluster(Options {
        pod_resize: false,
        ..Options::default()
    })
    .await;
    let _operator = Operator::start(&standin, "operator-1");
    deploy(&standin, "plain", PLAIN);
    eventually("the api Deployment", || {
        get(&standin, "apps", "deployments", "api")
    })
    .await;
    make_pod(&standin, "plain", "api", 1, "1");
    standin
        .merge_patch_as(
            "kubectl",
            &app_ref("plain"),
            json!({ "spec": { "scale": { "api": { "cpu": 2 } } } }),
        )
        .unwrap();
    eventually("the pod template at 2 CPU", || {
        get(&standin, "apps", "deployments", "api").filter(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "2"
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_edit_of_an_owned_field_is_taken_back_and_a_lost_watch_history_is_survived() {
    let standin = cluster(Options::default()).await;
    let _operator = Operator::start(&standin, "operator-1");
    deploy(&standin, "plain", PLAIN);
    eventually("the api Deployment", || {
        get(&standin, "apps", "deployments", "api")
    })
    .await;

    // `kubectl scale`-like edit by another manager, forced: the operator's next apply forces
    // the manifest's count back, since it owns that field.
    standin
        .force_apply_as(
            "kubectl",
            &ObjectRef::new(Gvr::new("apps", "v1", "deployments"), "team", "api"),
            json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "api", "namespace": "team" }, "spec": { "replicas": 7 } }),
        )
        .unwrap();
    eventually("replicas taken back to 2", || {
        get(&standin, "apps", "deployments", "api").filter(|d| d["spec"]["replicas"] == 2)
    })
    .await;

    // The history the watches would resume from is gone (etcd compacted): they answer 410,
    // the operator lists again, and still sees the next change.
    standin.compact();
    standin
        .merge_patch_as(
            "kubectl",
            &app_ref("plain"),
            json!({ "spec": { "scale": { "api": { "replicas": 4 } } } }),
        )
        .unwrap();
    eventually("api at 4 replicas after the compaction", || {
        get(&standin, "apps", "deployments", "api").filter(|d| d["spec"]["replicas"] == 4)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operator_leads_at_a_time_and_another_takes_over_when_its_lease_runs_out() {
    let standin = cluster(Options::default()).await;
    let first = Operator::start(&standin, "operator-1");
    let lease = || {
        standin.object(
            "coordination.k8s.io",
            "v1",
            "leases",
            "paracloud-system",
            "paracloud-operator",
        )
    };
    eventually("operator-1 holding the lease", || {
        lease().filter(|l| l["spec"]["holderIdentity"] == "operator-1")
    })
    .await;
    let second = Operator::start(&standin, "operator-2");
    deploy(&standin, "plain", PLAIN);
    eventually("the api Deployment", || {
        get(&standin, "apps", "deployments", "api")
    })
    .await;
    // operator-2 waits: the lease stays operator-1's while it renews.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(lease().unwrap()["spec"]["holderIdentity"], "operator-1");

    // operator-1 stops renewing (its process ended); after the lease's 3 s, operator-2 takes
    // it and reconciles a new application.
    drop(first);
    eventually("operator-2 holding the lease", || {
        lease().filter(|l| l["spec"]["holderIdentity"] == "operator-2")
    })
    .await;
    deploy(
        &standin,
        "other",
        &PLAIN
            .replace("app = \"plain\"", "app = \"other\"")
            .replace("services.api", "services.web"),
    );
    eventually("the other application's Deployment", || {
        get(&standin, "apps", "deployments", "web")
    })
    .await;

    // A leader whose lease is taken from it stops acting.
    let mut taken = lease().unwrap();
    taken["spec"]["holderIdentity"] = json!("operator-3");
    taken["spec"]["renewTime"] = json!("2999-01-01T00:00:00.000000Z");
    standin
        .force_apply_as(
            "kubectl",
            &ObjectRef::new(Gvr::new("coordination.k8s.io", "v1", "leases"), "paracloud-system", "paracloud-operator"),
            json!({ "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": { "name": "paracloud-operator", "namespace": "paracloud-system" }, "spec": taken["spec"] }),
        )
        .unwrap();
    let error = second
        .ended(Duration::from_secs(15))
        .expect("the operator ended with an error");
    assert!(error.contains("lost the lease"), "{error}");
}
