//! The stand-in through the real kube-rs client: what the operator will send, answered as a real
//! API server answers it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube::ResourceExt;
use paracloud_kube::{ParacloudApp, ParacloudAppSpec, ParacloudAppStatus};
use paracloud_kube_standin::{ObjectRef, Options, StandIn, Verb};
use serde_json::{json, Value};

async fn standin() -> StandIn {
    StandIn::start(Options::default()).await.unwrap()
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn config_map(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
        "data": {"k": "v"},
    }))
    .unwrap()
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "shop:1"}]},
            },
        },
    }))
    .unwrap()
}

fn pod(name: &str, cpu: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "shop"}},
        "spec": {"containers": [{
            "name": "app", "image": "shop:1",
            "resources": {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}},
        }]},
    }))
    .unwrap()
}

fn app(name: &str) -> ParacloudApp {
    ParacloudApp::new(
        name,
        ParacloudAppSpec {
            manifest: "[app]\nname = \"shop\"\n".into(),
            registry: None,
            scale: BTreeMap::new(),
            weights: BTreeMap::new(),
            migrating: BTreeMap::new(),
            directories: Vec::new(),
        },
    )
}

async fn install_crd(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(
        &PostParams::default(),
        &paracloud_kube::resource::definition(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn objects_get_their_metadata_and_names_are_unique() {
    let standin = standin().await;
    let maps: Api<ConfigMap> = Api::namespaced(standin.client(), "default");
    let created = maps
        .create(&PostParams::default(), &config_map("a", &[]))
        .await
        .unwrap();
    assert!(created.uid().is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let rv: u64 = created.resource_version().unwrap().parse().unwrap();
    assert_eq!(rv, standin.resource_version());

    let again = api_error(
        maps.create(&PostParams::default(), &config_map("a", &[]))
            .await,
    );
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(again.message, "configmaps \"a\" already exists");

    let second = maps
        .create(&PostParams::default(), &config_map("b", &[]))
        .await
        .unwrap();
    assert!(second.resource_version().unwrap().parse::<u64>().unwrap() > rv);
    assert_ne!(second.uid(), created.uid());

    let missing = api_error(maps.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    let elsewhere: Api<ConfigMap> = Api::namespaced(standin.client(), "nowhere");
    let no_namespace = api_error(
        elsewhere
            .create(&PostParams::default(), &config_map("a", &[]))
            .await,
    );
    assert_eq!(
        (no_namespace.code, no_namespace.message.as_str()),
        (404, "namespaces \"nowhere\" not found")
    );

    let stored = standin
        .object("", "v1", "configmaps", "default", "a")
        .unwrap();
    assert_eq!(stored["data"]["k"], "v");
    assert_eq!(stored["kind"], "ConfigMap");
}

#[tokio::test]
async fn an_unknown_resource_is_404_with_a_status() {
    let standin = standin().await;
    let apps: Api<ParacloudApp> = Api::namespaced(standin.client(), "default");
    let error = api_error(apps.list(&ListParams::default()).await);
    assert_eq!((error.code, error.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        error.message,
        "the server could not find the requested resource"
    );
}

#[tokio::test]
async fn a_replace_with_a_stale_resource_version_conflicts() {
    let standin = standin().await;
    let leases: Api<Lease> = Api::namespaced(standin.client(), "default");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "paracloud-operator"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    let first = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut taken = first.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("paracloud-operator", &PostParams::default(), &taken)
        .await
        .unwrap();
    // The other candidate still holds the first version.
    let mut stale = first.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let conflict = api_error(
        leases
            .replace("paracloud-operator", &PostParams::default(), &stale)
            .await,
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert!(
        conflict.message.contains("the object has been modified"),
        "{}",
        conflict.message
    );
    assert_eq!(
        leases
            .get("paracloud-operator")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("b")
    );
}

#[tokio::test]
async fn generation_moves_with_the_spec_only() {
    let standin = standin().await;
    let deployments: Api<Deployment> = Api::namespaced(standin.client(), "default");
    let created = deployments
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let pp = PatchParams::default();
    let labelled = deployments
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    let scaled = deployments
        .patch("web", &pp, &Patch::Merge(json!({"spec": {"replicas": 3}})))
        .await
        .unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));
    let status = deployments
        .patch_status(
            "web",
            &pp,
            &Patch::Merge(json!({"status": {"readyReplicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(status.metadata.generation, Some(2));
    assert_eq!(status.status.unwrap().ready_replicas, Some(3));
    // The main resource ignores a status in a replace, the status subresource all but the status.
    let mut replaced = deployments.get("web").await.unwrap();
    replaced.status.as_mut().unwrap().ready_replicas = Some(0);
    replaced.spec.as_mut().unwrap().replicas = Some(4);
    let replaced = deployments
        .replace("web", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(replaced.status.as_ref().unwrap().ready_replicas, Some(3));
    assert_eq!(replaced.metadata.generation, Some(3));
    let mut only_status = replaced.clone();
    only_status.spec.as_mut().unwrap().replicas = Some(9);
    only_status.status.as_mut().unwrap().ready_replicas = Some(4);
    let after = deployments
        .replace_status("web", &PostParams::default(), &only_status)
        .await
        .unwrap();
    assert_eq!(after.spec.unwrap().replicas, Some(4));
    assert_eq!(after.status.unwrap().ready_replicas, Some(4));
    // A write that changes nothing writes nothing.
    let same = deployments
        .patch("web", &pp, &Patch::Merge(json!({"spec": {"replicas": 4}})))
        .await
        .unwrap();
    assert_eq!(same.resource_version(), after.metadata.resource_version);
}

#[tokio::test]
async fn lists_select_by_label_and_namespace() {
    let standin = standin().await;
    let client = standin.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let default: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let shop: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    default
        .create(
            &PostParams::default(),
            &config_map("a", &[("app", "shop"), ("tier", "web")]),
        )
        .await
        .unwrap();
    shop.create(&PostParams::default(), &config_map("b", &[("app", "shop")]))
        .await
        .unwrap();
    shop.create(
        &PostParams::default(),
        &config_map("c", &[("app", "other")]),
    )
    .await
    .unwrap();

    let names = |list: kube::core::ObjectList<ConfigMap>| {
        list.items.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    };
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        names(
            all.list(&ListParams::default().labels("app=shop"))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            shop.list(&ListParams::default().labels("app=shop"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().labels("app!=shop"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().labels("tier,app in (shop)"))
                .await
                .unwrap()
        ),
        ["a"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().fields("metadata.name=c"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    let page = all.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(page.clone()), ["a", "b"]);
    let rest = all
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(rest), ["c"]);
    let listed = namespaces.list(&ListParams::default()).await.unwrap();
    assert!(listed.items.iter().any(|n| n.name_any() == "kube-system"));
}

#[tokio::test]
async fn patches_in_each_format() {
    let standin = standin().await;
    let maps: Api<ConfigMap> = Api::namespaced(standin.client(), "default");
    maps.create(&PostParams::default(), &config_map("a", &[]))
        .await
        .unwrap();
    let pp = PatchParams::default();
    let merged = maps
        .patch(
            "a",
            &pp,
            &Patch::Merge(json!({"data": {"k": null, "n": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.data.unwrap(),
        BTreeMap::from([("n".to_string(), "1".to_string())])
    );

    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/n", "value": "1"},
        {"op": "add", "path": "/data/m", "value": "2"},
        {"op": "replace", "path": "/data/n", "value": "3"},
    ]))
    .unwrap();
    let patched = maps.patch("a", &pp, &Patch::Json::<()>(ops)).await.unwrap();
    assert_eq!(patched.data.as_ref().unwrap()["n"], "3");
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/n", "value": "1"}])).unwrap();
    let failed = api_error(maps.patch("a", &pp, &Patch::Json::<()>(failing)).await);
    assert_eq!((failed.code, failed.reason.as_str()), (422, "Invalid"));

    let pods: Api<Pod> = Api::namespaced(standin.client(), "default");
    let mut with_sidecar = pod("p", "1");
    with_sidecar
        .spec
        .as_mut()
        .unwrap()
        .containers
        .push(serde_json::from_value(json!({"name": "side", "image": "side:1"})).unwrap());
    pods.create(&PostParams::default(), &with_sidecar)
        .await
        .unwrap();
    let strategic = pods
        .patch(
            "p",
            &pp,
            &Patch::Strategic(
                json!({"spec": {"containers": [{"name": "side", "image": "side:2"}]}}),
            ),
        )
        .await
        .unwrap();
    let containers = strategic.spec.unwrap().containers;
    assert_eq!(containers.len(), 2, "merged by name, not replaced");
    assert_eq!(containers[1].image.as_deref(), Some("side:2"));

    // Custom resources take no strategic merge patch, as on a real server.
    install_crd(&standin.client()).await;
    let apps: Api<ParacloudApp> = Api::namespaced(standin.client(), "default");
    apps.create(&PostParams::default(), &app("shop"))
        .await
        .unwrap();
    let refused = api_error(
        apps.patch("shop", &pp, &Patch::Strategic(json!({"spec": {}})))
            .await,
    );
    assert_eq!(refused.code, 415);
}

#[tokio::test]
async fn server_side_apply_tracks_owners_conflicts_and_removals() {
    let standin = standin().await;
    let deployments: Api<Deployment> = Api::namespaced(standin.client(), "default");
    let operator = PatchParams::apply("paracloud-operator");
    let mut wanted = deployment("web", 2);
    wanted
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("team".into(), "shop".into());
    let (created, status) = (
        deployments
            .patch("web", &operator, &Patch::Apply(&wanted))
            .await
            .unwrap(),
        standin.requests().last().cloned().unwrap(),
    );
    assert_eq!(status.verb, Verb::Patch);
    assert_eq!(created.spec.as_ref().unwrap().replicas, Some(2));
    let managers: Vec<_> = created
        .managed_fields()
        .iter()
        .map(|m| m.manager.clone().unwrap())
        .collect();
    assert_eq!(managers, ["paracloud-operator"]);

    // Another manager setting the replicas to another value conflicts...
    let hpa = PatchParams::apply("autoscaler");
    let replicas = json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 5}});
    let conflict = api_error(
        deployments
            .patch("web", &hpa, &Patch::Apply(&replicas))
            .await,
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    let causes = conflict.details.as_ref().unwrap().causes.clone();
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].field, ".spec.replicas");
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].message, "conflict with \"paracloud-operator\"");
    assert_eq!(
        conflict.message,
        "Apply failed with 1 conflict: conflict with \"paracloud-operator\": .spec.replicas"
    );
    // ...unless it forces, and then owns them.
    let forced = deployments
        .patch("web", &hpa.clone().force(), &Patch::Apply(&replicas))
        .await
        .unwrap();
    assert_eq!(forced.spec.as_ref().unwrap().replicas, Some(5));
    let owners: Vec<(String, Value)> = forced
        .managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap(),
                serde_json::to_value(&m.fields_v1).unwrap(),
            )
        })
        .collect();
    assert!(owners
        .iter()
        .any(|(m, f)| m == "autoscaler" && f == &json!({"f:spec": {"f:replicas": {}}})));
    // The operator stops applying the label and the replicas: the label goes, the replicas
    // stay the autoscaler's.
    let mut next = deployment("web", 2);
    next.spec.as_mut().unwrap().replicas = None;
    let applied = deployments
        .patch("web", &operator, &Patch::Apply(&next))
        .await
        .unwrap();
    assert_eq!(applied.labels().get("team"), None);
    assert_eq!(applied.spec.unwrap().replicas, Some(5));
    // An update takes the fields it changes without conflict.
    let edited = deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "changed"}}})),
        )
        .await
        .unwrap();
    assert!(edited
        .managed_fields()
        .iter()
        .any(|m| m.operation.as_deref() == Some("Update")));
}

