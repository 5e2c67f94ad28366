//! The application model file (TOML): services, their CPU demands, calls and bounds, as plain data.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use paracloud_autoscale::{Bounds, ScalingConfig, Slo};
use paracloud_manifest::suggest;
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A whole application as the simulator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// The service clients call; the SLO is measured there, end to end.
    pub entry: String,
    pub slo: Slo,
    pub services: BTreeMap<String, ServiceModel>,
}

/// One service: how much CPU a request takes, whom it calls, and how it may scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceModel {
    /// Mean CPU time per request at one full core, in milliseconds.
    pub demand_ms: f64,
    pub distribution: Distribution,
    /// CPU per instance at the start, in cores.
    pub cpu: f64,
    /// Instances at the start.
    pub instances: u32,
    pub min: u32,
    pub max: u32,
    pub cpu_min: f64,
    pub cpu_max: f64,
    /// Mean time from creation to ready, in milliseconds.
    pub startup_ms: f64,
    /// Requests one instance takes at once; an arrival finding every ready instance at this
    /// limit is dropped. `None`: no limit.
    pub max_in_flight: Option<u32>,
    /// Set by `scale_to_zero`: idle time before a policy may take the service to zero.
    pub idle_ms: Option<u64>,
    /// Mean calls to other services per request (visit ratios), in the order they are made.
    pub calls: BTreeMap<String, f64>,
    /// Demand changes over time, sorted by time.
    pub phases: Vec<Phase>,
}

/// How the CPU demand of single requests spreads around its mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Distribution {
    Exponential,
    Constant,
    /// Log-normal with this coefficient of variation (standard deviation over mean).
    Lognormal {
        cv: f64,
    },
}

/// From `at_ms` on, a service's mean demand is `demand_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub at_ms: u64,
    pub demand_ms: f64,
}

/// The default start time: what Paracloud's runtime measures from sandbox to port ready for the
/// example shop.
pub const DEFAULT_STARTUP_MS: f64 = 70.0;
/// The default coefficient of variation of `distribution = "lognormal"`.
pub const DEFAULT_LOGNORMAL_CV: f64 = 1.5;

impl ServiceModel {
    /// The mean demand at `at_ms` of simulated time, phases applied.
    pub fn demand_at(&self, at_ms: u64) -> f64 {
        self.phases
            .iter()
            .take_while(|p| p.at_ms <= at_ms)
            .last()
            .map_or(self.demand_ms, |p| p.demand_ms)
    }
}

impl Model {
    /// Parses and validates a model; `file` names it in errors.
    pub fn parse(source: &str, file: &str) -> Result<Model, ModelError> {
        let mut checker = Checker {
            src: source,
            file,
            lines: line_starts(source),
            diagnostics: Vec::new(),
        };
        let root = match DeTable::parse(source) {
            Ok(root) => root,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                checker.error(span, "", format!("invalid TOML: {}", e.message()), None);
                return Err(checker.into_error());
            }
        };
        let model = checker.model(&root);
        match model {
            Some(model) if checker.diagnostics.is_empty() => Ok(model),
            _ => {
                if checker.diagnostics.is_empty() {
                    checker.error(
                        0..0,
                        "",
                        "the model was rejected without a reason (a bug)",
                        None,
                    );
                }
                Err(checker.into_error())
            }
        }
    }

    /// What the autoscaler is told about this application: the SLO and each service's bounds.
    pub fn scaling_config(&self) -> ScalingConfig {
        let services = self
            .services
            .iter()
            .map(|(name, s)| {
                let bounds = Bounds {
                    min_instances: s.min,
                    max_instances: s.max,
                    cpu: s.cpu,
                    cpu_min: s.cpu_min,
                    cpu_max: s.cpu_max,
                    idle_ms: s.idle_ms.unwrap_or(Bounds::default().idle_ms),
                };
                (name.clone(), bounds)
            })
            .collect();
        ScalingConfig {
            entry: self.entry.clone(),
            slo: self.slo,
            services,
            cpu_budget: None,
        }
    }
}

