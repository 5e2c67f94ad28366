//! The autoscaling evaluation: every scenario (real traces and synthetic loads) under every
//! policy in the simulator, written as a Markdown table, JSON and one SVG plot per scenario.
//! The platform profile says what starting an instance and changing its CPU take: Paracloud on
//! one host (`local`, the default) or a Kubernetes cluster's latencies (`cluster`, simulated).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paracloud_autoscale::PolicyKind;
use paracloud_sim::{Model, Options, Outcome, ParseOptions, Platform, Shape, Trace};
use plotters::prelude::*;
use serde::Serialize;

/// One workload: an application model and the traffic it gets.
pub struct Scenario {
    pub name: &'static str,
    /// How the trace was made, for the report.
    pub what: String,
    pub model: Model,
    pub trace: Trace,
}

#[derive(Debug, Serialize)]
struct ScenarioResult {
    scenario: String,
    what: String,
    outcomes: Vec<Outcome>,
}

/// The shop's model, the shop with a store that slows down, and an LLM inference service.
const SHOP: &str = include_str!("../../examples/shop/sim.toml");
const BOTTLENECK: &str = include_str!("../autoscale/bottleneck.toml");
const LLM: &str = include_str!("../autoscale/llm.toml");

fn model(source: &str, file: &str) -> Result<Model> {
    Model::parse(source, file).map_err(|e| anyhow::anyhow!("{e}"))
}

fn read_trace(path: &Path, options: &ParseOptions) -> Result<Trace> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Trace::parse(&text, options)
        .map_err(|e| anyhow::anyhow!("{}", e.in_file(&path.display().to_string())))
}

/// The NASA trace ships compressed; `tar` unpacks it into a scratch directory.
fn nasa(traces: &Path, scratch: &Path) -> Result<Trace> {
    let archive = traces.join("nasa95/workload.tbz2");
    let status = std::process::Command::new("tar")
        .arg("-xjf")
        .arg(&archive)
        .arg("-C")
        .arg(scratch)
        .status()
        .with_context(|| format!("running tar on {}", archive.display()))?;
    if !status.success() {
        bail!("tar could not unpack {}", archive.display());
    }
    let file = walk_find(scratch, "workload.txt")
        .with_context(|| format!("no workload.txt in {}", archive.display()))?;
    read_trace(&file, &ParseOptions::default())
}

