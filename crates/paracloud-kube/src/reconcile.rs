//! The operator's decision for one `ParacloudApp`, made from the resource and what the operator
//! observed of the cluster: which objects to apply (server-side, under the operator's field
//! manager), which to delete, the finalizer, the status and the events to record. Pure: the
//! time comes in, and the operator does what the decision says.

use crate::dataplane::DataplaneOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use paracloud_manifest::{Manifest, Origin};
use serde_json::{json, Value};

use crate::names::{sha256_hex, APP_LABEL};
use crate::object::{Object, ObjectKey};
use crate::render::{render, HostFile, HostFiles, RenderOptions};
use crate::resource::{ParacloudApp, ParacloudAppStatus, ServiceStatus};

/// The finalizer the operator puts on each `ParacloudApp`: the resource stays until the
/// application's objects are gone.
pub const FINALIZER: &str = "paracloud.dev/cleanup";

/// What the operator saw: the objects in the resource's namespace that carry its application's
/// label, as the API server returned them (status included).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub objects: Vec<Object>,
    /// The application's pods.
    pub pods: Vec<Object>,
    /// Whether the cluster has the pods' `resize` subresource (in-place pod resize).
    pub resize: bool,
    /// Whether Paracloud's node agent runs on the cluster's nodes: pods then get their PaCI
    /// socket from it.
    pub paci: bool,
    /// The data plane the operator runs beside each application (its own setting, not the
    /// cluster's): `None` leaves Services selecting the pods.
    pub dataplane: Option<DataplaneOptions>,
}

/// A workload's pod count set through its scale subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleTo {
    pub key: ObjectKey,
    pub replicas: u32,
}

/// A pod's CPU changed in place, through its `resize` subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resize {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The CPU limit as a quantity, such as `1500m`.
    pub cpu: String,
}

/// What to do with the finalizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalizerStep {
    /// Already as it should be.
    Keep,
    /// Add it before creating anything, so that nothing is left behind on deletion.
    Add,
    /// Everything is gone: remove it, and the API server lets the resource go.
    Remove,
}

/// An Event to record on the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `Normal` or `Warning`.
    pub kind: &'static str,
    /// CamelCase, as Kubernetes' reasons are.
    pub reason: &'static str,
    pub message: String,
}

/// Who records an Event: the component (`operator`, `node-agent`) and its instance (its pod or
/// node).
#[derive(Debug, Clone, Copy)]
pub struct Reporter<'a> {
    pub component: &'a str,
    pub instance: &'a str,
}

impl Note {
    /// The `v1` Event that records the note on `app`, as `kubectl describe paracloudapp` shows
    /// it: made at `now` (RFC 3339), named by the resource and `suffix`.
    pub fn event(
        &self,
        app: &ParacloudApp,
        reporter: Reporter<'_>,
        now: &str,
        suffix: u64,
    ) -> Value {
        let name = app.metadata.name.clone().unwrap_or_default();
        let namespace = app.metadata.namespace.clone().unwrap_or_default();
        json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": { "name": format!("{name}.{suffix:016x}"), "namespace": namespace },
            "involvedObject": {
                "apiVersion": "paracloud.dev/v1alpha1",
                "kind": "ParacloudApp",
                "name": name,
                "namespace": namespace,
                "uid": app.metadata.uid,
            },
            "type": self.kind,
            "reason": self.reason,
            "message": self.message,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": { "component": format!("paracloud-{}", reporter.component) },
            "reportingComponent": format!("paracloud.dev/{}", reporter.component),
            "reportingInstance": reporter.instance,
        })
    }
}

/// The whole decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub finalizer: FinalizerStep,
    /// Objects to apply, whole, each as the operator wants it (server-side apply).
    pub apply: Vec<Object>,
    /// Objects of the application no longer wanted.
    pub delete: Vec<ObjectKey>,
    /// Pod counts of autoscaled services.
    pub scale: Vec<ScaleTo>,
    /// CPU changes of running pods.
    pub resize: Vec<Resize>,
    /// The resource's new status; `None` while it is being deleted.
    pub status: Option<ParacloudAppStatus>,
    pub notes: Vec<Note>,
}

