//! A cold multi-stage build, with and without a cache mount: `paracloud build` of a
//! Containerfile whose `deps` stage does slow work (gzip -9 of random data, as a compiler or a
//! package manager would spend its time) beside an independent `assets` stage, the final
//! stage copying from both. Every round changes a build argument that every stage reads, so no
//! step comes from the step cache (a cold build); the `cached` variant keeps the slow work's
//! result in a `RUN --mount=type=cache` directory and reuses it, the `plain` variant does it
//! again. The first build of each variant (an empty cache mount) is reported apart; rounds
//! interleave the variants, and each sample is the wall time of the command, as a user types it.

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::platform::Platform;
use crate::stats::Summary;

#[derive(Debug, Clone)]
pub struct BuildsOptions {
    pub rounds: usize,
    /// MiB the slow step compresses.
    pub megabytes: u32,
    pub subnet: Ipv4Net,
}

#[derive(Debug, Serialize)]
pub struct BuildsReport {
    pub rounds: usize,
    pub megabytes: u32,
    /// Variant name, the first build's time (empty cache mount), the later builds' summary.
    pub variants: Vec<(String, f64, Option<Summary>)>,
}

/// The Containerfile of a variant: `mount` is the slow step's mount flag, or empty.
fn containerfile(cached: bool, megabytes: u32) -> String {
    let slow = format!(
        "set -o pipefail; head -c $(({megabytes} * 1048576)) /dev/urandom | gzip -9 > /deps/deps.gz"
    );
    let deps = if cached {
        format!(
            "RUN --mount=type=cache,id=deps,target=/cache \\\n    mkdir -p /deps && if [ -f /cache/deps.gz ]; then cp /cache/deps.gz /deps/; else {slow} && cp /deps/deps.gz /cache/; fi"
        )
    } else {
        format!("RUN mkdir -p /deps && {slow}")
    };
    format!(
        r#"FROM busybox:1 AS tools
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM tools AS deps
ARG ROUND
RUN echo "round $ROUND" > /round
{deps}

FROM tools AS assets
ARG ROUND
RUN mkdir -p /www && echo "assets of round $ROUND" > /www/index.html

FROM tools
COPY --from=deps /deps/deps.gz /app/deps.gz
COPY --from=assets /www /app/www
"#
    )
}

fn timed(platform: &Platform, context: &Path, tag: &str, round: usize) -> Result<f64> {
    let arg = format!("ROUND={round}");
    let start = Instant::now();
    platform
        .cli(&["build", "-t", tag, "--build-arg", &arg], Some(context))
        .with_context(|| format!("building {}", context.display()))?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

pub fn run(opts: &BuildsOptions, scratch: &Path) -> Result<BuildsReport> {
    let exe = std::env::current_exe()?;
    let paracloud = exe.with_file_name("paracloud");
    let platform = Platform::start(
        &paracloud,
        &scratch.join("root"),
        opts.subnet,
        "builds",
        "builds-bench",
    )?;
    platform.cli(
        &[
            "image",
            "build",
            "--from-binary",
            "/bin/busybox",
            "-t",
            "busybox:1",
        ],
        None,
    )?;
    let variants = [("cached", true), ("plain", false)];
    let mut first = Vec::new();
    for (name, cached) in variants {
        let context = scratch.join(name);
        fs::create_dir_all(&context)?;
        fs::write(
            context.join("Containerfile"),
            containerfile(cached, opts.megabytes),
        )?;
        first.push(timed(&platform, &context, &format!("{name}:0"), 0)?);
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 1..=opts.rounds {
        // Interleaved, the first variant rotating.
        for k in 0..variants.len() {
            let v = (round + k) % variants.len();
            let (name, _) = variants[v];
            let context = scratch.join(name);
            samples[v].push(timed(
                &platform,
                &context,
                &format!("{name}:{round}"),
                round,
            )?);
        }
    }
    Ok(BuildsReport {
        rounds: opts.rounds,
        megabytes: opts.megabytes,
        variants: variants
            .iter()
            .zip(first)
            .zip(&samples)
            .map(|(((name, _), first), s)| ((*name).to_owned(), first, Summary::of(s)))
            .collect(),
    })
}

pub fn markdown(report: &BuildsReport) -> String {
    let mut out = format!(
        "## A cold multi-stage build ({} MiB compressed by the slow step; {} rounds, interleaved)\n\n| variant | first build ms (empty cache mount) | median ms | p90 ms | min ms |\n|---|---|---|---|---|\n",
        report.megabytes, report.rounds
    );
    for (name, first, s) in &report.variants {
        match s {
            Some(s) => out.push_str(&format!(
                "| {name} | {first:.0} | {:.0} | {:.0} | {:.0} |\n",
                s.median_ms, s.p90_ms, s.min_ms
            )),
            None => out.push_str(&format!("| {name} | {first:.0} | | | |\n")),
        }
    }
    let median = |n: &str| {
        report
            .variants
            .iter()
            .find(|(name, _, _)| name == n)
            .and_then(|(_, _, s)| s.map(|s| s.median_ms))
    };
    if let (Some(c), Some(p)) = (median("cached"), median("plain")) {
        out.push_str(&format!("\n- cached ÷ plain: {:.2}\n", c / p));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_variants_parse_as_four_stages_and_only_one_mounts_a_cache() {
        for cached in [true, false] {
            let text = containerfile(cached, 4);
            let parsed = paracloud_image::containerfile::parse(&text, &Default::default()).unwrap();
            assert_eq!(parsed.stages.len(), 4);
            assert_eq!(parsed.waves(3), vec![vec![0], vec![1, 2], vec![3]]);
            assert_eq!(text.contains("type=cache"), cached);
        }
    }
}