fn walk_find(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
        if path.is_dir() {
            if let Some(found) = walk_find(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

/// Scales a trace so that its busiest bucket reaches `peak` requests per second.
fn to_peak(trace: &Trace, peak: f64) -> Trace {
    trace.scale(peak / trace.peak().max(f64::MIN_POSITIVE))
}

fn hours(h: f64) -> Duration {
    Duration::from_secs_f64(h * 3600.0)
}

/// Every scenario of the report.
pub fn scenarios(traces: &Path, scratch: &Path, seed: u64) -> Result<Vec<Scenario>> {
    let shop = model(SHOP, "examples/shop/sim.toml")?;
    let mut all = Vec::new();
    let synthetic = |name: &'static str, what: &str, shape: Shape| Scenario {
        name,
        what: what.to_string(),
        model: shop.clone(),
        trace: shape.trace(seed),
    };
    all.push(synthetic(
        "step",
        "50 → 300 req/s at 5 min, 15 min",
        Shape::Step {
            before: 50.0,
            after: 300.0,
            at: 300.0,
            seconds: 900,
        },
    ));
    all.push(synthetic(
        "ramp",
        "20 → 400 req/s over 10 min from 2 min, 20 min",
        Shape::Ramp {
            from: 20.0,
            to: 400.0,
            start: 120.0,
            len: 600.0,
            seconds: 1200,
        },
    ));
    all.push(synthetic(
        "diurnal",
        "200 ± 180 req/s, a 30-minute day, 10% noise, 1 h",
        Shape::Diurnal {
            mean: 200.0,
            amplitude: 180.0,
            period: 1800.0,
            noise: 0.1,
            seconds: 3600,
        },
    ));
    all.push(synthetic(
        "flash-crowd",
        "60 req/s, ×7 within 20 s at 10 min, decaying over 5 min, 30 min",
        Shape::FlashCrowd {
            base: 60.0,
            factor: 7.0,
            at: 600.0,
            rise: 20.0,
            decay: 300.0,
            seconds: 1800,
        },
    ));

    let worldcup = read_trace(
        &traces.join("worldcup98/invocation_count.csv"),
        &ParseOptions::default(),
    )?;
    // 30 June 1998, 13:00–17:00: a calm afternoon, then the match's flash crowd (37k → 167k
    // requests a minute within half an hour). Real time, per-minute buckets, peak at 400 req/s.
    // The file starts at 1998-04-30 21:30:00; 13:00 on 30 June is 5,239,800 s later.
    let start = Duration::from_secs(5_239_800);
    all.push(Scenario {
        name: "worldcup98",
        what: "30 Jun 1998 13:00–17:00, per minute, real time, peak scaled to 400 req/s".into(),
        model: shop.clone(),
        trace: to_peak(&worldcup.window(start, hours(4.0)), 400.0),
    });

    let nasa = nasa(traces, scratch)?;
    // The busiest two hours of the first week (3 July 1995, 13:00–15:00 local at index
    // 3 × 86400 + 13 × 3600), per second, real time, scaled ×20 (a peak of ~20 req/s → ~400).
    all.push(Scenario {
        name: "nasa95",
        what: "2 h from day 3 13:00, per second, real time, ×20".into(),
        model: shop.clone(),
        trace: nasa
            .window(Duration::from_secs(3 * 86_400 + 13 * 3600), hours(2.0))
            .scale(20.0),
    });

    let llm = model(LLM, "bench/autoscale/llm.toml")?;
    for (name, file) in [
        ("azure-code", "AzureLLMInferenceTrace_code.csv"),
        ("azure-conv", "AzureLLMInferenceTrace_conv.csv"),
    ] {
        let trace = read_trace(
            &traces.join("azure-llm-2023").join(file),
            &ParseOptions::default(),
        )?;
        all.push(Scenario {
            name,
            what: format!("{file}: one hour, each request's tokens as its work size, real time"),
            model: llm.clone(),
            trace,
        });
    }

    all.push(Scenario {
        name: "moving-bottleneck",
        what: "the shop at a steady 200 req/s (±10%) whose store gets 8× slower at 10 min, 25 min"
            .into(),
        model: model(BOTTLENECK, "bench/autoscale/bottleneck.toml")?,
        trace: Shape::Diurnal {
            mean: 200.0,
            amplitude: 20.0,
            period: 600.0,
            noise: 0.05,
            seconds: 1500,
        }
        .trace(seed),
    });
    Ok(all)
}

/// Runs every scenario under every policy (two scenarios at a time) and writes the report.
pub fn run(
    traces: &Path,
    out: &Path,
    seed: u64,
    platform: &Platform,
    only: Option<&str>,
    timelines: bool,
) -> Result<()> {
    let options = Options {
        platform: platform.clone(),
        ..Options::default()
    };
    let scratch = tempfile::tempdir()?;
    let mut scenarios = scenarios(traces, scratch.path(), seed)?;
    if let Some(only) = only {
        scenarios.retain(|s| s.name == only);
        if scenarios.is_empty() {
            bail!("no scenario named {only:?}");
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<ScenarioResult>>> = scenarios
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(scenario) = scenarios.get(i) else {
                    break;
                };
                let began = Instant::now();
                let outcomes: Vec<Outcome> = PolicyKind::ALL
                    .into_iter()
                    .map(|kind| {
                        let mut policy = kind.build();
                        paracloud_sim::simulate_with(
                            &scenario.model,
                            &scenario.trace,
                            policy.as_mut(),
                            seed,
                            &options,
                        )
                    })
                    .collect();
                eprintln!(
                    "{}: {} requests × {} policies in {:.1} s",
                    scenario.name,
                    outcomes[0].requests,
                    outcomes.len(),
                    began.elapsed().as_secs_f64()
                );
                *results[i].lock().expect("no panics while holding") = Some(ScenarioResult {
                    scenario: scenario.name.to_string(),
                    what: scenario.what.clone(),
                    outcomes,
                });
            });
        }
    });
    let results: Vec<ScenarioResult> = results
        .into_iter()
        .filter_map(|r| r.into_inner().ok().flatten())
        .collect();
    for result in &results {
        plot(
            &out.join(format!("{}.svg", result.scenario)),
            result,
            platform,
        )?;
        if timelines {
            let path = out.join(format!("{}.json", result.scenario));
            std::fs::write(&path, serde_json::to_string(&result.outcomes)?)?;
        }
    }
    let markdown = report(&results, seed, platform, started.elapsed());
    std::fs::write(out.join("report.md"), &markdown)?;
    let mut compact = Vec::new();
    for result in &results {
        let mut entry = serde_json::json!({
            "scenario": result.scenario,
            "what": result.what,
            "outcomes": result.outcomes.iter().map(summary).collect::<Vec<_>>(),
        });
        // The local profile's file stays as it was; any other names its profile.
        if !is_local(platform) {
            entry["platform"] = serde_json::to_value(platform)?;
        }
        compact.push(entry);
    }
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&compact)?,
    )?;
    print!("{markdown}");
    Ok(())
}