/// One problem in a model file: where, what, and how to fix it (the manifest's own type, so
/// both files' errors read alike).
pub use paracloud_manifest::Diagnostic;

/// A model file that cannot be used: every problem found, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.diagnostics.iter().map(Diagnostic::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ModelError {
    pub diagnostics: Vec<Diagnostic>,
}

type Value<'i> = Spanned<DeValue<'i>>;
type Span = Range<usize>;

const TOP_KEYS: &[&str] = &["entry", "slo", "services"];
const SERVICE_KEYS: &[&str] = &[
    "demand",
    "distribution",
    "cv",
    "cpu",
    "instances",
    "min",
    "max",
    "cpu_min",
    "cpu_max",
    "startup",
    "max_in_flight",
    "scale_to_zero",
    "calls",
    "phases",
];
const PHASE_KEYS: &[&str] = &["at", "demand"];

struct Checker<'a> {
    src: &'a str,
    file: &'a str,
    lines: Vec<usize>,
    diagnostics: Vec<(usize, Diagnostic)>,
}

fn line_starts(src: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(src.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// An example of a correct key, keyed by the field's last name, for hints.
fn example(field: &str) -> Option<&'static str> {
    let last = field.rsplit('.').next().unwrap_or(field);
    let key = last.split('[').next().unwrap_or(last);
    Some(match key {
        "entry" => "entry = \"web\"",
        "slo" => "slo = { p95 = \"200ms\" }",
        "services" => "[services.web]",
        "demand" => "demand = \"2ms\"",
        "distribution" => "distribution = \"exponential\"",
        "cv" => "cv = 1.5",
        "cpu" => "cpu = 0.5",
        "instances" => "instances = 1",
        "min" => "min = 1",
        "max" => "max = 20",
        "cpu_min" => "cpu_min = 0.25",
        "cpu_max" => "cpu_max = 2",
        "startup" => "startup = \"1s\"",
        "max_in_flight" => "max_in_flight = 200",
        "scale_to_zero" => "scale_to_zero = \"30s\"",
        "calls" => "calls = { api = 1.0 }",
        "phases" => "phases = [{ at = \"10m\", demand = \"12ms\" }]",
        "at" => "at = \"10m\"",
        _ => return None,
    })
}

fn describe(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "a whole number",
        DeValue::Float(_) => "a number",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl Checker<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.src.len());
        while !self.src.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.lines.partition_point(|&start| start <= offset);
        let start = self.lines[line - 1];
        (line, self.src[start..offset].chars().count() + 1)
    }

    fn error(&mut self, span: Span, field: &str, message: impl Into<String>, hint: Option<String>) {
        let (line, column) = self.position(span.start);
        self.diagnostics.push((
            span.start,
            Diagnostic {
                file: self.file.to_owned(),
                line,
                column,
                field: field.to_owned(),
                message: message.into(),
                hint,
            },
        ));
    }

    fn invalid(&mut self, value: &Value<'_>, field: &str, message: impl Into<String>) {
        let hint = example(field).map(|e| format!("for example `{e}`"));
        self.error(value.span(), field, message, hint);
    }

    fn type_error(&mut self, value: &Value<'_>, field: &str, expected: &str) {
        let found = describe(value.get_ref());
        self.invalid(value, field, format!("expected {expected}, found {found}"));
    }

    fn into_error(mut self) -> ModelError {
        self.diagnostics.sort_by_key(|(offset, _)| *offset);
        ModelError {
            diagnostics: self.diagnostics.into_iter().map(|(_, d)| d).collect(),
        }
    }

    fn check_keys(&mut self, table: &DeTable<'_>, path: &str, allowed: &[&str]) {
        for key in table.keys() {
            let name: &str = key.get_ref();
            if allowed.contains(&name) {
                continue;
            }
            let hint = match suggest(name, allowed.iter().copied()) {
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

    fn table<'v, 'i>(&mut self, value: &'v Value<'i>, field: &str) -> Option<&'v DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.type_error(value, field, "a table");
                None
            }
        }
    }

    fn string<'v>(&mut self, value: &'v Value<'_>, field: &str) -> Option<&'v str> {
        match value.get_ref() {
            DeValue::String(s) => Some(s),
            _ => {
                self.type_error(value, field, "a string");
                None
            }
        }
    }

    fn number(&mut self, value: &Value<'_>, field: &str) -> Option<f64> {
        let n = match value.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            _ => {
                self.type_error(value, field, "a number");
                return None;
            }
        };
        match n {
            Some(n) if n.is_finite() => Some(n),
            _ => {
                self.invalid(value, field, "the number is out of range");
                None
            }
        }
    }

    /// A number strictly above zero.
    fn positive(&mut self, value: &Value<'_>, field: &str) -> Option<f64> {
        let n = self.number(value, field)?;
        if n <= 0.0 {
            self.invalid(value, field, format!("must be more than 0, found {n}"));
            return None;
        }
        Some(n)
    }

    fn whole(&mut self, value: &Value<'_>, field: &str, max: u32) -> Option<u32> {
        let DeValue::Integer(i) = value.get_ref() else {
            self.type_error(value, field, "a whole number");
            return None;
        };
        match i128::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (0..=i128::from(max)).contains(&n) => u32::try_from(n).ok(),
            _ => {
                self.invalid(
                    value,
                    field,
                    format!("must be between 0 and {max}, found {}", i.as_str()),
                );
                None
            }
        }
    }

    /// A duration string, in milliseconds.
    fn duration_ms(&mut self, value: &Value<'_>, field: &str) -> Option<f64> {
        let DeValue::String(text) = value.get_ref() else {
            self.type_error(value, field, "a duration string such as \"2ms\"");
            return None;
        };
        match humantime::parse_duration(text) {
            Ok(d) => Some(d.as_secs_f64() * 1000.0),
            Err(e) => {
                self.error(
                    value.span(),
                    field,
                    format!("invalid duration {text:?}: {e}"),
                    Some("write a number and a unit, such as \"800us\", \"2ms\" or \"1s\"".into()),
                );
                None
            }
        }
    }

    fn positive_duration_ms(&mut self, value: &Value<'_>, field: &str) -> Option<f64> {
        let ms = self.duration_ms(value, field)?;
        if ms <= 0.0 {
            self.invalid(value, field, "must be more than 0");
            return None;
        }
        Some(ms)
    }

    fn model(&mut self, root: &Spanned<DeTable<'_>>) -> Option<Model> {
        let table = root.get_ref();
        self.check_keys(table, "", TOP_KEYS);
        let entry = match table.get("entry") {
            Some(v) => self.string(v, "entry").map(str::to_owned),
            None => {
                self.error(
                    0..0,
                    "entry",
                    "missing required key `entry`",
                    Some("name the service clients call, for example `entry = \"web\"`".into()),
                );
                None
            }
        };
        let slo = match table.get("slo") {
            Some(v) => self.slo(v),
            None => Some(Slo::default()),
        };
        let mut services = BTreeMap::new();
        let mut spans: BTreeMap<String, Span> = BTreeMap::new();
        let mut call_spans: Vec<(String, String, Span, String)> = Vec::new();
        let mut ok = true;
        match table.get("services") {
            Some(v) => {
                if let Some(t) = self.table(v, "services") {
                    if t.is_empty() {
                        self.invalid(v, "services", "the model has no service");
                    }
                    for (key, value) in t.iter() {
                        let name: &str = key.get_ref();
                        let path = child("services", name);
                        spans.insert(name.to_owned(), key.span());
                        match self.service(value, &path, &mut call_spans, name) {
                            Some(s) => {
                                services.insert(name.to_owned(), s);
                            }
                            None => ok = false,
                        }
                    }
                } else {
                    ok = false;
                }
            }
            None => {
                self.error(
                    0..0,
                    "services",
                    "missing the services",
                    Some("describe each service in a table such as `[services.web]` with `demand = \"2ms\"`".into()),
                );
                ok = false;
            }
        }
        if let (Some(entry), Some(v)) = (&entry, table.get("entry")) {
            if !spans.is_empty() && !spans.contains_key(entry) {
                let hint = match suggest(entry, spans.keys().map(String::as_str)) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!(
                        "name one of the services: {}",
                        spans.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                };
                self.error(
                    v.span(),
                    "entry",
                    format!("no service named `{entry}`"),
                    Some(hint),
                );
            }
        }
        for (_from, to, span, field) in &call_spans {
            if !spans.contains_key(to) {
                let hint = match suggest(to, spans.keys().map(String::as_str)) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!(
                        "call one of the services: {}",
                        spans.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                };
                self.error(
                    span.clone(),
                    field,
                    format!("calls `{to}`, which is not a service of the model"),
                    Some(hint),
                );
            }
        }
        if let Some((cycle, span, field)) = find_cycle(&call_spans) {
            self.error(
                span,
                &field,
                format!("the calls make a cycle: {}", cycle.join(" -> ")),
                Some(
                    "requests must end: a service may not call itself, directly or through others"
                        .into(),
                ),
            );
        }
        if !ok || !self.diagnostics.is_empty() {
            return None;
        }
        Some(Model {
            entry: entry?,
            slo: slo?,
            services,
        })
    }

    fn slo(&mut self, value: &Value<'_>) -> Option<Slo> {
        let table = self.table(value, "slo")?;
        let mut slo = None;
        if table.len() != 1 {
            self.invalid(value, "slo", "give exactly one percentile and its latency");
            return None;
        }
        for (key, v) in table.iter() {
            let name: &str = key.get_ref();
            let field = child("slo", name);
            let percentile = name
                .strip_prefix('p')
                .filter(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
                .and_then(|digits| {
                    let n: f64 = digits.parse().ok()?;
                    let p = n / 10f64.powi(digits.len() as i32);
                    (p > 0.0 && p < 1.0).then_some(p)
                });
            let Some(percentile) = percentile else {
                self.error(
                    key.span(),
                    &field,
                    format!("unknown percentile `{name}`"),
                    Some(
                        "write p50, p90, p95, p99 or p999, such as `slo = { p95 = \"200ms\" }`"
                            .into(),
                    ),
                );
                continue;
            };
            if let Some(latency_ms) = self.positive_duration_ms(v, &field) {
                slo = Some(Slo {
                    latency_ms,
                    percentile,
                });
            }
        }
        slo
    }

    fn service(
        &mut self,
        value: &Value<'_>,
        path: &str,
        calls_out: &mut Vec<(String, String, Span, String)>,
        name: &str,
    ) -> Option<ServiceModel> {
        let table = self.table(value, path)?;
        self.check_keys(table, path, SERVICE_KEYS);
        let before = self.diagnostics.len();
        let field = |key: &str| child(path, key);
        let defaults = Bounds::default();
        let demand_ms = match table.get("demand") {
            Some(v) => self.positive_duration_ms(v, &field("demand")),
            None => {
                self.error(
                    value.span(),
                    &field("demand"),
                    "missing required key `demand`",
                    Some("give the mean CPU time of one request at one core, for example `demand = \"2ms\"`".into()),
                );
                None
            }
        };
        let mut distribution = Distribution::Exponential;
        if let Some(v) = table.get("distribution") {
            match self.string(v, &field("distribution")) {
                Some("exponential") => {}
                Some("constant") => distribution = Distribution::Constant,
                Some("lognormal") => {
                    distribution = Distribution::Lognormal {
                        cv: DEFAULT_LOGNORMAL_CV,
                    }
                }
                Some(other) => {
                    let other = other.to_owned();
                    self.error(
                        v.span(),
                        &field("distribution"),
                        format!("unknown distribution {other:?}"),
                        Some("use exponential, constant or lognormal".into()),
                    );
                }
                None => {}
            }
        }
        if let Some(v) = table.get("cv") {
            if let Some(cv) = self.positive(v, &field("cv")) {
                match &mut distribution {
                    Distribution::Lognormal { cv: slot } => *slot = cv,
                    _ => self.invalid(
                        v,
                        &field("cv"),
                        "cv applies only to `distribution = \"lognormal\"`",
                    ),
                }
            }
        }
        let number_or = |checker: &mut Self, key: &str, default: f64| match table.get(key) {
            Some(v) => checker.positive(v, &field(key)),
            None => Some(default),
        };
        let cpu = number_or(self, "cpu", defaults.cpu);
        let cpu_min = number_or(self, "cpu_min", defaults.cpu_min);
        let cpu_max = number_or(self, "cpu_max", defaults.cpu_max);
        let whole_or = |checker: &mut Self, key: &str, default: u32| match table.get(key) {
            Some(v) => checker.whole(v, &field(key), 10_000),
            None => Some(default),
        };
        let instances = whole_or(self, "instances", 1);
        let mut min = whole_or(self, "min", defaults.min_instances);
        let max = whole_or(self, "max", defaults.max_instances);
        let startup_ms = match table.get("startup") {
            Some(v) => self.duration_ms(v, &field("startup")),
            None => Some(DEFAULT_STARTUP_MS),
        };
        let max_in_flight = match table.get("max_in_flight") {
            Some(v) => match self.whole(v, &field("max_in_flight"), u32::MAX) {
                Some(0) => {
                    self.invalid(v, &field("max_in_flight"), "must be at least 1");
                    None
                }
                other => other,
            },
            None => None,
        };
        let mut idle_ms = None;
        if let Some(v) = table.get("scale_to_zero") {
            if let Some(ms) = self.positive_duration_ms(v, &field("scale_to_zero")) {
                idle_ms = Some(ms.round() as u64);
                match (table.get("min"), min) {
                    (Some(min_value), Some(m)) if m > 0 => self.error(
                        min_value.span(),
                        &field("min"),
                        format!("`scale_to_zero` sets min to 0, but min is {m}"),
                        Some("remove `min`, or remove `scale_to_zero` to keep instances".into()),
                    ),
                    _ => min = Some(0),
                }
            }
        }
        let mut calls = BTreeMap::new();
        if let Some(v) = table.get("calls") {
            if let Some(t) = self.table(v, &field("calls")) {
                for (key, ratio) in t.iter() {
                    let to: &str = key.get_ref();
                    let call_field = child(&field("calls"), to);
                    if let Some(r) = self.number(ratio, &call_field) {
                        if r < 0.0 {
                            self.invalid(ratio, &call_field, "must be 0 or more calls per request");
                        } else {
                            calls.insert(to.to_owned(), r);
                        }
                    }
                    calls_out.push((name.to_owned(), to.to_owned(), key.span(), call_field));
                }
            }
        }
        let mut phases = Vec::new();
        if let Some(v) = table.get("phases") {
            match v.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let phase_field = format!("{}[{i}]", field("phases"));
                        if let Some(p) = self.phase(item, &phase_field) {
                            if phases.iter().any(|q: &Phase| q.at_ms == p.at_ms) {
                                self.invalid(
                                    item,
                                    &phase_field,
                                    "two phases start at the same time",
                                );
                            }
                            phases.push(p);
                        }
                    }
                    phases.sort_by_key(|p| p.at_ms);
                }
                _ => self.type_error(v, &field("phases"), "an array of tables"),
            }
        }
        // Cross-key checks, each pointing at the key a fix most likely changes.
        if let (Some(min), Some(max), Some(instances)) = (min, max, instances) {
            if min > max {
                let span = table
                    .get("max")
                    .or(table.get("min"))
                    .map_or(value.span(), |v| v.span());
                self.error(
                    span,
                    &field("max"),
                    format!("min ({min}) is more than max ({max})"),
                    Some("raise max or lower min".into()),
                );
            } else if instances < min || instances > max {
                let span = table.get("instances").map_or(value.span(), |v| v.span());
                self.error(
                    span,
                    &field("instances"),
                    format!(
                        "{instances} instances at the start is outside min..max ({min}..{max})"
                    ),
                    Some(format!("start with between {min} and {max} instances")),
                );
            }
        }
        if let (Some(cpu), Some(lo), Some(hi)) = (cpu, cpu_min, cpu_max) {
            if lo > hi {
                let span = table
                    .get("cpu_max")
                    .or(table.get("cpu_min"))
                    .map_or(value.span(), |v| v.span());
                self.error(
                    span,
                    &field("cpu_max"),
                    format!("cpu_min ({lo}) is more than cpu_max ({hi})"),
                    Some("raise cpu_max or lower cpu_min".into()),
                );
            } else if cpu < lo || cpu > hi {
                let span = table.get("cpu").map_or(value.span(), |v| v.span());
                self.error(
                    span,
                    &field("cpu"),
                    format!("cpu {cpu} is outside cpu_min..cpu_max ({lo}..{hi})"),
                    Some(format!(
                        "set cpu between {lo} and {hi}, or widen cpu_min/cpu_max"
                    )),
                );
            }
        }
        if self.diagnostics.len() > before {
            return None;
        }
        Some(ServiceModel {
            demand_ms: demand_ms?,
            distribution,
            cpu: cpu?,
            instances: instances?,
            min: min?,
            max: max?,
            cpu_min: cpu_min?,
            cpu_max: cpu_max?,
            startup_ms: startup_ms?,
            max_in_flight,
            idle_ms,
            calls,
            phases,
        })
    }

    fn phase(&mut self, value: &Value<'_>, path: &str) -> Option<Phase> {
        let table = self.table(value, path)?;
        self.check_keys(table, path, PHASE_KEYS);
        let at = match table.get("at") {
            Some(v) => self.duration_ms(v, &child(path, "at")),
            None => {
                self.error(
                    value.span(),
                    &child(path, "at"),
                    "missing required key `at`",
                    Some("say when the phase starts, for example `at = \"10m\"`".into()),
                );
                None
            }
        };
        let demand = match table.get("demand") {
            Some(v) => self.positive_duration_ms(v, &child(path, "demand")),
            None => {
                self.error(
                    value.span(),
                    &child(path, "demand"),
                    "missing required key `demand`",
                    Some("give the phase's mean demand, for example `demand = \"12ms\"`".into()),
                );
                None
            }
        };
        Some(Phase {
            at_ms: at?.round() as u64,
            demand_ms: demand?,
        })
    }
}

