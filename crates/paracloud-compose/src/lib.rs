//! Docker Compose files read as Paracloud manifests.
//!
//! A Compose file is turned into the equivalent `paracloud.toml` text, which the manifest crate
//! then parses and validates as it would a file written by hand: one set of rules for both
//! formats. Every line of the generated TOML remembers the place in the Compose file it came
//! from, so the manifest's own diagnostics point into the Compose file too. Keys Paracloud cannot
//! honour are refused with what to do instead; nothing is dropped without a word (see
//! docs/compose.md).
//!
//! **Architecture Invariant:** this crate does no I/O. The caller hands in the file, the
//! environment, and reads `.env` and `env_file` files through [`Host`].

mod context;
mod dotenv;
mod files;
mod interpolate;
mod merge;
mod networks;
mod out;
mod sandbox;
mod service;
mod table;
mod values;
mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use paracloud_manifest::{Diagnostic, FileSystem, Manifest, ManifestError, Origin};

pub use interpolate::{interpolate, InterpolationError};

use out::Out;
use yaml::{Kind, Node};

/// What the reader asks of the machine: the manifest's path questions, and the text of the
/// `.env` and `env_file` files.
pub trait Host: FileSystem {
    /// The text of a file, `None` when it does not exist or cannot be read.
    fn read_to_string(&self, path: &Path) -> Option<String>;
}

/// A Compose file read: the manifest, and the `paracloud.toml` text it was read as.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub manifest: Manifest,
    /// The equivalent manifest, variables substituted; relative paths stay relative to the
    /// Compose file's directory.
    pub toml: String,
}

/// The file names `docker compose` looks for, in its order of preference.
pub const FILE_NAMES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// Whether a manifest file is a Compose file: by its extension, else by whether it is TOML.
pub fn is_compose(path: &Path, source: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => true,
        Some("toml") => false,
        _ => source.parse::<toml::Table>().is_err(),
    }
}

/// Reads a Compose file into a manifest. `env` is the environment variables are taken from
/// (before the project's `.env` file, as in Compose).
pub fn parse(
    source: &str,
    origin: &Origin,
    env: &BTreeMap<String, String>,
    host: &dyn Host,
) -> Result<Converted, ManifestError> {
    parse_files(
        &[(origin.file.clone(), source.to_owned())],
        origin,
        env,
        host,
    )
}

/// Reads several Compose files as one, each merged over the ones before it as `docker compose
/// -f a.yaml -f b.yaml` does (an override file), with diagnostics in the file they point at.
/// `origin` is the first file's: the project's directory is its.
pub fn parse_files(
    files: &[(String, String)],
    origin: &Origin,
    env: &BTreeMap<String, String>,
    host: &dyn Host,
) -> Result<Converted, ManifestError> {
    // One text of every file, each at its own offset, so that a node's offset names its file.
    let mut source = String::new();
    let mut parts = Vec::new();
    for (name, text) in files {
        parts.push((source.len(), name.clone()));
        source.push_str(text);
        source.push('\n');
    }
    let reader = || Reader::with_files(&source, parts.clone());
    let mut first = reader();
    let toml = first.read(origin, env, host);
    let (toml, out) = match (toml, first.finish()) {
        (_, Some(error)) => return Err(error),
        (Some(toml), None) => toml,
        (None, None) => {
            let mut r = reader();
            r.error(
                0,
                "",
                "the Compose file was refused without a reason (a bug)",
                None,
            );
            return Err(r.into_error());
        }
    };
    match paracloud_manifest::parse(&toml, origin, host) {
        Ok(manifest) => Ok(Converted { manifest, toml }),
        Err(error) => {
            let mut r = reader();
            for d in error.diagnostics {
                let (offset, field) = out.place(d.line);
                // Hints showing TOML syntax would not help in a Compose file.
                let hint = d.hint.filter(|h| !h.contains(" = "));
                let field = if field.is_empty() { d.field } else { field };
                r.error(offset, &field, d.message, hint);
            }
            Err(r.into_error())
        }
    }
}

/// Collects located diagnostics while reading a Compose file.
pub(crate) struct Reader<'a> {
    /// Every file's text, one after the other.
    src: &'a str,
    /// Where each file starts in `src`, and its name.
    files: Vec<(usize, String)>,
    line_starts: Vec<usize>,
    diagnostics: Vec<(usize, Diagnostic)>,
}

