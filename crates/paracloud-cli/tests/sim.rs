//! `paracloud sim`: the shop's model under a small trace, through the real binary, no daemon.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

fn run(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_paracloud"))
        .args(args)
        .env_remove("PARACLOUD_ROOT")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "paracloud {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        !out.status.success(),
        "paracloud {} should have failed",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn shop_model() -> String {
    common::workspace()
        .join("examples/shop/sim.toml")
        .display()
        .to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Thirty seconds: a minute's worth at 50/s, a burst at 400/s, and back.
fn trace(dir: &Path) -> String {
    let counts: Vec<&str> = (0..30)
        .map(|s| if (10..15).contains(&s) { "400" } else { "50" })
        .collect();
    write(dir, "load.txt", &counts.join("\n"))
        .display()
        .to_string()
}

#[test]
fn a_run_prints_its_figures_and_repeats_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let model = shop_model();
    let trace = trace(dir.path());
    let json = |policy: &str, seed: &str| -> Value {
        let out = ok(&[
            "sim", "--model", &model, "--trace", &trace, "--policy", policy, "--seed", seed, "-o",
            "json",
        ]);
        serde_json::from_str(&out).unwrap()
    };
    let first = json("hpa", "3");
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec![
        "actions",
        "cpu_seconds",
        "dropped",
        "instance_seconds",
        "p95_ms",
        "p99_ms",
        "policy",
        "requests",
        "seed",
        "slo_violation_seconds",
    ];
    want.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, want);
    assert_eq!(first["policy"], "hpa");
    assert_eq!(first["seed"], 3);
    let requests = first["requests"].as_u64().unwrap();
    assert!((2500..4000).contains(&requests), "{first}");
    // Every service keeps at least its one instance (min 1) for the whole 30 s.
    let instance_seconds = first["instance_seconds"].as_f64().unwrap();
    assert!(instance_seconds >= 3.0 * 30.0, "{first}");
    assert_eq!(json("hpa", "3"), first, "the same seed gives the same run");
    assert_ne!(json("hpa", "4"), first, "another seed, another run");
    for policy in ["model", "kpa"] {
        assert_eq!(json(policy, "3")["policy"], policy);
    }

    let table = ok(&[
        "sim",
        "--model",
        &model,
        "--trace",
        &trace,
        "--policy",
        "hpa",
        "--speedup",
        "2",
        "--scale",
        "0.5",
    ]);
    assert!(table.contains("Policy:   hpa (seed 1)"), "{table}");
    assert!(table.contains("p95 <= 200 ms missed in"), "{table}");
    assert!(table.contains("instance-seconds"), "{table}");

    let details = dir.path().join("outcome.json");
    ok(&[
        "sim",
        "--model",
        &model,
        "--trace",
        &trace,
        "--policy",
        "kpa",
        "--start",
        "10s",
        "--duration",
        "10s",
        "--timeline",
        details.to_str().unwrap(),
    ]);
    let outcome: Value = serde_json::from_str(&std::fs::read_to_string(&details).unwrap()).unwrap();
    let timeline = outcome["timeline"].as_array().unwrap();
    assert!(timeline.len() >= 10, "{}", timeline.len());
    assert_eq!(outcome["services"], serde_json::json!(["api", "kv", "web"]));
}

#[test]
fn bad_input_gets_an_error_that_says_where_and_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = shop_model();
    let trace = trace(dir.path());
    let sim = |model: &str, trace: &str, policy: &str| {
        fails(&[
            "sim", "--model", model, "--trace", trace, "--policy", policy,
        ])
    };

    let e = sim("/no/such/sim.toml", &trace, "hpa");
    assert!(
        e.contains("cannot read the model /no/such/sim.toml") && e.contains("--model"),
        "{e}"
    );
    let e = sim(&model, "/no/such/load.txt", "hpa");
    assert!(
        e.contains("cannot read the trace /no/such/load.txt") && e.contains("--trace"),
        "{e}"
    );

    let bad_trace = write(dir.path(), "bad.txt", "10\n20\nlots\n");
    let e = sim(&model, bad_trace.to_str().unwrap(), "hpa");
    assert!(
        e.contains("bad.txt:3: \"lots\" is not a count of requests"),
        "{e}"
    );
    assert!(e.contains("hint:"), "{e}");

    let bad_csv = write(dir.path(), "bad.csv", "time,count\n0,5\n60,5\n30,1\n");
    let e = sim(&model, bad_csv.to_str().unwrap(), "hpa");
    assert!(e.contains("bad.csv:4: the time does not come after"), "{e}");

    let bad_model = write(
        dir.path(),
        "sim.toml",
        "entry = \"web\"\n[services.web]\ndemand = \"1ms\"\ninstnces = 2\n",
    );
    let e = sim(bad_model.to_str().unwrap(), &trace, "hpa");
    assert!(
        e.contains("sim.toml:4:1: services.web.instnces: unknown key `instnces`"),
        "{e}"
    );
    assert!(e.contains("did you mean `instances`?"), "{e}");

    let e = sim(&model, &trace, "magic");
    assert!(e.contains("use one of model, hpa, kpa"), "{e}");
    let e = fails(&[
        "sim",
        "--model",
        &model,
        "--trace",
        &trace,
        "--policy",
        "hpa",
        "--scale=0",
    ]);
    assert!(e.contains("not a number above 0"), "{e}");
    let e = fails(&[
        "sim", "--model", &model, "--trace", &trace, "--policy", "hpa", "--start", "1h",
    ]);
    assert!(e.contains("no requests in the chosen window"), "{e}");
}