/// Decides what to do for `app`, given what is in the cluster.
pub fn reconcile(app: &ParacloudApp, observed: &Observed, now: &Time) -> Decision {
    let name = app.metadata.name.clone().unwrap_or_default();
    let finalizers = app.metadata.finalizers.clone().unwrap_or_default();
    let has_finalizer = finalizers.iter().any(|f| f == FINALIZER);
    let owned = owned_objects(app, observed);

    if app.metadata.deletion_timestamp.is_some() {
        let delete: Vec<ObjectKey> = owned.iter().map(|o| o.key.clone()).collect();
        return Decision {
            finalizer: if delete.is_empty() && has_finalizer {
                FinalizerStep::Remove
            } else {
                FinalizerStep::Keep
            },
            notes: if delete.is_empty() {
                Vec::new()
            } else {
                vec![Note {
                    kind: "Normal",
                    reason: "Deleting",
                    message: format!("deleting {} objects of {name}", delete.len()),
                }]
            },
            apply: Vec::new(),
            delete,
            scale: Vec::new(),
            resize: Vec::new(),
            status: None,
        };
    }
    let finalizer = if has_finalizer {
        FinalizerStep::Keep
    } else {
        FinalizerStep::Add
    };
    let previous = app.status.clone().unwrap_or_default();
    let generation = app.metadata.generation;

    let desired = match desired_objects(
        app,
        observed.resize,
        observed.paci,
        observed.dataplane.clone(),
    ) {
        Ok(desired) => desired,
        Err((reason, message)) => {
            // Nothing running is touched: the last good objects keep serving.
            let mut status = previous.clone();
            status.observed_generation = generation;
            set(
                &mut status.conditions,
                now,
                generation,
                "Degraded",
                true,
                reason,
                &message,
            );
            set(
                &mut status.conditions,
                now,
                generation,
                "Progressing",
                false,
                reason,
                "the manifest cannot be applied: fix it and apply the resource again",
            );
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready {
                set(
                    &mut status.conditions,
                    now,
                    generation,
                    "Ready",
                    false,
                    reason,
                    &message,
                );
            }
            let notes = if previous
                .conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "True" && c.message == message)
            {
                Vec::new()
            } else {
                vec![Note {
                    kind: "Warning",
                    reason,
                    message,
                }]
            };
            return Decision {
                finalizer,
                apply: Vec::new(),
                delete: Vec::new(),
                scale: Vec::new(),
                resize: Vec::new(),
                status: Some(status),
                notes,
            };
        }
    };

    let current: BTreeMap<&ObjectKey, &Object> = owned.iter().map(|o| (&o.key, *o)).collect();
    let apply: Vec<Object> = desired
        .objects
        .iter()
        .filter(|d| {
            current
                .get(&d.key)
                .is_none_or(|c| !contains(&c.body, &d.body))
        })
        .cloned()
        .collect();
    let wanted: BTreeSet<&ObjectKey> = desired.objects.iter().map(|o| &o.key).collect();
    let delete: Vec<ObjectKey> = owned
        .iter()
        .filter(|o| !wanted.contains(&o.key))
        .map(|o| o.key.clone())
        .collect();

    let mut status = ParacloudAppStatus {
        observed_generation: generation,
        conditions: previous.conditions.clone(),
        service_count: desired.services,
        services: BTreeMap::new(),
        manifest_sha256: Some(desired.manifest_sha.clone()),
        // The nodes' agents write the pods' load reports; the operator leaves them be.
        load: BTreeMap::new(),
    };
    let mut not_ready = Vec::new();
    let mut failed = Vec::new();
    for object in &desired.objects {
        let Some(workload) = Workload::of(object) else {
            continue;
        };
        let seen = current.get(&object.key).map(|o| &o.body);
        let progress = workload.progress(seen);
        if let Some(reason) = progress.failure {
            failed.push(format!("{}: {reason}", object.key.name));
        }
        if progress.ready < progress.wanted {
            not_ready.push(format!(
                "{} {}/{}",
                object.key.name, progress.ready, progress.wanted
            ));
        }
        // The data plane counts for readiness (traffic goes through it), not as a service.
        let dataplane = object
            .body
            .pointer(&format!(
                "/metadata/labels/{}",
                crate::dataplane::COMPONENT_LABEL.replace('/', "~1")
            ))
            .is_some();
        if dataplane {
            continue;
        }
        status.services.insert(
            object.key.name.clone(),
            ServiceStatus {
                replicas: progress.wanted,
                ready: progress.ready,
            },
        );
    }
    let changing = !apply.is_empty() || !delete.is_empty();
    if failed.is_empty() {
        set(
            &mut status.conditions,
            now,
            generation,
            "Degraded",
            false,
            "AsExpected",
            "",
        );
    } else {
        set(
            &mut status.conditions,
            now,
            generation,
            "Degraded",
            true,
            "WorkloadFailed",
            &failed.join("; "),
        );
    }
    if changing {
        set(
            &mut status.conditions,
            now,
            generation,
            "Progressing",
            true,
            "Applying",
            &format!(
                "applying {} and deleting {} objects",
                apply.len(),
                delete.len()
            ),
        );
    } else if !not_ready.is_empty() {
        set(
            &mut status.conditions,
            now,
            generation,
            "Progressing",
            true,
            "RollingOut",
            &format!("waiting for {}", not_ready.join(", ")),
        );
    } else {
        set(
            &mut status.conditions,
            now,
            generation,
            "Progressing",
            false,
            "Complete",
            "every service runs as its manifest says",
        );
    }
    if !changing && not_ready.is_empty() && failed.is_empty() {
        set(
            &mut status.conditions,
            now,
            generation,
            "Ready",
            true,
            "AllReady",
            "every service has its ready pods",
        );
    } else if !not_ready.is_empty() {
        set(
            &mut status.conditions,
            now,
            generation,
            "Ready",
            false,
            "ServicesNotReady",
            &format!("not ready: {}", not_ready.join(", ")),
        );
    } else if !failed.is_empty() {
        set(
            &mut status.conditions,
            now,
            generation,
            "Ready",
            false,
            "WorkloadFailed",
            &failed.join("; "),
        );
    } else {
        set(
            &mut status.conditions,
            now,
            generation,
            "Ready",
            false,
            "Applying",
            "the manifest's objects are being applied",
        );
    }

    let mut notes = Vec::new();
    if !apply.is_empty() {
        notes.push(Note {
            kind: "Normal",
            reason: "Applied",
            message: format!("applied {}", names(apply.iter().map(|o| &o.key))),
        });
    }
    if !delete.is_empty() {
        notes.push(Note {
            kind: "Normal",
            reason: "Pruned",
            message: format!(
                "deleted {}, no longer in the manifest",
                names(delete.iter())
            ),
        });
    }
    let (scale, resize) = scaling(&desired, &current, observed);
    if !scale.is_empty() || !resize.is_empty() {
        notes.push(Note {
            kind: "Normal",
            reason: "Scaled",
            message: scale
                .iter()
                .map(|s| format!("{} to {} pods", s.key, s.replicas))
                .chain(
                    resize
                        .iter()
                        .map(|r| format!("pod {} to {} CPU in place", r.pod, r.cpu)),
                )
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Decision {
        finalizer,
        apply,
        delete,
        scale,
        resize,
        status: Some(status),
        notes,
    }
}

/// The pod counts the scale subresource sets (autoscaled workloads, whose applied objects leave
/// `replicas` out) and the CPU changes made in place.
fn scaling(
    desired: &Desired,
    current: &BTreeMap<&ObjectKey, &Object>,
    observed: &Observed,
) -> (Vec<ScaleTo>, Vec<Resize>) {
    let mut scale = Vec::new();
    let mut resize = Vec::new();
    for object in &desired.objects {
        if !matches!(object.key.kind.as_str(), "Deployment" | "StatefulSet") {
            continue;
        }
        let name = &object.key.name;
        if let Some(&replicas) = desired.scaled_replicas.get(name) {
            let now = current
                .get(&object.key)
                .and_then(|o| o.body.pointer("/spec/replicas"))
                .and_then(Value::as_u64);
            if current.contains_key(&object.key) && now != Some(u64::from(replicas)) {
                scale.push(ScaleTo {
                    key: object.key.clone(),
                    replicas,
                });
            }
        }
        let Some(cpu) = desired.resized_cpu.get(name) else {
            continue;
        };
        for pod in &observed.pods {
            let labels = pod.body.pointer("/metadata/labels");
            if labels
                .and_then(|l| l.get(crate::names::WORKLOAD_LABEL))
                .and_then(Value::as_str)
                != Some(name.as_str())
                || pod.key.namespace != object.key.namespace
            {
                continue;
            }
            let containers = pod
                .body
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for container in containers {
                let Some(container_name) = container.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let limit = container
                    .pointer("/resources/limits/cpu")
                    .and_then(Value::as_str);
                if limit != Some(cpu.as_str()) {
                    resize.push(Resize {
                        namespace: pod.key.namespace.clone().unwrap_or_default(),
                        pod: pod.key.name.clone(),
                        container: container_name.to_owned(),
                        cpu: cpu.clone(),
                    });
                }
            }
        }
    }
    (scale, resize)
}

fn names<'a>(keys: impl Iterator<Item = &'a ObjectKey>) -> String {
    keys.map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The application's objects among those observed: its label, in its namespace, and owned by
/// this resource (another resource's objects with the same application name are not ours).
fn owned_objects<'a>(app: &ParacloudApp, observed: &'a Observed) -> Vec<&'a Object> {
    let uid = app.metadata.uid.as_deref();
    observed
        .objects
        .iter()
        .filter(|o| o.key.namespace == app.metadata.namespace)
        .filter(|o| {
            o.body
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| {
                    refs.iter().any(|r| {
                        r.get("kind").and_then(Value::as_str) == Some("ParacloudApp")
                            && r.get("uid").and_then(Value::as_str) == uid
                    })
                })
        })
        .collect()
}