/// The first cycle in the call graph, with the span and field of the call closing it.
fn find_cycle(calls: &[(String, String, Span, String)]) -> Option<(Vec<String>, Span, String)> {
    let mut graph: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (from, _, _, _)) in calls.iter().enumerate() {
        graph.entry(from.as_str()).or_default().push(i);
    }
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for start in graph.keys().copied().collect::<Vec<_>>() {
        let mut path: Vec<&str> = Vec::new();
        if let Some(found) = visit(start, &graph, calls, &mut path, &mut done) {
            return Some(found);
        }
    }
    None
}

fn visit<'a>(
    node: &'a str,
    graph: &BTreeMap<&'a str, Vec<usize>>,
    calls: &'a [(String, String, Span, String)],
    path: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
) -> Option<(Vec<String>, Span, String)> {
    if done.contains(node) {
        return None;
    }
    path.push(node);
    for &i in graph.get(node).map(Vec::as_slice).unwrap_or_default() {
        let (_, to, span, field) = &calls[i];
        if let Some(at) = path.iter().position(|n| *n == to) {
            let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(to.clone());
            return Some((cycle, span.clone(), field.clone()));
        }
        if let Some(found) = visit(to, graph, calls, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(node);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,200}") {
            let _ = Model::parse(&text, "fuzz.toml");
        }

        #[test]
        fn parsing_model_like_input_never_panics(
            lines in proptest::collection::vec(
                "(\\[services\\.[a-c]\\]|slo = \\{ p[0-9]{1,3} = \"[0-9]{1,3}(ms|s|x)\" \\}|(demand|startup|scale_to_zero) = \"-?[0-9]{1,2}(ms|s)\"|(cpu|min|max|instances|cpu_min|cpu_max|max_in_flight|cv) = -?[0-9]{1,2}(\\.5)?|calls = \\{ [a-c] = [0-9] \\}|phases = \\[\\{ at = \"[0-9]s\", demand = \"[0-9]ms\" \\}\\]|distribution = \"(constant|lognormal|x)\")",
                0..12,
            ),
        ) {
            // Whatever is accepted also simulates.
            let text = format!("entry = \"a\"\n[services.a]\ndemand = \"1ms\"\n{}", lines.join("\n"));
            if let Ok(model) = Model::parse(&text, "fuzz.toml") {
                let trace = crate::Trace::Counts { bucket_us: 1_000_000, counts: vec![20.0; 3] };
                let out = crate::simulate(&model, &trace, &mut Idle, 1);
                prop_assert_eq!(out.requests, out.answered + out.dropped + out.in_flight);
            }
        }
    }

    /// A policy that never acts.
    struct Idle;

    impl paracloud_autoscale::Policy for Idle {
        fn name(&self) -> &'static str {
            "idle"
        }

        fn decide(
            &mut self,
            _: u64,
            _: &paracloud_autoscale::History,
            _: &ScalingConfig,
        ) -> Vec<paracloud_autoscale::Decision> {
            Vec::new()
        }
    }

    fn parse(src: &str) -> Result<Model, ModelError> {
        Model::parse(src, "sim.toml")
    }

    fn error(src: &str) -> String {
        parse(src).unwrap_err().to_string()
    }

    const SHOP: &str = r#"
