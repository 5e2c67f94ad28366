//! One Compose service turned into a `[services.NAME]` table of the manifest.

use std::collections::BTreeMap;

use crate::context::{Context, Declared};
use crate::files::FileKind;
use crate::out::{self, Out};
use crate::table::Table;
use crate::values;
use crate::yaml::{Kind, Node};
use crate::{child, Reader};

/// The service keys read.
const KEYS: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "depends_on",
    "healthcheck",
    "restart",
    "deploy",
    "scale",
    "cpus",
    "mem_limit",
    "pids_limit",
    "storage_opt",
    "user",
    "working_dir",
    "labels",
    "container_name",
    "hostname",
    "stop_signal",
    "stop_grace_period",
    "cap_add",
    "cap_drop",
    "init",
    "read_only",
    "tmpfs",
    "shm_size",
    "ulimits",
    "sysctls",
    "userns_mode",
    "secrets",
    "configs",
    // Read before the service is: the services with no active profile are left out, and
    // `extends` is merged in.
    "profiles",
    "extends",
    "networks",
];

/// Keys of the Compose specification Paracloud refuses: the key, why, and what to do instead.
const REFUSED: &[(&str, &str, &str)] = &[
    ("network_mode", "instances always get their own network namespace on the application's network", "remove `network_mode`: services reach each other by name, and `ports` publishes on the host"),
    ("privileged", "instances never run privileged", "remove `privileged`, and add only the capabilities the service needs to `cap_add`"),
    ("devices", "instances get no host devices", "remove `devices`"),
    ("runtime", "Paracloud is the runtime", "remove `runtime`"),
    ("links", "services reach each other by name", "remove `links`"),
    ("external_links", "an application reaches only its own services", "remove `external_links`"),
    ("platform", "instances run on this machine's platform", "remove `platform`"),
    ("pid", "instances always have their own process namespace", "remove `pid`"),
    ("ipc", "instances always have their own IPC namespace", "remove `ipc`"),
    ("security_opt", "instances run with Paracloud's seccomp profile and no_new_privs", "remove `security_opt`"),
    ("dns", "instances use the application's resolver", "remove it"),
    ("dns_search", "instances use the application's resolver", "remove it"),
    ("extra_hosts", "instances resolve the application's services only", "remove `extra_hosts`"),
    ("logging", "logs are captured to files by the daemon (`paracloud logs`)", "remove `logging`"),
    ("stdin_open", "instances have no terminal", "remove it; use `paracloud exec` to run commands inside"),
    ("tty", "instances have no terminal", "remove it; use `paracloud exec` to run commands inside"),
    ("group_add", "supplementary groups are not supported yet", "remove `group_add`"),
    ("cgroup_parent", "the daemon places instances in its own cgroup", "remove `cgroup_parent`"),
    ("pull_policy", "images are pulled when the store lacks them", "remove `pull_policy`"),
    ("mac_address", "instance addresses are the daemon's", "remove `mac_address`"),
    ("domainname", "instances are named by the daemon", "remove `domainname`"),
    ("volumes_from", "services share data through named volumes", "mount the same named volume in both services"),
];

