//! Checks one `[services.NAME]` table and turns it into a `Service`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::autoscale::{MAX_CPU, MIN_CPU};
use crate::draft::{Draft, Published};
use crate::model::{
    DependsCondition, HealthCheck, Image, MigrateMethod, Port, Probe, Protocol, Resources,
    RestartCondition, RestartPolicy, Service, VolumeMount,
};
use crate::reader::{child, index, Checker, Span, Value};
use crate::units::{self, MAX_PIDS};

/// The keys of `build = { ... }`.
const BUILD_KEYS: &[&str] = &["context", "dockerfile", "target", "args"];

/// Keys of a service table, in the order the documentation lists them.
pub(crate) const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "paths",
    "entrypoint",
    "command",
    "env",
    "ports",
    "health",
    "resources",
    "replicas",
    "restart",
    "depends_on",
    "volumes",
    "labels",
    "user",
    "working_dir",
    "hostname",
    "stop_signal",
    "stop_grace_period",
    "cap_add",
    "init",
    "read_only",
    "tmpfs",
    "shm_size",
    "ulimits",
    "sysctls",
    "userns",
    "networks",
    "scale_to_zero",
    "migrate",
    "capsules",
    "autoscale",
    "revisions",
];

/// Keys of a `[services.NAME.revisions.REVISION]` table: its traffic share, and the service keys
/// a revision may change. It serves its service's ports, so it may not set its own, and it is not
/// autoscaled.
pub(crate) fn revision_keys() -> Vec<&'static str> {
    std::iter::once("weight")
        .chain(
            SERVICE_KEYS
                .iter()
                .copied()
                .filter(|k| !matches!(*k, "ports" | "revisions" | "autoscale" | "networks")),
        )
        .collect()
}

const HEALTH_KEYS: &[&str] = &[
    "exec",
    "tcp",
    "http",
    "port",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "restart",
];
const PORT_KEYS: &[&str] = &["port", "protocol", "publish"];
/// The bounds of a size key.
pub(crate) struct SizeRule {
    min: u64,
    min_text: &'static str,
    example: &'static str,
}

const MEMORY: SizeRule = SizeRule {
    min: units::MIN_MEMORY,
    min_text: "4M",
    example: "give the memory an instance needs, such as \"512M\" or \"4G\"",
};

pub(crate) const SHM: SizeRule = SizeRule {
    min: 1024 * 1024,
    min_text: "1M",
    example: "give the shared memory the service uses, such as \"256M\"",
};

pub(crate) const TMPFS: SizeRule = SizeRule {
    min: 4096,
    min_text: "4K",
    example: "give the space the mount holds, such as \"64M\"",
};

pub(crate) const DISK: SizeRule = SizeRule {
    min: units::MIN_DISK,
    min_text: "16M",
    example: "give the disk space an instance writes, such as \"1G\"",
};

/// The storage of a catalogue service: room for a database cluster's files and its WAL.
pub(crate) const CATALOG_STORAGE: SizeRule = SizeRule {
    min: 256 << 20,
    min_text: "256M",
    example: "give the space its data takes, such as \"1G\"",
};

pub(crate) const VOLUME_SIZE: SizeRule = SizeRule {
    min: units::MIN_DISK,
    min_text: "16M",
    example: "give the space the volume holds, such as \"1G\"",
};

const RESOURCE_KEYS: &[&str] = &[
    "cpu",
    "memory",
    "pids",
    "disk",
    "memory_reservation",
    "cpu_reservation",
];
const RESTART_KEYS: &[&str] = &["condition", "max_retries", "backoff", "backoff_max"];
const VOLUME_KEYS: &[&str] = &["source", "target", "read_only"];

