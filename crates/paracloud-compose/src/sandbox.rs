//! A service's sandbox keys: `init`, `read_only`, `tmpfs` (and `tmpfs` volumes), `shm_size`,
//! `ulimits`, `sysctls`, `userns_mode`, and the capabilities (`cap_add`, `cap_drop`) over Docker's default set.

use crate::table::Table;
use crate::yaml::{Kind, Node};
use crate::{child, out, values, Reader};

/// The capabilities Docker gives a container, which Compose files expect; native manifests keep
/// none unless asked.
pub(crate) const DOCKER_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// `init` and `read_only`: the same booleans in both formats.
pub(crate) fn flags(r: &mut Reader<'_>, entries: &[(Node, Node)], path: &str, t: &mut Table) {
    for key in ["init", "read_only"] {
        if let Some((_, value)) = entries.iter().find(|(k, _)| k.text() == Some(key)) {
            let f = child(path, key);
            if let Some(on) = r.boolean(value, &f) {
                t.key(format!("{key} = {on}"), value.offset, &f);
            }
        }
    }
}

/// `userns_mode`: `host` runs the service with host ids, as Docker's `--userns=host` leaves a
/// container out of the daemon's user-namespace remapping (`userns = false` in the manifest).
pub(crate) fn userns_mode(r: &mut Reader<'_>, entries: &[(Node, Node)], path: &str, t: &mut Table) {
    let Some((_, value)) = entries
        .iter()
        .find(|(k, _)| k.text() == Some("userns_mode"))
    else {
        return;
    };
    let f = child(path, "userns_mode");
    match value.text() {
        Some("host") => t.key("userns = false".to_string(), value.offset, &f),
        Some(other) => r.error(
            value.offset,
            &f,
            format!("{other:?} is not a user namespace mode Paracloud takes"),
            Some(
                "write \"host\" to run the service with host ids, or remove `userns_mode` for a user namespace of its own (the default)"
                    .to_string(),
            ),
        ),
        None => r.expected(value, &f, "\"host\""),
    }
}

/// A size as the manifest writes it: bytes as a number, else a string with its unit.
pub(crate) fn size(r: &mut Reader<'_>, value: &Node, field: &str, example: &str) -> Option<String> {
    match value.text().map(values::memory) {
        Some(Ok(m)) if m.bytes().all(|b| b.is_ascii_digit()) => Some(m),
        Some(Ok(m)) => Some(out::string(&m)),
        Some(Err(e)) => {
            r.error(
                value.offset,
                field,
                e,
                Some(format!(
                    "write bytes or a size such as \"{example}\" or \"1g\""
                )),
            );
            None
        }
        None => {
            r.expected(value, field, &format!("a size such as \"{example}\""));
            None
        }
    }
}

pub(crate) fn shm_size(r: &mut Reader<'_>, value: &Node, field: &str, t: &mut Table) {
    if let Some(s) = size(r, value, field, "64m") {
        t.key(format!("shm_size = {s}"), value.offset, field);
    }
}

/// One tmpfs as a manifest entry: `"/run"` or `{ target = ..., size = ..., mode = ... }`.
fn tmpfs_entry(target: &str, size: Option<String>, mode: Option<String>) -> String {
    if size.is_none() && mode.is_none() {
        return out::string(target);
    }
    let mut parts = vec![format!("target = {}", out::string(target))];
    if let Some(size) = size {
        parts.push(format!("size = {size}"));
    }
    if let Some(mode) = mode {
        parts.push(format!("mode = {}", out::string(&mode)));
    }
    format!("{{ {} }}", parts.join(", "))
}