/// Reads one service and writes its table to `out`.
pub(crate) fn service(
    r: &mut Reader<'_>,
    cx: &Context<'_>,
    declared: &Declared,
    name: &str,
    name_node: &Node,
    node: &Node,
    out: &mut Out,
) {
    let path = child("services", name);
    let Some(entries) = r.map(node, &path) else {
        return;
    };
    let get = |key: &str| entries.iter().find(|(k, _)| k.text() == Some(key));
    let mut t = Table::default();
    let f = |key: &str| child(&path, key);

    for (key, _) in entries {
        let k = key.text().unwrap_or_default();
        if KEYS.contains(&k) || k.starts_with("x-") {
            continue;
        }
        match REFUSED.iter().find(|(refused, _, _)| *refused == k) {
            Some((_, why, instead)) => r.refuse(key, &f(k), why, instead),
            None => r.unknown(key, &f(k), KEYS),
        }
    }

    // The image: `build` wins over `image`, which then only names what Docker would tag.
    match (get("build"), get("image")) {
        (Some((_, build)), _) => {
            if let Some(spec) = build_context(r, build, &f("build")) {
                t.key(
                    format!("build = {}", spec.toml()),
                    build.offset,
                    &f("build"),
                );
            }
        }
        (None, Some((_, image))) => {
            if let Some(image) = r.string(image, &f("image")) {
                // `host`, `dir:` and `oci:` mean other things in a manifest.
                let image = if image == "host" {
                    "host:latest"
                } else {
                    image
                };
                t.key(
                    format!("image = {}", out::string(image)),
                    node_offset(get("image")),
                    &f("image"),
                );
            }
        }
        (None, None) => r.error(
            name_node.offset,
            &f("image"),
            "missing required key `image`",
            Some(
                "add `image: NAME:TAG`, or `build: DIRECTORY` to build it from a Dockerfile".into(),
            ),
        ),
    }

    for key in ["entrypoint", "command"] {
        if let Some((_, value)) = get(key) {
            if let Some(words) = r.words(value, &f(key)) {
                if words.is_empty() {
                    r.error(
                        value.offset,
                        &f(key),
                        format!("an empty `{key}` (clearing the image's) is not supported yet"),
                        Some(format!(
                            "write the {key} to run, or remove the key to keep the image's"
                        )),
                    );
                } else {
                    t.key(
                        format!("{key} = {}", out::strings(&words)),
                        value.offset,
                        &f(key),
                    );
                }
            }
        }
    }

    environment(
        r,
        cx,
        get("env_file").map(|(_, v)| v),
        get("environment").map(|(_, v)| v),
        &path,
        &mut t,
    );
    ports(
        r,
        get("ports").map(|(_, v)| v),
        get("expose").map(|(_, v)| v),
        &path,
        &mut t,
    );
    // Secrets and configs are read-only bind mounts beside the volumes.
    let mut files = Vec::new();
    for (kind, key, declared) in [
        (FileKind::Secret, "secrets", &declared.secrets),
        (FileKind::Config, "configs", &declared.configs),
    ] {
        if let Some((_, value)) = get(key) {
            files.extend(crate::files::mounts(r, kind, declared, value, &f(key)));
        }
    }
    // `tmpfs` volumes join the service's `tmpfs` list.
    let mut tmpfs = volumes(
        r,
        cx,
        &declared.volumes,
        get("volumes").map(|(_, v)| v),
        files,
        &f("volumes"),
        &mut t,
    );
    if let Some((_, value)) = get("depends_on") {
        depends_on(r, value, &f("depends_on"), &mut t);
    }
    if let Some((_, value)) = get("healthcheck") {
        healthcheck(r, value, &f("healthcheck"), &path, &mut t);
    }
    let policy = get("deploy").and_then(|(_, deploy)| match &deploy.kind {
        Kind::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.text() == Some("restart_policy")),
        _ => None,
    });
    match (policy, get("restart")) {
        (Some((key, _)), Some(_)) => r.error(
            key.offset,
            &child(&f("deploy"), "restart_policy"),
            "a service has either `restart` or `deploy.restart_policy`, not both",
            Some("keep one of the two".into()),
        ),
        (Some((_, node)), None) => {
            restart_policy(r, node, &child(&f("deploy"), "restart_policy"), &mut t)
        }
        (None, entry) => restart(r, entry, name_node, &path, &mut t),
    }
    resources(r, entries, &path, &mut t);

    // Keys that are the same string in both formats.
    for key in ["user", "working_dir", "stop_signal"] {
        if let Some((_, value)) = get(key) {
            if let Some(text) = r.string(value, &f(key)) {
                t.key(
                    format!("{key} = {}", out::string(text)),
                    value.offset,
                    &f(key),
                );
            }
        }
    }
    if let Some((_, value)) = get("stop_grace_period") {
        if let Some(d) = duration(r, value, &f("stop_grace_period")) {
            t.key(
                format!("stop_grace_period = {}", out::string(&d)),
                value.offset,
                &f("stop_grace_period"),
            );
        }
    }
    crate::sandbox::capabilities(
        r,
        get("cap_add").map(|(_, v)| v),
        get("cap_drop").map(|(_, v)| v),
        &path,
        name_node.offset,
        &mut t,
    );
    crate::sandbox::flags(r, entries, &path, &mut t);
    crate::sandbox::userns_mode(r, entries, &path, &mut t);
    if let Some((_, value)) = get("networks") {
        crate::networks::service(r, &declared.networks, value, &f("networks"), &mut t);
    }
    if let Some((_, value)) = get("shm_size") {
        crate::sandbox::shm_size(r, value, &f("shm_size"), &mut t);
    }
    if let Some((_, value)) = get("ulimits") {
        crate::sandbox::ulimits(r, value, &f("ulimits"), &mut t);
    }
    if let Some((_, value)) = get("sysctls") {
        crate::sandbox::sysctls(r, value, &f("sysctls"), &mut t);
    }
    tmpfs.extend(
        get("tmpfs")
            .map(|(_, v)| crate::sandbox::tmpfs_key(r, v, &f("tmpfs")))
            .unwrap_or_default(),
    );
    crate::sandbox::write_tmpfs(&mut t, tmpfs, name_node.offset, &f("tmpfs"));
    if let Some((_, value)) = get("container_name") {
        // Accepted and not used: instances are named `SERVICE.N` (a service may have many), and
        // reached by the service's name (docs/compose.md).
        r.string(value, &f("container_name"));
    }
    if let Some((_, value)) = get("hostname") {
        if let Some(name) = r.string(value, &f("hostname")) {
            t.key(
                format!("hostname = {}", out::string(name)),
                value.offset,
                &f("hostname"),
            );
        }
    }
    if let Some((_, value)) = get("labels") {
        if let Some(labels) = r.dict(value, &f("labels")) {
            let lines = t.table(
                format!("[services.{}.labels]", out::key(name)),
                value.offset,
                &f("labels"),
            );
            for (k, v, offset) in labels {
                lines.push((
                    format!("{} = {}", out::key(&k), out::string(&v.unwrap_or_default())),
                    offset,
                    child(&f("labels"), &k),
                ));
            }
        }
    }

    out.blank();
    out.line(
        format!("[services.{}]", out::key(name)),
        name_node.offset,
        &path,
    );
    t.write(out);
}

fn node_offset(entry: Option<&(Node, Node)>) -> usize {
    entry.map_or(0, |(_, v)| v.offset)
}

/// What Compose's `build` says: the context, and in the long form the Dockerfile, the target
/// stage and the build arguments.
#[derive(Debug, Default)]
struct BuildSpec {
    context: String,
    dockerfile: Option<String>,
    target: Option<String>,
    args: Vec<(String, String)>,
}

impl BuildSpec {
    /// The manifest's `build` value: a string, or a table when there is more than the context.
    fn toml(&self) -> String {
        if self.dockerfile.is_none() && self.target.is_none() && self.args.is_empty() {
            return out::string(&self.context);
        }
        let mut parts = vec![format!("context = {}", out::string(&self.context))];
        if let Some(d) = &self.dockerfile {
            parts.push(format!("dockerfile = {}", out::string(d)));
        }
        if let Some(t) = &self.target {
            parts.push(format!("target = {}", out::string(t)));
        }
        if !self.args.is_empty() {
            let args: Vec<String> = self
                .args
                .iter()
                .map(|(k, v)| format!("{} = {}", out::string(k), out::string(v)))
                .collect();
            parts.push(format!("args = {{ {} }}", args.join(", ")));
        }
        format!("{{ {} }}", parts.join(", "))
    }
}