#[tokio::test]
async fn status_and_generation_of_the_custom_resource() {
    let standin = standin().await;
    install_crd(&standin.client()).await;
    let crd = standin
        .object(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "",
            "paracloudapps.paracloud.dev",
        )
        .unwrap();
    assert!(crd["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Established"));
    let apps: Api<ParacloudApp> = Api::namespaced(standin.client(), "default");
    let mut with_status = app("shop");
    with_status.status = Some(ParacloudAppStatus {
        service_count: 7,
        ..Default::default()
    });
    let created = apps
        .create(&PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(
        created.status, None,
        "a create drops the status of a resource with a status subresource"
    );
    let status = ParacloudAppStatus {
        observed_generation: Some(1),
        service_count: 3,
        ..Default::default()
    };
    let patched = apps
        .patch_status(
            "shop",
            &PatchParams::apply("paracloud-operator"),
            &Patch::Apply(json!({
                "apiVersion": "paracloud.dev/v1alpha1", "kind": "ParacloudApp", "status": status,
            })),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.as_ref().unwrap().service_count, 3);
    assert_eq!(patched.metadata.generation, Some(1));
    let respec = apps
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"registry": "r.example"}, "status": {"serviceCount": 0}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(respec.metadata.generation, Some(2));
    assert_eq!(
        respec.status.unwrap().service_count,
        3,
        "the main resource ignores status"
    );
}