struct Desired {
    objects: Vec<Object>,
    /// Pods per autoscaled workload, set through the scale subresource.
    scaled_replicas: BTreeMap<String, u32>,
    /// CPU per pod (a quantity) of workloads whose CPU changes in place.
    resized_cpu: BTreeMap<String, String>,
    services: u32,
    manifest_sha: String,
}

/// A manifest checked in the cluster: the deploying machine checked its host paths; here they
/// are only names.
struct ClusterPaths;

impl paracloud_manifest::FileSystem for ClusterPaths {
    fn exists(&self, _path: &Path) -> bool {
        true
    }
    fn is_dir(&self, _path: &Path) -> bool {
        false
    }
}

/// What a resource may not make the operator do for it: whoever may create a ParacloudApp in a
/// namespace would otherwise reach the node through the operator's rights, with pods that mount
/// the node's directories or hold capabilities beyond the baseline Pod Security Standard. Such
/// manifests are for `paracloud k8s render`, applied with the user's own rights.
fn beyond_the_namespace(manifest: &Manifest, directories: &[String]) -> Option<String> {
    for (name, service) in &manifest.services {
        for mount in &service.volumes {
            if let paracloud_manifest::VolumeMount::Bind { source, .. } = mount {
                if directories.iter().any(|d| Path::new(d) == source) {
                    return Some(format!(
                        "services.{name}.volumes: {} is a directory of the node (hostPath), which the operator does not mount for a resource; use a named volume, or render with `paracloud k8s render` and apply with your own rights",
                        source.display()
                    ));
                }
            }
        }
        let beyond = crate::render::beyond_baseline(&service.cap_add);
        if !beyond.is_empty() {
            return Some(format!(
                "services.{name}.cap_add: {} is beyond the baseline Pod Security Standard, which the operator keeps to; drop it, or render with `paracloud k8s render` and apply with your own rights",
                beyond.join(", ")
            ));
        }
    }
    None
}