/// The build, from `build: DIR` or the long form (`context`, `dockerfile`, `target`, `args`).
fn build_context(r: &mut Reader<'_>, build: &Node, field: &str) -> Option<BuildSpec> {
    let spec = match &build.kind {
        Kind::Scalar { .. } => BuildSpec {
            context: r.string(build, field)?.to_owned(),
            ..BuildSpec::default()
        },
        Kind::Map(entries) => {
            let mut spec = BuildSpec {
                context: ".".to_owned(),
                ..BuildSpec::default()
            };
            let mut ok = true;
            for (key, value) in entries {
                let k = key.text().unwrap_or_default();
                let f = child(field, k);
                match k {
                    _ if k.starts_with("x-") => {}
                    "context" => spec.context = r.string(value, &f)?.to_owned(),
                    "dockerfile" => match r.string(value, &f) {
                        Some(
                            "Dockerfile" | "Containerfile" | "./Dockerfile" | "./Containerfile",
                        ) => {}
                        Some(other) => spec.dockerfile = Some(other.to_owned()),
                        None => ok = false,
                    },
                    "target" => match r.string(value, &f) {
                        Some(t) => spec.target = Some(t.to_owned()),
                        None => ok = false,
                    },
                    "args" => match &value.kind {
                        Kind::Map(args) => {
                            for (name, v) in args {
                                let n = name.text().unwrap_or_default().to_owned();
                                match r.string(v, &child(&f, &n)) {
                                    Some(v) => spec.args.push((n, v.to_owned())),
                                    None => ok = false,
                                }
                            }
                        }
                        Kind::Seq(items) => {
                            for item in items {
                                match r.string(item, &f).map(|i| i.split_once('=')) {
                                    Some(Some((n, v))) => {
                                        spec.args.push((n.to_owned(), v.to_owned()))
                                    }
                                    Some(None) => {
                                        ok = false;
                                        r.refuse(item, &f, "a build argument without a value takes it from the environment of `docker compose`, which Paracloud does not read", "write NAME=VALUE");
                                    }
                                    None => ok = false,
                                }
                            }
                        }
                        Kind::Scalar { .. } => {
                            ok = false;
                            r.expected(
                                value,
                                &f,
                                "a mapping of NAME: VALUE or a list of NAME=VALUE",
                            );
                        }
                    },
                    _ => {
                        ok = false;
                        r.refuse(
                            key,
                            &f,
                            "Paracloud builds from `context`, `dockerfile`, `target` and `args` only",
                            "remove it",
                        );
                    }
                }
            }
            if !ok {
                return None;
            }
            spec
        }
        Kind::Seq(_) => {
            r.expected(build, field, "a directory or a mapping with `context`");
            return None;
        }
    };
    if spec.context.contains("://") || spec.context.starts_with("git@") {
        r.error(
            build.offset,
            field,
            "building from a remote context is not supported",
            Some("clone it next to the Compose file and build from that directory".into()),
        );
        return None;
    }
    Some(spec)
}

/// `env_file` under `environment`, written as the service's `env` table.
fn environment(
    r: &mut Reader<'_>,
    cx: &Context<'_>,
    env_file: Option<&Node>,
    environment: Option<&Node>,
    path: &str,
    t: &mut Table,
) {
    let mut env: BTreeMap<String, (String, usize, String)> = BTreeMap::new();
    if let Some(node) = env_file {
        let field = child(path, "env_file");
        let mut files: Vec<(String, bool, usize)> = Vec::new();
        match &node.kind {
            Kind::Scalar { .. } => {
                if let Some(p) = r.string(node, &field) {
                    files.push((p.to_owned(), true, node.offset));
                }
            }
            Kind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let f = format!("{field}[{i}]");
                    match &item.kind {
                        Kind::Map(entries) => {
                            let mut file = None;
                            let mut required = true;
                            for (k, v) in entries {
                                let key = k.text().unwrap_or_default();
                                match key {
                                    "path" => {
                                        file = r.string(v, &child(&f, key)).map(str::to_owned)
                                    }
                                    "required" => {
                                        required = r.boolean(v, &child(&f, key)).unwrap_or(true)
                                    }
                                    "format" => r.refuse(
                                        k,
                                        &child(&f, key),
                                        "env files are read in Compose's own format only",
                                        "remove `format`",
                                    ),
                                    _ => r.unknown(k, &child(&f, key), &["path", "required"]),
                                }
                            }
                            match file {
                                Some(file) => files.push((file, required, item.offset)),
                                None => {
                                    r.error(item.offset, &f, "missing required key `path`", None)
                                }
                            }
                        }
                        _ => {
                            if let Some(p) = r.string(item, &f) {
                                files.push((p.to_owned(), true, item.offset));
                            }
                        }
                    }
                }
            }
            Kind::Map(_) => r.expected(node, &field, "a file name or a list of them"),
        }
        for (file, required, offset) in files {
            let Some(resolved) = crate::expand_home(&file, cx.vars) else {
                r.error(offset, &field, "`~` needs HOME in the environment", None);
                continue;
            };
            let full = cx.origin.base_dir.join(&resolved);
            match cx.host.read_to_string(&full) {
                Some(text) => {
                    let lookup = |name: &str| cx.vars.get(name).cloned();
                    match crate::dotenv::parse(&text, &lookup) {
                        Ok(vars) => {
                            for (k, v) in vars {
                                env.insert(k.clone(), (v, offset, child(&field, &k)));
                            }
                        }
                        Err(e) => {
                            let shown = crate::shown(cx.origin, &file);
                            r.error_in(shown, e.line, &field, e.message);
                        }
                    }
                }
                None if !required => {}
                None => r.error(
                    offset,
                    &field,
                    format!("env file {} does not exist", full.display()),
                    Some("create it, or mark it `required: false` in the long form".into()),
                ),
            }
        }
    }
    if let Some(node) = environment {
        let field = child(path, "environment");
        if let Some(vars) = r.dict(node, &field) {
            for (k, v, offset) in vars {
                // A name without a value takes the variable from the environment, if set.
                let value = v.or_else(|| cx.vars.get(&k).cloned());
                match value {
                    Some(value) => {
                        env.insert(k.clone(), (value, offset, child(&field, &k)));
                    }
                    None => {
                        env.remove(&k);
                    }
                }
            }
        }
    }
    if env.is_empty() {
        return;
    }
    let offset = environment.or(env_file).map_or(0, |n| n.offset);
    let lines = t.table(
        format!(
            "[services.{}.env]",
            out::key(path.trim_start_matches("services.").trim_matches('"'))
        ),
        offset,
        &child(path, "environment"),
    );
    for (k, (v, offset, field)) in env {
        lines.push((
            format!("{} = {}", out::key(&k), out::string(&v)),
            offset,
            field,
        ));
    }
}