#[tokio::test]
async fn scale_reads_and_writes_the_replicas() {
    let standin = standin().await;
    let deployments: Api<Deployment> = Api::namespaced(standin.client(), "default");
    deployments
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap();
    let scale = deployments.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(
        scale.status.as_ref().unwrap().selector.as_deref(),
        Some("app=web")
    );
    let patched = deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().replicas, Some(4));
    let mut stale = scale.clone();
    stale.spec.as_mut().unwrap().replicas = Some(1);
    let conflict = api_error(
        deployments
            .replace_scale("web", &PostParams::default(), &stale)
            .await,
    );
    assert_eq!(conflict.code, 409);
    let fresh = deployments.get_scale("web").await.unwrap();
    let mut wanted = fresh.clone();
    wanted.spec.as_mut().unwrap().replicas = Some(1);
    deployments
        .replace_scale("web", &PostParams::default(), &wanted)
        .await
        .unwrap();
    let after = deployments.get("web").await.unwrap();
    assert_eq!(after.spec.as_ref().unwrap().replicas, Some(1));
    assert!(after
        .managed_fields()
        .iter()
        .any(|m| m.subresource.as_deref() == Some("scale")));
    // A deployment without replicas gets the default of 1.
    let mut unset = deployment("api", 1);
    unset.spec.as_mut().unwrap().replicas = None;
    let created = deployments
        .create(&PostParams::default(), &unset)
        .await
        .unwrap();
    assert_eq!(created.spec.unwrap().replicas, Some(1));
}

