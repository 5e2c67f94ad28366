//! A stand-in Kubernetes API server for tests: objects in memory behind the real API's paths and
//! semantics, which the real `kube` client talks to over plain HTTP on the loopback.
//!
//! No API server can run where Paracloud is built and tested, so the operator's client side is
//! checked against this one, which follows the API's documented semantics:
//!
//! - paths: `/api/v1/...` and `/apis/GROUP/VERSION/...`, namespaced and cluster-scoped, for the
//!   built-in kinds the operator uses ([`resources`]), metrics-server's `PodMetrics` (which a
//!   test writes, where the real ones are read-only), and for whatever a created
//!   CustomResourceDefinition declares (with its status and scale subresources); anything else
//!   is a 404 `Status`, as every error is ([`ApiError`]);
//! - metadata: uid, one global resourceVersion counter, generation (bumped when more than
//!   metadata and status change), creationTimestamp; 409 AlreadyExists and 409 Conflict on a
//!   stale resourceVersion; namespaces must exist (`default`, `kube-system`, `kube-public` and
//!   `kube-node-lease` do from the start); label and field selectors; `limit` and `continue`;
//! - PATCH as JSON patch (a failed `test` is 422, as the real server answers), merge patch,
//!   strategic merge patch (simplified, see [`patch::strategic_merge_patch`]; refused with 415 on
//!   custom resources, as the real server does) and server-side apply with managed fields per
//!   manager ([`fields`]);
//! - subresources: `status`, `scale` (autoscaling/v1 `Scale`), `pods/NAME/log` (what a test
//!   set with [`StandIn::set_pod_log`]), `pods/NAME/resize`, which
//!   [`Options::pod_resize`] turns off to play a cluster older than 1.33, and `pods/NAME/exec`,
//!   run by the handler a test gives in [`Options::exec`], over the v5/v4 channel protocols;
//! - deletion with finalizers, and the garbage collection of objects whose owner went;
//! - `dryRun=All` on every write: the answer as if written, nothing kept;
//! - watches from a resourceVersion, with bookmarks, and a 410 `Expired` ERROR event once
//!   [`StandIn::compact`] forgot the history they would replay;
//! - a record of every request as RBAC names it ([`Request`]).
//!
//! What it simplifies, against a real server: no authentication, authorization, admission,
//! validation against schemas or defaulting (but a Deployment's replicas default to 1 and a
//! pod's spec is immutable but for what the real server lets change); no scheduler (an exec
//! needs no node for its pod) and no terminal for an exec's `tty`; no controllers run (a
//! test plays them: [`StandIn::set_status`], [`StandIn::set_pod_ready`],
//! [`StandIn::set_deployment_ready`]); a deleted pod goes at once (no grace period); a deleted
//! namespace takes its content with it at once; lists are atomic in field ownership and in
//! strategic merge patches but for lists keyed by `name`; a `continue` token reads the current
//! objects rather than the first page's snapshot; every kind keeps a generation (the real server
//! keeps one only for kinds with a spec); one version per resource (no conversion).

mod containers;
pub mod error;
mod exec;
pub mod fields;
pub mod patch;
pub mod resources;
pub mod selector;
mod server;
mod store;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

pub use error::ApiError;
pub use exec::{ExecHandler, ExecRequest};
use store::{Key, Store, Target};

/// How the stand-in plays its cluster.
#[derive(Clone)]
pub struct Options {
    /// Serve `pods/NAME/resize` (in-place pod resize: beta and on by default from Kubernetes
    /// 1.33, stable in 1.35). Off, the stand-in answers 404 there, as an older server does, and
    /// `/version` says 1.32 instead of 1.35.
    pub pod_resize: bool,
    /// Plays the kubelet for `pods/NAME/exec`: the process that runs each command. Without
    /// one, an exec that passes the API server's checks is answered as when the pod's kubelet
    /// cannot be reached: 500, `error dialing backend: ...`.
    pub exec: Option<ExecHandler>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pod_resize: true,
            exec: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("pod_resize", &self.pod_resize)
            .field("exec", &self.exec.is_some())
            .finish()
    }
}

/// A verb as RBAC names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// One request the stand-in received (refused ones included, as authorization comes first on a
/// real server), as an RBAC rule would have to allow it. Discovery and `/version` are not
/// recorded: every authenticated user may read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub verb: Verb,
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    /// The resource's plural.
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Request {
    /// The resource as an RBAC rule names it: `deployments`, `deployments/scale`.
    pub fn rbac_resource(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }

    /// The request as an RBAC rule grants it: (group, resource, verb).
    pub fn rbac(&self) -> (String, String, String) {
        (
            self.group.clone(),
            self.rbac_resource(),
            self.verb.as_str().to_owned(),
        )
    }
}

/// A resource by group, version and plural.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gvr {
    pub group: String,
    pub version: String,
    pub plural: String,
}

impl Gvr {
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        Gvr {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
        }
    }

    /// The resource of a typed kind (`Gvr::of::<Deployment>()`).
    pub fn of<K: kube::Resource<DynamicType = ()>>() -> Self {
        Gvr::new(&K::group(&()), &K::version(&()), &K::plural(&()))
    }
}

/// One object, or one of its subresources, for the methods that play other managers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub gvr: Gvr,
    /// Empty for a cluster-scoped object.
    pub namespace: String,
    pub name: String,
    /// Empty for the main resource.
    pub subresource: String,
}

impl ObjectRef {
    pub fn new(gvr: Gvr, namespace: &str, name: &str) -> Self {
        ObjectRef {
            gvr,
            namespace: namespace.into(),
            name: name.into(),
            subresource: String::new(),
        }
    }