/// `tmpfs: /run` or a list, each `PATH[:OPTIONS]` as `docker run --tmpfs` takes it.
pub(crate) fn tmpfs_key(
    r: &mut Reader<'_>,
    value: &Node,
    field: &str,
) -> Vec<(String, usize, String)> {
    let items: Vec<(String, &Node, String)> = match &value.kind {
        Kind::Seq(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let f = format!("{field}[{i}]");
                r.string(item, &f).map(|s| (s.to_owned(), item, f))
            })
            .collect(),
        _ => match r.string(value, field) {
            Some(s) => vec![(s.to_owned(), value, field.to_owned())],
            None => Vec::new(),
        },
    };
    let mut written = Vec::new();
    for (text, node, f) in items {
        let (target, options) = text.split_once(':').unwrap_or((&text, ""));
        let mut size_text = None;
        let mut mode = None;
        let mut ok = true;
        for option in options.split(',').filter(|o| !o.is_empty()) {
            match option.split_once('=') {
                Some(("size", s)) => match values::memory(s) {
                    Ok(m) if m.bytes().all(|b| b.is_ascii_digit()) => size_text = Some(m),
                    Ok(m) => size_text = Some(out::string(&m)),
                    Err(e) => {
                        ok = false;
                        r.error(node.offset, &f, e, Some("write `size=64m`".into()));
                    }
                },
                Some(("mode", m)) => mode = Some(m.to_owned()),
                None if matches!(option, "rw" | "nosuid" | "nodev" | "exec") => {}
                _ => {
                    ok = false;
                    r.error(
                        node.offset,
                        &f,
                        format!("tmpfs option `{option}` is not supported"),
                        Some("keep `size=`, `mode=`, `rw`, `nosuid`, `nodev` or `exec`: tmpfs mounts are always writable, nosuid and nodev".into()),
                    );
                }
            }
        }
        if ok {
            written.push((
                format!("  {},", tmpfs_entry(target, size_text, mode)),
                node.offset,
                f,
            ));
        }
    }
    written
}

/// A long-syntax volume of `type: tmpfs`.
pub(crate) fn tmpfs_volume(
    r: &mut Reader<'_>,
    entries: &[(Node, Node)],
    node: &Node,
    field: &str,
) -> Option<(String, usize, String)> {
    let mut target = None;
    let mut size_text = None;
    let mut mode = None;
    let mut ok = true;
    for (key, value) in entries {
        let k = key.text().unwrap_or_default();
        let f = child(field, k);
        match k {
            _ if k.starts_with("x-") => {}
            "type" => {}
            "target" => target = r.string(value, &f).map(str::to_owned),
            "read_only" => {
                if r.boolean(value, &f) == Some(true) {
                    ok = false;
                    r.refuse(
                        key,
                        &f,
                        "a read-only tmpfs would stay empty",
                        "remove `read_only`",
                    );
                }
            }
            "tmpfs" => {
                let Some(options) = r.map(value, &f) else {
                    ok = false;
                    continue;
                };
                for (ok_key, ov) in options {
                    let o = ok_key.text().unwrap_or_default();
                    let of = child(&f, o);
                    match o {
                        "size" => size_text = size(r, ov, &of, "64m"),
                        // Compose writes the mode as octal digits (1777).
                        "mode" => mode = r.string(ov, &of).map(str::to_owned),
                        _ => {
                            ok = false;
                            r.unknown(ok_key, &of, &["size", "mode"]);
                        }
                    }
                }
            }
            _ => {
                ok = false;
                r.unknown(key, &f, &["type", "target", "tmpfs", "read_only"]);
            }
        }
    }
    let Some(target) = target else {
        r.error(
            node.offset,
            field,
            "missing required key `target`",
            Some("write where it is mounted: `target: /cache`".into()),
        );
        return None;
    };
    ok.then(|| {
        (
            format!("  {},", tmpfs_entry(&target, size_text, mode)),
            node.offset,
            field.to_owned(),
        )
    })
}

/// Writes the collected tmpfs entries as one list.
pub(crate) fn write_tmpfs(
    t: &mut Table,
    entries: Vec<(String, usize, String)>,
    offset: usize,
    field: &str,
) {
    if entries.is_empty() {
        return;
    }
    t.key("tmpfs = [".into(), offset, field);
    for (text, offset, f) in entries {
        t.key(text, offset, &f);
    }
    t.key("]".into(), offset, field);
}