entry = "web"
slo = { p95 = "200ms" }
[services.web]
demand = "1ms"
cpu = 0.5
calls = { api = 1.0 }
[services.api]
demand = "8ms"
calls = { kv = 2 }
phases = [{ at = "10m", demand = "12ms" }]
[services.kv]
demand = "1ms"
distribution = "lognormal"
cv = 2
scale_to_zero = "30s"
"#;

    #[test]
    fn a_full_model_parses_with_defaults() {
        let m = parse(SHOP).unwrap();
        assert_eq!(m.entry, "web");
        assert_eq!(m.slo.percentile, 0.95);
        assert_eq!(m.slo.latency_ms, 200.0);
        let web = &m.services["web"];
        assert_eq!(web.cpu, 0.5);
        assert_eq!((web.instances, web.min, web.max), (1, 1, 20));
        assert_eq!(web.startup_ms, DEFAULT_STARTUP_MS);
        assert_eq!(web.distribution, Distribution::Exponential);
        let api = &m.services["api"];
        assert_eq!(api.calls["kv"], 2.0);
        assert_eq!(api.demand_at(0), 8.0);
        assert_eq!(api.demand_at(600_000), 12.0);
        let kv = &m.services["kv"];
        assert_eq!(kv.distribution, Distribution::Lognormal { cv: 2.0 });
        assert_eq!((kv.min, kv.idle_ms), (0, Some(30_000)));
        let config = m.scaling_config();
        assert_eq!(config.bounds("kv").min_instances, 0);
        assert_eq!(config.bounds("kv").idle_ms, 30_000);
        assert_eq!(config.bounds("web").cpu, 0.5);
    }

    #[test]
    fn p99_slos_are_read() {
        let m = parse("entry = \"a\"\nslo = { p99 = \"1s\" }\n[services.a]\ndemand = \"1ms\"\n")
            .unwrap();
        assert_eq!(m.slo.percentile, 0.99);
        assert_eq!(m.slo.latency_ms, 1000.0);
    }

    #[test]
    fn unknown_keys_are_located_and_get_a_suggestion() {
        let e = error("entry = \"a\"\n[services.a]\ndemnd = \"1ms\"\n");
        assert!(
            e.contains("sim.toml:3:1: services.a.demnd: unknown key `demnd`"),
            "{e}"
        );
        assert!(e.contains("did you mean `demand`?"), "{e}");
        let e = error("entry = \"a\"\nsloo = 1\n[services.a]\ndemand = \"1ms\"\n");
        assert!(
            e.contains("sim.toml:2:1: sloo") && e.contains("`slo`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_values_say_what_is_expected() {
        let e = error("entry = \"a\"\n[services.a]\ndemand = 2\n");
        assert!(
            e.contains("sim.toml:3:10: services.a.demand: expected a duration"),
            "{e}"
        );
        let e = error("entry = \"a\"\n[services.a]\ndemand = \"0ms\"\n");
        assert!(e.contains("must be more than 0"), "{e}");
        let e = error("entry = \"a\"\n[services.a]\ndemand = \"1ms\"\ndistribution = \"normal\"\n");
        assert!(
            e.contains("unknown distribution") && e.contains("lognormal"),
            "{e}"
        );
        let e = error("entry = \"a\"\n[services.a]\ndemand = \"1ms\"\ninstances = 30\n");
        assert!(
            e.contains("services.a.instances: 30 instances") && e.contains("1..20"),
            "{e}"
        );
        let e = error("entry = \"a\"\n[services.a]\ndemand = \"1ms\"\ncpu = 4\n");
        assert!(e.contains("services.a.cpu: cpu 4 is outside"), "{e}");
        let e = error("entry = \"a\"\n[services.a]\ndemand = \"1ms\"\nmin = 3\nmax = 2\n");
        assert!(e.contains("min (3) is more than max (2)"), "{e}");
        let e = error("entry = \"a\"\n[services.a]\n");
        assert!(e.contains("missing required key `demand`"), "{e}");
        let e = error(
            "entry = \"a\"\nslo = { p95 = \"1s\", p99 = \"2s\" }\n[services.a]\ndemand = \"1ms\"\n",
        );
        assert!(e.contains("exactly one percentile"), "{e}");
        let e = error(
            "entry = \"a\"\n[services.a]\ndemand = \"1ms\"\nmin = 1\nscale_to_zero = \"1m\"\n",
        );
        assert!(e.contains("`scale_to_zero` sets min to 0"), "{e}");
    }

    #[test]
    fn references_and_cycles_are_checked() {
        let e = error("entry = \"webb\"\n[services.web]\ndemand = \"1ms\"\n");
        assert!(
            e.contains("sim.toml:1:9: entry: no service named `webb`") && e.contains("`web`"),
            "{e}"
        );
        let e = error("entry = \"a\"\n[services.a]\ndemand = \"1ms\"\ncalls = { b = 1 }\n");
        assert!(
            e.contains("services.a.calls.b: calls `b`, which is not a service"),
            "{e}"
        );
        let e = error(
            "entry = \"a\"\n[services.a]\ndemand = \"1ms\"\ncalls = { b = 1 }\n[services.b]\ndemand = \"1ms\"\ncalls = { a = 1 }\n",
        );
        assert!(e.contains("cycle: a -> b -> a"), "{e}");
        let e = error("entry = \"a\"\n[services.a]\ndemand = \"1ms\"\ncalls = { a = 1 }\n");
        assert!(e.contains("cycle: a -> a"), "{e}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = error("entry = \"a\"\n[services.a\ndemand = \"1ms\"\n");
        assert!(e.starts_with("sim.toml:2:"), "{e}");
        assert!(e.contains("invalid TOML"), "{e}");
    }
}