impl Checker<'_> {
    pub(crate) fn service(&mut self, name: &str, value: &Value<'_>) -> Option<Draft> {
        let path = child("services", name);
        let table = self.table(value, &path)?;
        self.check_keys(table, &path, SERVICE_KEYS);
        self.service_fields(name, &path, table, value)
    }

    /// The revisions of service `name` (its `revisions` table), each as a service of its own
    /// named `name@REVISION`: the service's table with the revision's keys over it, except
    /// `replicas` (1 unless the revision says otherwise) and the published ports (the service's
    /// listeners serve both).
    pub(crate) fn revisions(&mut self, name: &str, value: &Value<'_>) -> Vec<Draft> {
        let DeValue::Table(service) = value.get_ref() else {
            return Vec::new();
        };
        let Some(revisions) = service.get("revisions") else {
            return Vec::new();
        };
        let path = child(&child("services", name), "revisions");
        let Some(revisions) = self.table(revisions, &path) else {
            return Vec::new();
        };
        let mut drafts = Vec::new();
        let mut total_weight = 0;
        for (key, revision_value) in revisions {
            let revision: &str = key.get_ref();
            let revision_path = child(&path, revision);
            if let Err(problem) = units::check_name(revision) {
                self.error(
                    key.span(),
                    &revision_path,
                    format!("invalid revision name {revision:?}: {problem}"),
                    Some("use lower-case letters, digits and '-', starting with a letter, such as \"canary\"".into()),
                );
                continue;
            }
            let Some(table) = self.table(revision_value, &revision_path) else {
                continue;
            };
            let allowed = revision_keys();
            if let Some(key) = table.keys().find(|k| *k.get_ref() == "autoscale") {
                self.error(
                    key.span(),
                    &child(&revision_path, "autoscale"),
                    "a revision is not autoscaled: `autoscale` applies to services",
                    Some(format!(
                        "remove it; the revision keeps its `replicas` (1 unless it says otherwise; `paracloud scale {name}@{revision}=N` changes it)"
                    )),
                );
            }
            self.check_keys_except(table, &revision_path, &allowed, &["autoscale"]);
            let weight = match table.get("weight") {
                Some(v) => match self.whole(v, &child(&revision_path, "weight"), 0, 100) {
                    Some(w) => {
                        total_weight += w;
                        if total_weight > 100 {
                            self.error(
                                v.span(),
                                &child(&revision_path, "weight"),
                                format!("the revisions of `{name}` get {total_weight}% of its traffic together, more than 100%"),
                                Some("lower the weights so that they add up to 100 or less; the service keeps the rest".into()),
                            );
                        }
                        w as u32
                    }
                    None => 0,
                },
                None => 0,
            };
            let mut merged = DeTable::new();
            for (k, v) in service {
                let k_name: &str = k.get_ref();
                let inherited = !matches!(k_name, "revisions" | "replicas" | "autoscale")
                    && !table.contains_key(k_name);
                if inherited {
                    merged.insert(k.clone(), v.clone());
                }
            }
            for (k, v) in table {
                let k_name: &str = k.get_ref();
                if k_name != "weight" && allowed.contains(&k_name) {
                    merged.insert(k.clone(), v.clone());
                }
            }
            let merged = Value::new(revision_value.span(), DeValue::Table(merged));
            let full_name = crate::model::revision_service_name(name, revision);
            let DeValue::Table(merged_table) = merged.get_ref() else {
                continue;
            };
            let Some(mut draft) =
                self.service_fields(&full_name, &revision_path, merged_table, &merged)
            else {
                continue;
            };
            for port in &mut draft.service.ports {
                port.publish = None;
            }
            draft.publishes.clear();
            draft.service.revision_of = Some(crate::model::RevisionOf {
                service: name.to_owned(),
                revision: revision.to_owned(),
                weight,
            });
            drafts.push(draft);
        }
        drafts
    }

    /// Checks the fields of a service table (or of a revision's table merged over its
    /// service's) found at `path`.
    pub(crate) fn service_fields(
        &mut self,
        name: &str,
        path: &str,
        table: &DeTable<'_>,
        value: &Value<'_>,
    ) -> Option<Draft> {
        let path = path.to_owned();
        let field = |key: &str| child(&path, key);
        let get = |key: &str| table.get(key);

        let image = match (get("image"), get("build")) {
            (Some(_), Some(b)) => {
                self.error(
                    b.span(),
                    &field("build"),
                    "a service has either `image` or `build`, not both",
                    Some(
                        "remove one: `build` makes the service's image from a Containerfile".into(),
                    ),
                );
                None
            }
            (None, Some(b)) => self.build_image(b, &field("build")),
            (Some(v), None) => self.image(v, &field("image")),
            (None, None) => {
                self.missing(
                    value.span(),
                    &field("image"),
                    "add `image = \"host\"` to run host programs, `image = \"NAME:TAG\"` for an image of the store, `image = \"oci:PATH\"` for an OCI image layout, or `image = \"dir:PATH\"` to use a directory as the root filesystem",
                );
                None
            }
        };
        let image = match (image, get("paths")) {
            (Some(Image::Host { .. }), Some(v)) => self
                .host_paths(v, &field("paths"))
                .map(|paths| Image::Host { paths }),
            (Some(_), Some(v)) => {
                self.error(
                    v.span(),
                    &field("paths"),
                    "`paths` is only allowed with `image = \"host\"`",
                    Some("remove `paths`: the image already holds its programs".into()),
                );
                None
            }
            (image, _) => image,
        };

        let entrypoint = get("entrypoint").and_then(|v| self.words(v, &field("entrypoint")));
        let command = get("command").and_then(|v| self.words(v, &field("command")));
        if matches!(image, Some(Image::Host { .. }))
            && entrypoint.as_ref().is_none_or(Vec::is_empty)
            && command.as_ref().is_none_or(Vec::is_empty)
            // A broken entrypoint or command is already reported.
            && entrypoint.is_some() == get("entrypoint").is_some()
            && command.is_some() == get("command").is_some()
        {
            let span = get("command")
                .or(get("entrypoint"))
                .map_or(value.span(), |v| v.span());
            self.error(
                span,
                &field("command"),
                "nothing to run: `image = \"host\"` needs a `command` or an `entrypoint`",
                Some("add the program to run, such as `command = [\"my-server\", \"--port\", \"8080\"]`".into()),
            );
        }

        let env = get("env").and_then(|v| self.env(v, &field("env")));
        let (ports, publishes) = match get("ports") {
            Some(v) => self.ports(v, &field("ports")),
            None => (Some(Vec::new()), Vec::new()),
        };
        let health = match get("health") {
            Some(v) => self.health(v, &field("health"), ports.as_deref()),
            None => None,
        };
        let resources = get("resources").and_then(|v| self.resources(v, &field("resources")));
        let replicas = get("replicas").and_then(|v| {
            self.whole(v, &field("replicas"), 0, u64::from(u32::MAX))
                .and_then(|n| u32::try_from(n).ok())
        });
        let restart = get("restart").and_then(|v| self.restart(v, &field("restart")));
        let (depends_on, depends_spans) = match get("depends_on") {
            Some(v) => self.depends_on(v, &field("depends_on")),
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        let volumes = get("volumes").and_then(|v| self.mounts(v, &field("volumes")));
        let labels = get("labels").and_then(|v| self.scalar_map(v, &field("labels")));
        let user = get("user").and_then(|v| self.user(v, &field("user")));
        let hostname = get("hostname").and_then(|v| self.hostname(v, &field("hostname")));
        let working_dir = get("working_dir").and_then(|v| {
            let dir = self.string(v, &field("working_dir"))?;
            if !dir.starts_with('/') {
                self.error(
                    v.span(),
                    &field("working_dir"),
                    format!("must be an absolute path, found {dir:?}"),
                    Some(format!(
                        "write it from the root, such as \"/{}\"",
                        dir.trim_start_matches("./")
                    )),
                );
                return None;
            }
            Some(dir.to_owned())
        });
        let stop_signal = get("stop_signal").and_then(|v| self.signal(v, &field("stop_signal")));
        let stop_grace_period =
            get("stop_grace_period").and_then(|v| self.duration(v, &field("stop_grace_period")));
        let cap_add = get("cap_add").and_then(|v| self.capabilities(v, &field("cap_add")));
        let scale_to_zero =
            get("scale_to_zero").and_then(|v| self.positive_duration(v, &field("scale_to_zero")));
        let autoscale = get("autoscale").and_then(|v| self.scaling_draft(v, &field("autoscale")));
        let migrate = get("migrate").and_then(|v| self.migrate_method(v, &field("migrate")));
        let capsules = get("capsules").and_then(|v| self.capsule_policy(v, &field("capsules")));
        let sandbox = self.sandbox(&get, &field);
        let (networks, network_spans) = match get("networks") {
            Some(v) => self.service_networks(v, &field("networks")),
            None => Default::default(),
        };

        let service = Service {
            name: name.to_owned(),
            // A missing or broken image has been reported, so this placeholder never leaves the
            // crate: `parse` returns the diagnostics instead of the manifest.
            image: image.unwrap_or(Image::Host { paths: Vec::new() }),
            entrypoint: entrypoint.unwrap_or_default(),
            command: command.unwrap_or_default(),
            env: env.unwrap_or_default(),
            ports: ports.unwrap_or_default(),
            health,
            resources: resources.unwrap_or_default(),
            replicas: replicas.unwrap_or(1),
            restart: restart.unwrap_or_else(default_restart),
            depends_on,
            volumes: volumes.unwrap_or_default(),
            labels: labels.unwrap_or_default(),
            user,
            working_dir,
            hostname,
            stop_signal: stop_signal.unwrap_or_else(|| "SIGTERM".into()),
            stop_grace_period: stop_grace_period.unwrap_or(Duration::from_secs(10)),
            cap_add: cap_add.unwrap_or_default(),
            scale_to_zero,
            migrate: migrate.unwrap_or_default(),
            capsules: capsules.unwrap_or_default(),
            revision_of: None,
            sandbox,
            networks,
            catalog: None,
        };
        Some(Draft {
            service,
            has_health: get("health").is_some(),
            depends_spans,
            publishes,
            autoscale,
            replicas_written: get("replicas").is_some(),
            network_spans,
        })
    }

    pub(crate) fn image(&mut self, value: &Value<'_>, field: &str) -> Option<Image> {
        let text = self.string(value, field)?;
        if text == "host" {
            return Some(Image::Host { paths: Vec::new() });
        }
        if let Some(layout) = text.strip_prefix("oci:") {
            return self.layout_image(value, field, layout);
        }
        let Some(dir) = text.strip_prefix("dir:") else {
            return match text.parse::<paracloud_image_spec::Reference>() {
                Ok(reference) if reference.digest.is_none() || reference.tag.is_none() => {
                    Some(Image::Stored {
                        reference: reference.normalized().to_string(),
                        digest: None,
                    })
                }
                Ok(_) => {
                    self.error(
                        value.span(),
                        field,
                        format!("image {text:?} has both a tag and a digest"),
                        Some("keep one: `name:tag` or `name@sha256:...`".into()),
                    );
                    None
                }
                Err(e) => {
                    self.error(
                        value.span(),
                        field,
                        format!("image {text:?} is not a valid image reference: {e}"),
                        Some(format!(
                            "{}; or use `image = \"host\"`, `image = \"oci:PATH\"` or `image = \"dir:PATH\"`",
                            e.hint()
                        )),
                    );
                    None
                }
            };
        };
        if dir.is_empty() {
            self.error(
                value.span(),
                field,
                "the directory of a \"dir:\" image is empty",
                Some(
                    "write the directory after \"dir:\", such as `image = \"dir:./rootfs\"`".into(),
                ),
            );
            return None;
        }
        let path = units::resolve(self.base_dir(), dir);
        if !self.fs.exists(&path) {
            let hint = self.relative_hint();
            self.error(
                value.span(),
                field,
                format!("image directory {} does not exist", path.display()),
                Some(hint),
            );
            return None;
        }
        if !self.fs.is_dir(&path) {
            self.error(
                value.span(),
                field,
                format!("image path {} is not a directory", path.display()),
                Some("a \"dir:\" image is a directory holding a root filesystem".into()),
            );
            return None;
        }
        Some(Image::Dir { path })
    }

    /// `build = "DIR"`, or a table of `context`, `dockerfile`, `target` and `args`: a build
    /// context holding a Containerfile or Dockerfile (or the one `dockerfile` names).
    fn build_image(&mut self, value: &Value<'_>, field: &str) -> Option<Image> {
        let (context_value, context_field, table) = match value.get_ref() {
            DeValue::Table(table) => {
                self.check_keys(table, field, BUILD_KEYS);
                let Some(context) = table.get("context") else {
                    self.missing(
                        value.span(),
                        &child(field, "context"),
                        "add the directory holding the Containerfile, such as `context = \"./web\"`",
                    );
                    return None;
                };
                (context, child(field, "context"), Some(table))
            }
            _ => (value, field.to_owned(), None),
        };
        let text = self.string(context_value, &context_field)?;
        if text.is_empty() {
            self.error(
                context_value.span(),
                &context_field,
                "the build directory is empty",
                Some(
                    "write the directory holding the Containerfile, such as `build = \"./web\"`"
                        .into(),
                ),
            );
            return None;
        }
        let context = units::resolve(self.base_dir(), text);
        if !self.fs.is_dir(&context) {
            let hint = self.relative_hint();
            self.error(
                context_value.span(),
                &context_field,
                format!("build directory {} is not a directory", context.display()),
                Some(hint),
            );
            return None;
        }
        let mut dockerfile = None;
        let mut target = None;
        let mut args = BTreeMap::new();
        if let Some(table) = table {
            if let Some(v) = table.get("dockerfile") {
                let f = child(field, "dockerfile");
                let name = self.string(v, &f)?;
                let path = units::resolve(&context, name);
                if !self.fs.exists(&path) {
                    self.error(
                        v.span(),
                        &f,
                        format!("the Containerfile {} does not exist", path.display()),
                        Some("name a file relative to the build context, such as `dockerfile = \"Dockerfile.prod\"`".into()),
                    );
                    return None;
                }
                dockerfile = Some(path);
            }
            if let Some(v) = table.get("target") {
                let f = child(field, "target");
                let stage = self.string(v, &f)?;
                if stage.is_empty() {
                    self.error(v.span(), &f, "the target stage is empty", Some("name a stage of the Containerfile (FROM IMAGE AS NAME), such as `target = \"prod\"`".into()));
                    return None;
                }
                target = Some(stage.to_owned());
            }
            if let Some(v) = table.get("args") {
                let f = child(field, "args");
                let args_table = self.table(v, &f)?;
                for (key, value) in args_table.iter() {
                    let name: &str = key.get_ref();
                    let arg = self.string(value, &child(&f, name))?;
                    args.insert(name.to_owned(), arg.to_owned());
                }
            }
        }
        if dockerfile.is_none()
            && !self.fs.exists(&context.join("Containerfile"))
            && !self.fs.exists(&context.join("Dockerfile"))
        {
            self.error(
                context_value.span(),
                &context_field,
                format!("{} has no Containerfile or Dockerfile", context.display()),
                Some("write one there (FROM, COPY, RUN, CMD, ...), or name it with `dockerfile`: see docs/images.md".into()),
            );
            return None;
        }
        Some(Image::Build {
            context,
            dockerfile,
            target,
            args,
            digest: None,
        })
    }

    fn layout_image(&mut self, value: &Value<'_>, field: &str, layout: &str) -> Option<Image> {
        if layout.is_empty() {
            self.error(
                value.span(),
                field,
                "the directory of an \"oci:\" image is empty",
                Some("write the OCI image layout's directory after \"oci:\", such as `image = \"oci:./web-image\"`".into()),
            );
            return None;
        }
        let path = units::resolve(self.base_dir(), layout);
        if !self.fs.is_dir(&path) {
            let hint = self.relative_hint();
            self.error(
                value.span(),
                field,
                format!("OCI image layout {} is not a directory", path.display()),
                Some(hint),
            );
            return None;
        }
        if !self.fs.exists(&path.join("index.json")) {
            self.error(
                value.span(),
                field,
                format!("{} has no index.json, so it is not an OCI image layout", path.display()),
                Some("export one with `paracloud image export NAME DIR` or `skopeo copy ... oci:DIR`".into()),
            );
            return None;
        }
        Some(Image::Layout { path, digest: None })
    }

    fn relative_hint(&self) -> String {
        format!(
            "create it or fix the path; relative paths are resolved against {}",
            self.base_dir().display()
        )
    }

    fn host_paths(&mut self, value: &Value<'_>, field: &str) -> Option<Vec<PathBuf>> {
        let entries = self.strings(value, field)?;
        let mut paths = Vec::with_capacity(entries.len());
        let mut ok = true;
        for (i, (entry, span)) in entries.into_iter().enumerate() {
            let path = units::resolve(self.base_dir(), entry);
            if self.fs.exists(&path) {
                paths.push(path);
            } else {
                let hint = self.relative_hint();
                self.error(
                    span,
                    &index(field, i),
                    format!("host path {} does not exist", path.display()),
                    Some(hint),
                );
                ok = false;
            }
        }
        ok.then_some(paths)
    }

    pub(crate) fn env(
        &mut self,
        value: &Value<'_>,
        field: &str,
    ) -> Option<BTreeMap<String, String>> {
        let env = self.scalar_map(value, field)?;
        let DeValue::Table(table) = value.get_ref() else {
            return Some(env);
        };
        let mut ok = true;
        for key in table.keys() {
            let name: &str = key.get_ref();
            if name.is_empty() || name.contains(['=', '\0']) {
                self.error(
                    key.span(),
                    &child(field, name),
                    format!("invalid environment variable name {name:?}"),
                    Some("names must not be empty nor contain '=' or NUL".into()),
                );
                ok = false;
            }
        }
        ok.then_some(env)
    }

    /// The ports, and the published addresses with where they are written.
    fn ports(&mut self, value: &Value<'_>, field: &str) -> (Option<Vec<Port>>, Vec<Published>) {
        let DeValue::Array(array) = value.get_ref() else {
            self.type_error(value, field, "an array of ports");
            return (None, Vec::new());
        };
        let mut ports = Vec::new();
        let mut publishes = Vec::new();
        let mut seen: HashMap<(u16, bool), usize> = HashMap::new();
        let mut ok = true;
        for (i, item) in array.iter().enumerate() {
            let item_field = index(field, i);
            let Some((port, publish_span)) = self.port_entry(item, &item_field) else {
                ok = false;
                continue;
            };
            let udp = port.protocol.is_udp();
            if let Some(first) = seen.insert((port.port, udp), item.span().start) {
                let line = self.line_of(first);
                self.error(
                    item.span(),
                    &item_field,
                    format!(
                        "port {}{} is listed twice",
                        port.port,
                        if udp { "/udp" } else { "" }
                    ),
                    Some(format!("remove this entry or the one on line {line}")),
                );
                ok = false;
                continue;
            }
            if let Some(publish) = port.publish {
                let publish_field = if publish_span == item.span() {
                    item_field
                } else {
                    child(&item_field, "publish")
                };
                publishes.push(Published {
                    addr: publish,
                    udp,
                    span: publish_span,
                    field: publish_field,
                });
            }
            ports.push(port);
        }
        (ok.then_some(ports), publishes)
    }

    /// One port entry, and the span of its publish address.
    fn port_entry(&mut self, item: &Value<'_>, field: &str) -> Option<(Port, Span)> {
        match item.get_ref() {
            DeValue::Integer(_) => {
                let port = self.port(item, field)?;
                let port = Port {
                    port,
                    protocol: Protocol::Tcp,
                    publish: None,
                };
                Some((port, item.span()))
            }
            DeValue::String(text) => match units::parse_port_spec(text) {
                Ok(port) => Some((port, item.span())),
                Err(message) => {
                    self.error(
                        item.span(),
                        field,
                        message,
                        Some("write a port as PORT, \"HOST_PORT:PORT\" or \"HOST_IP:HOST_PORT:PORT\", optionally ending in \"/tcp\", \"/http\" or \"/udp\"".into()),
                    );
                    None
                }
            },
            DeValue::Table(table) => {
                self.check_keys(table, field, PORT_KEYS);
                let port = match table.get("port") {
                    Some(v) => self.port(v, &child(field, "port")),
                    None => {
                        self.missing(
                            item.span(),
                            &child(field, "port"),
                            "add the port the service listens on, such as `port = 8080`",
                        );
                        None
                    }
                };
                let protocol = match table.get("protocol") {
                    Some(v) => self.protocol(v, &child(field, "protocol")),
                    None => Some(Protocol::Tcp),
                };
                let (publish, publish_span) = match table.get("publish") {
                    Some(v) => (self.publish(v, &child(field, "publish")), v.span()),
                    None => (Some(None), item.span()),
                };
                Some((
                    Port {
                        port: port?,
                        protocol: protocol?,
                        publish: publish?,
                    },
                    publish_span,
                ))
            }
            _ => {
                self.type_error(item, field, "a port number, a port string or a table");
                None
            }
        }
    }

    fn protocol(&mut self, value: &Value<'_>, field: &str) -> Option<Protocol> {
        let text = self.string(value, field)?;
        match units::parse_protocol(text) {
            Ok(protocol) => Some(protocol),
            Err(message) => {
                self.error(
                    value.span(),
                    field,
                    message,
                    Some("use \"tcp\", \"http\" or \"udp\"".into()),
                );
                None
            }
        }
    }

    fn publish(&mut self, value: &Value<'_>, field: &str) -> Option<Option<SocketAddr>> {
        let addr = match value.get_ref() {
            DeValue::Integer(_) => {
                let port = self.port(value, field)?;
                SocketAddr::new(units::DEFAULT_PUBLISH_IP, port)
            }
            DeValue::String(text) => match units::parse_publish(text) {
                Ok(addr) => addr,
                Err(message) => {
                    self.error(
                        value.span(),
                        field,
                        message,
                        Some("write a host port such as `publish = 8080`, or an address such as `publish = \"0.0.0.0:8080\"`".into()),
                    );
                    return None;
                }
            },
            _ => {
                self.type_error(value, field, "a port number or an \"IP:PORT\" string");
                return None;
            }
        };
        Some(Some(addr))
    }

    fn health(
        &mut self,
        value: &Value<'_>,
        field: &str,
        ports: Option<&[Port]>,
    ) -> Option<HealthCheck> {
        let table = self.table(value, field)?;
        self.check_keys(table, field, HEALTH_KEYS);
        let probes: Vec<&str> = ["exec", "tcp", "http"]
            .into_iter()
            .filter(|key| table.contains_key(*key))
            .collect();
        let probe_hint =
            "use one of `exec = [\"COMMAND\", \"ARG\"]`, `tcp = PORT` or `http = \"/PATH\"`";
        let probe = match probes.as_slice() {
            [] => {
                self.error(
                    value.span(),
                    field,
                    "a health check needs a probe",
                    Some(probe_hint.into()),
                );
                None
            }
            [probe] => self.probe(table, probe, field, ports),
            [first, second, ..] => {
                let span = table.get(*second).map_or(value.span(), |v| v.span());
                self.error(
                    span,
                    &child(field, second),
                    format!("a health check has one probe, found `{first}` and `{second}`"),
                    Some(format!("keep only one: {probe_hint}")),
                );
                None
            }
        };
        let interval = match table.get("interval") {
            Some(v) => self.positive_duration(v, &child(field, "interval")),
            None => Some(Duration::from_secs(2)),
        };
        let timeout = match table.get("timeout") {
            Some(v) => self.positive_duration(v, &child(field, "timeout")),
            None => Some(Duration::from_secs(1)),
        };
        let start_period = match table.get("start_period") {
            Some(v) => self.duration(v, &child(field, "start_period")),
            None => Some(Duration::ZERO),
        };
        let retries = match table.get("retries") {
            Some(v) => self
                .whole(v, &child(field, "retries"), 1, u64::from(u32::MAX))
                .and_then(|n| u32::try_from(n).ok()),
            None => Some(3),
        };
        let restart = match table.get("restart") {
            Some(v) => self.boolean(v, &child(field, "restart")),
            None => Some(true),
        };
        Some(HealthCheck {
            probe: probe?,
            interval: interval?,
            timeout: timeout?,
            retries: retries?,
            start_period: start_period?,
            restart: restart?,
        })
    }

    fn probe(
        &mut self,
        table: &DeTable<'_>,
        kind: &str,
        field: &str,
        ports: Option<&[Port]>,
    ) -> Option<Probe> {
        let value = table.get(kind)?;
        let probe_field = child(field, kind);
        if kind != "http" {
            if let Some(port) = table.get("port") {
                self.error(
                    port.span(),
                    &child(field, "port"),
                    "`port` is only used by `http` health checks",
                    Some(match kind {
                        "tcp" => "remove `port`: `tcp = PORT` names the port".into(),
                        _ => "remove `port`".into(),
                    }),
                );
            }
        }
        match kind {
            "exec" => {
                let command = self.words(value, &probe_field)?;
                if command.is_empty() {
                    self.invalid(value, &probe_field, "the command is empty");
                    return None;
                }
                Some(Probe::Exec { command })
            }
            "tcp" => self
                .port(value, &probe_field)
                .map(|port| Probe::Tcp { port }),
            _ => {
                let path = self.string(value, &probe_field)?;
                if !path.starts_with('/') {
                    self.error(
                        value.span(),
                        &probe_field,
                        format!("the path must start with '/', found {path:?}"),
                        Some(format!("write it as \"/{path}\"")),
                    );
                    return None;
                }
                let port = match table.get("port") {
                    Some(v) => self.port(v, &child(field, "port"))?,
                    // The first TCP or HTTP port: an HTTP check cannot go to a UDP one.
                    None => match ports.map(|p| p.iter().find(|p| !p.protocol.is_udp())) {
                        Some(Some(first)) => first.port,
                        Some(None) => {
                            self.error(
                                value.span(),
                                &child(field, "port"),
                                "an http health check needs a port, and the service has no TCP or HTTP ports",
                                Some("add `port = PORT` to the health check, or declare the service's `ports`".into()),
                            );
                            return None;
                        }
                        // The ports are broken and already reported.
                        None => return None,
                    },
                };
                Some(Probe::Http {
                    port,
                    path: path.to_owned(),
                })
            }
        }
    }

    pub(crate) fn resources(&mut self, value: &Value<'_>, field: &str) -> Option<Resources> {
        let table = self.table(value, field)?;
        self.check_keys(table, field, RESOURCE_KEYS);
        let mut ok = true;
        let cpu = table.get("cpu").and_then(|v| {
            let cpu_field = child(field, "cpu");
            let cpu = self.number(v, &cpu_field)?;
            if !(MIN_CPU..=MAX_CPU).contains(&cpu) {
                self.invalid(
                    v,
                    &cpu_field,
                    format!(
                        "must be between {MIN_CPU} and {MAX_CPU} cores, found {}",
                        units::shown(cpu)
                    ),
                );
                return None;
            }
            Some(cpu)
        });
        ok &= cpu.is_some() == table.contains_key("cpu");
        let memory = table
            .get("memory")
            .and_then(|v| self.size(v, &child(field, "memory"), &MEMORY));
        ok &= memory.is_some() == table.contains_key("memory");
        let disk = table
            .get("disk")
            .and_then(|v| self.size(v, &child(field, "disk"), &DISK));
        ok &= disk.is_some() == table.contains_key("disk");
        let pids = table
            .get("pids")
            .and_then(|v| self.whole(v, &child(field, "pids"), 1, MAX_PIDS));
        ok &= pids.is_some() == table.contains_key("pids");
        let memory_reservation = table
            .get("memory_reservation")
            .and_then(|v| self.size(v, &child(field, "memory_reservation"), &MEMORY));
        ok &= memory_reservation.is_some() == table.contains_key("memory_reservation");
        let cpu_reservation = table.get("cpu_reservation").and_then(|v| {
            let f = child(field, "cpu_reservation");
            let cores = self.number(v, &f)?;
            if !(MIN_CPU..=MAX_CPU).contains(&cores) {
                self.invalid(
                    v,
                    &f,
                    format!(
                        "must be between {MIN_CPU} and {MAX_CPU} cores, found {}",
                        units::shown(cores)
                    ),
                );
                return None;
            }
            Some(cores)
        });
        ok &= cpu_reservation.is_some() == table.contains_key("cpu_reservation");
        if let (Some(low), Some(max)) = (memory_reservation, memory) {
            if low > max {
                self.error(
                    table
                        .get("memory_reservation")
                        .map(|v| v.span())
                        .unwrap_or(0..0),
                    &child(field, "memory_reservation"),
                    format!("the reservation, {low} bytes, is above the limit, {max} bytes"),
                    Some("reserve at most the memory limit".into()),
                );
                ok = false;
            }
        }
        ok.then_some(Resources {
            cpu,
            memory,
            pids,
            disk,
            memory_reservation,
            cpu_reservation,
        })
    }

    pub(crate) fn size(&mut self, value: &Value<'_>, field: &str, rule: &SizeRule) -> Option<u64> {
        let hint = "write bytes, or a number with K, M, G or T (powers of 1024) or KB, MB, GB (powers of 1000), such as \"256M\"";
        let bytes = match value.get_ref() {
            DeValue::Integer(_) => self.whole(value, field, 0, u64::MAX)?,
            DeValue::String(text) => match units::parse_memory(text) {
                Ok(bytes) => bytes,
                Err(message) => {
                    self.error(value.span(), field, message, Some(hint.into()));
                    return None;
                }
            },
            _ => {
                self.type_error(value, field, "a size such as \"256M\" or a number of bytes");
                return None;
            }
        };
        if bytes > units::MAX_MEMORY {
            self.error(
                value.span(),
                field,
                format!("{bytes} bytes is more than the maximum of 64T"),
                Some(rule.example.into()),
            );
            return None;
        }
        if bytes < rule.min {
            self.error(
                value.span(),
                field,
                format!("{bytes} bytes is below the minimum of {}", rule.min_text),
                Some(format!(
                    "give at least \"{}\"; did you forget the unit?",
                    rule.min_text
                )),
            );
            return None;
        }
        Some(bytes)
    }

    fn restart(&mut self, value: &Value<'_>, field: &str) -> Option<RestartPolicy> {
        let mut policy = default_restart();
        match value.get_ref() {
            DeValue::String(_) => {
                policy.condition = self.restart_condition(value, field)?;
                Some(policy)
            }
            DeValue::Table(table) => {
                self.check_keys(table, field, RESTART_KEYS);
                let mut ok = true;
                if let Some(v) = table.get("condition") {
                    match self.restart_condition(v, &child(field, "condition")) {
                        Some(condition) => policy.condition = condition,
                        None => ok = false,
                    }
                }
                if let Some(v) = table.get("max_retries") {
                    let retries_field = child(field, "max_retries");
                    match self.whole(v, &retries_field, 0, u64::from(u32::MAX)) {
                        Some(n) if policy.condition == RestartCondition::OnFailure => {
                            policy.max_retries = u32::try_from(n).ok();
                        }
                        Some(_) if ok => {
                            self.error(
                                v.span(),
                                &retries_field,
                                "`max_retries` is only allowed with `condition = \"on-failure\"`",
                                Some(
                                    "set `condition = \"on-failure\"` or remove `max_retries`"
                                        .into(),
                                ),
                            );
                            ok = false;
                        }
                        _ => ok = false,
                    }
                }
                for (key, slot) in [
                    ("backoff", &mut policy.backoff_initial),
                    ("backoff_max", &mut policy.backoff_max),
                ] {
                    if let Some(v) = table.get(key) {
                        match self.positive_duration(v, &child(field, key)) {
                            Some(d) => *slot = d,
                            None => ok = false,
                        }
                    }
                }
                if ok && policy.backoff_max < policy.backoff_initial {
                    let span = table
                        .get("backoff_max")
                        .or(table.get("backoff"))
                        .map_or(value.span(), |v| v.span());
                    self.error(
                        span,
                        &child(field, "backoff_max"),
                        "`backoff_max` is shorter than `backoff`",
                        Some("make `backoff_max` at least as long as `backoff`".into()),
                    );
                    ok = false;
                }
                ok.then_some(policy)
            }
            _ => {
                self.type_error(value, field, "a string or a table");
                None
            }
        }
    }

    fn migrate_method(&mut self, value: &Value<'_>, field: &str) -> Option<MigrateMethod> {
        const METHODS: &[&str] = &["paci", "criu", "restart"];
        let text = self.string(value, field)?;
        match text {
            "paci" => Some(MigrateMethod::Paci),
            "criu" => Some(MigrateMethod::Criu),
            "restart" => Some(MigrateMethod::Restart),
            other => {
                let hint = match units::suggest(other, METHODS.iter().copied()) {
                    Some(close) => format!("did you mean \"{close}\"?"),
                    None => "use \"paci\" (the application hands its state over), \"criu\" (checkpoint and restore of the process) or \"restart\" (stateless)".into(),
                };
                self.error(
                    value.span(),
                    field,
                    format!("unknown migration method {other:?}"),
                    Some(hint),
                );
                None
            }
        }
    }

    /// `[services.NAME.capsules]`: capsule name = "read" | "write".
    fn capsule_policy(
        &mut self,
        value: &Value<'_>,
        field: &str,
    ) -> Option<BTreeMap<String, paracloud_capsule::Access>> {
        let table = self.table(value, field)?;
        let names = self.capsules.names();
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (key, item) in table {
            let name = key.get_ref();
            let item_field = crate::reader::child(field, name);
            if self.capsules.is_broken(name) {
                ok = false;
                continue;
            }
            if !names.iter().any(|n| n == name) {
                let hint = match self.capsules.suggest(name) {
                    Some(close) => format!("did you mean {close:?}?"),
                    None => format!("the capsules are {}", names.join(", ")),
                };
                self.error(
                    key.span(),
                    &item_field,
                    format!("unknown capsule {name:?}"),
                    Some(hint),
                );
                ok = false;
                continue;
            }
            let Some(text) = self.string(item, &item_field) else {
                ok = false;
                continue;
            };
            match paracloud_capsule::Access::parse(text) {
                Some(access) => {
                    out.insert(name.to_string(), access);
                }
                None => {
                    self.error(
                        item.span(),
                        &item_field,
                        format!("unknown access {text:?}"),
                        Some("use \"read\" (the instance's files read-only) or \"write\"".into()),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn restart_condition(&mut self, value: &Value<'_>, field: &str) -> Option<RestartCondition> {
        const CONDITIONS: &[&str] = &["always", "on-failure", "no"];
        let text = self.string(value, field)?;
        match text {
            "always" => Some(RestartCondition::Always),
            "on-failure" => Some(RestartCondition::OnFailure),
            "no" => Some(RestartCondition::No),
            other => {
                let hint = match units::suggest(other, CONDITIONS.iter().copied()) {
                    Some(close) => format!("did you mean \"{close}\"?"),
                    None => "use \"always\", \"on-failure\" or \"no\"".into(),
                };
                self.error(
                    value.span(),
                    field,
                    format!("unknown restart condition {other:?}"),
                    Some(hint),
                );
                None
            }
        }
    }

    /// The dependencies, and where each is written. Whether they name services is checked later,
    /// once every service is known.
    fn depends_on(
        &mut self,
        value: &Value<'_>,
        field: &str,
    ) -> (
        BTreeMap<String, DependsCondition>,
        BTreeMap<String, (Span, String)>,
    ) {
        let mut depends = BTreeMap::new();
        let mut spans = BTreeMap::new();
        match value.get_ref() {
            DeValue::Array(_) => {
                for (i, (name, span)) in self
                    .strings(value, field)
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    if let Some((first, _)) = spans.get(name) {
                        let first: &Span = first;
                        let line = self.line_of(first.start);
                        self.error(
                            span,
                            &index(field, i),
                            format!("`{name}` is listed twice"),
                            Some(format!("remove this entry or the one on line {line}")),
                        );
                        continue;
                    }
                    depends.insert(name.to_owned(), DependsCondition::Started);
                    spans.insert(name.to_owned(), (span, index(field, i)));
                }
            }
            DeValue::Table(table) => {
                for (key, v) in table {
                    let name: &str = key.get_ref();
                    let entry_field = child(field, name);
                    let Some(text) = self.string(v, &entry_field) else {
                        continue;
                    };
                    let condition = match text {
                        "started" => DependsCondition::Started,
                        "healthy" => DependsCondition::Healthy,
                        "completed" => DependsCondition::Completed,
                        other => {
                            self.error(
                                v.span(),
                                &entry_field,
                                format!("unknown dependency condition {other:?}"),
                                Some("use \"started\", \"healthy\" or \"completed\"".into()),
                            );
                            continue;
                        }
                    };
                    depends.insert(name.to_owned(), condition);
                    spans.insert(name.to_owned(), (key.span(), entry_field));
                }
            }
            _ => self.type_error(value, field, "an array of service names or a table"),
        }
        (depends, spans)
    }

    fn mounts(&mut self, value: &Value<'_>, field: &str) -> Option<Vec<VolumeMount>> {
        let DeValue::Array(array) = value.get_ref() else {
            self.type_error(value, field, "an array of volumes");
            return None;
        };
        let mut mounts = Vec::new();
        let mut targets: HashMap<String, usize> = HashMap::new();
        let mut ok = true;
        for (i, item) in array.iter().enumerate() {
            let item_field = index(field, i);
            let Some(mount) = self.mount(item, &item_field) else {
                ok = false;
                continue;
            };
            let target = match &mount {
                VolumeMount::Named { target, .. } | VolumeMount::Bind { target, .. } => target,
            };
            if let Some(first) = targets.insert(target.clone(), item.span().start) {
                let line = self.line_of(first);
                self.error(
                    item.span(),
                    &item_field,
                    format!("{target} is mounted twice"),
                    Some(format!(
                        "mount something else here or remove the entry on line {line}"
                    )),
                );
                ok = false;
                continue;
            }
            mounts.push(mount);
        }
        ok.then_some(mounts)
    }

    fn mount(&mut self, item: &Value<'_>, field: &str) -> Option<VolumeMount> {
        match item.get_ref() {
            DeValue::String(text) => match units::parse_volume_spec(text) {
                Ok(spec) => self.mount_parts(
                    (spec.source, item.span(), field),
                    (spec.target, item.span(), field),
                    spec.read_only,
                ),
                Err(message) => {
                    self.error(
                        item.span(),
                        field,
                        message,
                        Some("write \"NAME:/TARGET\" for a named volume or \"./HOST_PATH:/TARGET\" for a bind mount, optionally ending in \":ro\"".into()),
                    );
                    None
                }
            },
            DeValue::Table(table) => {
                self.check_keys(table, field, VOLUME_KEYS);
                let mut part = |key: &str, hint: &str| match table.get(key) {
                    Some(v) => {
                        let part_field = child(field, key);
                        self.string(v, &part_field)
                            .map(|s| (s, v.span(), part_field))
                    }
                    None => {
                        self.missing(item.span(), &child(field, key), hint);
                        None
                    }
                };
                let source = part("source", "add `source = \"NAME\"` for a named volume or `source = \"./HOST_PATH\"` for a bind mount");
                let target = part(
                    "target",
                    "add the absolute path inside the instance, such as `target = \"/data\"`",
                );
                let read_only = match table.get("read_only") {
                    Some(v) => self.boolean(v, &child(field, "read_only")),
                    None => Some(false),
                };
                let (source, target, read_only) = (source?, target?, read_only?);
                self.mount_parts(
                    (source.0, source.1, &source.2),
                    (target.0, target.1, &target.2),
                    read_only,
                )
            }
            _ => {
                self.type_error(item, field, "a volume string or a table");
                None
            }
        }
    }

    fn mount_parts(
        &mut self,
        (source, source_span, source_field): (&str, Span, &str),
        (target, target_span, target_field): (&str, Span, &str),
        read_only: bool,
    ) -> Option<VolumeMount> {
        let target_ok = if !target.starts_with('/') {
            self.error(
                target_span,
                target_field,
                format!("the mount target must be an absolute path, found {target:?}"),
                Some(format!(
                    "write it from the root, such as \"/{}\"",
                    target.trim_start_matches("./")
                )),
            );
            false
        } else if target.split('/').any(|part| part == "..") {
            self.error(
                target_span,
                target_field,
                format!("the mount target must not contain \"..\", found {target:?}"),
                Some("write the target without \"..\"".into()),
            );
            false
        } else {
            true
        };
        let mount = if source.starts_with('/') || source.starts_with('.') {
            let path = units::resolve(self.base_dir(), source);
            // The directory as written may hold `..` (`-f ../app/compose.yaml`).
            let base = units::resolve(self.base_dir(), ".");
            if !source.starts_with('/') && !path.starts_with(&base) {
                self.error(
                    source_span,
                    source_field,
                    format!(
                        "bind mount source {source:?} leaves the manifest's directory (it is {})",
                        path.display()
                    ),
                    Some(format!(
                        "a relative source stays inside {}; write a host path outside it as an absolute path, \"{}\", if it is meant",
                        base.display(),
                        path.display()
                    )),
                );
                return None;
            }
            if !self.fs.exists(&path) {
                let hint = self.relative_hint();
                self.error(
                    source_span,
                    source_field,
                    format!("bind mount source {} does not exist", path.display()),
                    Some(hint),
                );
                return None;
            }
            VolumeMount::Bind {
                source: path,
                target: target.to_owned(),
                read_only,
            }
        } else {
            if let Err(problem) = units::check_name(source) {
                self.error(
                    source_span,
                    source_field,
                    format!("invalid volume name {source:?}: {problem}"),
                    Some("a named volume is a lower-case name such as \"data\"; start a host path with \"/\" or \"./\" to bind-mount it".into()),
                );
                return None;
            }
            VolumeMount::Named {
                name: source.to_owned(),
                target: target.to_owned(),
                read_only,
            }
        };
        target_ok.then_some(mount)
    }

    /// A host name: dot-separated labels of letters, digits and `-`, as `sethostname` and DNS
    /// take them.
    fn hostname(&mut self, value: &Value<'_>, field: &str) -> Option<String> {
        let name = self.string(value, field)?;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            self.invalid(
                value,
                field,
                format!("{name:?} is not a host name: letters, digits and `-` in dot-separated labels, at most 64 characters"),
            );
            return None;
        }
        Some(name.to_owned())
    }

    fn user(&mut self, value: &Value<'_>, field: &str) -> Option<String> {
        let user = match value.get_ref() {
            DeValue::Integer(_) => self
                .whole(value, field, 0, u64::from(u32::MAX))?
                .to_string(),
            DeValue::String(text) => text.to_string(),
            _ => {
                self.type_error(value, field, "a string or a user id");
                return None;
            }
        };
        if user.is_empty() || user.contains('\0') {
            self.invalid(value, field, "must be a user name or id");
            return None;
        }
        Some(user)
    }

    fn signal(&mut self, value: &Value<'_>, field: &str) -> Option<String> {
        let text = self.string(value, field)?;
        match units::normalise_signal(text) {
            Ok(signal) => Some(signal),
            Err(close) => {
                let hint = match close {
                    Some(close) => format!("did you mean \"{close}\"?"),
                    None => {
                        "use a Linux signal name such as \"SIGTERM\", \"SIGINT\" or \"SIGQUIT\""
                            .into()
                    }
                };
                self.error(
                    value.span(),
                    field,
                    format!("unknown signal {text:?}"),
                    Some(hint),
                );
                None
            }
        }
    }

    pub(crate) fn capabilities(&mut self, value: &Value<'_>, field: &str) -> Option<Vec<String>> {
        let entries = self.strings(value, field)?;
        let mut caps: Vec<String> = Vec::new();
        let mut ok = true;
        for (i, (entry, span)) in entries.into_iter().enumerate() {
            match units::normalise_capability(entry) {
                Ok(cap) if caps.contains(&cap) => {}
                Ok(cap) => caps.push(cap),
                Err(close) => {
                    let hint = match close {
                        Some(close) => format!("did you mean \"{close}\"?"),
                        None => "use a Linux capability name such as \"NET_BIND_SERVICE\" (see capabilities(7))".into(),
                    };
                    self.error(
                        span,
                        &index(field, i),
                        format!("unknown capability {entry:?}"),
                        Some(hint),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(caps)
    }
}

/// Restart always, backing off from 100ms up to 30s.
pub(crate) fn default_restart() -> RestartPolicy {
    RestartPolicy {
        condition: RestartCondition::Always,
        max_retries: None,
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(30),
    }
}
