//! The checker's toolbox: diagnostics with positions, field paths and typed access to TOML values.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{Diagnostic, ManifestError};
use crate::known_capsules::KnownCapsules;
use crate::location::LineIndex;
use crate::units;
use crate::{FileSystem, Origin};

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;
pub(crate) type Span = Range<usize>;

/// Walks one manifest, collecting every problem it finds.
pub(crate) struct Checker<'a> {
    src: &'a str,
    origin: &'a Origin,
    pub(crate) fs: &'a dyn FileSystem,
    lines: LineIndex,
    /// Diagnostics with the byte offset they point at, to sort them into source order.
    diagnostics: Vec<(usize, Diagnostic)>,
    /// The capsules policies and schedules may name (the application's own once read).
    pub(crate) capsules: KnownCapsules,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(src: &'a str, origin: &'a Origin, fs: &'a dyn FileSystem) -> Self {
        Self {
            src,
            origin,
            fs,
            lines: LineIndex::new(src),
            diagnostics: Vec::new(),
            capsules: Default::default(),
        }
    }

    pub(crate) fn base_dir(&self) -> &Path {
        &self.origin.base_dir
    }

    /// The 1-based line of a byte offset, to point from one diagnostic to another place.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.lines.position(self.src, offset).0
    }

    pub(crate) fn error(
        &mut self,
        span: Span,
        field: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let message = message.into();
        // A revision's table is checked merged over its service's, so a problem in a key it
        // inherits is found twice: report it once, where the service says it.
        if self
            .diagnostics
            .iter()
            .any(|(offset, d)| *offset == span.start && d.message == message)
        {
            return;
        }
        let (line, column) = self.lines.position(self.src, span.start);
        self.diagnostics.push((
            span.start,
            Diagnostic {
                file: self.origin.file.clone(),
                line,
                column,
                field: field.to_owned(),
                message,
                hint,
            },
        ));
    }

    /// How many problems have been reported so far.
    pub(crate) fn problems(&self) -> usize {
        self.diagnostics.len()
    }

    /// All diagnostics in source order, or `None` when the manifest is fine.
    pub(crate) fn finish(self) -> Option<ManifestError> {
        (!self.diagnostics.is_empty()).then(|| self.into_error())
    }

    /// All diagnostics in source order.
    pub(crate) fn into_error(mut self) -> ManifestError {
        // Stable: diagnostics at the same place keep the order they were found in.
        self.diagnostics.sort_by_key(|(offset, _)| *offset);
        ManifestError {
            diagnostics: self.diagnostics.into_iter().map(|(_, d)| d).collect(),
        }
    }

    /// Reports every key of `table` not in `allowed`, suggesting the closest allowed key.
    pub(crate) fn check_keys(&mut self, table: &DeTable<'_>, path: &str, allowed: &[&str]) {
        self.check_keys_except(table, path, allowed, &[]);
    }

    /// [`Checker::check_keys`], leaving alone the keys in `reported` (the caller says what is
    /// wrong with them more precisely).
    pub(crate) fn check_keys_except(
        &mut self,
        table: &DeTable<'_>,
        path: &str,
        allowed: &[&str],
        reported: &[&str],
    ) {
        for key in table.keys() {
            let name: &str = key.get_ref();
            if allowed.contains(&name) || reported.contains(&name) {
                continue;
            }
            let hint = match units::suggest(name, allowed.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("allowed keys here: {}", allowed.join(", ")),
            };
            self.error(
                key.span(),
                &child(path, name),
                format!("unknown key `{name}`"),
                Some(hint),
            );
        }
    }

    /// Reports an invalid name; true when the name is fine.
    pub(crate) fn name(&mut self, name: &str, span: Span, field: &str, what: &str) -> bool {
        match units::check_name(name) {
            Ok(()) => true,
            Err(problem) => {
                self.error(
                    span,
                    field,
                    format!("invalid {what} {name:?}: {problem}"),
                    Some(format!(
                        "use lower-case letters, digits and '-', starting with a letter, at most {} characters, such as \"web-2\"",
                        units::MAX_NAME_LEN
                    )),
                );
                false
            }
        }
    }

    /// Reports a missing required key at the table that should hold it.
    pub(crate) fn missing(&mut self, table_span: Span, field: &str, hint: impl Into<String>) {
        let key = field.rsplit('.').next().unwrap_or(field);
        self.error(
            table_span,
            field,
            format!("missing required key `{key}`"),
            Some(hint.into()),
        );
    }

    pub(crate) fn type_error(&mut self, value: &Value<'_>, field: &str, expected: &str) {
        let hint = example(field).map(|e| format!("for example `{e}`"));
        self.error(
            value.span(),
            field,
            format!("expected {expected}, found {}", describe(value.get_ref())),
            hint,
        );
    }

    /// Reports a value of the right type but out of its range.
    pub(crate) fn invalid(&mut self, value: &Value<'_>, field: &str, message: impl Into<String>) {
        let hint = example(field).map(|e| format!("for example `{e}`"));
        self.error(value.span(), field, message, hint);
    }

    pub(crate) fn table<'v, 'i>(
        &mut self,
        value: &'v Value<'i>,
        field: &str,
    ) -> Option<&'v DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            DeValue::Array(items) if items.iter().all(|item| item.get_ref().is_table()) => {
                self.error(
                    value.span(),
                    field,
                    "expected a table, found an array of tables",
                    Some("write the header with single brackets, `[...]`: double brackets `[[...]]` make an array".into()),
                );
                None
            }
            _ => {
                self.type_error(value, field, "a table");
                None
            }
        }
    }

    pub(crate) fn string<'v>(&mut self, value: &'v Value<'_>, field: &str) -> Option<&'v str> {
        match value.get_ref() {
            DeValue::String(s) => Some(s),
            _ => {
                self.type_error(value, field, "a string");
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, value: &Value<'_>, field: &str) -> Option<bool> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.type_error(value, field, "true or false");
                None
            }
        }
    }

    /// A whole number within `min..=max`.
    pub(crate) fn whole(
        &mut self,
        value: &Value<'_>,
        field: &str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        let DeValue::Integer(integer) = value.get_ref() else {
            self.type_error(value, field, "a whole number");
            return None;
        };
        let n = integer_value(integer);
        match n {
            Some(n) if n >= i128::from(min) && n <= i128::from(max) => u64::try_from(n).ok(),
            _ => {
                let shown = n.map_or_else(|| integer.to_string(), |n| n.to_string());
                // Huge bounds only stand for "fits the type": say the bound that was crossed.
                let message = match n {
                    _ if max < u64::from(u32::MAX) => {
                        format!("must be between {min} and {max}, found {shown}")
                    }
                    Some(n) if n > i128::from(max) => {
                        format!("must be at most {max}, found {shown}")
                    }
                    _ => format!("must be at least {min}, found {shown}"),
                };
                self.invalid(value, field, message);
                None
            }
        }
    }

    /// A port number, 1..=65535.
    pub(crate) fn port(&mut self, value: &Value<'_>, field: &str) -> Option<u16> {
        self.whole(value, field, 1, u64::from(u16::MAX))
            .and_then(|p| u16::try_from(p).ok())
    }

    /// A whole or fractional number.
    pub(crate) fn number(&mut self, value: &Value<'_>, field: &str) -> Option<f64> {
        let n = match value.get_ref() {
            DeValue::Integer(integer) => integer_value(integer).map(|n| n as f64),
            DeValue::Float(float) => float.as_str().parse::<f64>().ok(),
            _ => {
                self.type_error(value, field, "a number");
                return None;
            }
        };
        if n.is_none() {
            self.invalid(value, field, "number out of range");
        }
        n
    }

    pub(crate) fn duration(&mut self, value: &Value<'_>, field: &str) -> Option<Duration> {
        let DeValue::String(text) = value.get_ref() else {
            self.type_error(value, field, "a duration string such as \"2s\"");
            return None;
        };
        match units::parse_duration(text) {
            Ok(duration) => Some(duration),
            Err(message) => {
                self.error(
                    value.span(),
                    field,
                    message,
                    Some("write a number and a unit, such as \"500ms\", \"2s\" or \"1m\"".into()),
                );
                None
            }
        }
    }

    /// A non-negative duration that must also be more than zero.
    pub(crate) fn positive_duration(&mut self, value: &Value<'_>, field: &str) -> Option<Duration> {
        let duration = self.duration(value, field)?;
        if duration.is_zero() {
            self.invalid(value, field, "must be more than 0");
            return None;
        }
        Some(duration)
    }

    /// An array of strings, each with its span.
    pub(crate) fn strings<'v>(
        &mut self,
        value: &'v Value<'_>,
        field: &str,
    ) -> Option<Vec<(&'v str, Span)>> {
        let DeValue::Array(array) = value.get_ref() else {
            self.type_error(value, field, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(array.len());
        let mut ok = true;
        for (i, item) in array.iter().enumerate() {
            match self.string(item, &index(field, i)) {
                Some(s) => out.push((s, item.span())),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A command line: an array of strings, or a string split with shell-word rules.
    pub(crate) fn words(&mut self, value: &Value<'_>, field: &str) -> Option<Vec<String>> {
        match value.get_ref() {
            DeValue::String(text) => match shell_words::split(text) {
                Ok(words) => Some(words),
                Err(e) => {
                    self.error(
                        value.span(),
                        field,
                        format!("cannot split {text:?} into words: {e}"),
                        Some("close the quote, or write the command as an array of strings".into()),
                    );
                    None
                }
            },
            DeValue::Array(_) => self
                .strings(value, field)
                .map(|words| words.into_iter().map(|(w, _)| w.to_owned()).collect()),
            _ => {
                self.type_error(value, field, "a string or an array of strings");
                None
            }
        }
    }

    /// A table of strings, numbers and booleans, all turned into strings (env, labels).
    pub(crate) fn scalar_map(
        &mut self,
        value: &Value<'_>,
        field: &str,
    ) -> Option<BTreeMap<String, String>> {
        let table = self.table(value, field)?;
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (key, item) in table {
            let item_field = child(field, key.get_ref());
            let text = match item.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                DeValue::Integer(i) => integer_value(i).map(|n| n.to_string()),
                DeValue::Float(f) => Some(f.as_str().to_owned()),
                DeValue::Boolean(b) => Some(b.to_string()),
                DeValue::Datetime(_) | DeValue::Array(_) | DeValue::Table(_) => None,
            };
            match text {
                Some(text) if text.contains('\0') => {
                    self.invalid(item, &item_field, "must not contain a NUL character");
                    ok = false;
                }
                Some(text) => {
                    out.insert(key.get_ref().to_string(), text);
                }
                None => {
                    self.error(
                        item.span(),
                        &item_field,
                        format!(
                            "expected a string, number or boolean, found {}",
                            describe(item.get_ref())
                        ),
                        Some(format!(
                            "write it as a string: `{} = \"...\"`",
                            key.get_ref()
                        )),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}

pub(crate) fn integer_value(integer: &toml::de::DeInteger<'_>) -> Option<i128> {
    i128::from_str_radix(integer.as_str(), integer.radix()).ok()
}

/// The field path of `key` inside `path` (`services.web.ports`), quoting keys that are not bare
/// TOML keys, as every diagnostic names its field; other front ends (Compose) name theirs alike.
pub fn child(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// The field path of item `i` of the array at `path`.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A value as shown in "found ..." messages.
fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) if s.chars().count() > 40 => {
            let short: String = s.chars().take(40).collect();
            format!("string {short:?}...")
        }
        DeValue::String(s) => format!("string {s:?}"),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(d) => format!("datetime {d}"),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

/// An example of a correct key, for hints on wrongly typed values; keyed by the field's last name.
fn example(field: &str) -> Option<&'static str> {
    if field.ends_with(".health.restart") {
        return Some("restart = false");
    }
    let last = field.rsplit('.').next().unwrap_or(field);
    let key = last.split('[').next().unwrap_or(last);
    Some(match key {
        "app" => "app = \"shop\"",
        "services" => "[services.web]",
        "image" => "image = \"host\"",
        "paths" => "paths = [\"../target/release\"]",
        "entrypoint" => "entrypoint = [\"/usr/bin/server\"]",
        "command" => "command = [\"--listen\", \"0.0.0.0:8080\"]",
        "env" => "env = { RUST_LOG = \"info\" }",
        "ports" => "ports = [8080, \"9000:8080/http\"]",
        "port" => "port = 8080",
        "protocol" => "protocol = \"http\"",
        "publish" => "publish = \"127.0.0.1:8080\"",
        "health" => "health = { http = \"/healthz\" }",
        "exec" => "exec = [\"check\", \"--quick\"]",
        "tcp" => "tcp = 7000",
        "http" => "http = \"/healthz\"",
        "interval" => "interval = \"2s\"",
        "timeout" => "timeout = \"1s\"",
        "retries" => "retries = 3",
        "start_period" => "start_period = \"5s\"",
        "resources" => "resources = { cpu = 0.5, memory = \"256M\", pids = 128 }",
        "cpu" => "cpu = 0.5",
        "memory" => "memory = \"256M\"",
        "pids" => "pids = 128",
        "disk" => "disk = \"1G\"",
        "replicas" => "replicas = 2",
        "restart" => "restart = \"on-failure\"",
        "condition" => "condition = \"on-failure\"",
        "max_retries" => "max_retries = 5",
        "backoff" => "backoff = \"100ms\"",
        "backoff_max" => "backoff_max = \"30s\"",
        "depends_on" => "depends_on = [\"kv\"]",
        "volumes" => "volumes = [\"data:/data\"]",
        "source" => "source = \"data\"",
        "target" => "target = \"/data\"",
        "read_only" => "read_only = true",
        "labels" => "labels = { tier = \"backend\" }",
        "user" => "user = \"1000:1000\"",
        "working_dir" => "working_dir = \"/srv\"",
        "hostname" => "hostname = \"db-primary\"",
        "stop_signal" => "stop_signal = \"SIGTERM\"",
        "stop_grace_period" => "stop_grace_period = \"10s\"",
        "cap_add" => "cap_add = [\"NET_BIND_SERVICE\"]",
        "init" => "init = true",
        "userns" => "userns = false",
        "tmpfs" => "tmpfs = [\"/run\", { target = \"/cache\", size = \"64M\", mode = \"1777\" }]",
        "shm_size" => "shm_size = \"256M\"",
        "ulimits" => "ulimits = { nofile = { soft = 1024, hard = 65536 }, nproc = 512 }",
        "sysctls" => "sysctls = { \"net.core.somaxconn\" = 1024 }",
        "scale_to_zero" => "scale_to_zero = \"5m\"",
        "migrate" => "migrate = \"paci\"",
        "revisions" => "[services.api.revisions.canary]",
        "weight" => "weight = 10",
        "autoscale" => "autoscale = { min = 1, max = 10, cpu_min = 0.25, cpu_max = 2 }",
        "policy" => "policy = \"model\"",
        "entry" => "entry = \"web\"",
        "slo" => "slo = { p95 = \"200ms\" }",
        "p50" | "p90" | "p95" | "p99" => "p95 = \"200ms\"",
        "min" => "min = 1",
        "max" => "max = 10",
        "cpu_min" => "cpu_min = 0.25",
        "cpu_max" => "cpu_max = 2",
        _ => return None,
    })
}