/// The figures of one run without its timeline.
fn summary(o: &Outcome) -> serde_json::Value {
    serde_json::json!({
        "policy": o.policy,
        "slo_violation_seconds": o.slo_violation_seconds,
        "instance_seconds": o.instance_seconds.round(),
        "cpu_seconds": o.cpu_seconds.round(),
        "p95_ms": o.p95_ms,
        "p99_ms": o.p99_ms,
        "dropped": o.dropped,
        "actions": o.actions,
        "requests": o.requests,
    })
}

fn is_local(platform: &Platform) -> bool {
    *platform == Platform::local()
}

/// The report's title and, for a profile other than local, what it simulates.
fn heading(platform: &Platform) -> String {
    if is_local(platform) {
        return "# Autoscaling: the model policy against Kubernetes HPA and Knative KPA\n\n".into();
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Autoscaling with a Kubernetes cluster's latencies (simulated): the model policy \
         against Kubernetes HPA and Knative KPA\n\n\
         Platform profile `{name}`: a simulation of a cluster's latencies, not a live cluster. A \
         new instance (pod) is ready after a pod start drawn log-normal with a median of {median:.1} s \
         and a p99 of {p99:.1} s (SIG Scalability's pod start-up SLO: 99% of stateless pods with \
         pre-pulled images start within 5 s), then the service's own start, then a readiness \
         probe every {probe:.0} s (the wait uniform over one period): {mean:.1} s on average \
         beyond the service's own start. A CPU change in place (the pod `resize` subresource) \
         reaches each running instance after {rmin:.1}–{rmax:.1} s (the kubelet's sync), \
         uniform. See `docs/sim.md`.\n",
        name = platform.name,
        median = platform.schedule_median_ms / 1000.0,
        p99 = platform.schedule_p99_ms / 1000.0,
        probe = platform.readiness_period_ms / 1000.0,
        mean = platform.mean_start_overhead_ms() / 1000.0,
        rmin = platform.resize_min_ms / 1000.0,
        rmax = platform.resize_max_ms / 1000.0,
    );
    md
}

fn report(results: &[ScenarioResult], seed: u64, platform: &Platform, took: Duration) -> String {
    let mut md = heading(platform);
    let _ = writeln!(
        md,
        "\
         Simulated with `paracloud-sim` (seed {seed}, {:.0} s of wall time). Per scenario and \
         policy: seconds whose p95 end-to-end latency missed the SLO (dropped requests count as \
         infinitely slow), instance-seconds and CPU-seconds allocated, p95 and p99 of the answered \
         requests, dropped requests and scaling actions. The ratios compare the model with the \
         better baseline on each figure (lower is better). Plots: `<scenario>.svg`. The same \
         policies on the live platform, beside the simulator's predictions for those runs: \
         [../autoscale-live/report.md](../autoscale-live/report.md) \
         (`paracloud-bench autoscale-live`).\n",
        took.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| scenario | policy | SLO-violation s | instance-s | CPU-s | p95 ms | p99 ms | dropped | actions |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for result in results {
        for o in &result.outcomes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
                result.scenario,
                o.policy,
                o.slo_violation_seconds,
                o.instance_seconds,
                o.cpu_seconds,
                o.p95_ms,
                o.p99_ms,
                o.dropped,
                o.actions
            );
        }
    }
    let _ = writeln!(
        md,
        "\n## The model against the better baseline\n\n\
         | scenario | violation s: model / best baseline | instance-s: model ÷ best baseline | CPU-s: model ÷ best baseline | fewer violations and no more instance-s than either |\n\
         |---|---:|---:|---:|---|"
    );
    for result in results {
        let model = &result.outcomes[0];
        let baselines = &result.outcomes[1..];
        let best_violations = baselines
            .iter()
            .map(|o| o.slo_violation_seconds)
            .min()
            .unwrap_or(0);
        let best_instances = baselines
            .iter()
            .map(|o| o.instance_seconds)
            .fold(f64::INFINITY, f64::min);
        let best_cpu = baselines
            .iter()
            .map(|o| o.cpu_seconds)
            .fold(f64::INFINITY, f64::min);
        let wins = baselines.iter().all(|b| {
            model.slo_violation_seconds < b.slo_violation_seconds
                || (model.slo_violation_seconds == 0 && b.slo_violation_seconds == 0)
        }) && baselines
            .iter()
            .all(|b| model.instance_seconds <= b.instance_seconds);
        let _ = writeln!(
            md,
            "| {} | {} / {} | {:.2} | {:.2} | {} |",
            result.scenario,
            model.slo_violation_seconds,
            best_violations,
            model.instance_seconds / best_instances,
            model.cpu_seconds / best_cpu,
            if wins { "yes" } else { "no" }
        );
    }
    let _ = writeln!(md, "\n## Scenarios\n");
    for result in results {
        let _ = writeln!(md, "- `{}`: {}", result.scenario, result.what);
    }
    md
}