#[tokio::test]
async fn pods_resize_in_place_only_where_the_cluster_can() {
    let standin = standin().await;
    let pods: Api<Pod> = Api::namespaced(standin.client(), "default");
    pods.create(&PostParams::default(), &pod("p", "500m"))
        .await
        .unwrap();
    let resize = json!({"spec": {"containers": [{
        "name": "app", "image": "ignored:2",
        "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "2"}},
    }]}});
    let resized = pods
        .patch_resize(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(resize.clone()),
        )
        .await
        .unwrap();
    let container = &resized.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("shop:1"),
        "resize changes only resources"
    );
    assert_eq!(
        serde_json::to_value(&container.resources).unwrap()["requests"]["cpu"],
        "2"
    );
    // The pod's spec itself is immutable but for its images.
    let bigger =
        json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "3"}}}]}});
    let refused = api_error(
        pods.patch("p", &PatchParams::default(), &Patch::Strategic(bigger))
            .await,
    );
    assert_eq!((refused.code, refused.reason.as_str()), (422, "Invalid"));

    let old = StandIn::start(Options {
        pod_resize: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let old_pods: Api<Pod> = Api::namespaced(old.client(), "default");
    old_pods
        .create(&PostParams::default(), &pod("p", "500m"))
        .await
        .unwrap();
    let missing = api_error(
        old_pods
            .patch_resize("p", &PatchParams::default(), &Patch::Strategic(resize))
            .await,
    );
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    let version = old.client().apiserver_version().await.unwrap();
    assert_eq!(version.minor, "32");
}

#[tokio::test]
async fn finalizers_hold_a_deleted_object_until_emptied() {
    let standin = standin().await;
    install_crd(&standin.client()).await;
    let apps: Api<ParacloudApp> = Api::namespaced(standin.client(), "default");
    let mut held = app("shop");
    held.metadata.finalizers = Some(vec!["paracloud.dev/cleanup".into()]);
    let created = apps.create(&PostParams::default(), &held).await.unwrap();
    let mut events = apps
        .watch(
            &WatchParams::default(),
            &created.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();

    let deleting = apps.delete("shop", &DeleteParams::default()).await.unwrap();
    let deleting = deleting
        .left()
        .expect("the object stays while it has finalizers");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert!(apps.get("shop").await.is_ok());
    apps.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(apps.get("shop").await).code, 404);

    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match events.try_next().await.unwrap().unwrap() {
            WatchEvent::Modified(o) => {
                kinds.push(("MODIFIED", o.metadata.deletion_timestamp.is_some()))
            }
            WatchEvent::Deleted(o) => {
                kinds.push(("DELETED", o.metadata.deletion_timestamp.is_some()))
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds, [("MODIFIED", true), ("DELETED", true)]);

    // Without finalizers an object goes at once, and what it owned goes with it.
    let owner = apps
        .create(&PostParams::default(), &app("web"))
        .await
        .unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(standin.client(), "default");
    let mut owned = config_map("web-config", &[]);
    owned.metadata.owner_references = Some(vec![serde_json::from_value(json!({
        "apiVersion": "paracloud.dev/v1alpha1", "kind": "ParacloudApp",
        "name": "web", "uid": owner.uid().unwrap(), "controller": true,
    }))
    .unwrap()]);
    maps.create(&PostParams::default(), &owned).await.unwrap();
    let gone = apps.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(gone.is_right(), "a Status when the object is gone");
    assert!(standin
        .object("", "v1", "configmaps", "default", "web-config")
        .is_none());
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_is_told_410() {
    let standin = standin().await;
    let maps: Api<ConfigMap> = Api::namespaced(standin.client(), "default");
    let first = maps
        .create(&PostParams::default(), &config_map("a", &[]))
        .await
        .unwrap();
    maps.create(&PostParams::default(), &config_map("b", &[]))
        .await
        .unwrap();
    let from = first.resource_version().unwrap();
    let replayed: Vec<_> = maps
        .watch(&WatchParams::default().timeout(1), &from)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        matches!(replayed.last(), Some(WatchEvent::Bookmark(_))),
        "bookmarks were asked for"
    );
    let replayed: Vec<_> = replayed
        .into_iter()
        .filter(|e| !matches!(e, WatchEvent::Bookmark(_)))
        .collect();
    assert!(matches!(&replayed[..], [WatchEvent::Added(o)] if o.name_any() == "b"));

    standin.compact();
    let mut after = maps
        .watch(&WatchParams::default().timeout(1), &from)
        .await
        .unwrap()
        .boxed();
    match after.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(status.message.starts_with("too old resource version"));
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn the_watcher_lists_again_after_410_and_sees_later_changes() {
    let standin = standin().await;
    let client = standin.client();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    maps.create(&PostParams::default(), &config_map("a", &[]))
        .await
        .unwrap();
    let mut stream = watcher(maps.clone(), watcher::Config::default().timeout(1)).boxed();
    let mut seen_init_done = 0;
    while seen_init_done < 1 {
        if let watcher::Event::InitDone = stream.try_next().await.unwrap().unwrap() {
            seen_init_done += 1;
        }
    }
    // Writes elsewhere move the resourceVersion on; compaction then forgets the version the
    // watcher will resume from when its watch times out.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment("web", 1))
        .await
        .unwrap();
    standin.compact();

    let mut expired = false;
    let mut relisted = false;
    let mut writes = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !relisted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher recovers"
        );
        match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            // Until the watcher resumes from a forgotten version, keep moving on and forgetting.
            Err(_) if !expired => {
                writes += 1;
                deployments
                    .create(
                        &PostParams::default(),
                        &deployment(&format!("web{writes}"), 1),
                    )
                    .await
                    .unwrap();
                standin.compact();
            }
            Err(_) => {}
            Ok(next) => match next.unwrap() {
                Err(watcher::Error::WatchError(status)) => {
                    assert_eq!(status.code, 410);
                    expired = true;
                }
                Ok(watcher::Event::InitDone) if expired => relisted = true,
                _ => {}
            },
        }
    }
    maps.create(&PostParams::default(), &config_map("later", &[]))
        .await
        .unwrap();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.try_next())
            .await
            .expect("the change comes");
        if let watcher::Event::Apply(cm) = next.unwrap().unwrap() {
            if cm.name_any() == "later" {
                break;
            }
        }
    }
    let lists = standin
        .requests()
        .iter()
        .filter(|r| r.resource == "configmaps" && r.verb == Verb::List)
        .count();
    assert_eq!(lists, 2, "the first list and the one after 410");
}