/// `ports` and `expose`, written as the service's `ports` array.
fn ports(
    r: &mut Reader<'_>,
    ports: Option<&Node>,
    expose: Option<&Node>,
    path: &str,
    t: &mut Table,
) {
    let mut written: Vec<(String, usize, String)> = Vec::new();
    // Container ports written so far, with whether each is UDP: `expose` adds only new ones.
    let mut targets: Vec<(u16, bool)> = Vec::new();
    if let Some(node) = ports {
        let field = child(path, "ports");
        let items = match &node.kind {
            Kind::Seq(items) => items.as_slice(),
            _ => {
                r.expected(node, &field, "a list of ports");
                &[]
            }
        };
        for (i, item) in items.iter().enumerate() {
            let f = format!("{field}[{i}]");
            match &item.kind {
                Kind::Map(entries) => {
                    if let Some((text, target)) = long_port(r, entries, &f) {
                        targets.push(target);
                        written.push((text, item.offset, f));
                    }
                }
                _ => {
                    let Some(text) = r.string(item, &f) else {
                        continue;
                    };
                    for (text, target) in short_ports(r, text, item, &f) {
                        targets.push(target);
                        written.push((text, item.offset, f.clone()));
                    }
                }
            }
        }
    }
    if let Some(node) = expose {
        let field = child(path, "expose");
        if let Kind::Seq(items) = &node.kind {
            for (i, item) in items.iter().enumerate() {
                let f = format!("{field}[{i}]");
                let Some(text) = r.string(item, &f) else {
                    continue;
                };
                let (spec, protocol) = match text.split_once('/') {
                    Some((spec, protocol)) => (spec, Some(protocol)),
                    None => (text, None),
                };
                let Some(udp) = udp_protocol(r, protocol, item, &f) else {
                    continue;
                };
                match values::port_range(spec) {
                    Ok((a, b)) => {
                        for p in a..=b {
                            if !targets.contains(&(p, udp)) {
                                targets.push((p, udp));
                                let text = if udp {
                                    out::string(&format!("{p}/udp"))
                                } else {
                                    p.to_string()
                                };
                                written.push((text, item.offset, f.clone()));
                            }
                        }
                    }
                    Err(e) => r.error(item.offset, &f, e, None),
                }
            }
        } else {
            r.expected(node, &field, "a list of ports");
        }
    }
    if written.is_empty() {
        return;
    }
    let offset = ports.or(expose).map_or(0, |n| n.offset);
    let field = child(path, "ports");
    t.key("ports = [".into(), offset, &field);
    for (text, offset, f) in written {
        t.key(format!("  {text},"), offset, &f);
    }
    t.key("]".into(), offset, &field);
}

/// Whether a port's protocol is UDP (`Some(true)`) or TCP (`Some(false)`); `None` after
/// reporting any other.
fn udp_protocol(
    r: &mut Reader<'_>,
    protocol: Option<&str>,
    node: &Node,
    field: &str,
) -> Option<bool> {
    match protocol {
        None | Some("tcp") => Some(false),
        Some("udp") => Some(true),
        Some(other) => {
            r.error(
                node.offset,
                field,
                format!("{other} ports are not supported: the data plane forwards TCP and UDP"),
                Some("remove the port, or serve the protocol over TCP or UDP".into()),
            );
            None
        }
    }
}

/// A short port: each published or exposed port as a manifest entry, with its container port
/// and whether it is UDP.
fn short_ports(
    r: &mut Reader<'_>,
    text: &str,
    node: &Node,
    field: &str,
) -> Vec<(String, (u16, bool))> {
    let spec = values::short_port(text);
    let Some(udp) = udp_protocol(r, spec.protocol, node, field) else {
        return Vec::new();
    };
    let suffix = if udp { "/udp" } else { "" };
    let (t0, t1) = match values::port_range(spec.target) {
        Ok(range) => range,
        Err(e) => {
            r.error(node.offset, field, e, None);
            return Vec::new();
        }
    };
    let Some(published) = spec.published else {
        // No host port: Docker would pick one at random; Paracloud publishes nothing.
        return (t0..=t1)
            .map(|p| match udp {
                true => (out::string(&format!("{p}{suffix}")), (p, udp)),
                false => (p.to_string(), (p, udp)),
            })
            .collect();
    };
    let (p0, p1) = match values::port_range(published) {
        Ok(range) => range,
        Err(e) => {
            r.error(node.offset, field, e, None);
            return Vec::new();
        }
    };
    if p1 - p0 != t1 - t0 {
        r.error(
            node.offset,
            field,
            format!("the host ports {published} and the container ports {} are not ranges of the same length", spec.target),
            Some("publish each container port on one host port, such as \"8080-8081:80-81\"".into()),
        );
        return Vec::new();
    }
    let ip = spec.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default();
    (0..=(t1 - t0))
        .map(|i| {
            let (h, c) = (p0 + i, t0 + i);
            (out::string(&format!("{ip}{h}:{c}{suffix}")), (c, udp))
        })
        .collect()
}