/// The bind sources as the deploying machine found them.
struct Directories<'a>(&'a [String]);

impl HostFiles for Directories<'_> {
    fn read(&self, path: &Path) -> HostFile {
        if self.0.iter().any(|d| Path::new(d) == path) {
            HostFile::Directory
        } else {
            HostFile::Missing
        }
    }
}

/// The objects the resource wants, each owned by it, with the scale set after the manifest: an
/// autoscaled application's pod counts through the scale subresource, CPU in place where the
/// cluster resizes pods (else in the pod template, a rolling change).
fn desired_objects(
    app: &ParacloudApp,
    resize: bool,
    paci: bool,
    dataplane: Option<DataplaneOptions>,
) -> Result<Desired, (&'static str, String)> {
    let name = app.metadata.name.clone().unwrap_or_default();
    let mut manifest = manifest(app).map_err(|e| ("InvalidManifest", e.to_string()))?;
    if let Some(refusal) = beyond_the_namespace(&manifest, &app.spec.directories) {
        return Err(("NotAllowed", refusal));
    }
    let autoscaled = manifest.autoscale.is_some();
    let mut scaled_replicas = BTreeMap::new();
    let mut resized_cpu = BTreeMap::new();
    if autoscaled {
        for (service, s) in &manifest.services {
            if s.revision_of.is_none()
                && s.restart.condition == paracloud_manifest::RestartCondition::Always
            {
                scaled_replicas.insert(crate::names::object_name(service), s.replicas);
            }
        }
    }
    for (service, scale) in &app.spec.scale {
        let Some(s) = manifest.services.get_mut(service) else {
            return Err((
                "UnknownService",
                format!("spec.scale names `{service}`, which the manifest has no service of"),
            ));
        };
        if let Some(replicas) = scale.replicas {
            s.replicas = replicas;
            if let Some(count) = scaled_replicas.get_mut(&crate::names::object_name(service)) {
                *count = replicas;
            }
        }
        if let Some(cpu) = scale.cpu {
            if resize {
                resized_cpu.insert(
                    crate::names::object_name(service),
                    crate::names::cpu_quantity(cpu),
                );
            } else {
                s.resources.cpu = Some(cpu);
            }
        }
    }
    let options = RenderOptions {
        namespace: app.metadata.namespace.clone(),
        registry: app.spec.registry.clone(),
        namespace_object: false,
        file_objects: false,
        replicas_by_scale: autoscaled,
        paci,
        dataplane,
    };
    let rendered = render(&manifest, &options, &Directories(&app.spec.directories))
        .map_err(|e| ("CannotRender", e.to_string()))?;
    let owner = OwnerReference {
        api_version: "paracloud.dev/v1alpha1".into(),
        kind: "ParacloudApp".into(),
        name: name.clone(),
        uid: app.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let owner = serde_json::to_value(owner).expect("an owner reference serializes");
    let objects = rendered
        .objects
        .into_iter()
        .map(|mut o| {
            o.body["metadata"]["ownerReferences"] = Value::Array(vec![owner.clone()]);
            o
        })
        .collect();
    Ok(Desired {
        objects,
        scaled_replicas,
        resized_cpu,
        services: u32::try_from(manifest.services.len()).unwrap_or(u32::MAX),
        manifest_sha: sha256_hex(app.spec.manifest.as_bytes()),
    })
}

/// Whether `have` holds every field of `want` with the same value: what the API server added
/// (defaults, status, metadata) does not count as a difference.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv))
        }
        _ => have == want,
    }
}