impl<'a> Reader<'a> {
    fn with_files(src: &'a str, files: Vec<(usize, String)>) -> Self {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Reader {
            src,
            files,
            line_starts,
            diagnostics: Vec::new(),
        }
    }

    /// The file an offset is in: its index, name and start.
    fn file_at(&self, offset: usize) -> (usize, &str, usize) {
        let i = self
            .files
            .partition_point(|(start, _)| *start <= offset)
            .saturating_sub(1);
        match self.files.get(i) {
            Some((start, name)) => (i, name, *start),
            None => (0, "", 0),
        }
    }

    /// The file, line and column of an offset (lines and columns from 1 within the file).
    fn position(&self, offset: usize) -> (String, usize, usize) {
        let mut offset = offset.min(self.src.len());
        while !self.src.is_char_boundary(offset) {
            offset -= 1;
        }
        let (_, file, file_start) = self.file_at(offset);
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let first_line = self.line_starts.partition_point(|&s| s <= file_start);
        let start = self.line_starts[line - 1];
        (
            file.to_owned(),
            line - first_line + 1,
            self.src[start..offset].chars().count() + 1,
        )
    }

    pub(crate) fn error(
        &mut self,
        offset: usize,
        field: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let (file, line, column) = self.position(offset);
        self.diagnostics.push((
            offset,
            Diagnostic {
                file,
                line,
                column,
                field: field.to_owned(),
                message: message.into(),
                hint,
            },
        ));
    }

    /// A diagnostic in another file (an env file), at the start of `line`.
    pub(crate) fn error_in(&mut self, file: String, line: usize, field: &str, message: String) {
        self.diagnostics.push((
            usize::MAX,
            Diagnostic {
                file,
                line,
                column: 1,
                field: field.to_owned(),
                message,
                hint: None,
            },
        ));
    }

    fn finish(self) -> Option<ManifestError> {
        (!self.diagnostics.is_empty()).then(|| self.into_error())
    }

    fn into_error(mut self) -> ManifestError {
        self.diagnostics.sort_by_key(|(offset, _)| *offset);
        ManifestError {
            diagnostics: self.diagnostics.into_iter().map(|(_, d)| d).collect(),
        }
    }

    /// Reports a value of the wrong shape.
    pub(crate) fn expected(&mut self, node: &Node, field: &str, expected: &str) {
        self.error(
            node.offset,
            field,
            format!("expected {expected}, found {}", node.describe()),
            None,
        );
    }

    /// The entries of a mapping.
    pub(crate) fn map<'n>(&mut self, node: &'n Node, field: &str) -> Option<&'n [(Node, Node)]> {
        match &node.kind {
            Kind::Map(entries) => Some(entries),
            _ => {
                self.expected(node, field, "a mapping");
                None
            }
        }
    }

    /// A scalar's text (numbers and booleans as written).
    pub(crate) fn string<'n>(&mut self, node: &'n Node, field: &str) -> Option<&'n str> {
        match &node.kind {
            Kind::Scalar { text, .. } if !node.is_null() => Some(text),
            _ => {
                self.expected(node, field, "a string");
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, node: &Node, field: &str) -> Option<bool> {
        let value = node.boolean();
        if value.is_none() {
            self.expected(node, field, "true or false");
        }
        value
    }

    /// A whole number within `min..=max`.
    pub(crate) fn whole(&mut self, node: &Node, field: &str, min: u64, max: u64) -> Option<u64> {
        match node.text().and_then(|t| t.parse::<u64>().ok()) {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.error(
                    node.offset,
                    field,
                    format!("must be between {min} and {max}, found {n}"),
                    None,
                );
                None
            }
            None => {
                self.expected(node, field, "a whole number");
                None
            }
        }
    }

    /// Strings of a list, each with its node.
    pub(crate) fn strings<'n>(
        &mut self,
        node: &'n Node,
        field: &str,
    ) -> Option<Vec<(&'n str, &'n Node)>> {
        let Kind::Seq(items) = &node.kind else {
            self.expected(node, field, "a list of strings");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(item, &format!("{field}[{i}]")) {
                Some(s) => out.push((s, item)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A command: a string split as a shell would, or a list of strings.
    pub(crate) fn words(&mut self, node: &Node, field: &str) -> Option<Vec<String>> {
        match &node.kind {
            Kind::Seq(_) => self
                .strings(node, field)
                .map(|w| w.into_iter().map(|(s, _)| s.to_owned()).collect()),
            Kind::Scalar { text, .. } if !node.is_null() => match shell_words::split(text) {
                Ok(words) => Some(words),
                Err(e) => {
                    self.error(
                        node.offset,
                        field,
                        format!("cannot split {text:?} into words: {e}"),
                        Some("close the quote, or write the command as a list".into()),
                    );
                    None
                }
            },
            _ => {
                self.expected(node, field, "a string or a list of strings");
                None
            }
        }
    }

    /// A mapping of strings, or a list of `KEY=VALUE` (environment, labels); a key without a
    /// value maps to `None`.
    pub(crate) fn dict(
        &mut self,
        node: &Node,
        field: &str,
    ) -> Option<Vec<(String, Option<String>, usize)>> {
        let mut out = Vec::new();
        match &node.kind {
            Kind::Map(entries) => {
                for (key, value) in entries {
                    let name = key.text().unwrap_or_default().to_owned();
                    let value = match &value.kind {
                        _ if value.is_null() => None,
                        Kind::Scalar { text, .. } => Some(text.clone()),
                        _ => {
                            self.expected(value, &child(field, &name), "a string or number");
                            continue;
                        }
                    };
                    out.push((name, value, key.offset));
                }
            }
            Kind::Seq(_) => {
                for (item, node) in self.strings(node, field)? {
                    match item.split_once('=') {
                        Some((k, v)) => out.push((k.to_owned(), Some(v.to_owned()), node.offset)),
                        None => out.push((item.to_owned(), None, node.offset)),
                    }
                }
            }
            _ => {
                self.expected(node, field, "a mapping or a list of KEY=VALUE strings");
                return None;
            }
        }
        Some(out)
    }

    /// Refuses a key with why and what to do instead.
    pub(crate) fn refuse(&mut self, key: &Node, field: &str, why: &str, instead: &str) {
        let name = key.text().unwrap_or_default();
        self.error(
            key.offset,
            field,
            format!("`{name}` is not supported: {why}"),
            Some(instead.to_owned()),
        );
    }

    /// Reports an unknown key, suggesting the closest known one.
    pub(crate) fn unknown(&mut self, key: &Node, field: &str, known: &[&str]) {
        let name = key.text().unwrap_or_default();
        let hint = match paracloud_manifest::suggest(name, known.iter().copied()) {
            Some(close) => format!("did you mean `{close}`? (see docs/compose.md)"),
            None => "see docs/compose.md for the keys Paracloud reads".to_owned(),
        };
        self.error(
            key.offset,
            field,
            format!("unknown key `{name}`"),
            Some(hint),
        );
    }

    /// Reads the whole file into TOML text with its source map.
    fn read(
        &mut self,
        origin: &Origin,
        env: &BTreeMap<String, String>,
        host: &dyn Host,
    ) -> Option<(String, Out)> {
        // Each file parsed on its own, its offsets moved to where it is in the whole text, then
        // merged over the ones before it.
        let mut root: Option<Node> = None;
        for i in 0..self.files.len() {
            let start = self.files[i].0;
            let end = self.files.get(i + 1).map_or(self.src.len(), |(s, _)| *s);
            let mut node = match yaml::parse(&self.src[start..end]) {
                Ok(node) => node,
                Err(e) => {
                    self.error(start + e.offset, "", e.message, None);
                    return None;
                }
            };
            node.shift(start);
            root = Some(match root {
                None => node,
                Some(base) => merge::merge("", &base, &node),
            });
        }
        let mut root = root?;
        // The project's .env supplies variables the environment does not set.
        let mut vars = env.clone();
        let dotenv_path = origin.base_dir.join(".env");
        if let Some(text) = host.read_to_string(&dotenv_path) {
            let lookup = |name: &str| env.get(name).cloned();
            match dotenv::parse(&text, &lookup) {
                Ok(found) => {
                    for (k, v) in found {
                        vars.entry(k).or_insert(v);
                    }
                }
                Err(e) => {
                    self.error_in(shown(origin, ".env"), e.line, "", e.message);
                    return None;
                }
            }
        }
        let mut failed = false;
        let lookup = |name: &str| vars.get(name).cloned();
        let mut errors = Vec::new();
        let _ = root.map_values(&mut |offset, text| -> Result<Option<String>, ()> {
            if !text.contains('$') {
                return Ok(None);
            }
            match interpolate::interpolate(text, &lookup) {
                Ok(new) => Ok(Some(new)),
                Err(e) => {
                    errors.push((offset, e));
                    Ok(None)
                }
            }
        });
        for (offset, e) in errors {
            failed = true;
            self.error(offset, "", e.message, e.hint);
        }
        if failed {
            return None;
        }
        let context = context::Context {
            origin,
            vars: &vars,
            host,
        };
        let mut out = Out::default();
        self.top_level(&root, &context, &mut out);
        Some((out.text(), out))
    }

    fn top_level(&mut self, root: &Node, context: &context::Context<'_>, out: &mut Out) {
        let Some(entries) = self.map(root, "") else {
            return;
        };
        let mut name = None;
        let mut services = None;
        let mut volumes = None;
        let mut secrets = None;
        let mut configs = None;
        let mut networks = None;
        for (key, value) in entries {
            let k = key.text().unwrap_or_default();
            match k {
                "version" => {}
                _ if k.starts_with("x-") => {}
                "name" => name = Some((key, value)),
                "services" => services = Some((key, value)),
                "volumes" => volumes = Some((key, value)),
                "networks" => networks = Some(value),
                "secrets" => secrets = Some(value),
                "configs" => configs = Some(value),
                "include" => self.refuse(
                    key,
                    k,
                    "one application is one file",
                    "copy the included services into this file",
                ),
                _ => self.unknown(
                    key,
                    k,
                    &[
                        "name", "services", "volumes", "secrets", "configs", "version",
                    ],
                ),
            }
        }
        out.comment("# A Compose file read as a Paracloud manifest (docs/compose.md says how each key maps).");
        let app = match name {
            Some((_, value)) => self.string(value, "name").map(|n| (n.to_owned(), value)),
            None => None,
        };
        let project = context.vars.get("COMPOSE_PROJECT_NAME").cloned();
        match (project, app) {
            (Some(project), _) if !project.is_empty() => out.line(
                format!("app = {}", out::string(&project)),
                name.map_or(0, |(k, _)| k.offset),
                "name",
            ),
            (_, Some((app, value))) => {
                out.line(format!("app = {}", out::string(&app)), value.offset, "name")
            }
            _ => {
                let dir = context
                    .origin
                    .base_dir
                    .file_name()
                    .map(|d| d.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.line(
                    format!("app = {}", out::string(&project_name(&dir))),
                    0,
                    "name",
                );
            }
        }

        let declared = context::Declared {
            volumes: match volumes {
                Some((_, value)) => self.volumes(value, out),
                None => Vec::new(),
            },
            secrets: secrets
                .map(|v| files::declared(self, context, files::FileKind::Secret, v))
                .unwrap_or_default(),
            configs: configs
                .map(|v| files::declared(self, context, files::FileKind::Config, v))
                .unwrap_or_default(),
            networks: networks
                .map(|v| networks::declared(self, v, out))
                .unwrap_or_default(),
        };
        match services {
            Some((_, value)) => {
                for (key, service) in self.services(value, context) {
                    let name = key.text().unwrap_or_default();
                    service::service(self, context, &declared, name, &key, &service, out);
                }
            }
            None => self.error(
                0,
                "services",
                "missing required key `services`",
                Some("a Compose file runs the services of its `services:` mapping".into()),
            ),
        }
    }

    /// The services that run: each with what it `extends` merged in, those whose `profiles`
    /// are all inactive left out (`COMPOSE_PROFILES`, or `--profile`, activates profiles).
    fn services(&mut self, node: &Node, cx: &context::Context<'_>) -> Vec<(Node, Node)> {
        let Some(entries) = self.map(node, "services") else {
            return Vec::new();
        };
        let active: Vec<&str> = cx
            .vars
            .get("COMPOSE_PROFILES")
            .map(|p| {
                p.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let mut resolved: Vec<(Node, Node)> = Vec::new();
        let mut skipped: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, service) in entries {
            let name = key.text().unwrap_or_default();
            let Some(service) = self.extended(entries, name, service, &mut Vec::new()) else {
                continue;
            };
            let profiles = self.profiles(&service, &child("services", name));
            if profiles.is_empty()
                || profiles.iter().any(|p| active.contains(&p.as_str()))
                || active.contains(&"*")
            {
                resolved.push((key.clone(), service));
            } else {
                skipped.insert(name.to_owned(), profiles);
            }
        }
        // A service that runs cannot depend on one left out.
        for (key, service) in &resolved {
            let name = key.text().unwrap_or_default();
            for (dep, at) in dependencies(service) {
                if let Some(profiles) = skipped.get(&dep) {
                    self.error(
                        at,
                        &child(&child("services", name), "depends_on"),
                        format!(
                            "`{name}` depends on `{dep}`, which runs only with the profile {}",
                            profiles.join(" or ")
                        ),
                        Some(format!(
                            "activate it: `paracloud up --profile {}` (or COMPOSE_PROFILES={})",
                            profiles[0], profiles[0]
                        )),
                    );
                }
            }
        }
        resolved
    }

    /// A service's `profiles`, checked.
    fn profiles(&mut self, service: &Node, field: &str) -> Vec<String> {
        let Kind::Map(entries) = &service.kind else {
            return Vec::new();
        };
        let Some((_, value)) = entries.iter().find(|(k, _)| k.text() == Some("profiles")) else {
            return Vec::new();
        };
        let field = child(field, "profiles");
        let mut out = Vec::new();
        for (p, node) in self.strings(value, &field).unwrap_or_default() {
            let valid = p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if valid {
                out.push(p.to_owned());
            } else {
                self.error(
                    node.offset,
                    &field,
                    format!("invalid profile name {p:?}"),
                    Some(
                        "use letters, digits, `_`, `.` and `-`, starting with a letter or digit"
                            .into(),
                    ),
                );
            }
        }
        out
    }

    /// `service` with what its `extends` names merged under it; `chain` holds the services
    /// being resolved (to find loops).
    fn extended(
        &mut self,
        all: &[(Node, Node)],
        name: &str,
        service: &Node,
        chain: &mut Vec<String>,
    ) -> Option<Node> {
        let Kind::Map(entries) = &service.kind else {
            return Some(service.clone());
        };
        let Some((ext_key, ext)) = entries.iter().find(|(k, _)| k.text() == Some("extends")) else {
            return Some(service.clone());
        };
        let field = child(&child("services", name), "extends");
        let base_name = match &ext.kind {
            Kind::Scalar { .. } => self.string(ext, &field)?.to_owned(),
            Kind::Map(settings) => {
                let mut base = None;
                for (k, v) in settings {
                    let setting = k.text().unwrap_or_default();
                    let f = child(&field, setting);
                    match setting {
                        "service" => base = self.string(v, &f).map(str::to_owned),
                        "file" => {
                            self.refuse(k, &f, "a service extends another service of the same file here", "copy the service it extends into this file, and name it in `service`");
                            return None;
                        }
                        _ => {
                            self.unknown(k, &f, &["service"]);
                            return None;
                        }
                    }
                }
                match base {
                    Some(base) => base,
                    None => {
                        self.error(
                            ext.offset,
                            &field,
                            "missing required key `service`",
                            Some("name the service to extend: `extends: { service: base }`".into()),
                        );
                        return None;
                    }
                }
            }
            Kind::Seq(_) => {
                self.expected(ext, &field, "a service name or a mapping with `service`");
                return None;
            }
        };
        chain.push(name.to_owned());
        if chain.contains(&base_name) {
            self.error(
                ext.offset,
                &field,
                format!("`extends` loops: {} -> {base_name}", chain.join(" -> ")),
                Some("break the loop: a service cannot extend itself, even through others".into()),
            );
            return None;
        }
        let Some((_, base)) = all
            .iter()
            .find(|(k, _)| k.text() == Some(base_name.as_str()))
        else {
            let names: Vec<&str> = all.iter().filter_map(|(k, _)| k.text()).collect();
            self.error(
                ext.offset,
                &field,
                format!("`{base_name}` is not a service of this file"),
                Some(format!("the services are: {}", names.join(", "))),
            );
            return None;
        };
        let base = self.extended(all, &base_name, base, chain)?;
        // The base's own `extends` and `profiles` are not inherited.
        let base = match base.kind {
            Kind::Map(entries) => Node::map(
                base.offset,
                entries
                    .into_iter()
                    .filter(|(k, _)| !matches!(k.text(), Some("extends" | "profiles")))
                    .collect(),
            ),
            _ => base,
        };
        let own = Node::map(
            service.offset,
            entries
                .iter()
                .filter(|(k, _)| k.offset != ext_key.offset)
                .cloned()
                .collect(),
        );
        Some(merge::merge("", &base, &own))
    }

    /// The top-level `volumes`: their names, with their labels written out.
    fn volumes(&mut self, node: &Node, out: &mut Out) -> Vec<String> {
        let mut names = Vec::new();
        if node.is_null() {
            return names;
        }
        let Some(entries) = self.map(node, "volumes") else {
            return names;
        };
        for (key, value) in entries {
            let name = key.text().unwrap_or_default().to_owned();
            let field = child("volumes", &name);
            names.push(name.clone());
            let renamed = volume_name(&name);
            if names.iter().filter(|n| volume_name(n) == renamed).count() > 1 {
                self.error(
                    key.offset,
                    &field,
                    format!("volume `{name}` is named `{renamed}` like another one: `_` becomes `-` in volume names"),
                    Some("rename one of the two volumes".into()),
                );
                continue;
            }
            let name = renamed;
            let mut keys: Vec<(String, usize, String)> = Vec::new();
            let mut labels = None;
            if !value.is_null() {
                let Some(settings) = self.map(value, &field) else {
                    continue;
                };
                for (k, v) in settings {
                    let setting = k.text().unwrap_or_default();
                    let f = child(&field, setting);
                    match setting {
                        _ if setting.starts_with("x-") => {}
                        "driver" if v.text() == Some("local") => {}
                        "labels" => labels = self.dict(v, &f).map(|l| (l, v.offset, f)),
                        "external" => {
                            if let Some(on) = self.boolean(v, &f) {
                                keys.push((format!("external = {on}"), v.offset, f));
                            }
                        }
                        "name" => {
                            if let Some(n) = self.string(v, &f) {
                                // As the volume's own name: `_` is `-` in a manifest.
                                let n = volume_name(n);
                                keys.push((format!("name = {}", out::string(&n)), v.offset, f));
                            }
                        }
                        "driver" | "driver_opts" => self.refuse(
                            k,
                            &f,
                            "volumes are directories of the daemon's state root",
                            "remove it, or use a bind mount of the host directory you want",
                        ),
                        _ => self.unknown(k, &f, &["labels", "driver", "external", "name"]),
                    }
                }
            }
            out.blank();
            out.line(format!("[volumes.{}]", out::key(&name)), key.offset, &field);
            for (text, offset, f) in keys {
                out.line(text, offset, &f);
            }
            if let Some((labels, offset, f)) = labels {
                out.labels(
                    format!("[volumes.{}.labels]", out::key(&name)),
                    labels,
                    offset,
                    &f,
                );
            }
        }
        names
    }
}

/// The services a service's `depends_on` names, with where each is written.
fn dependencies(service: &Node) -> Vec<(String, usize)> {
    let Kind::Map(entries) = &service.kind else {
        return Vec::new();
    };
    let Some((_, deps)) = entries.iter().find(|(k, _)| k.text() == Some("depends_on")) else {
        return Vec::new();
    };
    match &deps.kind {
        Kind::Seq(items) => items
            .iter()
            .filter_map(|i| i.text().map(|t| (t.to_owned(), i.offset)))
            .collect(),
        Kind::Map(entries) => entries
            .iter()
            .filter_map(|(k, _)| k.text().map(|t| (t.to_owned(), k.offset)))
            .collect(),
        Kind::Scalar { .. } => Vec::new(),
    }
}

/// A field path: `key` inside `path`, quoted when it is not a bare word.
pub(crate) use paracloud_manifest::field_path as child;

/// A file beside the Compose file as diagnostics show it.
fn shown(origin: &Origin, name: &str) -> String {
    match Path::new(&origin.file).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name).display().to_string(),
        _ => name.to_owned(),
    }
}

/// The project name Compose derives from a directory, made a DNS label for Paracloud: lower
/// case, letters, digits and `-` (`_` and `.` become `-`).
pub fn project_name(dir: &str) -> String {
    let name: String = dir
        .chars()
        .filter_map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => Some(c),
            '_' | '.' | ' ' => Some('-'),
            _ => None,
        })
        .collect();
    name.trim_matches('-').to_owned()
}

/// A volume's name in the manifest: Compose allows `_`, a manifest's names are DNS labels.
pub(crate) fn volume_name(name: &str) -> String {
    name.replace('_', "-")
}

/// A path of the Compose file resolved as Compose does: `~` is the home directory.
pub(crate) fn expand_home(path: &str, vars: &BTreeMap<String, String>) -> Option<PathBuf> {
    match path.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => vars
            .get("HOME")
            .map(|home| PathBuf::from(format!("{home}{rest}"))),
        _ => Some(PathBuf::from(path)),
    }
}

#[cfg(test)]
mod tests;