#[tokio::test]
async fn requests_are_recorded_as_rbac_names_them() {
    let standin = standin().await;
    let client = standin.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment("web", 1))
        .await
        .unwrap();
    deployments.get("web").await.unwrap();
    deployments.list(&ListParams::default()).await.unwrap();
    let _ = deployments
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap();
    deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    let current = deployments.get("web").await.unwrap();
    deployments
        .replace("web", &PostParams::default(), &current)
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event: Event = serde_json::from_value(json!({
        "metadata": {"generateName": "web."},
        "involvedObject": {"kind": "Deployment", "name": "web", "namespace": "default"},
        "reason": "Scaled", "message": "scaled to 2", "type": "Normal",
    }))
    .unwrap();
    let recorded = events.create(&PostParams::default(), &event).await.unwrap();
    assert!(recorded.name_any().starts_with("web."));
    deployments
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();

    let seen: Vec<(String, String, String)> = standin
        .requests()
        .iter()
        .map(|r| {
            (
                r.verb.as_str().to_string(),
                r.group.clone(),
                r.rbac_resource(),
            )
        })
        .collect();
    let expect = |v: &str, g: &str, r: &str| (v.to_string(), g.to_string(), r.to_string());
    assert_eq!(
        seen,
        [
            expect("create", "apps", "deployments"),
            expect("get", "apps", "deployments"),
            expect("list", "apps", "deployments"),
            expect("watch", "apps", "deployments"),
            expect("patch", "apps", "deployments/scale"),
            expect("get", "apps", "deployments"),
            expect("update", "apps", "deployments"),
            expect("create", "", "events"),
            expect("delete", "apps", "deployments"),
        ]
    );
    assert!(standin
        .requests()
        .iter()
        .all(|r| r.namespace.as_deref() == Some("default")));
}