/// A workload's progress as its status says.
struct Progress {
    wanted: u32,
    ready: u32,
    failure: Option<String>,
}

enum Workload {
    Replicated,
    Job,
}

impl Workload {
    fn of(object: &Object) -> Option<Workload> {
        match object.key.kind.as_str() {
            "Deployment" | "StatefulSet" => Some(Workload::Replicated),
            "Job" => Some(Workload::Job),
            _ => None,
        }
    }

    fn progress(&self, seen: Option<&Value>) -> Progress {
        let number = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0) as u32;
        let seen = seen.unwrap_or(&Value::Null);
        let conditions = seen
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let condition = |kind: &str, status: &str| {
            conditions.iter().find(|c| {
                c.get("type").and_then(Value::as_str) == Some(kind)
                    && c.get("status").and_then(Value::as_str) == Some(status)
            })
        };
        match self {
            Workload::Replicated => Progress {
                // A Deployment without replicas (left to the autoscaler) wants what it has.
                wanted: seen
                    .pointer("/spec/replicas")
                    .map_or(1, |v| number(Some(v))),
                ready: number(seen.pointer("/status/readyReplicas")),
                failure: condition("Progressing", "False").map(|c| {
                    c.get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("the rollout is stuck")
                        .to_owned()
                }),
            },
            Workload::Job => {
                let wanted = seen
                    .pointer("/spec/completions")
                    .map_or(1, |v| number(Some(v)));
                Progress {
                    wanted,
                    ready: number(seen.pointer("/status/succeeded")).min(wanted),
                    failure: condition("Failed", "True").map(|c| {
                        c.get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("the job failed")
                            .to_owned()
                    }),
                }
            }
        }
    }
}

/// Sets a condition, keeping its transition time when its status does not change.
fn set(
    conditions: &mut Vec<Condition>,
    now: &Time,
    generation: Option<i64>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
) {
    let status = if status { "True" } else { "False" };
    let condition = Condition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(existing) if existing.status == status => {
            existing.reason = condition.reason;
            existing.message = condition.message;
            existing.observed_generation = generation;
        }
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// The label selector of an application's objects, for the operator's list and watch.
pub fn selector(app: &ParacloudApp) -> String {
    let name = app_name(app).unwrap_or_default();
    format!("{APP_LABEL}={name}")
}

/// The application's name, as its manifest says (`None` when the manifest does not parse).
pub fn app_name(app: &ParacloudApp) -> Option<String> {
    manifest(app).ok().map(|m| m.app)
}

/// The resource's manifest, parsed as the operator reads it: host paths are the deploying
/// machine's, checked there, and only names here.
pub fn manifest(app: &ParacloudApp) -> Result<Manifest, paracloud_manifest::ManifestError> {
    let origin = Origin {
        file: format!(
            "ParacloudApp {}/{}",
            app.metadata.namespace.clone().unwrap_or_default(),
            app.metadata.name.clone().unwrap_or_default()
        ),
        base_dir: PathBuf::from("/"),
    };
    paracloud_manifest::parse(&app.spec.manifest, &origin, &ClusterPaths)
}

#[cfg(test)]
mod tests;
