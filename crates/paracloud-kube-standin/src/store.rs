//! The objects in memory, the one resourceVersion counter, the history that watches replay, and
//! every write as the real API server makes it: metadata, generation, subresources, field
//! ownership, finalizers and the garbage collection of owned objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::fields::{self, Entry, Writer};
use crate::patch::{self, JsonPatchError};
use crate::resources::{ResourceInfo, Resources};
use crate::selector::Selector;
use crate::{Request, Verb};

/// Where an object lives; `namespace` is empty for cluster-scoped ones.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    fn new(info: &ResourceInfo, namespace: &str, name: &str) -> Self {
        Key {
            group: info.group.clone(),
            version: info.version.clone(),
            plural: info.plural.clone(),
            namespace: if info.namespaced {
                namespace.into()
            } else {
                String::new()
            },
            name: name.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write, as watches see it.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub key: Key,
    pub kind: EventType,
    pub object: Value,
    /// What a modification changed from, for the watches it moves in or out of.
    pub previous: Option<Value>,
}

impl Change {
    /// How a watch with `filter` sees the change, if at all: an object that comes to match a
    /// selector is ADDED to it, one that stops matching is DELETED from it, as the real
    /// server's watch cache does.
    pub fn seen_by(&self, filter: &Filter) -> Option<EventType> {
        let now = filter.matches(&self.key, &self.object);
        let before = self.previous.as_ref().map(|p| filter.matches(&self.key, p));
        match (self.kind, before, now) {
            (EventType::Modified, Some(true), true) => Some(EventType::Modified),
            (EventType::Modified, Some(true), false) => Some(EventType::Deleted),
            (EventType::Modified, _, true) => Some(EventType::Added),
            (EventType::Modified, _, false) => None,
            (kind, _, true) => Some(kind),
            (_, _, false) => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Stored {
    object: Value,
    managed: Vec<Entry>,
}

/// The body formats of PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" => Ok(PatchType::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// What a request is about: a resource, and within it a namespace, a name, a subresource
/// (each empty when absent).
#[derive(Debug, Clone)]
pub struct Target {
    pub info: ResourceInfo,
    pub namespace: String,
    pub name: String,
    pub subresource: String,
}

impl Target {
    fn key(&self) -> Key {
        Key::new(&self.info, &self.namespace, &self.name)
    }
}

/// Which objects a list or watch is about.
#[derive(Debug, Clone)]
pub struct Filter {
    pub group: String,
    pub version: String,
    pub plural: String,
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub labels: Selector,
    pub fields: Selector,
}

impl Filter {
    pub fn matches(&self, key: &Key, object: &Value) -> bool {
        key.group == self.group
            && key.version == self.version
            && key.plural == self.plural
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| &key.namespace == ns)
            && self.labels.matches_labels(object)
            && self.fields.matches_fields(object)
    }
}

/// How a delete ended: the object waits for its finalizers, or is gone.
#[derive(Debug, Clone)]
pub enum Deleted {
    Pending(Value),
    Gone(Value),
}

const BUILT_IN_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

#[derive(Clone)]
pub struct Store {
    pub resources: Resources,
    objects: BTreeMap<Key, Stored>,
    rv: u64,
    uids: u64,
    names: u64,
    history: Vec<Arc<Change>>,
    /// Watches must start at or after this resourceVersion: what came before is forgotten.
    compacted: u64,
    changes: broadcast::Sender<Arc<Change>>,
    pub requests: Vec<Request>,
    /// What each pod's containers wrote, as the kubelet serves it (`pods/NAME/log`), by
    /// namespace, pod and container.
    pub logs: BTreeMap<(String, String, String), String>,
}

/// The current time as the API writes it (RFC 3339, whole seconds, UTC).
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn without(object: &Value, top: &[&str]) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        for key in top {
            map.remove(*key);
        }
    }
    copy
}

fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object["metadata"][field].as_str().unwrap_or_default()
}

fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(String::from))
        .collect()
}

fn metadata(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("metadata was made an object above")
}

fn set_path(object: &mut Value, path: &[String], value: Value) {
    let mut at = object;
    for key in path {
        if !at.is_object() {
            *at = json!({});
        }
        at = at
            .as_object_mut()
            .expect("made an object above")
            .entry(key.clone())
            .or_insert(Value::Null);
    }
    *at = value;
}

