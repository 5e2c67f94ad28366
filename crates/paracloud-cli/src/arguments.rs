//! The command line's small value grammars: `NAME=VALUE` pairs, `api=3`, `--cpu 1.5`.

use anyhow::{anyhow, bail, Result};

/// Splits `NAME=VALUE`, where `name` and `value` say what they are (`service`, `count`) and
/// `example` is a correct one.
pub(crate) fn split_assignment<'a>(
    spec: &'a str,
    name: &str,
    value: &str,
    example: &str,
) -> Result<(&'a str, &'a str)> {
    let what = format!("{}={}", name.to_uppercase(), value.to_uppercase());
    let (left, right) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("`{spec}` is not {what}: write for example {example}"))?;
    if left.is_empty() {
        bail!("`{spec}` names no {name}: write for example {example}");
    }
    Ok((left, right))
}

/// Parses `api=3` into (service, count); with `--cpu`, `api` alone is (service, no count).
pub(crate) fn parse_scale(spec: &str, with_cpu: bool) -> Result<(String, Option<u32>)> {
    if with_cpu && !spec.contains('=') && !spec.is_empty() {
        return Ok((spec.to_string(), None));
    }
    let (service, count) = split_assignment(spec, "service", "count", "api=3").map_err(|e| {
        if with_cpu {
            e
        } else {
            anyhow!("{e} (or name it alone with --cpu CORES to change its CPU per instance)")
        }
    })?;
    let count = count.parse::<u32>().map_err(|_| {
        anyhow!(
            "`{spec}`: the count must be a whole number of instances, 0 or more (e.g. {service}=3)"
        )
    })?;
    Ok((service.to_string(), Some(count)))
}

/// Parses `--cpu 1.5`: cores per instance, a number above 0 (the daemon checks the machine's).
pub(crate) fn parse_cores(text: &str) -> Result<f64> {
    text.parse::<f64>()
        .ok()
        .filter(|c| c.is_finite() && *c > 0.0)
        .ok_or_else(|| {
            anyhow!("--cpu {text}: the CPU per instance is a number of cores above 0, such as --cpu 0.5 or --cpu 2")
        })
}
