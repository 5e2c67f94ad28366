//! `secrets` and `configs`: files declared at the top level (`file:` sources) and mounted
//! read-only into the services that name them, secrets at `/run/secrets/NAME` and configs at
//! `/NAME` unless a `target` says otherwise, as Docker Compose does.

use std::collections::BTreeMap;

use crate::context::Context;
use crate::yaml::{Kind, Node};
use crate::{child, out, Reader};

/// The two kinds of mounted files.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Secret,
    Config,
}

impl FileKind {
    fn key(self) -> &'static str {
        match self {
            FileKind::Secret => "secrets",
            FileKind::Config => "configs",
        }
    }

    fn one(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }

    /// Where a file named `target` (absolute, or relative to the kind's directory) goes.
    fn target(self, target: &str) -> String {
        match (self, target.starts_with('/')) {
            (_, true) => target.to_owned(),
            (FileKind::Secret, false) => format!("/run/secrets/{target}"),
            (FileKind::Config, false) => format!("/{target}"),
        }
    }
}

/// The top-level `secrets` or `configs`: each name's host file, written as a manifest bind
/// source (relative to the Compose file's directory).
pub(crate) fn declared(
    r: &mut Reader<'_>,
    cx: &Context<'_>,
    kind: FileKind,
    node: &Node,
) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    if node.is_null() {
        return files;
    }
    let Some(entries) = r.map(node, kind.key()) else {
        return files;
    };
    for (key, value) in entries {
        let name = key.text().unwrap_or_default().to_owned();
        let field = child(kind.key(), &name);
        let Some(settings) = r.map(value, &field) else {
            continue;
        };
        let mut file = None;
        for (k, v) in settings {
            let setting = k.text().unwrap_or_default();
            let f = child(&field, setting);
            match setting {
                _ if setting.starts_with("x-") => {}
                "file" => file = r.string(v, &f).map(str::to_owned),
                "environment" | "content" => r.refuse(
                    k,
                    &f,
                    &format!("a {} comes from a file here, so that its value is never written into the application's state", kind.one()),
                    &format!("write the value into a file (readable by root only) and name it with `file: ./{name}.txt`"),
                ),
                "external" | "name" => r.refuse(
                    k,
                    &f,
                    &format!("there is no {} store outside the application", kind.one()),
                    "name a file with `file:`",
                ),
                "driver" | "driver_opts" | "template_driver" | "labels" => r.refuse(
                    k,
                    &f,
                    &format!("a {} is a file bound read-only into the instance", kind.one()),
                    &format!("remove `{setting}`"),
                ),
                _ => r.unknown(k, &f, &["file"]),
            }
        }
        let Some(file) = file else {
            if !settings.iter().any(|(k, _)| {
                matches!(
                    k.text(),
                    Some("environment" | "content" | "external" | "name")
                )
            }) {
                r.error(
                    key.offset,
                    &field,
                    "missing required key `file`",
                    Some(format!("name the file: `file: ./{name}.txt`")),
                );
            }
            continue;
        };
        let Some(path) = crate::expand_home(&file, cx.vars) else {
            r.error(
                value.offset,
                &field,
                "`~` needs HOME in the environment",
                None,
            );
            continue;
        };
        let path = path.display().to_string();
        let source = if path.starts_with('/') || path.starts_with('.') {
            path
        } else {
            format!("./{path}")
        };
        files.insert(name, source);
    }
    files
}

/// A service's `secrets` or `configs` as read-only bind mounts (manifest `volumes` entries).
pub(crate) fn mounts(
    r: &mut Reader<'_>,
    kind: FileKind,
    declared: &BTreeMap<String, String>,
    node: &Node,
    field: &str,
) -> Vec<(String, usize, String)> {
    let Kind::Seq(items) = &node.kind else {
        r.expected(node, field, &format!("a list of {}", kind.key()));
        return Vec::new();
    };
    let mut written = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let (source, target, at) = match &item.kind {
            Kind::Map(entries) => {
                let mut source = None;
                let mut target = None;
                let mut ok = true;
                for (k, v) in entries {
                    let setting = k.text().unwrap_or_default();
                    let sf = child(&f, setting);
                    match setting {
                        _ if setting.starts_with("x-") => {}
                        "source" => source = r.string(v, &sf).map(|s| (s.to_owned(), v.offset)),
                        "target" => target = r.string(v, &sf).map(str::to_owned),
                        "uid" | "gid" | "mode" => {
                            ok = false;
                            r.refuse(
                                k,
                                &sf,
                                &format!("the {} is the host file itself, bound read-only: its owner and mode are the host file's", kind.one()),
                                "remove it, and give the file the owner and mode the service needs on the host",
                            );
                        }
                        _ => {
                            ok = false;
                            r.unknown(k, &sf, &["source", "target"]);
                        }
                    }
                }
                let Some((source, at)) = source else {
                    if ok {
                        r.error(
                            item.offset,
                            &f,
                            "missing required key `source`",
                            Some(format!(
                                "name a {} of the top-level `{}`",
                                kind.one(),
                                kind.key()
                            )),
                        );
                    }
                    continue;
                };
                if !ok {
                    continue;
                }
                let target = target.unwrap_or_else(|| source.clone());
                (source, target, at)
            }
            _ => match r.string(item, &f) {
                Some(name) => (name.to_owned(), name.to_owned(), item.offset),
                None => continue,
            },
        };
        let Some(file) = declared.get(&source) else {
            let hint = match declared.keys().map(String::as_str).collect::<Vec<_>>() {
                names if names.is_empty() => format!(
                    "declare it at the top level: `{}: {{ {source}: {{ file: ./{source}.txt }} }}`",
                    kind.key()
                ),
                names => format!("the {} declared are: {}", kind.key(), names.join(", ")),
            };
            r.error(
                at,
                &f,
                format!(
                    "{} `{source}` is not declared in the top-level `{}`",
                    kind.one(),
                    kind.key()
                ),
                Some(hint),
            );
            continue;
        };
        let target = kind.target(&target);
        if target.split('/').any(|c| c == "..") {
            r.error(
                item.offset,
                &f,
                format!("the target {target:?} leaves its directory"),
                Some("write a path without `..`".into()),
            );
            continue;
        }
        written.push((
            format!(
                "  {{ source = {}, target = {}, read_only = true }},",
                out::string(file),
                out::string(&target)
            ),
            item.offset,
            f,
        ));
    }
    written
}
