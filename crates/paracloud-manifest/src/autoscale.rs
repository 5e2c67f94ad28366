//! The `[autoscale]` table and the services' `autoscale` bounds, checked together once every
//! service is known; and the [`ScalingConfig`] a policy reads, built from them.

use std::collections::BTreeMap;
use std::time::Duration;

use paracloud_autoscale::{Bounds, PolicyKind, ScalingConfig, Slo};
use toml::de::DeTable;

use crate::draft::{Draft, ScalingDraft};
use crate::model::{Autoscale, LatencySlo, Manifest, ServiceScaling};
use crate::reader::{child, Checker, Span, Value};
use crate::units;

const AUTOSCALE_KEYS: &[&str] = &["policy", "entry", "slo"];
const SERVICE_SCALING_KEYS: &[&str] = &["min", "max", "cpu_min", "cpu_max"];
/// The percentiles an SLO may name, with their fraction.
const PERCENTILES: &[(&str, f64)] = &[("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)];

/// The most instances the autoscaler may give a service (the API's limit for `scale`).
pub const MAX_INSTANCES: u32 = 200;
/// CPU per instance, in cores: at least a hundredth (the smallest CFS quota, 1 ms per 100 ms).
pub const MIN_CPU: f64 = 0.01;
/// The most CPU an instance may ask for, in cores: more than any machine has.
pub const MAX_CPU: f64 = 1024.0;

/// Defaults of a service's bounds when the manifest leaves them out.
const DEFAULT_MAX: u32 = 10;
const DEFAULT_CPU_MIN: f64 = 0.25;
const DEFAULT_CPU_MAX: f64 = 2.0;
/// CPU per instance of a service without `resources.cpu`, as far as the autoscaler is concerned.
const DEFAULT_CPU: f64 = 1.0;

impl Checker<'_> {
    /// A service's `autoscale = { min, max, cpu_min, cpu_max }`, checked on its own; the rules
    /// that need the rest of the service and the application come in [`Checker::autoscale`].
    pub(crate) fn scaling_draft(&mut self, value: &Value<'_>, field: &str) -> Option<ScalingDraft> {
        let table = self.table(value, field)?;
        self.check_keys(table, field, SERVICE_SCALING_KEYS);
        let mut ok = true;
        let mut count = |checker: &mut Self, key: &str, min: u64| {
            let v = table.get(key)?;
            let n = checker.whole(v, &child(field, key), min, u64::from(MAX_INSTANCES));
            ok &= n.is_some();
            Some((u32::try_from(n?).ok()?, v.span()))
        };
        let min = count(self, "min", 0);
        let max = count(self, "max", 1);
        let mut cores = |checker: &mut Self, key: &str| {
            let v = table.get(key)?;
            let n = checker.cores(v, &child(field, key));
            ok &= n.is_some();
            Some((n?, v.span()))
        };
        let cpu_min = cores(self, "cpu_min");
        let cpu_max = cores(self, "cpu_max");
        ok.then(|| ScalingDraft {
            span: value.span(),
            field: field.to_owned(),
            min,
            max,
            cpu_min,
            cpu_max,
        })
    }

    /// CPU in cores, from [`MIN_CPU`] to 1024.
    fn cores(&mut self, value: &Value<'_>, field: &str) -> Option<f64> {
        let n = self.number(value, field)?;
        if !(MIN_CPU..=MAX_CPU).contains(&n) {
            self.invalid(
                value,
                field,
                format!("must be between {MIN_CPU} and {MAX_CPU} cores, found {n}"),
            );
            return None;
        }
        Some(n)
    }

    /// The `[autoscale]` table with every service's bounds, defaults filled in. A service's
    /// `replicas` left out starts within its bounds. Reports `autoscale` bounds of services in an
    /// application without `[autoscale]`.
    pub(crate) fn autoscale(
        &mut self,
        value: Option<&Value<'_>>,
        drafts: &mut BTreeMap<String, Draft>,
    ) -> Option<Autoscale> {
        let Some(value) = value else {
            for draft in drafts.values() {
                if let Some(scaling) = &draft.autoscale {
                    self.error(
                        scaling.span.clone(),
                        &scaling.field,
                        "`autoscale` bounds need the application's `[autoscale]` table",
                        Some("add `[autoscale]` with `policy = \"model\"` (or \"hpa\", \"kpa\") at the top level, or remove this key".into()),
                    );
                }
            }
            return None;
        };
        let table = self.table(value, "autoscale")?;
        self.check_keys(table, "autoscale", AUTOSCALE_KEYS);
        let policy = match table.get("policy") {
            Some(v) => self.policy(v),
            None => Some(PolicyKind::Model),
        };
        let entry = self.entry(table, value.span(), drafts);
        let slo = match table.get("slo") {
            Some(v) => self.slo(v, "autoscale.slo"),
            None => Some(LatencySlo {
                percentile: Slo::default().percentile,
                latency: Duration::from_secs_f64(Slo::default().latency_ms / 1000.0),
            }),
        };
        let mut services = BTreeMap::new();
        let mut ok = true;
        // Revisions keep their replicas (set in their table or by `paracloud scale`): a revision
        // is a trial beside its service, and autoscaling it would change the traffic split. A
        // task farm sets its own workers for each batch's goal.
        for (name, draft) in drafts
            .iter_mut()
            .filter(|(_, d)| d.service.revision_of.is_none() && d.service.task_farm().is_none())
        {
            match self.service_scaling(draft) {
                Some(scaling) => {
                    services.insert(name.clone(), scaling);
                }
                None => ok = false,
            }
        }
        Some(Autoscale {
            policy: policy?,
            entry: entry?,
            slo: slo?,
            services: ok.then_some(services)?,
        })
    }

    fn policy(&mut self, value: &Value<'_>) -> Option<PolicyKind> {
        let text = self.string(value, "autoscale.policy")?;
        match text.parse::<PolicyKind>() {
            Ok(policy) => Some(policy),
            Err(_) => {
                let names = PolicyKind::ALL.map(PolicyKind::name);
                let hint = match units::suggest(text, names) {
                    Some(close) => format!("did you mean \"{close}\"?"),
                    None => "use \"model\" (the platform's model of the whole application), \"hpa\" (Kubernetes' HorizontalPodAutoscaler) or \"kpa\" (Knative's autoscaler)".into(),
                };
                self.error(
                    value.span(),
                    "autoscale.policy",
                    format!("unknown policy {text:?}"),
                    Some(hint),
                );
                None
            }
        }
    }

    /// The entry service: as written, else the only service with a published port.
    fn entry(
        &mut self,
        table: &DeTable<'_>,
        table_span: Span,
        drafts: &BTreeMap<String, Draft>,
    ) -> Option<String> {
        let services = || drafts.values().filter(|d| d.service.revision_of.is_none());
        let Some(value) = table.get("entry") else {
            let published: Vec<&str> = services()
                .filter(|d| !d.publishes.is_empty())
                .map(|d| d.service.name.as_str())
                .collect();
            if let [only] = published.as_slice() {
                return Some((*only).to_owned());
            }
            let hint = if published.is_empty() {
                "no service publishes a port, so the entry cannot be guessed: name the service clients call, such as `entry = \"web\"`".to_owned()
            } else {
                format!(
                    "several services publish a port ({}): name the one clients call, such as `entry = \"{}\"`",
                    published.join(", "),
                    published[0]
                )
            };
            self.missing(table_span, "autoscale.entry", hint);
            return None;
        };
        let name = self.string(value, "autoscale.entry")?;
        let Some(draft) = drafts.get(name).filter(|d| d.service.revision_of.is_none()) else {
            let names: Vec<&str> = services().map(|d| d.service.name.as_str()).collect();
            let hint = match units::suggest(name, names.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("the services are: {}", names.join(", ")),
            };
            self.error(
                value.span(),
                "autoscale.entry",
                format!("`{name}` is not a service of this application"),
                Some(hint),
            );
            return None;
        };
        if draft.service.ports.is_empty() {
            self.error(
                value.span(),
                "autoscale.entry",
                format!("`{name}` has no port, so no request to it can be measured"),
                Some("name the service clients call, the one with a published port".into()),
            );
            return None;
        }
        Some(name.to_owned())
    }

    /// `slo = { p95 = "200ms" }`: one percentile and its latency.
    fn slo(&mut self, value: &Value<'_>, field: &str) -> Option<LatencySlo> {
        let table = self.table(value, field)?;
        let keys: Vec<&str> = PERCENTILES.iter().map(|(k, _)| *k).collect();
        self.check_keys(table, field, &keys);
        let given: Vec<(&str, f64)> = PERCENTILES
            .iter()
            .filter(|(k, _)| table.contains_key(*k))
            .copied()
            .collect();
        let hint = "write one percentile and its latency, such as `slo = { p95 = \"200ms\" }` (p50, p90, p95 or p99)";
        match given.as_slice() {
            [] => {
                // Unknown keys are already reported.
                if table.is_empty() {
                    self.error(
                        value.span(),
                        field,
                        "an SLO needs a percentile",
                        Some(hint.into()),
                    );
                }
                None
            }
            [(key, percentile)] => {
                let v = table.get(*key)?;
                let latency = self.positive_duration(v, &child(field, key))?;
                Some(LatencySlo {
                    percentile: *percentile,
                    latency,
                })
            }
            [(first, _), (second, _), ..] => {
                let span = table.get(*second).map_or(value.span(), |v| v.span());
                self.error(
                    span,
                    &child(field, second),
                    format!("an SLO has one percentile, found `{first}` and `{second}`"),
                    Some(format!("keep only one: {hint}")),
                );
                None
            }
        }
    }

    /// One service's bounds: what its `autoscale` table says, the defaults for the rest, and
    /// the rules between them, its `replicas`, `resources.cpu` and `scale_to_zero`.
    fn service_scaling(&mut self, draft: &mut Draft) -> Option<ServiceScaling> {
        let service = &draft.service;
        let scaling = draft.autoscale.as_ref();
        let field = |key: &str| child(&child(&child("services", &service.name), "autoscale"), key);
        let value = |bound: Option<(u32, Span)>| bound.map(|(n, _)| n);
        let written = |pick: fn(&ScalingDraft) -> Option<(u32, Span)>| scaling.and_then(pick);
        let min_written = written(|s| s.min.clone());
        let max_written = written(|s| s.max.clone());
        let idles = service.scale_to_zero.is_some();
        let replicas = service.replicas;
        let min = value(min_written.clone()).unwrap_or(if idles { 0 } else { 1 });
        let max = value(max_written.clone()).unwrap_or(DEFAULT_MAX.max(replicas).max(min));
        // A catalogue server's instances follow what it is: one primary, whose writes grow with
        // its CPU alone; read replicas from what the manifest asks (one at least when commits
        // wait for one) to the most a catalogue service takes, since reads grow with them.
        let (min, max) = match service.catalog.as_ref() {
            Some(c) if c.role == crate::CatalogRole::Primary => (1, 1),
            Some(c) if matches!(c.role, crate::CatalogRole::ReadReplicas { .. }) => (
                replicas.max(u32::from(c.synchronous)),
                crate::model::MAX_REPLICAS as u32,
            ),
            _ => (min, max),
        };
        let mut ok = true;
        match (&min_written, idles) {
            (Some((n, span)), true) if *n > 0 => {
                self.error(
                    span.clone(),
                    &field("min"),
                    format!("`min` is {n}, but the service has `scale_to_zero`"),
                    Some(
                        "set `min = 0` to let it go to zero when idle, or remove `scale_to_zero`"
                            .into(),
                    ),
                );
                ok = false;
            }
            (Some((0, span)), false) => {
                self.error(
                    span.clone(),
                    &field("min"),
                    "`min` is 0, but the service has no `scale_to_zero`",
                    Some("add `scale_to_zero = \"5m\"` (how long idle before it may go to zero; the next request starts it again), or set `min = 1`".into()),
                );
                ok = false;
            }
            _ => {}
        }
        if min > max {
            let (span, key) = match (&min_written, &max_written) {
                (Some((_, span)), _) => (span.clone(), "min"),
                (None, Some((_, span))) => (span.clone(), "max"),
                (None, None) => (
                    draft.autoscale.as_ref().map_or(0..0, |s| s.span.clone()),
                    "min",
                ),
            };
            self.error(
                span,
                &field(key),
                format!("`min` ({min}) is more than `max` ({max})"),
                Some("lower `min` or raise `max`".into()),
            );
            ok = false;
        } else if draft.replicas_written {
            let outside = match (&min_written, &max_written) {
                (Some((n, span)), _) if replicas < *n => Some((span.clone(), "min", *n, "more")),
                (_, Some((n, span))) if replicas > *n => Some((span.clone(), "max", *n, "less")),
                _ => None,
            };
            if let Some((span, key, n, than)) = outside {
                self.error(
                    span,
                    &field(key),
                    format!("`{key}` ({n}) is {than} than the service's `replicas` ({replicas})"),
                    Some("`replicas` is how many instances start: keep it between `min` and `max`, or leave it out to start with `min`".into()),
                );
                ok = false;
            }
        }
        let cpu_written = service.resources.cpu;
        let cpu_base = cpu_written.unwrap_or(DEFAULT_CPU);
        let cpu_min_written = scaling.and_then(|s| s.cpu_min.clone());
        let cpu_max_written = scaling.and_then(|s| s.cpu_max.clone());
        let cpu_min = cpu_min_written
            .as_ref()
            .map_or(DEFAULT_CPU_MIN.min(cpu_base), |(n, _)| *n);
        let cpu_max = cpu_max_written
            .as_ref()
            .map_or(DEFAULT_CPU_MAX.max(cpu_base), |(n, _)| *n);
        if cpu_min > cpu_max {
            let (span, key) = match (&cpu_min_written, &cpu_max_written) {
                (Some((_, span)), _) => (span.clone(), "cpu_min"),
                (None, Some((_, span))) => (span.clone(), "cpu_max"),
                (None, None) => (0..0, "cpu_min"),
            };
            self.error(
                span,
                &field(key),
                format!("`cpu_min` ({cpu_min}) is more than `cpu_max` ({cpu_max})"),
                Some("lower `cpu_min` or raise `cpu_max`".into()),
            );
            ok = false;
        } else if let Some(cpu) = cpu_written {
            let outside = match (&cpu_min_written, &cpu_max_written) {
                (Some((n, span)), _) if cpu < *n => Some((span.clone(), "cpu_min", *n, "more")),
                (_, Some((n, span))) if cpu > *n => Some((span.clone(), "cpu_max", *n, "less")),
                _ => None,
            };
            if let Some((span, key, n, than)) = outside {
                self.error(
                    span,
                    &field(key),
                    format!("`{key}` ({n}) is {than} than the service's `resources.cpu` ({cpu})"),
                    Some("instances start with `resources.cpu`: keep it between `cpu_min` and `cpu_max`".into()),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        if !draft.replicas_written {
            draft.service.replicas = replicas.clamp(min, max);
        }
        Some(ServiceScaling {
            min,
            max,
            cpu: cpu_base.clamp(cpu_min, cpu_max),
            cpu_min,
            cpu_max,
        })
    }
}

/// What the application's policy reads: the entry, the SLO and each service's bounds, from its
/// `[autoscale]` table; `None` without one.
pub fn scaling_config(manifest: &Manifest) -> Option<ScalingConfig> {
    let autoscale = manifest.autoscale.as_ref()?;
    let services = autoscale
        .services
        .iter()
        .map(|(name, scaling)| {
            let idle = manifest
                .services
                .get(name)
                .and_then(|s| s.scale_to_zero)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let bounds = Bounds {
                min_instances: scaling.min,
                max_instances: scaling.max,
                cpu: scaling.cpu,
                cpu_min: scaling.cpu_min,
                cpu_max: scaling.cpu_max,
                idle_ms: idle.unwrap_or(Bounds::default().idle_ms),
            };
            (name.clone(), bounds)
        })
        .collect();
    Some(ScalingConfig {
        entry: autoscale.entry.clone(),
        slo: Slo {
            latency_ms: autoscale.slo.latency.as_secs_f64() * 1000.0,
            percentile: autoscale.slo.percentile,
        },
        services,
        cpu_budget: None,
    })
}
