//! Field ownership (`metadata.managedFields`) and server-side apply, at the level of leaf fields.
//!
//! The real server tracks ownership in a structured way that knows each type's schema: maps are
//! granular, lists are atomic, sets, or maps keyed by a merge key (containers by `name`). Here
//! every object key is granular and every list is atomic: a leaf is a scalar or a list, named by
//! its path of keys (an empty object owns nothing). An update (create, PUT, a non-apply PATCH) gives its
//! manager the leaves it changed and takes them from everyone else, never conflicting; an apply
//! conflicts where another manager owns a leaf the applied object sets to another value.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// A leaf field, as its keys from the object's root.
pub type Path = Vec<String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    /// Empty for the main resource, else `status`, `scale`, `resize`.
    pub subresource: String,
    pub api_version: String,
    pub time: String,
    pub fields: BTreeSet<Path>,
}

/// Another manager owns a field the apply sets to a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub operation: Operation,
    pub subresource: String,
    pub api_version: String,
    pub time: String,
    pub path: Path,
}

/// Who asks for a change: the manager, and where.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub subresource: &'a str,
    pub api_version: &'a str,
    pub time: &'a str,
}

/// Metadata the server owns, never tracked as anyone's field.
const SYSTEM_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

fn untracked(path: &[String]) -> bool {
    match path {
        [top] => top == "apiVersion" || top == "kind" || top == "metadata",
        [meta, field] => meta == "metadata" && SYSTEM_METADATA.contains(&field.as_str()),
        _ => false,
    }
}

/// The object's leaves with their values (`null`s left out, as unset).
pub fn leaves(object: &Value) -> BTreeMap<Path, Value> {
    let mut out = BTreeMap::new();
    walk(object, &mut Vec::new(), &mut out);
    out
}

fn walk(value: &Value, path: &mut Path, out: &mut BTreeMap<Path, Value>) {
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (key, child) in map {
                path.push(key.clone());
                walk(child, path, out);
                path.pop();
            }
        }
        leaf => {
            if !untracked(path) {
                out.insert(path.clone(), leaf.clone());
            }
        }
    }
}

fn overlap(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

pub fn get<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |at, key| at.get(key))
}

/// Removes a leaf, and the objects above it that it leaves empty (below the top level).
pub fn remove(object: &mut Value, path: &[String]) {
    let Some((last, above)) = path.split_last() else {
        return;
    };
    let mut at = &mut *object;
    for key in above {
        match at.get_mut(key) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Some(map) = at.as_object_mut() {
        map.remove(last);
        if map.is_empty() && above.len() > 1 {
            remove(object, above);
        }
    }
}

/// Objects merge key by key, anything else replaces; `null`s are left out.
pub fn deep_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(target), Value::Object(applied)) => {
            for (key, value) in applied {
                if value.is_null() {
                    continue;
                }
                match target.get_mut(key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        let mut fresh = Value::Object(Map::new());
                        deep_merge(&mut fresh, value);
                        target.insert(key.clone(), fresh);
                    }
                }
            }
        }
        (target, applied) => *target = applied.clone(),
    }
}

/// Records an update: its manager takes the leaves it changed; removed leaves go from everyone.
pub fn record_update(entries: &mut Vec<Entry>, old: &Value, new: &Value, writer: &Writer) {
    let before = leaves(old);
    let after = leaves(new);
    let changed: Vec<&Path> = after
        .iter()
        .filter(|(path, value)| before.get(*path) != Some(value))
        .map(|(path, _)| path)
        .collect();
    let removed: Vec<&Path> = before.keys().filter(|p| !after.contains_key(*p)).collect();
    for entry in entries.iter_mut() {
        entry
            .fields
            .retain(|owned| !changed.iter().chain(&removed).any(|p| overlap(owned, p)));
    }
    if !changed.is_empty() {
        let entry = entry_for(entries, writer, Operation::Update);
        entry.fields.extend(changed.into_iter().cloned());
        entry.time = writer.time.to_string();
    }
    entries.retain(|e| !e.fields.is_empty());
}

fn entry_for<'e>(
    entries: &'e mut Vec<Entry>,
    writer: &Writer,
    operation: Operation,
) -> &'e mut Entry {
    let at = entries.iter().position(|e| {
        e.manager == writer.manager
            && e.operation == operation
            && e.subresource == writer.subresource
    });
    let at = at.unwrap_or_else(|| {
        entries.push(Entry {
            manager: writer.manager.to_string(),
            operation,
            subresource: writer.subresource.to_string(),
            api_version: writer.api_version.to_string(),
            time: writer.time.to_string(),
            fields: BTreeSet::new(),
        });
        entries.len() - 1
    });
    &mut entries[at]
}