#[tokio::test]
async fn tests_play_the_cluster_controllers() {
    let standin = standin().await;
    let client = standin.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment("web", 3))
        .await
        .unwrap();
    let ready = standin.set_deployment_ready("default", "web").unwrap();
    assert_eq!(ready["status"]["readyReplicas"], 3);
    let seen = deployments.get("web").await.unwrap();
    assert_eq!(seen.status.unwrap().ready_replicas, Some(3));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("p", "1"))
        .await
        .unwrap();
    assert_eq!(
        pods.get("p")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Pending")
    );
    standin.set_pod_ready("default", "p", true).unwrap();
    let running = pods.get("p").await.unwrap().status.unwrap();
    assert_eq!(running.phase.as_deref(), Some("Running"));
    assert!(running
        .conditions
        .unwrap()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));

    // Another manager's applied field stops the operator's apply, as on a real cluster.
    standin
        .force_apply_as(
            "kubectl",
            &ObjectRef::of::<Deployment>("default", "web"),
            json!({"spec": {"replicas": 7}}),
        )
        .unwrap();
    let refused = deployments
        .patch(
            "web",
            &PatchParams::apply("paracloud-operator"),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 3},
            })),
        )
        .await;
    assert_eq!(api_error(refused).code, 409);
}

#[tokio::test]
async fn a_definition_serves_its_resource_until_deleted() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let standin = standin().await;
    let client = standin.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "pools.example.dev"},
        "spec": {
            "group": "example.dev", "scope": "Namespaced",
            "names": {"plural": "pools", "singular": "pool", "kind": "Pool"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}, "scale": {
                    "specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size",
                    "labelSelectorPath": ".status.selector",
                }},
            }],
        },
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.dev", "v1", "Pool"),
        "pools",
    );
    let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let pool = DynamicObject::new("p", &resource).data(json!({"spec": {"size": 2}}));
    pools.create(&PostParams::default(), &pool).await.unwrap();
    pools
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"size": 1, "selector": "app=p"}})),
        )
        .await
        .unwrap();
    let scale = pools.get_scale("p").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    let status = scale.status.unwrap();
    assert_eq!(
        (status.replicas, status.selector.as_deref()),
        (1, Some("app=p"))
    );
    pools
        .patch_scale(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(pools.get("p").await.unwrap().data["spec"]["size"], 5);

    crds.delete("pools.example.dev", &DeleteParams::default())
        .await
        .unwrap();
    let gone = api_error(pools.get("p").await);
    assert_eq!(
        gone.message,
        "the server could not find the requested resource"
    );
}