const COLOURS: [RGBColor; 3] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
];

/// One figure of a simulated second, as a plot shows it.
type Measure = dyn Fn(&paracloud_sim::Second) -> f64;

/// Load, p95 latency and instances over time, one line per policy, in three panels.
fn plot(path: &Path, result: &ScenarioResult, platform: &Platform) -> Result<()> {
    let name = if is_local(platform) {
        result.scenario.clone()
    } else {
        format!("{} (simulated {})", result.scenario, platform.name)
    };
    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((3, 1));
    let seconds = result
        .outcomes
        .iter()
        .map(|o| o.timeline.len())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    // Averages over windows keep the SVG small and the lines readable.
    let step = (seconds / 600.0).ceil().max(1.0) as usize;
    let series = |o: &Outcome, value: &Measure| -> Vec<(f64, f64)> {
        o.timeline
            .chunks(step)
            .map(|chunk| {
                let t = chunk[0].t as f64;
                let v = chunk.iter().map(value).sum::<f64>() / chunk.len() as f64;
                (t, v)
            })
            .collect()
    };
    let panels_spec: [(&str, &Measure); 3] = [
        ("entry requests per second", &|s| s.arrivals as f64),
        (
            "p95 latency (ms, answered in the second; dropped seconds at the top)",
            &|s| {
                if s.dropped > 0 {
                    f64::INFINITY
                } else {
                    s.p95_ms
                }
            },
        ),
        ("instances (all services)", &|s| {
            s.instances.iter().map(|&i| f64::from(i)).sum()
        }),
    ];
    for (index, (title, value)) in panels_spec.iter().enumerate() {
        let lines: Vec<Vec<(f64, f64)>> =
            result.outcomes.iter().map(|o| series(o, value)).collect();
        let cap = if index == 1 { 2000.0 } else { f64::INFINITY };
        let top = lines
            .iter()
            .flatten()
            .map(|p| p.1.min(cap))
            .fold(1.0f64, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(&panels[index])
            .caption(format!("{name} — {title}"), ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..seconds, 0f64..top)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .draw()
            .map_err(plot_error)?;
        let shown = if index == 0 { 1 } else { lines.len() };
        for (i, line) in lines.iter().take(shown).enumerate() {
            let colour = if index == 0 {
                BLACK
            } else {
                COLOURS[i % COLOURS.len()]
            };
            let label = if index == 0 {
                "load".to_string()
            } else {
                result.outcomes[i].policy.clone()
            };
            chart
                .draw_series(LineSeries::new(
                    line.iter().map(|&(t, v)| (t, v.min(cap))),
                    &colour,
                ))
                .map_err(plot_error)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_report_keeps_its_title_and_the_cluster_one_says_it_is_simulated() {
        assert_eq!(
            heading(&Platform::local()),
            "# Autoscaling: the model policy against Kubernetes HPA and Knative KPA\n\n"
        );
        let cluster = heading(&Platform::cluster());
        assert!(
            cluster.starts_with("# Autoscaling with a Kubernetes cluster's latencies (simulated)")
        );
        assert!(cluster.contains("`cluster`") && cluster.contains("not a live cluster"));
        assert!(cluster.contains("median of 2.5 s") && cluster.contains("0.5–1.5 s"));
        assert!(cluster.ends_with("\n\n"), "{cluster:?}");
    }
}