/// A long-form port as a manifest table, with its container port and whether it is UDP.
fn long_port(
    r: &mut Reader<'_>,
    entries: &[(Node, Node)],
    field: &str,
) -> Option<(String, (u16, bool))> {
    let mut target = None;
    let mut udp = None;
    let mut published = None;
    let mut host_ip = None;
    let mut http = false;
    let mut ok = true;
    for (key, value) in entries {
        let k = key.text().unwrap_or_default();
        let f = child(field, k);
        match k {
            _ if k.starts_with("x-") => {}
            "target" => target = r.whole(value, &f, 1, 65535).map(|p| p as u16),
            "published" => match r.string(value, &f).map(values::port_range) {
                Some(Ok((a, b))) if a == b => published = Some(a),
                Some(Ok(_)) => {
                    ok = false;
                    r.error(
                        value.offset,
                        &f,
                        "a range of host ports for one container port is not supported",
                        Some("publish on one host port".into()),
                    );
                }
                Some(Err(e)) => {
                    ok = false;
                    r.error(value.offset, &f, e, None);
                }
                None => ok = false,
            },
            "host_ip" => host_ip = r.string(value, &f).map(str::to_owned),
            "protocol" => match udp_protocol(r, value.text(), value, &f) {
                Some(is_udp) => udp = Some((is_udp, value.offset)),
                None => ok = false,
            },
            "app_protocol" => match value.text() {
                Some("http") => http = true,
                Some("tcp") => {}
                _ => {
                    ok = false;
                    r.error(
                        value.offset,
                        &f,
                        format!("app_protocol {} is not supported", value.describe()),
                        Some("write `http` (balanced per request) or `tcp`".into()),
                    );
                }
            },
            "mode" if matches!(value.text(), Some("ingress" | "host")) => {}
            _ => {
                ok = false;
                r.unknown(
                    key,
                    &f,
                    &[
                        "target",
                        "published",
                        "host_ip",
                        "protocol",
                        "app_protocol",
                        "mode",
                    ],
                );
            }
        }
    }
    let Some(target) = target else {
        if ok {
            r.error(
                entries.first().map_or(0, |(k, _)| k.offset),
                field,
                "missing required key `target`",
                Some("write the container port: `target: 80`".into()),
            );
        }
        return None;
    };
    if !ok {
        return None;
    }
    let udp = match udp {
        Some((true, offset)) if http => {
            r.error(
                offset,
                &child(field, "protocol"),
                "app_protocol http needs protocol tcp, found udp",
                Some("remove `app_protocol: http`, or write `protocol: tcp`".into()),
            );
            return None;
        }
        Some((udp, _)) => udp,
        None => false,
    };
    let mut parts = vec![format!("port = {target}")];
    if http {
        parts.push("protocol = \"http\"".into());
    }
    if udp {
        parts.push("protocol = \"udp\"".into());
    }
    match (host_ip, published) {
        (Some(ip), Some(p)) => {
            let ip = if ip.contains(':') && !ip.starts_with('[') {
                format!("[{ip}]")
            } else {
                ip
            };
            parts.push(format!("publish = {}", out::string(&format!("{ip}:{p}"))));
        }
        (None, Some(p)) => parts.push(format!("publish = {p}")),
        _ => {}
    }
    Some((format!("{{ {} }}", parts.join(", ")), (target, udp)))
}

/// `volumes` of a service: named volumes and bind mounts, written with `extra` (its secrets
/// and configs); returns its `tmpfs` volumes as entries of the manifest's `tmpfs` list.
fn volumes(
    r: &mut Reader<'_>,
    cx: &Context<'_>,
    declared: &[String],
    node: Option<&Node>,
    extra: Vec<(String, usize, String)>,
    field: &str,
    t: &mut Table,
) -> Vec<(String, usize, String)> {
    let mut tmpfs = Vec::new();
    let empty = Node::seq(extra.first().map_or(0, |e| e.1), Vec::new());
    let node = node.unwrap_or(&empty);
    let Kind::Seq(items) = &node.kind else {
        r.expected(node, field, "a list of volumes");
        return tmpfs;
    };
    let mut written = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let mount = match &item.kind {
            Kind::Map(entries)
                if entries
                    .iter()
                    .any(|(k, v)| k.text() == Some("type") && v.text() == Some("tmpfs")) =>
            {
                tmpfs.extend(crate::sandbox::tmpfs_volume(r, entries, item, &f));
                continue;
            }
            Kind::Map(entries) => long_volume(r, entries, item, &f),
            _ => match r.string(item, &f) {
                Some(text) => short_volume(r, text, item, &f),
                None => None,
            },
        };
        let Some((source, target, read_only, bind)) = mount else {
            continue;
        };
        if bind {
            if source.ends_with("docker.sock") {
                r.error(item.offset, &f, "the Docker socket is not given to instances: Paracloud runs no Docker engine, and the socket would give the host away", Some("remove the mount; to manage the application, use the `paracloud` command from the host".into()));
                continue;
            }
            if crate::expand_home(&source, cx.vars).is_none() {
                r.error(item.offset, &f, "`~` needs HOME in the environment", None);
                continue;
            }
        } else if !declared.contains(&source) {
            r.error(
                item.offset,
                &f,
                format!("volume `{source}` is not declared in the top-level `volumes`"),
                Some(format!(
                    "add `volumes: {{ {source}: {{}} }}` at the top level, as Compose requires"
                )),
            );
            continue;
        }
        let source = if bind {
            let expanded = crate::expand_home(&source, cx.vars)
                .unwrap_or_default()
                .display()
                .to_string();
            if expanded.starts_with('/') || expanded.starts_with('.') {
                expanded
            } else {
                format!("./{expanded}")
            }
        } else {
            crate::volume_name(&source)
        };
        let text = if source.contains(':') || target.contains(':') {
            format!(
                "{{ source = {}, target = {}, read_only = {read_only} }}",
                out::string(&source),
                out::string(&target)
            )
        } else {
            out::string(&format!(
                "{source}:{target}{}",
                if read_only { ":ro" } else { "" }
            ))
        };
        written.push((format!("  {text},"), item.offset, f));
    }
    written.extend(extra);
    if written.is_empty() {
        return tmpfs;
    }
    t.key("volumes = [".into(), node.offset, field);
    for (text, offset, f) in written {
        t.key(text, offset, &f);
    }
    t.key("]".into(), node.offset, field);
    tmpfs
}