#[tokio::test]
async fn a_collection_is_deleted_by_label() {
    let standin = standin().await;
    let pods: Api<Pod> = Api::namespaced(standin.client(), "default");
    for name in ["a", "b"] {
        pods.create(&PostParams::default(), &pod(name, "1"))
            .await
            .unwrap();
    }
    let mut other = pod("c", "1");
    other.metadata.labels = Some(BTreeMap::from([("app".to_string(), "other".to_string())]));
    pods.create(&PostParams::default(), &other).await.unwrap();
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=shop"),
    )
    .await
    .unwrap();
    let left: Vec<_> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(left, ["c"]);
    // A pod's delete answers with the pod, as the real registry does.
    let deleted = pods.delete("c", &DeleteParams::default()).await.unwrap();
    assert_eq!(deleted.left().unwrap().name_any(), "c");
    assert_eq!(
        standin
            .requests()
            .iter()
            .filter(|r| r.verb == Verb::DeleteCollection)
            .count(),
        1
    );
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_its_initial_events_then_changes() {
    let standin = standin().await;
    let maps: Api<ConfigMap> = Api::namespaced(standin.client(), "default");
    maps.create(&PostParams::default(), &config_map("a", &[]))
        .await
        .unwrap();
    let mut stream = watcher(maps.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    loop {
        match stream.try_next().await.unwrap().unwrap() {
            watcher::Event::InitApply(cm) => initial.push(cm.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, ["a"]);
    maps.create(&PostParams::default(), &config_map("b", &[]))
        .await
        .unwrap();
    loop {
        if let watcher::Event::Apply(cm) = stream.try_next().await.unwrap().unwrap() {
            assert_eq!(cm.name_any(), "b");
            break;
        }
    }
    assert!(standin
        .requests()
        .iter()
        .all(|r| r.verb == Verb::Watch || r.verb == Verb::Create));
}

#[tokio::test]
async fn discovery_says_whether_pods_resize() {
    let new = standin().await;
    let old = StandIn::start(Options {
        pod_resize: false,
        ..Options::default()
    })
    .await
    .unwrap();
    for (standin, resizes) in [(&new, true), (&old, false)] {
        let core = standin
            .client()
            .list_core_api_resources("v1")
            .await
            .unwrap();
        let names: Vec<&str> = core.resources.iter().map(|r| r.name.as_str()).collect();
        assert!(names.contains(&"pods/status"));
        assert_eq!(names.contains(&"pods/resize"), resizes);
    }
    install_crd(&new.client()).await;
    let discovery = kube::Discovery::new(new.client()).run().await.unwrap();
    let (resource, capabilities) = discovery
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "paracloud.dev",
            "v1alpha1",
            "ParacloudApp",
        ))
        .unwrap();
    assert_eq!(resource.plural, "paracloudapps");
    assert_eq!(capabilities.scope, kube::discovery::Scope::Namespaced);
    assert!(capabilities
        .subresources
        .iter()
        .any(|(r, _)| r.plural == "paracloudapps/status" || r.plural == "status"));
}

#[tokio::test]
async fn a_selective_watch_sees_objects_come_and_go_as_their_labels_change() {
    let standin = standin().await;
    let maps: Api<ConfigMap> = Api::namespaced(standin.client(), "default");
    let from = standin.resource_version().to_string();
    let mut events = maps
        .watch(&WatchParams::default().labels("app=shop").timeout(5), &from)
        .await
        .unwrap()
        .boxed();
    maps.create(&PostParams::default(), &config_map("a", &[("app", "shop")]))
        .await
        .unwrap();
    maps.create(
        &PostParams::default(),
        &config_map("b", &[("app", "other")]),
    )
    .await
    .unwrap();
    let relabel = |app: &str| Patch::Merge(json!({"metadata": {"labels": {"app": app}}}));
    maps.patch("a", &PatchParams::default(), &relabel("other"))
        .await
        .unwrap();
    maps.patch("b", &PatchParams::default(), &relabel("shop"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match events.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(o) => seen.push(("ADDED", o.name_any())),
            WatchEvent::Modified(o) => seen.push(("MODIFIED", o.name_any())),
            WatchEvent::Deleted(o) => seen.push(("DELETED", o.name_any())),
            _ => {}
        }
    }
    let expected = [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "b")];
    assert_eq!(seen, expected.map(|(k, n)| (k, n.to_string())));
}