    /// An object of a typed kind (`ObjectRef::of::<Deployment>("default", "web")`).
    pub fn of<K: kube::Resource<DynamicType = ()>>(namespace: &str, name: &str) -> Self {
        ObjectRef::new(Gvr::of::<K>(), namespace, name)
    }

    pub fn subresource(mut self, subresource: &str) -> Self {
        self.subresource = subresource.into();
        self
    }
}

/// A running stand-in; the server stops when it is dropped.
pub struct StandIn {
    address: SocketAddr,
    store: Arc<Mutex<Store>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl StandIn {
    /// Starts the server on 127.0.0.1 at a port of the system's choosing, on the current tokio
    /// runtime.
    pub async fn start(options: Options) -> std::io::Result<StandIn> {
        let store = Arc::new(Mutex::new(Store::new()));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let app = server::App {
            store: store.clone(),
            options,
        };
        let server = tokio::spawn(async move {
            // Serving ends only with an accept error or when the task is aborted.
            let _ = axum::serve(listener, server::router(app)).await;
        });
        Ok(StandIn {
            address,
            store,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A kube client of this server (namespace `default`).
    pub fn client(&self) -> kube::Client {
        let url = self
            .url()
            .parse()
            .expect("the stand-in's URL is a valid URI");
        let config = kube::Config::new(url);
        kube::Client::try_from(config).expect("a plain-HTTP client needs no TLS setup")
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets the history of changes, as etcd's compaction does: a watch from an older
    /// resourceVersion then gets an ERROR event with a 410 `Expired` status.
    pub fn compact(&self) {
        self.store().compact();
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store().resource_version()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.store().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.store().requests.clear();
    }

    /// The stored object (`namespace` empty for a cluster-scoped one).
    pub fn object(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = Key {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.store().get_object(&key).cloned()
    }

    fn target(&self, at: &ObjectRef) -> Result<Target, ApiError> {
        let gvr = &at.gvr;
        let info = self
            .store()
            .resources
            .find(&gvr.group, &gvr.version, &gvr.plural)
            .cloned()
            .ok_or_else(ApiError::no_such_resource)?;
        Ok(Target {
            info,
            namespace: at.namespace.clone(),
            name: at.name.clone(),
            subresource: at.subresource.clone(),
        })
    }

    /// Server-side apply as `manager`, as another controller would (to the main resource, or
    /// its `status` or `scale`), refused on conflicts; not recorded as a request.
    pub fn apply_as(
        &self,
        manager: &str,
        at: &ObjectRef,
        applied: Value,
    ) -> Result<Value, ApiError> {
        let target = self.target(at)?;
        Ok(self.store().apply(&target, applied, manager, false)?.0)
    }

    /// Server-side apply as `manager` that takes the fields other managers own.
    pub fn force_apply_as(
        &self,
        manager: &str,
        at: &ObjectRef,
        applied: Value,
    ) -> Result<Value, ApiError> {
        let target = self.target(at)?;
        Ok(self.store().apply(&target, applied, manager, true)?.0)
    }

    /// A merge patch as `manager` (an update: it takes the fields it changes); not recorded.
    pub fn merge_patch_as(
        &self,
        manager: &str,
        at: &ObjectRef,
        patch: Value,
    ) -> Result<Value, ApiError> {
        let target = self.target(at)?;
        let body = patch.to_string();
        let (object, _) = self.store().patch(
            &target,
            store::PatchType::Merge,
            body.as_bytes(),
            Some(manager),
            false,
            manager,
        )?;
        Ok(object)
    }

    /// Merges `status` into the object's status through its status subresource, as the
    /// controller that owns it would.
    pub fn set_status(
        &self,
        manager: &str,
        gvr: &Gvr,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<Value, ApiError> {
        let at = ObjectRef::new(gvr.clone(), namespace, name).subresource("status");
        self.merge_patch_as(manager, &at, json!({"status": status}))
    }

    /// Plays the kubelet: what a pod's container wrote, served at `pods/NAME/log`.
    pub fn set_pod_log(&self, namespace: &str, pod: &str, container: &str, text: &str) {
        self.store().logs.insert(
            (namespace.to_owned(), pod.to_owned(), container.to_owned()),
            text.to_owned(),
        );
    }

    /// Plays the kubelet: the pod runs, its containers ready or not.
    pub fn set_pod_ready(
        &self,
        namespace: &str,
        name: &str,
        ready: bool,
    ) -> Result<Value, ApiError> {
        let gvr = Gvr::new("", "v1", "pods");
        let target = self.target(&ObjectRef::new(gvr.clone(), namespace, name))?;
        let pod = self.store().get(&target)?;
        let flag = if ready { "True" } else { "False" };
        let statuses: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                json!({
                    "name": c["name"], "image": c["image"], "imageID": "", "ready": ready,
                    "started": true, "restartCount": 0,
                    "resources": c["resources"],
                    "state": {"running": {"startedAt": store::now()}},
                })
            })
            .collect();
        let now = store::now();
        self.set_status(
            "kubelet",
            &gvr,
            namespace,
            name,
            json!({
                "phase": "Running",
                "podIP": "10.0.0.1",
                "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                    {"type": "Ready", "status": flag, "lastTransitionTime": now},
                ],
                "containerStatuses": statuses,
            }),
        )
    }

    /// Plays the deployment controller: every wanted replica is up to date, ready and
    /// available, for the current generation.
    pub fn set_deployment_ready(&self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let gvr = Gvr::new("apps", "v1", "deployments");
        let target = self.target(&ObjectRef::new(gvr.clone(), namespace, name))?;
        let deployment = self.store().get(&target)?;
        let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
        self.set_status(
            "kube-controller-manager",
            &gvr,
            namespace,
            name,
            json!({
                "observedGeneration": deployment["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                ],
            }),
        )
    }
}