/// `SOURCE:TARGET[:MODE]` as (source, target, read_only, bind).
fn short_volume(
    r: &mut Reader<'_>,
    text: &str,
    node: &Node,
    field: &str,
) -> Option<(String, String, bool, bool)> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [_] => {
            r.error(
                node.offset,
                field,
                "anonymous volumes are not supported",
                Some(format!(
                    "name the volume: `data:{text}`, and declare it in the top-level `volumes`"
                )),
            );
            return None;
        }
        [s, t] => (*s, *t, ""),
        [s, t, m] => (*s, *t, *m),
        _ => {
            r.error(
                node.offset,
                field,
                format!("{text:?} is not SOURCE:TARGET[:MODE]"),
                None,
            );
            return None;
        }
    };
    let mut read_only = false;
    for option in mode.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => read_only = true,
            "rw" | "cached" | "delegated" | "consistent" => {}
            _ => {
                r.error(
                    node.offset,
                    field,
                    format!("volume option `{option}` is not supported"),
                    Some("keep `ro` or `rw`".into()),
                );
                return None;
            }
        }
    }
    let bind = source.starts_with('/') || source.starts_with('.') || source.starts_with('~');
    Some((source.to_owned(), target.to_owned(), read_only, bind))
}

fn long_volume(
    r: &mut Reader<'_>,
    entries: &[(Node, Node)],
    node: &Node,
    field: &str,
) -> Option<(String, String, bool, bool)> {
    let mut kind = "volume";
    let mut source = None;
    let mut target = None;
    let mut read_only = false;
    let mut ok = true;
    for (key, value) in entries {
        let k = key.text().unwrap_or_default();
        let f = child(field, k);
        match k {
            _ if k.starts_with("x-") => {}
            "type" => match value.text() {
                Some(t @ ("volume" | "bind")) => kind = if t == "bind" { "bind" } else { "volume" },
                _ => {
                    ok = false;
                    r.error(
                        value.offset,
                        &f,
                        format!("volume type {} is not supported", value.describe()),
                        Some(
                            "use `volume` (a named volume), `bind` (a host path) or `tmpfs`".into(),
                        ),
                    );
                }
            },
            "source" => source = r.string(value, &f).map(str::to_owned),
            "target" => target = r.string(value, &f).map(str::to_owned),
            "read_only" => read_only = r.boolean(value, &f).unwrap_or(false),
            "consistency" => {}
            _ => {
                ok = false;
                r.unknown(
                    key,
                    &f,
                    &["type", "source", "target", "read_only", "consistency"],
                );
            }
        }
    }
    if !ok {
        return None;
    }
    let Some(target) = target else {
        r.error(
            node.offset,
            field,
            "missing required key `target`",
            Some("write where it is mounted: `target: /data`".into()),
        );
        return None;
    };
    let Some(source) = source else {
        r.error(
            node.offset,
            field,
            "missing required key `source` (anonymous volumes are not supported)",
            Some("name the volume, and declare it in the top-level `volumes`".into()),
        );
        return None;
    };
    Some((source, target, read_only, kind == "bind"))
}

fn depends_on(r: &mut Reader<'_>, node: &Node, field: &str, t: &mut Table) {
    let mut deps: Vec<(String, &str, usize)> = Vec::new();
    match &node.kind {
        Kind::Seq(_) => {
            for (name, item) in r.strings(node, field).unwrap_or_default() {
                deps.push((name.to_owned(), "started", item.offset));
            }
        }
        Kind::Map(entries) => {
            for (key, value) in entries {
                let name = key.text().unwrap_or_default();
                let f = child(field, name);
                let mut condition = "started";
                let mut ok = true;
                if let Some(settings) = r.map(value, &f) {
                    for (k, v) in settings {
                        let setting = k.text().unwrap_or_default();
                        let sf = child(&f, setting);
                        match setting {
                            "condition" => match v.text() {
                                Some("service_started") => condition = "started",
                                Some("service_healthy") => condition = "healthy",
                                Some("service_completed_successfully") => condition = "completed",
                                _ => {
                                    ok = false;
                                    r.error(
                                        v.offset,
                                        &sf,
                                        format!("unknown condition {}", v.describe()),
                                        Some("write `service_started`, `service_healthy` or `service_completed_successfully`".into()),
                                    );
                                }
                            },
                            "required" => {
                                if r.boolean(v, &sf) == Some(false) {
                                    ok = false;
                                    r.refuse(k, &sf, "optional dependencies are not supported", "remove `required: false` and the dependency, or keep it required");
                                }
                            }
                            "restart" => {
                                if r.boolean(v, &sf) == Some(true) {
                                    ok = false;
                                    r.refuse(
                                        k,
                                        &sf,
                                        "restarting a service with its dependency is not supported",
                                        "remove `restart`",
                                    );
                                }
                            }
                            _ => {
                                ok = false;
                                r.unknown(k, &sf, &["condition", "required", "restart"]);
                            }
                        }
                    }
                } else {
                    ok = false;
                }
                if ok {
                    deps.push((name.to_owned(), condition, key.offset));
                }
            }
        }
        _ => r.expected(node, field, "a list of services or a mapping"),
    }
    if deps.is_empty() {
        return;
    }
    let service = field
        .strip_suffix(".depends_on")
        .unwrap_or(field)
        .trim_start_matches("services.")
        .to_owned();
    let lines = t.table(
        format!(
            "[services.{}.depends_on]",
            out::key(service.trim_matches('"'))
        ),
        node.offset,
        field,
    );
    for (name, condition, offset) in deps {
        lines.push((
            format!("{} = \"{condition}\"", out::key(&name)),
            offset,
            child(field, &name),
        ));
    }
}

fn duration(r: &mut Reader<'_>, node: &Node, field: &str) -> Option<String> {
    let text = r.string(node, field)?;
    match values::go_duration(text) {
        Ok(d) => Some(values::manifest_duration(d)),
        Err(e) => {
            r.error(
                node.offset,
                field,
                e,
                Some("write a Go duration such as \"30s\", \"1m30s\" or \"500ms\"".into()),
            );
            None
        }
    }
}