/// `ulimits: { nofile: { soft: 1024, hard: 4096 }, nproc: 512 }`.
pub(crate) fn ulimits(r: &mut Reader<'_>, value: &Node, field: &str, t: &mut Table) {
    let Some(entries) = r.map(value, field) else {
        return;
    };
    let mut parts = Vec::new();
    for (key, v) in entries {
        let name = key.text().unwrap_or_default();
        let f = child(field, name);
        match &v.kind {
            Kind::Map(limits) => {
                let mut soft = None;
                let mut hard = None;
                for (lk, lv) in limits {
                    let l = lk.text().unwrap_or_default();
                    let lf = child(&f, l);
                    match l {
                        "soft" => soft = r.whole(lv, &lf, 0, i64::MAX as u64),
                        "hard" => hard = r.whole(lv, &lf, 0, i64::MAX as u64),
                        _ => r.unknown(lk, &lf, &["soft", "hard"]),
                    }
                }
                match (soft, hard) {
                    (Some(s), Some(h)) => {
                        parts.push(format!("{} = {{ soft = {s}, hard = {h} }}", out::key(name)))
                    }
                    _ => r.error(
                        v.offset,
                        &f,
                        "a ulimit needs both `soft` and `hard`",
                        Some("write `{ soft: 1024, hard: 4096 }`, or one number for both".into()),
                    ),
                }
            }
            _ => {
                if let Some(n) = r.whole(v, &f, 0, i64::MAX as u64) {
                    parts.push(format!("{} = {n}", out::key(name)));
                }
            }
        }
    }
    if !parts.is_empty() {
        t.key(
            format!("ulimits = {{ {} }}", parts.join(", ")),
            value.offset,
            field,
        );
    }
}

/// `sysctls` as a mapping or a list of `NAME=VALUE`.
pub(crate) fn sysctls(r: &mut Reader<'_>, value: &Node, field: &str, t: &mut Table) {
    let Some(entries) = r.dict(value, field) else {
        return;
    };
    let mut parts = Vec::new();
    for (name, v, offset) in entries {
        match v {
            Some(v) => parts.push(format!("{} = {}", out::string(&name), out::string(&v))),
            None => r.error(
                offset,
                &child(field, &name),
                format!("sysctl `{name}` has no value"),
                Some(format!("write `{name}=VALUE`")),
            ),
        }
    }
    if !parts.is_empty() {
        t.key(
            format!("sysctls = {{ {} }}", parts.join(", ")),
            value.offset,
            field,
        );
    }
}

/// The capabilities kept: Docker's default set without `cap_drop` (`ALL` drops them all), then
/// `cap_add`; a capability both dropped and added is kept, as added.
pub(crate) fn capabilities(
    r: &mut Reader<'_>,
    cap_add: Option<&Node>,
    cap_drop: Option<&Node>,
    path: &str,
    offset: usize,
    t: &mut Table,
) {
    let bare = |cap: &str| {
        let upper = cap.to_ascii_uppercase();
        upper.strip_prefix("CAP_").unwrap_or(&upper).to_owned()
    };
    let mut caps: Vec<String> = DOCKER_CAPABILITIES
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    if let Some(value) = cap_drop {
        if let Some(dropped) = r.strings(value, &child(path, "cap_drop")) {
            for (cap, _) in dropped {
                let cap = bare(cap);
                if cap == "ALL" {
                    caps.clear();
                } else {
                    caps.retain(|c| *c != cap);
                }
            }
        }
    }
    let mut field = child(path, "cap_add");
    let mut offset = offset;
    if let Some(value) = cap_add {
        offset = value.offset;
        if let Some(added) = r.strings(value, &field) {
            for (cap, node) in added {
                let cap = bare(cap);
                if cap == "ALL" {
                    r.error(
                        node.offset,
                        &field,
                        "`cap_add: ALL` is not supported: instances never run privileged",
                        Some("add only the capabilities the service needs".into()),
                    );
                    continue;
                }
                if !caps.contains(&cap) {
                    caps.push(cap);
                }
            }
        }
    } else if let Some(value) = cap_drop {
        offset = value.offset;
        field = child(path, "cap_drop");
    }
    t.key(format!("cap_add = {}", out::strings(&caps)), offset, &field);
}