/// The fields a pod's update may change (images, the deadline, tolerations); the rest of its
/// spec is immutable, which is why the real server has the resize subresource.
fn pod_spec_immutable_part(spec: &Value) -> Value {
    let mut spec = without(spec, &["activeDeadlineSeconds", "tolerations"]);
    for list in ["containers", "initContainers"] {
        if let Some(items) = spec[list].as_array_mut() {
            for item in items {
                if let Some(map) = item.as_object_mut() {
                    map.remove("image");
                }
            }
        }
    }
    spec
}

fn is_crd(info: &ResourceInfo) -> bool {
    info.group == "apiextensions.k8s.io" && info.plural == "customresourcedefinitions"
}

impl Store {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(4096);
        let mut store = Store {
            resources: Resources::built_in(),
            objects: BTreeMap::new(),
            rv: 0,
            uids: 0,
            names: 0,
            history: Vec::new(),
            compacted: 0,
            changes,
            requests: Vec::new(),
            logs: BTreeMap::new(),
        };
        let info = store
            .resources
            .find("", "v1", "namespaces")
            .cloned()
            .expect("namespaces are built in");
        for name in BUILT_IN_NAMESPACES {
            let target = Target {
                info: info.clone(),
                namespace: String::new(),
                name: String::new(),
                subresource: String::new(),
            };
            let namespace = json!({"metadata": {"name": name}});
            store
                .create(&target, namespace, "kube-apiserver")
                .expect("a fresh store takes the built-in namespaces");
        }
        store
    }

    /// A copy to try a write on and throw away (`dryRun=All`): nothing it does is kept or seen
    /// by watches.
    pub fn dry_run_copy(&self) -> Store {
        let mut copy = self.clone();
        copy.changes = broadcast::channel(1).0;
        copy
    }

    pub fn record(&mut self, request: Request) {
        self.requests.push(request);
    }

    pub fn get_object(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key).map(|s| &s.object)
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Forgets the history, as etcd's compaction does: a watch from an older resourceVersion
    /// is answered 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    fn emit(&mut self, key: Key, kind: EventType, object: Value) {
        self.push(Change {
            rv: self.rv,
            key,
            kind,
            object,
            previous: None,
        });
    }

    fn emit_modified(&mut self, key: Key, object: Value, previous: Value) {
        self.push(Change {
            rv: self.rv,
            key,
            kind: EventType::Modified,
            object,
            previous: Some(previous),
        });
    }

    fn push(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push(change.clone());
        // No receiver is fine: nobody watches.
        let _ = self.changes.send(change);
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn existing(&self, target: &Target) -> Result<Stored, ApiError> {
        self.objects
            .get(&target.key())
            .cloned()
            .ok_or_else(|| ApiError::not_found(&target.info, &target.name))
    }

    // ---- reads ----

    pub fn get(&self, target: &Target) -> Result<Value, ApiError> {
        let stored = self.existing(target)?;
        if target.subresource == "scale" {
            return Ok(scale_view(&target.info, &stored.object));
        }
        Ok(stored.object)
    }

    pub fn list(
        &self,
        info: &ResourceInfo,
        filter: &Filter,
        limit: Option<usize>,
        continue_after: Option<&str>,
    ) -> Value {
        let mut items: Vec<(&Key, &Value)> = self
            .objects
            .iter()
            .filter(|(key, stored)| filter.matches(key, &stored.object))
            .map(|(key, stored)| (key, &stored.object))
            .collect();
        if let Some(after) = continue_after {
            items.retain(|(key, _)| format!("{}/{}", key.namespace, key.name).as_str() > after);
        }
        let mut meta = json!({"resourceVersion": self.rv.to_string()});
        if let Some(limit) = limit.filter(|l| *l > 0 && *l < items.len()) {
            let last = items[limit - 1].0;
            meta["continue"] = json!(format!("{}/{}", last.namespace, last.name));
            meta["remainingItemCount"] = json!(items.len() - limit);
            items.truncate(limit);
        }
        json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": meta,
            "items": items.into_iter().map(|(_, o)| o.clone()).collect::<Vec<_>>(),
        })
    }

    /// The changes a watch from `from` replays (or, from `None`, the current objects as ADDED),
    /// with a receiver of those still to come; 410 when `from` is older than the history.
    #[allow(clippy::type_complexity)]
    pub fn watch(
        &self,
        filter: &Filter,
        from: Option<u64>,
    ) -> Result<
        (
            Vec<(EventType, Value)>,
            u64,
            broadcast::Receiver<Arc<Change>>,
        ),
        ApiError,
    > {
        let receiver = self.changes.subscribe();
        let backlog = match from {
            None => self
                .objects
                .iter()
                .filter(|(key, stored)| filter.matches(key, &stored.object))
                .map(|(_, stored)| (EventType::Added, stored.object.clone()))
                .collect(),
            Some(from) if from < self.compacted => {
                return Err(ApiError::expired(from, self.compacted))
            }
            Some(from) => self
                .history
                .iter()
                .filter(|c| c.rv > from)
                .filter_map(|c| c.seen_by(filter).map(|kind| (kind, c.object.clone())))
                .collect(),
        };
        Ok((backlog, self.rv, receiver))
    }

    // ---- writes ----

    fn check_namespace(&self, target: &Target) -> Result<(), ApiError> {
        if !target.info.namespaced {
            return Ok(());
        }
        let info = self
            .resources
            .find("", "v1", "namespaces")
            .expect("namespaces are built in");
        let key = Key::new(info, "", &target.namespace);
        match self.objects.get(&key) {
            None => Err(ApiError::not_found(info, &target.namespace)),
            Some(ns) if !ns.object["metadata"]["deletionTimestamp"].is_null() => {
                Err(ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                    target.info.qualified(),
                    target.name,
                    target.namespace
                )))
            }
            Some(_) => Ok(()),
        }
    }

    /// Names the new object, checks where it goes, and drops what a client may not set.
    fn prepare_new(&mut self, target: &mut Target, mut object: Value) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let info = target.info.clone();
        let mut name = meta_str(&object, "name").to_string();
        if name.is_empty() {
            let prefix = meta_str(&object, "generateName");
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    &info.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            self.names += 1;
            name = format!("{prefix}{:05x}", self.names);
        }
        if !target.name.is_empty() && target.name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                target.name
            )));
        }
        target.name = name.clone();
        let given_ns = meta_str(&object, "namespace").to_string();
        if info.namespaced && !given_ns.is_empty() && given_ns != target.namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        self.check_namespace(target)?;
        if self.objects.contains_key(&target.key()) {
            return Err(ApiError::already_exists(&info, &name));
        }
        let meta = metadata(&mut object);
        for field in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(field);
        }
        meta.insert("name".into(), json!(name));
        if info.namespaced {
            meta.insert("namespace".into(), json!(target.namespace));
        } else {
            meta.remove("namespace");
        }
        if info.status {
            let map = object.as_object_mut().expect("checked above");
            map.remove("status");
            match (info.group.as_str(), info.plural.as_str()) {
                ("", "pods") => {
                    map.insert("status".into(), json!({"phase": "Pending"}));
                }
                ("", "namespaces") => {
                    map.insert("status".into(), json!({"phase": "Active"}));
                }
                _ => {}
            }
        }
        if info.scale.is_some() && info.group == "apps" && object["spec"]["replicas"].is_null() {
            // The real server defaults the replicas of its workloads to 1.
            set_path(&mut object, &["spec".into(), "replicas".into()], json!(1));
        }
        Ok(object)
    }

    fn commit_new(&mut self, target: &Target, mut object: Value, managed: Vec<Entry>) -> Value {
        let info = &target.info;
        self.uids += 1;
        let rv = self.next_rv();
        let uid = format!("5a7d1e00-0000-4000-8000-{:012x}", self.uids);
        object["apiVersion"] = json!(info.api_version());
        object["kind"] = json!(info.kind);
        let meta = metadata(&mut object);
        meta.insert("uid".into(), json!(uid));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("managedFields".into(), fields::render(&managed));
        if is_crd(info) {
            object["status"] = json!({
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                     "message": "no conflicts found", "lastTransitionTime": now()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "message": "the initial names have been accepted", "lastTransitionTime": now()},
                ],
                "acceptedNames": object["spec"]["names"].clone(),
                "storedVersions": object["spec"]["versions"].as_array().into_iter().flatten()
                    .filter(|v| v["storage"] == json!(true)).map(|v| v["name"].clone()).collect::<Vec<_>>(),
            });
            self.resources.define(&object);
        }
        let key = target.key();
        self.objects.insert(
            key.clone(),
            Stored {
                object: object.clone(),
                managed,
            },
        );
        self.emit(key, EventType::Added, object.clone());
        object
    }

    pub fn create(
        &mut self,
        target: &Target,
        body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let mut target = target.clone();
        let object = self.prepare_new(&mut target, body)?;
        let mut managed = Vec::new();
        let time = now();
        let api_version = target.info.api_version();
        let writer = Writer {
            manager,
            subresource: "",
            api_version: &api_version,
            time: &time,
        };
        fields::record_update(&mut managed, &json!({}), &object, &writer);
        Ok(self.commit_new(&target, object, managed))
    }

    /// Turns what the request made of the object (or of its scale) into the new object, as the
    /// subresource allows.
    fn absorb(
        &self,
        target: &Target,
        current: &Value,
        candidate: &Value,
    ) -> Result<Value, ApiError> {
        let info = &target.info;
        let mut new = current.clone();
        match target.subresource.as_str() {
            "" => {
                new = candidate.clone();
                if info.status {
                    match current.get("status") {
                        Some(status) => new["status"] = status.clone(),
                        None => {
                            if let Some(map) = new.as_object_mut() {
                                map.remove("status");
                            }
                        }
                    }
                }
                if info.group.is_empty()
                    && info.plural == "pods"
                    && pod_spec_immutable_part(&new["spec"])
                        != pod_spec_immutable_part(&current["spec"])
                {
                    return Err(ApiError::invalid(
                        "Pod",
                        &target.name,
                        "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations)",
                    ));
                }
            }
            "status" => match candidate.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => {
                    if let Some(map) = new.as_object_mut() {
                        map.remove("status");
                    }
                }
            },
            "scale" => {
                let paths = info.scale.as_ref().ok_or_else(ApiError::no_such_resource)?;
                let replicas = candidate["spec"]["replicas"].as_i64().ok_or_else(|| {
                    ApiError::invalid("Scale", &target.name, "spec.replicas: Required value")
                })?;
                if replicas < 0 {
                    return Err(ApiError::invalid(
                        "Scale",
                        &target.name,
                        "spec.replicas: Invalid value: must be greater than or equal to 0",
                    ));
                }
                set_path(&mut new, &paths.spec_replicas, json!(replicas));
            }
            "resize" => {
                // Only the containers' resources (and resize policy) change; the rest of the
                // request is dropped, as the real resize strategy does.
                let asked = candidate["spec"]["containers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if let Some(containers) = new["spec"]["containers"].as_array_mut() {
                    for container in containers {
                        let Some(wanted) = asked.iter().find(|c| c["name"] == container["name"])
                        else {
                            continue;
                        };
                        for field in ["resources", "resizePolicy"] {
                            match wanted.get(field) {
                                Some(value) => container[field] = value.clone(),
                                None => {
                                    if let Some(map) = container.as_object_mut() {
                                        map.remove(field);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            _ => return Err(ApiError::no_such_resource()),
        }
        Ok(new)
    }

    /// Stores an update of an existing object: system metadata kept, generation bumped when
    /// more than metadata and status changed, nothing written when nothing changed, and the
    /// object gone when it was being deleted and its last finalizer went.
    fn commit_update(
        &mut self,
        target: &Target,
        old: &Stored,
        mut new: Value,
        managed: Vec<Entry>,
    ) -> Result<Value, ApiError> {
        let info = &target.info;
        if !new.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        new["apiVersion"] = json!(info.api_version());
        new["kind"] = json!(info.kind);
        let old_meta = old.object["metadata"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        {
            let meta = metadata(&mut new);
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match old_meta.get(field) {
                    Some(value) => meta.insert(field.into(), value.clone()),
                    None => meta.remove(field),
                };
            }
        }
        let terminating = !old.object["metadata"]["deletionTimestamp"].is_null();
        let old_finalizers = finalizers(&old.object);
        if terminating && finalizers(&new).iter().any(|f| !old_finalizers.contains(f)) {
            return Err(ApiError::invalid(
                &info.kind,
                &target.name,
                "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
            ));
        }
        let content = |o: &Value| without(o, &["metadata", "status"]);
        if content(&old.object) != content(&new) {
            let generation = old.object["metadata"]["generation"].as_i64().unwrap_or(0);
            metadata(&mut new).insert("generation".into(), json!(generation + 1));
        }
        let comparable = |o: &Value| {
            let mut o = o.clone();
            let meta = metadata(&mut o);
            meta.remove("resourceVersion");
            meta.remove("managedFields");
            o
        };
        let owners = |m: &[Entry]| {
            m.iter()
                .map(|e| {
                    (
                        e.manager.clone(),
                        e.operation,
                        e.subresource.clone(),
                        e.fields.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        if comparable(&old.object) == comparable(&new) && owners(&old.managed) == owners(&managed) {
            return Ok(old.object.clone());
        }
        let rv = self.next_rv();
        let meta = metadata(&mut new);
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("managedFields".into(), fields::render(&managed));
        let key = target.key();
        if terminating && finalizers(&new).is_empty() {
            self.objects.remove(&key);
            self.emit(key, EventType::Deleted, new.clone());
            self.after_removal(info, &new, false);
            return Ok(new);
        }
        if is_crd(info) {
            self.resources.define(&new);
        }
        self.objects.insert(
            key.clone(),
            Stored {
                object: new.clone(),
                managed,
            },
        );
        self.emit_modified(key, new.clone(), old.object.clone());
        Ok(new)
    }

    fn writer_manager<'a>(
        target: &Target,
        manager: &'a str,
        api_version: &'a str,
        time: &'a str,
    ) -> Writer<'a> {
        Writer {
            manager,
            subresource: match target.subresource.as_str() {
                "" => "",
                "status" => "status",
                "scale" => "scale",
                _ => "resize",
            },
            api_version,
            time,
        }
    }

    /// PUT: replaces the object (or its status, scale, resources), checking a given
    /// resourceVersion.
    pub fn update(
        &mut self,
        target: &Target,
        body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let old = self.existing(target)?;
        let body_name = meta_str(&body, "name");
        if !body_name.is_empty() && body_name != target.name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({})",
                target.name
            )));
        }
        self.write(target, old, body, manager)
    }

    fn write(
        &mut self,
        target: &Target,
        old: Stored,
        candidate: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let asked_rv = meta_str(&candidate, "resourceVersion");
        if !asked_rv.is_empty() && asked_rv != meta_str(&old.object, "resourceVersion") {
            return Err(ApiError::modified(&target.info, &target.name));
        }
        let new = self.absorb(target, &old.object, &candidate)?;
        let mut managed = old.managed.clone();
        let (time, api_version) = (now(), target.info.api_version());
        let writer = Self::writer_manager(target, manager, &api_version, &time);
        fields::record_update(&mut managed, &old.object, &new, &writer);
        let written = self.commit_update(target, &old, new, managed)?;
        Ok(view(target, written))
    }

    /// PATCH in any of its formats; `true` when an apply created the object.
    pub fn patch(
        &mut self,
        target: &Target,
        kind: PatchType,
        body: &[u8],
        manager: Option<&str>,
        force: bool,
        default_manager: &str,
    ) -> Result<(Value, bool), ApiError> {
        if kind != PatchType::Apply && force {
            return Err(ApiError::invalid(
                "PatchOptions.meta.k8s.io",
                "",
                "force: Forbidden: may not be specified for non-apply patch",
            ));
        }
        if kind == PatchType::Strategic && !crate::resources::is_built_in(&target.info) {
            return Err(ApiError::unsupported_media_type(
                "application/strategic-merge-patch+json (strategic merge patch is not supported for custom resources)",
            ));
        }
        let parsed: Value = if kind == PatchType::Apply {
            serde_yaml_ng::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
        };
        if kind == PatchType::Apply {
            let manager = manager.filter(|m| !m.is_empty()).ok_or_else(|| {
                ApiError::invalid(
                    "PatchOptions.meta.k8s.io",
                    "",
                    "fieldManager: Required value: is required for apply patch",
                )
            })?;
            return self.apply(target, parsed, manager, force);
        }
        let manager = manager.unwrap_or(default_manager);
        let old = self.existing(target)?;
        let mut candidate = if target.subresource == "scale" {
            scale_view(&target.info, &old.object)
        } else {
            old.object.clone()
        };
        match kind {
            PatchType::Json => patch::json_patch(&mut candidate, &parsed).map_err(|e| match e {
                JsonPatchError::Malformed(m) => ApiError::bad_request(m),
                JsonPatchError::NotApplied(m) => ApiError::unprocessable(m),
            })?,
            PatchType::Merge => patch::merge_patch(&mut candidate, &parsed),
            PatchType::Strategic => patch::strategic_merge_patch(&mut candidate, &parsed),
            PatchType::Apply => unreachable!("handled above"),
        }
        Ok((self.write(target, old, candidate, manager)?, false))
    }

    /// Server-side apply, creating the object when it is missing.
    pub fn apply(
        &mut self,
        target: &Target,
        applied: Value,
        manager: &str,
        force: bool,
    ) -> Result<(Value, bool), ApiError> {
        if !applied.is_object() {
            return Err(ApiError::bad_request(
                "an applied configuration must be an object",
            ));
        }
        let info = target.info.clone();
        let (time, api_version) = (now(), info.api_version());
        let writer = Self::writer_manager(target, manager, &api_version, &time);
        let mut applied = applied;
        match target.subresource.as_str() {
            "" if info.status => {
                if let Some(map) = applied.as_object_mut() {
                    map.remove("status");
                }
            }
            "" => {}
            "status" => applied = json!({"status": applied["status"].clone()}),
            "scale" => {
                let paths = info.scale.as_ref().ok_or_else(ApiError::no_such_resource)?;
                let replicas = applied["spec"]["replicas"].clone();
                applied = json!({});
                set_path(&mut applied, &paths.spec_replicas, replicas);
            }
            _ => {
                return Err(ApiError::method_not_allowed(
                    "apply to this subresource is not supported by the stand-in",
                ))
            }
        }
        let Some(old) = self.objects.get(&target.key()).cloned() else {
            if !target.subresource.is_empty() {
                return Err(ApiError::not_found(&info, &target.name));
            }
            let mut target = target.clone();
            let mut managed = Vec::new();
            let merged = fields::apply(&json!({}), &applied, &mut managed, &writer, force)
                .map_err(conflict_error)?;
            let mut object = merged;
            metadata(&mut object).insert("name".into(), json!(target.name));
            let object = self.prepare_new(&mut target, object)?;
            return Ok((self.commit_new(&target, object, managed), true));
        };
        let asked_rv = meta_str(&applied, "resourceVersion");
        if !asked_rv.is_empty() && asked_rv != meta_str(&old.object, "resourceVersion") {
            return Err(ApiError::modified(&info, &target.name));
        }
        let mut managed = old.managed.clone();
        let merged = fields::apply(&old.object, &applied, &mut managed, &writer, force)
            .map_err(conflict_error)?;
        let new = match target.subresource.as_str() {
            "status" => self.absorb(target, &old.object, &merged)?,
            _ => merged,
        };
        Ok((
            view(target, self.commit_update(target, &old, new, managed)?),
            false,
        ))
    }

    /// DELETE: the object goes at once, or, with finalizers, gets its deletionTimestamp and
    /// waits for them to be emptied.
    pub fn delete(&mut self, target: &Target, options: &Value) -> Result<Deleted, ApiError> {
        let old = self.existing(target)?;
        let info = &target.info;
        let preconditions = &options["preconditions"];
        if let Some(uid) = preconditions["uid"].as_str() {
            if uid != meta_str(&old.object, "uid") {
                return Err(ApiError::conflict(
                    info,
                    &target.name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&old.object, "uid")
                    ),
                ));
            }
        }
        if let Some(rv) = preconditions["resourceVersion"].as_str() {
            if rv != meta_str(&old.object, "resourceVersion") {
                return Err(ApiError::conflict(
                    info,
                    &target.name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        meta_str(&old.object, "resourceVersion")
                    ),
                ));
            }
        }
        let orphan = options["propagationPolicy"].as_str() == Some("Orphan")
            || options["orphanDependents"] == json!(true);
        Ok(self.delete_key(info, &target.key(), orphan))
    }

    fn delete_key(&mut self, info: &ResourceInfo, key: &Key, orphan: bool) -> Deleted {
        let Some(old) = self.objects.get(key).cloned() else {
            return Deleted::Gone(Value::Null);
        };
        if info.group.is_empty() && info.plural == "namespaces" {
            // Simplified: the namespace's content goes at once, finalizers or not.
            let inside: Vec<Key> = self
                .objects
                .keys()
                .filter(|k| k.namespace == key.name)
                .cloned()
                .collect();
            for inner in inside {
                if let Some(stored) = self.objects.remove(&inner) {
                    let mut object = stored.object;
                    self.rv += 1;
                    metadata(&mut object)
                        .insert("resourceVersion".into(), json!(self.rv.to_string()));
                    self.emit(inner, EventType::Deleted, object);
                }
            }
        }
        if !finalizers(&old.object).is_empty() {
            if !old.object["metadata"]["deletionTimestamp"].is_null() {
                return Deleted::Pending(old.object);
            }
            let mut new = old.object.clone();
            let rv = self.next_rv();
            let generation = new["metadata"]["generation"].as_i64().unwrap_or(0);
            let meta = metadata(&mut new);
            meta.insert("deletionTimestamp".into(), json!(now()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            meta.insert("generation".into(), json!(generation + 1));
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            self.objects.insert(
                key.clone(),
                Stored {
                    object: new.clone(),
                    managed: old.managed,
                },
            );
            self.emit_modified(key.clone(), new.clone(), old.object);
            return Deleted::Pending(new);
        }
        let mut gone = old.object;
        let rv = self.next_rv();
        metadata(&mut gone).insert("resourceVersion".into(), json!(rv.to_string()));
        self.objects.remove(key);
        self.emit(key.clone(), EventType::Deleted, gone.clone());
        self.after_removal(info, &gone, orphan);
        Deleted::Gone(gone)
    }

    /// What follows an object's end: a definition's resources stop being served (and its
    /// objects go), and the objects it owns are deleted, as the garbage collector does.
    fn after_removal(&mut self, info: &ResourceInfo, gone: &Value, orphan: bool) {
        if is_crd(info) {
            self.resources.undefine(gone);
            let group = gone["spec"]["group"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let plural = gone["spec"]["names"]["plural"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let defined: Vec<Key> = self
                .objects
                .keys()
                .filter(|k| k.group == group && k.plural == plural)
                .cloned()
                .collect();
            for key in defined {
                if let Some(stored) = self.objects.remove(&key) {
                    let mut object = stored.object;
                    self.rv += 1;
                    metadata(&mut object)
                        .insert("resourceVersion".into(), json!(self.rv.to_string()));
                    self.emit(key, EventType::Deleted, object);
                }
            }
        }
        if orphan {
            return;
        }
        let uid = meta_str(gone, "uid").to_string();
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, s)| {
                s.object["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in dependents {
            if let Some(dependent) = self
                .resources
                .find(&key.group, &key.version, &key.plural)
                .cloned()
            {
                self.delete_key(&dependent, &key, false);
            }
        }
    }

    /// DELETE on a collection: each selected object as a delete of its own.
    pub fn delete_collection(&mut self, info: &ResourceInfo, filter: &Filter) -> Value {
        let keys: Vec<Key> = self
            .objects
            .iter()
            .filter(|(key, stored)| filter.matches(key, &stored.object))
            .map(|(key, _)| key.clone())
            .collect();
        let mut items = Vec::new();
        for key in keys {
            match self.delete_key(info, &key, false) {
                Deleted::Pending(o) | Deleted::Gone(o) => items.push(o),
            }
        }
        json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        })
    }
}

/// What a write answers: the object, or its Scale for the scale subresource.
fn view(target: &Target, object: Value) -> Value {
    if target.subresource == "scale" {
        scale_view(&target.info, &object)
    } else {
        object
    }
}

fn conflict_error(conflicts: Vec<fields::Conflict>) -> ApiError {
    ApiError::apply_conflict(
        conflicts
            .into_iter()
            .map(|c| {
                // Named as the real server names an owner: an updater with its API version
                // and time, since it may not know it owns the field.
                let mut who = format!("\"{}\"", c.manager);
                if !c.subresource.is_empty() {
                    who.push_str(&format!(" with subresource \"{}\"", c.subresource));
                }
                if c.operation == fields::Operation::Update {
                    who.push_str(&format!(" using {} at {}", c.api_version, c.time));
                }
                (who, fields::dotted(&c.path))
            })
            .collect(),
    )
}

/// The autoscaling/v1 Scale of an object with a scale subresource.
pub fn scale_view(info: &ResourceInfo, object: &Value) -> Value {
    let Some(paths) = &info.scale else {
        return Value::Null;
    };
    let spec = fields::get(object, &paths.spec_replicas)
        .cloned()
        .unwrap_or(json!(0));
    let status = fields::get(object, &paths.status_replicas)
        .cloned()
        .unwrap_or(json!(0));
    let selector = match &paths.label_selector {
        Some(path) => fields::get(object, path).cloned().unwrap_or(json!("")),
        None => {
            let labels = object["spec"]["selector"]["matchLabels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            json!(labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(","))
        }
    };
    let meta = &object["metadata"];
    let mut scale_meta = json!({
        "name": meta["name"],
        "uid": meta["uid"],
        "resourceVersion": meta["resourceVersion"],
        "creationTimestamp": meta["creationTimestamp"],
    });
    if let Some(ns) = meta.get("namespace") {
        scale_meta["namespace"] = ns.clone();
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": spec},
        "status": {"replicas": status, "selector": selector},
    })
}

/// The verb RBAC names for a request.
pub fn verb_of(method: &str, named: bool, watch: bool) -> Option<Verb> {
    Some(match (method, named) {
        ("GET", true) => Verb::Get,
        ("GET", false) if watch => Verb::Watch,
        ("GET", false) => Verb::List,
        ("POST", _) => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(store: &Store, group: &str, plural: &str, namespace: &str, name: &str) -> Target {
        Target {
            info: store.resources.find(group, "v1", plural).cloned().unwrap(),
            namespace: namespace.into(),
            name: name.into(),
            subresource: String::new(),
        }
    }

    #[test]
    fn apply_needs_a_manager_and_force_needs_apply() {
        let mut store = Store::new();
        let t = target(&store, "", "configmaps", "default", "a");
        let body = br#"{"apiVersion":"v1","kind":"ConfigMap","data":{"k":"v"}}"#;
        let missing = store
            .patch(&t, PatchType::Apply, body, None, false, "x")
            .unwrap_err();
        assert_eq!((missing.code, missing.reason), (422, "Invalid"));
        let (created, new) = store
            .patch(&t, PatchType::Apply, body, Some("op"), false, "x")
            .unwrap();
        assert!(new, "apply to a missing object creates it");
        assert_eq!(created["data"]["k"], "v");
        let forced = store
            .patch(&t, PatchType::Merge, b"{}", Some("op"), true, "x")
            .unwrap_err();
        assert_eq!(forced.code, 422);
        let media = PatchType::from_content_type("application/json").unwrap_err();
        assert_eq!(media.code, 415);
    }

    #[test]
    fn a_terminating_object_takes_no_new_finalizer() {
        let mut store = Store::new();
        let t = target(&store, "", "configmaps", "default", "a");
        store
            .create(
                &t,
                json!({"metadata": {"name": "a", "finalizers": ["x"]}}),
                "op",
            )
            .unwrap();
        assert!(matches!(
            store.delete(&t, &json!({})).unwrap(),
            Deleted::Pending(_)
        ));
        let refused = store
            .patch(
                &t,
                PatchType::Merge,
                br#"{"metadata":{"finalizers":["x","y"]}}"#,
                None,
                false,
                "op",
            )
            .unwrap_err();
        assert_eq!(refused.code, 422);
        let stale = store
            .delete(&t, &json!({"preconditions": {"uid": "other"}}))
            .unwrap_err();
        assert_eq!(stale.code, 409);
    }

    #[test]
    fn a_deleted_namespace_takes_its_content_and_no_more() {
        let mut store = Store::new();
        let ns = target(&store, "", "namespaces", "", "shop");
        store
            .create(
                &ns,
                json!({"metadata": {"name": "shop", "finalizers": ["kubernetes"]}}),
                "op",
            )
            .unwrap();
        let cm = target(&store, "", "configmaps", "shop", "a");
        store
            .create(&cm, json!({"metadata": {"name": "a"}}), "op")
            .unwrap();
        assert!(matches!(
            store.delete(&ns, &json!({})).unwrap(),
            Deleted::Pending(_)
        ));
        assert!(store.get(&cm).is_err());
        let collection = target(&store, "", "configmaps", "shop", "");
        let refused = store
            .create(&collection, json!({"metadata": {"name": "b"}}), "op")
            .unwrap_err();
        assert_eq!(refused.code, 403, "{}", refused.message);
    }

    #[test]
    fn a_put_must_name_the_object_it_replaces() {
        let mut store = Store::new();
        let t = target(&store, "apps", "deployments", "default", "web");
        store
            .create(&t, json!({"metadata": {"name": "web"}, "spec": {}}), "op")
            .unwrap();
        let wrong = store
            .update(&t, json!({"metadata": {"name": "api"}, "spec": {}}), "op")
            .unwrap_err();
        assert_eq!(wrong.code, 400);
        let missing = target(&store, "apps", "deployments", "default", "nope");
        assert_eq!(
            store.update(&missing, json!({}), "op").unwrap_err().code,
            404
        );
    }

    #[test]
    fn history_after_compaction_is_gone() {
        let mut store = Store::new();
        let t = target(&store, "", "configmaps", "default", "a");
        store
            .create(&t, json!({"metadata": {"name": "a"}}), "op")
            .unwrap();
        let filter = Filter {
            group: String::new(),
            version: "v1".into(),
            plural: "configmaps".into(),
            namespace: None,
            labels: Selector::default(),
            fields: Selector::default(),
        };
        let (replayed, _, _) = store.watch(&filter, Some(1)).unwrap();
        assert_eq!(replayed.len(), 1);
        store.compact();
        let expired = store.watch(&filter, Some(1)).unwrap_err();
        assert_eq!((expired.code, expired.reason), (410, "Expired"));
        assert!(store.watch(&filter, Some(store.resource_version())).is_ok());
    }
}