fn healthcheck(r: &mut Reader<'_>, node: &Node, field: &str, path: &str, t: &mut Table) {
    let Some(entries) = r.map(node, field) else {
        return;
    };
    let mut command: Option<Vec<String>> = None;
    let mut disabled = false;
    let mut timing: Vec<(String, usize, String)> = Vec::new();
    let mut settings: BTreeMap<&str, (String, usize)> = BTreeMap::new();
    let mut test_node = None;
    for (key, value) in entries {
        let k = key.text().unwrap_or_default();
        let f = child(field, k);
        match k {
            _ if k.starts_with("x-") => {}
            "test" => {
                test_node = Some(value);
                match &value.kind {
                    Kind::Seq(_) => {
                        let Some(words) = r.strings(value, &f) else {
                            continue;
                        };
                        let words: Vec<&str> = words.into_iter().map(|(w, _)| w).collect();
                        match words.split_first() {
                            Some((&"NONE", _)) => disabled = true,
                            Some((&"CMD", rest)) if !rest.is_empty() => command = Some(rest.iter().map(|s| (*s).to_owned()).collect()),
                            Some((&"CMD-SHELL", rest)) if !rest.is_empty() => command = Some(vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]),
                            _ => r.error(value.offset, &f, "a healthcheck test list starts with CMD, CMD-SHELL or NONE, followed by the command", Some("write `[\"CMD\", \"curl\", \"-f\", \"http://localhost/\"]` or `[\"CMD-SHELL\", \"curl -f http://localhost/\"]`".into())),
                        }
                    }
                    _ => {
                        if let Some(text) = r.string(value, &f) {
                            command = Some(vec!["/bin/sh".into(), "-c".into(), text.to_owned()]);
                        }
                    }
                }
            }
            "disable" => disabled |= r.boolean(value, &f).unwrap_or(false),
            "interval" | "timeout" | "start_period" => {
                if let Some(d) = duration(r, value, &f) {
                    settings.insert(k, (d, value.offset));
                }
            }
            "retries" => {
                if let Some(n) = r.whole(value, &f, 1, u64::from(u32::MAX)) {
                    timing.push((format!("retries = {n}"), value.offset, f));
                }
            }
            "start_interval" => r.refuse(
                key,
                &f,
                "probes run at one interval",
                "remove `start_interval`; a `start_period` keeps early failures from counting",
            ),
            _ => r.unknown(
                key,
                &f,
                &[
                    "test",
                    "interval",
                    "timeout",
                    "retries",
                    "start_period",
                    "disable",
                ],
            ),
        }
    }
    if disabled {
        return;
    }
    let Some(command) = command else {
        if test_node.is_none() {
            r.error(node.offset, field, "a healthcheck without `test` (the image's HEALTHCHECK) is not supported", Some("write the test: `test: [\"CMD\", \"wget\", \"-q\", \"--spider\", \"http://localhost/\"]`".into()));
        }
        return;
    };
    let service = path.trim_start_matches("services.").trim_matches('"');
    let lines = t.table(
        format!("[services.{}.health]", out::key(service)),
        node.offset,
        field,
    );
    lines.push((
        format!("exec = {}", out::strings(&command)),
        test_node.map_or(node.offset, |n| n.offset),
        child(field, "test"),
    ));
    // Docker's defaults where the file sets none: 30s between probes, 30s to answer.
    for (key, default) in [
        ("interval", "30s"),
        ("timeout", "30s"),
        ("start_period", "0s"),
    ] {
        let (value, offset) = settings
            .get(key)
            .cloned()
            .unwrap_or((default.to_owned(), node.offset));
        lines.push((
            format!("{key} = {}", out::string(&value)),
            offset,
            child(field, key),
        ));
    }
    lines.extend(timing);
}

fn restart(
    r: &mut Reader<'_>,
    entry: Option<&(Node, Node)>,
    name_node: &Node,
    path: &str,
    t: &mut Table,
) {
    let field = child(path, "restart");
    // Compose restarts nothing unless asked.
    let Some((_, node)) = entry else {
        t.key("restart = \"no\"".into(), name_node.offset, &field);
        return;
    };
    let Some(text) = r.string(node, &field) else {
        return;
    };
    let line = match text {
        "no" => "restart = \"no\"".to_owned(),
        "always" | "unless-stopped" => "restart = \"always\"".to_owned(),
        "on-failure" => "restart = \"on-failure\"".to_owned(),
        _ => {
            match text.strip_prefix("on-failure:").map(str::parse::<u32>) {
                Some(Ok(n)) => {
                    format!("restart = {{ condition = \"on-failure\", max_retries = {n} }}")
                }
                _ => {
                    r.error(node.offset, &field, format!("unknown restart policy {text:?}"), Some("write `no`, `always`, `on-failure`, `on-failure:N` or `unless-stopped`".into()));
                    return;
                }
            }
        }
    };
    t.key(line, node.offset, &field);
}

/// `deploy.restart_policy`: `condition` (`none`, `on-failure`, `any`, the default), with
/// `max_attempts` (on failure) and `delay` (the first wait, doubling after each restart in a row).
fn restart_policy(r: &mut Reader<'_>, node: &Node, field: &str, t: &mut Table) {
    let Some(entries) = r.map(node, field) else {
        return;
    };
    let mut condition = "always";
    let mut parts = Vec::new();
    let mut ok = true;
    for (k, v) in entries {
        let key = k.text().unwrap_or_default();
        let f = child(field, key);
        match key {
            "condition" => match v.text() {
                Some("none") => condition = "no",
                Some("on-failure") => condition = "on-failure",
                Some("any") => condition = "always",
                _ => {
                    ok = false;
                    r.error(
                        v.offset,
                        &f,
                        format!("unknown condition {}", v.describe()),
                        Some("write `none`, `on-failure` or `any`".into()),
                    );
                }
            },
            "max_attempts" => match r.whole(v, &f, 0, u64::from(u32::MAX)) {
                Some(n) => parts.push((format!("max_retries = {n}"), v.offset)),
                None => ok = false,
            },
            "delay" => match duration(r, v, &f) {
                Some(d) => parts.push((format!("backoff = {}", out::string(&d)), v.offset)),
                None => ok = false,
            },
            "window" => {
                ok = false;
                r.refuse(k, &f, "a restart counts as failed by its exit, not by how long it ran", "remove `window`; the delay between restarts doubles up to 30 s, and resets after a clean run");
            }
            _ => {
                ok = false;
                r.unknown(k, &f, &["condition", "max_attempts", "delay"]);
            }
        }
    }
    if !ok {
        return;
    }
    let mut text = format!("restart = {{ condition = \"{condition}\"");
    for (part, _) in &parts {
        text.push_str(", ");
        text.push_str(part);
    }
    text.push_str(" }");
    t.key(text, node.offset, field);
}