#[tokio::test]
async fn a_dry_run_answers_without_writing() {
    let standin = standin().await;
    let maps: Api<ConfigMap> = Api::namespaced(standin.client(), "default");
    let before = standin.resource_version();
    let answered = maps
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &config_map("a", &[]),
        )
        .await
        .unwrap();
    assert_eq!(answered.name_any(), "a");
    assert!(standin
        .object("", "v1", "configmaps", "default", "a")
        .is_none());
    assert_eq!(standin.resource_version(), before);
    maps.create(&PostParams::default(), &config_map("a", &[]))
        .await
        .unwrap();
    // The creator owns `data.k` by its update: taking it needs force, dry run or not.
    let mut dry = PatchParams::apply("op").force();
    dry.dry_run = true;
    let patched = maps
        .patch(
            "a",
            &dry,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "w"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["k"], "w");
    assert_eq!(maps.get("a").await.unwrap().data.unwrap()["k"], "v");
}

/// Creates an object of `K` from JSON through its typed API and reads it back.
async fn round_trip<K>(api: Api<K>, object: Value)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let object: K = serde_json::from_value(object).unwrap();
    let name = object.meta().name.clone().unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
    assert_eq!(
        api.get(&name).await.unwrap().meta().name.as_deref(),
        Some(name.as_str())
    );
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn every_kind_the_operator_uses_is_served() {
    use k8s_openapi::api::{apps, batch, core, networking, policy, rbac};
    let standin = standin().await;
    let client = standin.client();
    let named = |name: &str| json!({"metadata": {"name": name}});
    round_trip::<core::v1::Secret>(Api::namespaced(client.clone(), "default"), named("s")).await;
    round_trip::<core::v1::Service>(Api::namespaced(client.clone(), "default"), named("svc")).await;
    round_trip::<core::v1::ServiceAccount>(Api::namespaced(client.clone(), "default"), named("sa"))
        .await;
    round_trip::<core::v1::PersistentVolumeClaim>(
        Api::namespaced(client.clone(), "default"),
        named("data"),
    )
    .await;
    round_trip::<apps::v1::StatefulSet>(
        Api::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": "kv"}, "spec": {"selector": {}, "template": {}}}),
    )
    .await;
    round_trip::<batch::v1::Job>(
        Api::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": "j"}, "spec": {"template": {}}}),
    )
    .await;
    round_trip::<policy::v1::PodDisruptionBudget>(
        Api::namespaced(client.clone(), "default"),
        named("pdb"),
    )
    .await;
    round_trip::<networking::v1::NetworkPolicy>(
        Api::namespaced(client.clone(), "default"),
        named("np"),
    )
    .await;
    round_trip::<rbac::v1::Role>(Api::namespaced(client.clone(), "default"), named("r")).await;
    round_trip::<rbac::v1::RoleBinding>(Api::namespaced(client.clone(), "default"),
        json!({"metadata": {"name": "rb"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}}),
    )
    .await;
    round_trip::<rbac::v1::ClusterRole>(Api::all(client.clone()), named("cr")).await;
    let scale: Api<apps::v1::StatefulSet> = Api::namespaced(client.clone(), "default");
    assert_eq!(
        scale.get_scale("kv").await.unwrap().spec.unwrap().replicas,
        Some(1)
    );
    // A cluster-scoped kind has no namespaced path.
    let resource = kube::api::ApiResource::erase::<rbac::v1::ClusterRole>(&());
    let misplaced: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &resource);
    assert_eq!(api_error(misplaced.get("cr").await).code, 404);
}