/// Server-side apply of `applied` by `writer` onto `current` (`{}` when the object is new):
/// the merged object, or the conflicts when another manager owns a field set to another value
/// and `force` is off. With `force`, the applier takes those fields. The fields the writer
/// applied last time and no longer applies are removed unless someone else owns them.
pub fn apply(
    current: &Value,
    applied: &Value,
    entries: &mut Vec<Entry>,
    writer: &Writer,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let wanted = leaves(applied);
    let mut conflicts = Vec::new();
    for entry in entries.iter().filter(|e| e.manager != writer.manager) {
        for owned in &entry.fields {
            for (path, value) in &wanted {
                if overlap(owned, path) && get(current, path) != Some(value) {
                    conflicts.push(Conflict {
                        manager: entry.manager.clone(),
                        operation: entry.operation,
                        subresource: entry.subresource.clone(),
                        api_version: entry.api_version.clone(),
                        time: entry.time.clone(),
                        path: owned.clone(),
                    });
                }
            }
        }
    }
    conflicts.dedup();
    if !conflicts.is_empty() {
        if !force {
            return Err(conflicts);
        }
        for entry in entries.iter_mut().filter(|e| e.manager != writer.manager) {
            entry
                .fields
                .retain(|owned| !conflicts.iter().any(|c| &c.path == owned));
        }
    }
    let mut merged = current.clone();
    deep_merge(&mut merged, applied);
    let previous = entries
        .iter()
        .find(|e| {
            e.manager == writer.manager
                && e.operation == Operation::Apply
                && e.subresource == writer.subresource
        })
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for dropped in previous.iter().filter(|p| !wanted.contains_key(*p)) {
        let kept_by_other = entries.iter().any(|e| {
            !(e.manager == writer.manager && e.operation == Operation::Apply)
                && e.fields.iter().any(|owned| overlap(owned, dropped))
        });
        if !kept_by_other {
            remove(&mut merged, dropped);
        }
    }
    let entry = entry_for(entries, writer, Operation::Apply);
    entry.fields = wanted.into_keys().collect();
    entry.time = writer.time.to_string();
    entries.retain(|e| !e.fields.is_empty());
    Ok(merged)
}

/// `metadata.managedFields`, in the real server's `FieldsV1` form (`{"f:spec":{"f:replicas":{}}}`).
pub fn render(entries: &[Entry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut tree = Map::new();
                for path in &e.fields {
                    let mut at = &mut tree;
                    for key in path {
                        at = at
                            .entry(format!("f:{key}"))
                            .or_insert_with(|| Value::Object(Map::new()))
                            .as_object_mut()
                            .expect("every node of the tree is an object");
                    }
                }
                let mut out = serde_json::json!({
                    "manager": e.manager,
                    "operation": e.operation.as_str(),
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": tree,
                });
                if !e.subresource.is_empty() {
                    out["subresource"] = Value::String(e.subresource.clone());
                }
                out
            })
            .collect(),
    )
}

/// The path as the real server writes it in a conflict: `.spec.replicas`.
pub fn dotted(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            subresource: "",
            api_version: "v1",
            time: "t",
        }
    }

    fn p(path: &str) -> Path {
        path.split('.').map(String::from).collect()
    }

    #[test]
    fn leaves_skip_system_metadata_and_treat_lists_as_atomic() {
        let l = leaves(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "uid": "u", "labels": {"x": "y"}},
            "data": {"k": "v"}, "list": [1, 2], "empty": {}
        }));
        let keys: Vec<_> = l.keys().cloned().collect();
        assert_eq!(keys, vec![p("data.k"), p("list"), p("metadata.labels.x")]);
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let mut entries = Vec::new();
        let obj = apply(
            &json!({}),
            &json!({"spec": {"replicas": 1, "a": 1}}),
            &mut entries,
            &writer("op"),
            false,
        )
        .unwrap();
        // The same value is shared without conflict.
        let obj = apply(
            &obj,
            &json!({"spec": {"a": 1}}),
            &mut entries,
            &writer("other"),
            false,
        )
        .unwrap();
        let conflicts = apply(
            &obj,
            &json!({"spec": {"replicas": 3}}),
            &mut entries,
            &writer("hpa"),
            false,
        )
        .unwrap_err();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].manager, "op");
        assert_eq!(dotted(&conflicts[0].path), ".spec.replicas");
        let obj = apply(
            &obj,
            &json!({"spec": {"replicas": 3}}),
            &mut entries,
            &writer("hpa"),
            true,
        )
        .unwrap();
        assert_eq!(obj["spec"]["replicas"], 3);
        let op = entries.iter().find(|e| e.manager == "op").unwrap();
        assert!(!op.fields.contains(&p("spec.replicas")));
        // "op" stops applying both fields: `a` stays (shared with "other"), replicas is hpa's.
        let obj = apply(
            &obj,
            &json!({"spec": {"b": 2}}),
            &mut entries,
            &writer("op"),
            false,
        )
        .unwrap();
        assert_eq!(obj["spec"], json!({"replicas": 3, "a": 1, "b": 2}));
        let obj = apply(
            &obj,
            &json!({"spec": {}}),
            &mut entries,
            &writer("op"),
            false,
        )
        .unwrap();
        assert_eq!(obj["spec"], json!({"replicas": 3, "a": 1}));
    }

    #[test]
    fn an_update_takes_the_fields_it_changes() {
        let mut entries = Vec::new();
        let old = apply(
            &json!({}),
            &json!({"spec": {"replicas": 1}}),
            &mut entries,
            &writer("op"),
            false,
        )
        .unwrap();
        let new = json!({"spec": {"replicas": 4}});
        record_update(&mut entries, &old, &new, &writer("kubectl"));
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].manager, "kubectl");
        let rendered = render(&entries);
        assert_eq!(
            rendered[0]["fieldsV1"],
            json!({"f:spec": {"f:replicas": {}}})
        );
        assert_eq!(rendered[0]["operation"], "Update");
    }
}
