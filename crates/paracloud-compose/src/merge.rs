//! Compose's merge of one service definition over another, for `extends` (and the same rules
//! as override files): mappings merge key by key, the later value winning; `command`,
//! `entrypoint` and a health check's `test` are replaced; `environment`, `labels` and `sysctls`
//! merge as mappings whichever form (map or `KEY=VALUE` list) each side uses; `volumes`,
//! `tmpfs`, `secrets` and `configs` merge by their target, the later one winning; other lists
//! are appended, without repeating an item.
//!
//! Every node keeps its own offset, so errors point where each value was written.

use crate::yaml::{Kind, Node};

/// Keys whose value replaces the base's whatever its shape.
const REPLACED: &[&str] = &["command", "entrypoint", "test"];
/// Keys whose lists are mappings written as `KEY=VALUE`.
const DICTS: &[&str] = &[
    "environment",
    "labels",
    "sysctls",
    "annotations",
    "extra_hosts",
];
/// Keys whose items are unique by their target path.
const BY_TARGET: &[&str] = &["volumes", "tmpfs", "secrets", "configs"];

/// `over` merged onto `base`; `key` is the key both are the value of (`""` at the top).
pub(crate) fn merge(key: &str, base: &Node, over: &Node) -> Node {
    if REPLACED.contains(&key) {
        return over.clone();
    }
    if DICTS.contains(&key) {
        if let (Some(b), Some(o)) = (as_map(base), as_map(over)) {
            return merge_maps(&b, &o);
        }
    }
    match (&base.kind, &over.kind) {
        (Kind::Map(b), Kind::Map(o)) => merge_maps(
            &Node::map(base.offset, b.clone()),
            &Node::map(over.offset, o.clone()),
        ),
        (Kind::Seq(b), Kind::Seq(o)) => {
            let mut items: Vec<Node> = Vec::new();
            for item in b.iter().chain(o) {
                if BY_TARGET.contains(&key) {
                    let target = target_of(key, item);
                    items.retain(|i| target.is_none() || target_of(key, i) != target);
                } else if items.iter().any(|i| same(i, item)) {
                    continue;
                }
                items.push(item.clone());
            }
            Node::seq(over.offset, items)
        }
        _ => over.clone(),
    }
}

fn merge_maps(base: &Node, over: &Node) -> Node {
    let (Kind::Map(b), Kind::Map(o)) = (&base.kind, &over.kind) else {
        return over.clone();
    };
    let mut entries: Vec<(Node, Node)> = b.clone();
    for (k, v) in o {
        match entries.iter_mut().find(|(bk, _)| bk.text() == k.text()) {
            Some((bk, bv)) => {
                *bv = merge(k.text().unwrap_or_default(), bv, v);
                *bk = k.clone();
            }
            None => entries.push((k.clone(), v.clone())),
        }
    }
    Node::map(over.offset, entries)
}

/// A mapping, or a list of `KEY=VALUE` strings read as one (a key without `=` maps to null).
fn as_map(node: &Node) -> Option<Node> {
    match &node.kind {
        Kind::Map(_) => Some(node.clone()),
        Kind::Seq(items) => {
            let mut entries = Vec::new();
            for item in items {
                let text = item.text()?;
                let (k, v) = match text.split_once('=') {
                    Some((k, v)) => (k, Node::scalar(item.offset, v, false)),
                    None => (text, Node::scalar(item.offset, "", true)),
                };
                entries.push((Node::scalar(item.offset, k, true), v));
            }
            Some(Node::map(node.offset, entries))
        }
        _ => None,
    }
}

/// Where an item of a `BY_TARGET` list is mounted.
fn target_of(key: &str, item: &Node) -> Option<String> {
    match &item.kind {
        Kind::Scalar { text, .. } => Some(match key {
            // `SOURCE:TARGET[:MODE]`
            "volumes" => text.split(':').nth(1).unwrap_or(text).to_owned(),
            // `PATH[:OPTIONS]`
            "tmpfs" => text.split(':').next().unwrap_or(text).to_owned(),
            // A secret or config by name: its default target.
            _ => text.clone(),
        }),
        Kind::Map(entries) => {
            let get = |name: &str| {
                entries
                    .iter()
                    .find(|(k, _)| k.text() == Some(name))
                    .and_then(|(_, v)| v.text())
                    .map(str::to_owned)
            };
            get("target").or_else(|| get("source"))
        }
        Kind::Seq(_) => None,
    }
}

/// The same value, wherever it was written.
fn same(a: &Node, b: &Node) -> bool {
    match (&a.kind, &b.kind) {
        (Kind::Scalar { text: x, .. }, Kind::Scalar { text: y, .. }) => x == y,
        (Kind::Seq(x), Kind::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Kind::Map(x), Kind::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| same(ka, kb) && same(va, vb))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;

    fn merged(base: &str, over: &str) -> Node {
        merge("", &parse(base).unwrap(), &parse(over).unwrap())
    }

    fn get<'n>(node: &'n Node, key: &str) -> &'n Node {
        let Kind::Map(entries) = &node.kind else {
            panic!("not a map")
        };
        &entries
            .iter()
            .find(|(k, _)| k.text() == Some(key))
            .unwrap()
            .1
    }

    fn texts(node: &Node) -> Vec<String> {
        match &node.kind {
            Kind::Seq(items) => items.iter().map(|i| i.text().unwrap().to_owned()).collect(),
            Kind::Map(entries) => entries
                .iter()
                .map(|(k, v)| format!("{}={}", k.text().unwrap(), v.text().unwrap()))
                .collect(),
            Kind::Scalar { text, .. } => vec![text.clone()],
        }
    }

    #[test]
    fn the_later_definition_wins_key_by_key() {
        let m = merged(
            "image: a\ncommand: [x, y]\nenvironment: [A=1, B=2]\nports: ['80']\nvolumes: ['d:/data', 'e:/etc/e']\n",
            "image: b\ncommand: [z]\nenvironment: {B: 3, C: 4}\nports: ['81', '80']\nvolumes: ['f:/data']\n",
        );
        assert_eq!(texts(get(&m, "image")), ["b"]);
        assert_eq!(texts(get(&m, "command")), ["z"]);
        assert_eq!(texts(get(&m, "environment")), ["A=1", "B=3", "C=4"]);
        assert_eq!(texts(get(&m, "ports")), ["80", "81"]);
        assert_eq!(texts(get(&m, "volumes")), ["e:/etc/e", "f:/data"]);
    }

    #[test]
    fn nested_mappings_merge_and_a_health_test_is_replaced() {
        let m = merged(
            "healthcheck: {test: [CMD, a], retries: 3}\ndeploy: {resources: {limits: {cpus: '1'}}}\n",
            "healthcheck: {test: [CMD, b]}\ndeploy: {resources: {limits: {memory: 1g}}}\n",
        );
        assert_eq!(texts(get(get(&m, "healthcheck"), "test")), ["CMD", "b"]);
        assert_eq!(texts(get(get(&m, "healthcheck"), "retries")), ["3"]);
        let limits = get(get(get(&m, "deploy"), "resources"), "limits");
        assert_eq!(texts(limits), ["cpus=1", "memory=1g"]);
    }
}
