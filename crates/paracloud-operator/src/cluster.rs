//! Reading the cluster into `Observed`, and carrying a `Decision` out.

use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::{Api, Client, ResourceExt};
use paracloud_kube::access::{managed_kind, MANAGED_KINDS};
use paracloud_kube::dataplane::DataplaneOptions;
use paracloud_kube::names::FIELD_MANAGER;
use paracloud_kube::reconcile::{Decision, FinalizerStep, Note, Observed, Reporter, FINALIZER};
use paracloud_kube::{Object, ObjectKey, ParacloudApp};
use serde_json::json;

use crate::Context;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("{0} is not a kind the operator manages")]
    Unmanaged(ObjectKey),
    #[error("the cluster has no pods/resize subresource")]
    NoResize,
}

fn resource(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn dynamic(client: &Client, key: &ObjectKey) -> Result<Api<DynamicObject>, Error> {
    let managed =
        managed_kind(&key.api_version, &key.kind).ok_or_else(|| Error::Unmanaged(key.clone()))?;
    let ar = resource(&key.api_version, managed.kind, managed.plural);
    Ok(match &key.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    })
}

/// The application's objects of every managed kind, and its pods, in its namespace.
pub(crate) async fn observe(
    client: &Client,
    app: &ParacloudApp,
    resize: bool,
    paci: bool,
    dataplane: Option<DataplaneOptions>,
) -> Result<Observed, Error> {
    let namespace = app.namespace().unwrap_or_default();
    let params = ListParams::default().labels(&paracloud_kube::reconcile::selector(app));
    let mut objects = Vec::new();
    for kind in MANAGED_KINDS {
        let ar = resource(&kind.api_version(), kind.kind, kind.plural);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
        for item in api.list(&params).await? {
            objects.extend(to_object(item, &kind.api_version(), kind.kind));
        }
    }
    let pods_ar = resource("v1", "Pod", "pods");
    let pods: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &pods_ar);
    let pods = pods
        .list(&params)
        .await?
        .into_iter()
        .filter_map(|p| to_object(p, "v1", "Pod"))
        .collect();
    Ok(Observed {
        objects,
        pods,
        resize,
        paci,
        dataplane,
    })
}

/// A listed item as an `Object` (list items need not carry their kind).
fn to_object(item: DynamicObject, api_version: &str, kind: &str) -> Option<Object> {
    let mut body = serde_json::to_value(item).ok()?;
    body["apiVersion"] = json!(api_version);
    body["kind"] = json!(kind);
    Object::from_body(body)
}

/// Does what the decision says, in the order that leaves nothing behind: the finalizer before
/// anything is made, objects, pod counts and CPU, the status, and the finalizer's removal last.
pub(crate) async fn carry_out(
    context: &Context,
    app: &ParacloudApp,
    decision: &Decision,
) -> Result<(), Error> {
    let client = &context.client;
    let namespace = app.namespace().unwrap_or_default();
    let name = app.name_any();
    let apps: Api<ParacloudApp> = Api::namespaced(client.clone(), &namespace);
    if decision.finalizer == FinalizerStep::Add {
        let mut finalizers = app.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        let patch = json!({ "metadata": {
            "finalizers": finalizers,
            "resourceVersion": app.resource_version(),
        } });
        apps.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    for object in &decision.apply {
        let api = dynamic(client, &object.key)?;
        api.patch(&object.key.name, &apply, &Patch::Apply(&object.body))
            .await?;
    }
    for key in &decision.delete {
        let api = dynamic(client, key)?;
        match api.delete(&key.name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for scale in &decision.scale {
        let api = dynamic(client, &scale.key)?;
        let patch = json!({ "spec": { "replicas": scale.replicas } });
        api.patch_subresource(
            "scale",
            &scale.key.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    let pods_ar = resource("v1", "Pod", "pods");
    for resize in &decision.resize {
        let pods: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &resize.namespace, &pods_ar);
        let patch = json!({ "spec": { "containers": [{
            "name": resize.container,
            "resources": {
                "limits": { "cpu": resize.cpu },
                "requests": { "cpu": resize.cpu },
            },
        }] } });
        match pods
            .patch_subresource(
                "resize",
                &resize.pod,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 && pod_exists(&pods, &resize.pod).await => {
                return Err(Error::NoResize)
            }
            // The pod went meanwhile; its successor is resized at the next pass.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for note in &decision.notes {
        record(&context.client, &context.identity, app, note).await?;
    }
    if let Some(status) = &decision.status {
        // The pods' load reports are the nodes' agents' part of the status, not compared, not
        // written (a merge patch keeps them).
        let mut observed = app.status.clone().unwrap_or_default();
        observed.load.clear();
        if app.status.is_none() || observed != *status {
            let patch = json!({ "status": status });
            apps.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    if decision.finalizer == FinalizerStep::Remove {
        let finalizers: Vec<&String> = app
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .collect();
        let patch = json!({ "metadata": {
            "finalizers": finalizers,
            "resourceVersion": app.resource_version(),
        } });
        match apps
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether a pod is there: a 404 from its resize subresource then means the cluster lacks it.
async fn pod_exists(pods: &Api<DynamicObject>, name: &str) -> bool {
    // The list verb the operator holds on pods, narrowed to the one name.
    let params = ListParams::default().fields(&format!("metadata.name={name}"));
    pods.list(&params)
        .await
        .is_ok_and(|list| !list.items.is_empty())
}

/// An Event on the resource, as `kubectl describe paracloudapp` shows them.
pub(crate) async fn record(
    client: &Client,
    identity: &str,
    app: &ParacloudApp,
    note: &Note,
) -> Result<(), Error> {
    let namespace = app.namespace().unwrap_or_default();
    let ar = resource("v1", "Event", "events");
    let events: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let reporter = Reporter {
        component: "operator",
        instance: identity,
    };
    let body = note.event(app, reporter, &now, rand::random());
    let event: DynamicObject = serde_json::from_value(body).expect("an Event is a dynamic object");
    events.create(&PostParams::default(), &event).await?;
    Ok(())
}