/// `deploy` (replicas and resource limits) and the older service-level `scale`, `cpus`,
/// `mem_limit` and `pids_limit`.
fn resources(r: &mut Reader<'_>, entries: &[(Node, Node)], path: &str, t: &mut Table) {
    let mut replicas = None;
    let mut limits: BTreeMap<&str, (String, usize, String)> = BTreeMap::new();
    let limit = |r: &mut Reader<'_>,
                 which: &'static str,
                 value: &Node,
                 f: String,
                 limits: &mut BTreeMap<&str, (String, usize, String)>| {
        let text = match which {
            "cpu" | "cpu_reservation" => match value.text().and_then(|t| t.parse::<f64>().ok()) {
                Some(cpus) if cpus > 0.0 && cpus.is_finite() => format!("{which} = {cpus}"),
                _ => {
                    r.expected(value, &f, "a number of CPUs above 0, such as 0.5");
                    return;
                }
            },
            "memory" | "disk" | "memory_reservation" => {
                match crate::sandbox::size(r, value, &f, "512m") {
                    Some(size) => format!("{which} = {size}"),
                    None => return,
                }
            }
            _ => match r.whole(value, &f, 1, u64::from(u32::MAX)) {
                Some(n) => format!("pids = {n}"),
                None => return,
            },
        };
        limits.insert(which, (text, value.offset, f));
    };
    for (key, value) in entries {
        let k = key.text().unwrap_or_default();
        let f = child(path, k);
        match k {
            "scale" => replicas = r.whole(value, &f, 0, 1000).map(|n| (n, value.offset, f)),
            "cpus" => limit(r, "cpu", value, f, &mut limits),
            "mem_limit" => limit(r, "memory", value, f, &mut limits),
            "pids_limit" => limit(r, "pids", value, f, &mut limits),
            // Docker's `--storage-opt size=`: the writable layer's size.
            "storage_opt" => {
                let Some(options) = r.map(value, &f) else {
                    continue;
                };
                for (ok, ov) in options {
                    let name = ok.text().unwrap_or_default();
                    let of = child(&f, name);
                    match name {
                        "size" => limit(r, "disk", ov, of, &mut limits),
                        _ => r.unknown(ok, &of, &["size"]),
                    }
                }
            }
            "deploy" => {
                let Some(deploy) = r.map(value, &f) else {
                    continue;
                };
                for (dk, dv) in deploy {
                    let d = dk.text().unwrap_or_default();
                    let df = child(&f, d);
                    match d {
                        _ if d.starts_with("x-") => {}
                        "replicas" => {
                            replicas = r.whole(dv, &df, 0, 1000).map(|n| (n, dv.offset, df))
                        }
                        "mode" if dv.text() == Some("replicated") => {}
                        "resources" => {
                            let Some(res) = r.map(dv, &df) else { continue };
                            for (rk, rv) in res {
                                let rname = rk.text().unwrap_or_default();
                                let rf = child(&df, rname);
                                match rname {
                                    "limits" => {
                                        let Some(ls) = r.map(rv, &rf) else { continue };
                                        for (lk, lv) in ls {
                                            let lname = lk.text().unwrap_or_default();
                                            let lf = child(&rf, lname);
                                            match lname {
                                                "cpus" => limit(r, "cpu", lv, lf, &mut limits),
                                                "memory" => limit(r, "memory", lv, lf, &mut limits),
                                                "pids" => limit(r, "pids", lv, lf, &mut limits),
                                                _ => {
                                                    r.unknown(lk, &lf, &["cpus", "memory", "pids"])
                                                }
                                            }
                                        }
                                    }
                                    "reservations" => {
                                        let Some(ls) = r.map(rv, &rf) else { continue };
                                        for (lk, lv) in ls {
                                            let lname = lk.text().unwrap_or_default();
                                            let lf = child(&rf, lname);
                                            match lname {
                                                "cpus" => {
                                                    limit(r, "cpu_reservation", lv, lf, &mut limits)
                                                }
                                                "memory" => limit(
                                                    r,
                                                    "memory_reservation",
                                                    lv,
                                                    lf,
                                                    &mut limits,
                                                ),
                                                "devices" | "generic_resources" => r.refuse(
                                                    lk,
                                                    &lf,
                                                    "instances get no host devices",
                                                    &format!("remove `{lname}`"),
                                                ),
                                                _ => r.unknown(lk, &lf, &["cpus", "memory"]),
                                            }
                                        }
                                    }
                                    _ => r.unknown(rk, &rf, &["limits"]),
                                }
                            }
                        }
                        "mode" => r.refuse(
                            dk,
                            &df,
                            "services are replicated: `replicas` instances on this machine",
                            "remove `mode`, or write `mode: replicated`",
                        ),
                        // Read with `restart`.
                        "restart_policy" => {}
                        _ => r.refuse(
                            dk,
                            &df,
                            "only `replicas` and `resources.limits` of `deploy` apply on Paracloud",
                            "remove it",
                        ),
                    }
                }
            }
            _ => {}
        }
    }
    if let Some((n, offset, f)) = replicas {
        t.key(format!("replicas = {n}"), offset, &f);
    }
    if limits.is_empty() {
        return;
    }
    let service = path.trim_start_matches("services.").trim_matches('"');
    let first = limits.values().next().map_or(0, |(_, o, _)| *o);
    let lines = t.table(
        format!("[services.{}.resources]", out::key(service)),
        first,
        &child(path, "deploy.resources.limits"),
    );
    for (_, (text, offset, f)) in limits {
        lines.push((text, offset, f));
    }
}
