//! The bodies of PATCH requests: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a
//! strategic merge patch reduced to what the operator's objects need.

use serde_json::{Map, Value};

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// A strategic merge patch, simplified: a merge patch, except that a list whose items are all
/// objects with a `name` (containers, env, volumes, ports with names) merges item by item on
/// that key, where an item `{"name": N, "$patch": "delete"}` removes N, as the real patch does for
/// the lists whose merge key is `name`. Other directives (`$retainKeys`, `$setElementOrder`) are
/// ignored, and every other list, `metadata.finalizers` included, is replaced whole.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = strip_directives(patch);
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(&Value::Object(patch.clone()));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Array(items) if keyed_by_name(items) => {
                let current = target
                    .entry(key.clone())
                    .or_insert(Value::Array(Vec::new()));
                match current {
                    Value::Array(current) if current.iter().all(has_name) => {
                        merge_by_name(current, items)
                    }
                    other => *other = strip_directives(value),
                }
            }
            _ => strategic_merge_patch(target.entry(key.clone()).or_insert(Value::Null), value),
        }
    }
}

fn has_name(item: &Value) -> bool {
    item.get("name").is_some_and(Value::is_string)
}

fn keyed_by_name(items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(has_name)
}

fn merge_by_name(current: &mut Vec<Value>, items: &[Value]) {
    for item in items {
        let name = &item["name"];
        let found = current.iter().position(|c| &c["name"] == name);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (found, delete) {
            (Some(at), true) => {
                current.remove(at);
            }
            (None, true) => {}
            (Some(at), false) => strategic_merge_patch(&mut current[at], item),
            (None, false) => current.push(strip_directives(item)),
        }
    }
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Why a JSON patch was not applied; the real server answers 400 for a patch it cannot decode
/// and 422 for one that does not apply (a failed `test` included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonPatchError {
    Malformed(String),
    NotApplied(String),
}

/// RFC 6902, all or nothing: `doc` is left as it was when an operation fails.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), JsonPatchError> {
    let Value::Array(ops) = ops else {
        return Err(JsonPatchError::Malformed(
            "a JSON patch must be an array of operations".into(),
        ));
    };
    let mut work = doc.clone();
    for op in ops {
        let name = op["op"]
            .as_str()
            .ok_or_else(|| JsonPatchError::Malformed(format!("operation without \"op\": {op}")))?;
        let path = pointer(op, "path")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| JsonPatchError::Malformed(format!("{name} needs a value")))
        };
        match name {
            "add" => add(&mut work, &path, value()?)?,
            "remove" => {
                remove(&mut work, &path)?;
            }
            "replace" => {
                remove(&mut work, &path)?;
                add(&mut work, &path, value()?)?;
            }
            "test" => {
                let expected = value()?;
                if get(&work, &path) != Some(&expected) {
                    return Err(JsonPatchError::NotApplied(format!(
                        "testing value {} failed: test failed",
                        op["path"].as_str().unwrap_or_default()
                    )));
                }
            }
            "move" => {
                let from = pointer(op, "from")?;
                let moved = remove(&mut work, &from)?;
                add(&mut work, &path, moved)?;
            }
            "copy" => {
                let from = pointer(op, "from")?;
                let copied = get(&work, &from).cloned().ok_or_else(|| missing(&from))?;
                add(&mut work, &path, copied)?;
            }
            other => {
                return Err(JsonPatchError::Malformed(format!(
                    "unexpected kind of operation: {other}"
                )))
            }
        }
    }
    *doc = work;
    Ok(())
}

fn pointer(op: &Value, field: &str) -> Result<Vec<String>, JsonPatchError> {
    let text = op[field]
        .as_str()
        .ok_or_else(|| JsonPatchError::Malformed(format!("operation without \"{field}\": {op}")))?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(JsonPatchError::Malformed(format!(
            "a JSON pointer starts with '/': {text}"
        )));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn missing(path: &[String]) -> JsonPatchError {
    JsonPatchError::NotApplied(format!(
        "doc is missing path: \"/{}\": missing value",
        path.join("/")
    ))
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |at, token| match at {
        Value::Object(map) => map.get(token),
        Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn parent<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, JsonPatchError> {
    let mut at = doc;
    for token in &path[..path.len() - 1] {
        at = match at {
            Value::Object(map) => map.get_mut(token),
            Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| missing(path))?;
    }
    Ok(at)
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), JsonPatchError> {
    let Some(last) = path.last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, path)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) if last == "-" => {
            items.push(value);
            Ok(())
        }
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i <= items.len() => {
                items.insert(i, value);
                Ok(())
            }
            _ => Err(missing(path)),
        },
        _ => Err(missing(path)),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, JsonPatchError> {
    let Some(last) = path.last() else {
        return Ok(std::mem::take(doc));
    };
    match parent(doc, path)? {
        Value::Object(map) => map.remove(last).ok_or_else(|| missing(path)),
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => Ok(items.remove(i)),
            _ => Err(missing(path)),
        },
        _ => Err(missing(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_removes_nulls_and_replaces_lists() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut doc, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(doc, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn strategic_patch_merges_containers_by_name() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "app", "image": "a", "resources": {"requests": {"cpu": "1"}}},
            {"name": "side", "image": "s"}
        ]}});
        strategic_merge_patch(
            &mut pod,
            &json!({"spec": {"containers": [
                {"name": "app", "resources": {"requests": {"cpu": "2"}}},
                {"name": "side", "$patch": "delete"}
            ]}}),
        );
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
                {"name": "app", "image": "a", "resources": {"requests": {"cpu": "2"}}}
            ]}})
        );
    }

    #[test]
    fn json_patch_applies_all_or_nothing() {
        let mut doc = json!({"spec": {"replicas": 1, "l": ["a"]}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/spec/replicas", "value": 1},
                {"op": "replace", "path": "/spec/replicas", "value": 2},
                {"op": "add", "path": "/spec/l/-", "value": "b"},
                {"op": "add", "path": "/spec/x~1y", "value": true},
                {"op": "remove", "path": "/spec/l/0"}
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"spec": {"replicas": 2, "l": ["b"], "x/y": true}})
        );
        let before = doc.clone();
        let failed = json_patch(
            &mut doc,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 5},
                {"op": "test", "path": "/spec/replicas", "value": 1}
            ]),
        );
        assert!(matches!(failed, Err(JsonPatchError::NotApplied(_))));
        assert_eq!(doc, before);
        assert!(matches!(
            json_patch(&mut doc, &json!({"op": "add"})),
            Err(JsonPatchError::Malformed(_))
        ));
        assert!(matches!(
            json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])),
            Err(JsonPatchError::NotApplied(_))
        ));
    }
}
