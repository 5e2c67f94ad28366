//! The catalogue's task farm as a user meets it: `catalog = "taskfarm"` in a manifest, bags of
//! shell tasks submitted with `paracloud tasks submit`, run inside real worker instances that
//! the farm starts and stops for the batch's deadline or budget.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The farm of `Platform::task_farm_manifest`, deployed.
fn farm(p: &Platform, extra: &str) -> std::path::PathBuf {
    let path = p.task_farm_manifest(extra);
    p.ok(&["up", "-f", path.to_str().unwrap()]);
    path
}

fn tasks_file(p: &Platform, name: &str, lines: &[String]) -> String {
    let path = p.root().join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.to_str().unwrap().to_owned()
}

fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn number(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v:#}"))
}

fn workers(p: &Platform) -> usize {
    p.ps("farm")
        .iter()
        .filter(|i| field(i, "service") == "render" && field(i, "state") == "running")
        .count()
}

#[test]
fn a_task_farm_meets_a_deadline_on_tasks_of_varied_run_times_and_reports_its_cost() {
    let p = Platform::new();
    farm(&p, "");
    assert_eq!(workers(&p), 0, "no worker before a batch");

    // 24 tasks of 0.3 s to 2.4 s (about 32 s of work), one that fails once, one that always
    // fails, and one that tells where it runs.
    let mut lines: Vec<String> = (1..=24)
        .map(|i| {
            format!(
                "sleep {}.{}; echo done {i} > /work/{i}",
                (i * 7 % 25) / 10,
                (i * 7 % 25) % 10 + (i % 2)
            )
        })
        .collect();
    lines.push(
        "if [ -e /work/flaky ]; then echo second run; else touch /work/flaky; exit 7; fi".into(),
    );
    lines.push("echo broken >&2; exit 3".into());
    lines.push("echo \"$GREETING from $PARACLOUD_INSTANCE of $PARACLOUD_SERVICE\"".into());
    let file = tasks_file(&p, "tasks.txt", &lines);
    let out = p.run(&[
        "tasks",
        "submit",
        "-a",
        "farm",
        "render",
        "-f",
        &file,
        "--deadline",
        "30s",
        "--wait",
        "-o",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "one task failed for good, so --wait exits 1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let detail = json(&out);
    let batch = &detail["batch"];
    assert_eq!(batch["state"], "done", "{batch:#}");
    assert_eq!(
        (number(batch, "succeeded"), number(batch, "failed")),
        (26, 1)
    );
    let (submitted, ended) = (number(batch, "submitted_ms"), number(batch, "ended_ms"));
    assert!(
        ended <= number(batch, "deadline_ms"),
        "the deadline is met: done {} ms after submit\n{batch:#}",
        ended - submitted
    );
    // About 32 s of work in 30 s: one worker could not have done it.
    assert!(number(batch, "peak_workers") >= 2, "{batch:#}");
    assert!(number(batch, "peak_workers") <= 8, "{batch:#}");

    // Its cost is the instance time of its workers: at least the work they did.
    let tasks = detail["tasks"].as_array().unwrap();
    let work: u64 = tasks
        .iter()
        .flat_map(|t| t["attempts"].as_array().unwrap())
        .map(|a| number(a, "ended_ms") - number(a, "started_ms"))
        .sum();
    let spent = number(batch, "spent_instance_ms");
    assert!(spent >= work, "cost {spent} ms < work {work} ms");
    assert!(
        spent < work * 3,
        "cost {spent} ms for {work} ms of work: {batch:#}"
    );

    // Retries: the flaky task ran twice, the broken one 1 + 2 times.
    let task = |index: usize| &tasks[index - 1];
    let codes = |index: usize| -> Vec<i64> {
        task(index)["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["code"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(codes(25), [7, 0]);
    assert_eq!(task(25)["state"], "succeeded");
    assert_eq!(codes(26), [3, 3, 3]);
    assert_eq!(task(26)["state"], "failed");

    // Per-task output, as `tasks logs` shows it.
    assert_eq!(
        p.ok(&["tasks", "logs", "-a", "farm", "1", "25"]),
        "second run\n"
    );
    assert_eq!(
        p.ok(&["tasks", "logs", "-a", "farm", "1", "26"]),
        "broken\n"
    );
    let whereabouts = p.ok(&["tasks", "logs", "-a", "farm", "1", "27"]);
    assert!(
        whereabouts.starts_with("hello from render.") && whereabouts.ends_with(" of render\n"),
        "{whereabouts}"
    );
    // Every task wrote where the farm's volume says.
    let ls = p.ok(&["tasks", "status", "-a", "farm", "1"]);
    assert!(ls.contains("deadline met"), "{ls}");
    for i in 1..=24 {
        let line = tasks[i - 1]["state"].as_str().unwrap();
        assert_eq!(line, "succeeded", "task {i}");
    }

    // The workers go once the batch is done, and the event log says what it came to.
    p.wait_ps(
        "farm",
        Duration::from_secs(15),
        "the workers to stop",
        |ps| {
            !ps.iter()
                .any(|i| field(i, "service") == "render" && field(i, "state") != "exited")
        },
    );
    let events = p.wait_event("farm", "batch 1 done after", Duration::from_secs(5));
    assert!(events.contains("26 succeeded, 1 failed"), "{events}");
    assert!(events.contains("the deadline met with"), "{events}");
    let listed = p.ok(&["tasks", "ls", "-a", "farm"]);
    assert!(listed.contains("26/27"), "{listed}");
}

#[test]
fn a_budget_runs_as_many_workers_as_it_pays_for_and_stops_when_it_is_spent() {
    let p = Platform::new();
    farm(&p, "");
    // 16 tasks of 1 s within a budget of 1 instance-minute: all of them, on several workers.
    let lines: Vec<String> = (1..=16).map(|i| format!("sleep 1; echo {i}")).collect();
    let file = tasks_file(&p, "ample.txt", &lines);
    let out = p.run(&[
        "tasks", "submit", "-a", "farm", "render", "-f", &file, "--budget", "1", "--wait", "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batch = &json(&out)["batch"];
    assert_eq!(batch["state"], "done", "{batch:#}");
    assert_eq!(number(batch, "succeeded"), 16);
    assert!(number(batch, "peak_workers") >= 2, "{batch:#}");
    assert!(
        number(batch, "spent_instance_ms") <= 61_000,
        "within the budget, give or take a step: {batch:#}"
    );

    // 10 tasks of 3 s (30 s of work) within 12 instance-seconds: what does not fit is not run.
    let lines: Vec<String> = (1..=10).map(|_| "sleep 3".to_owned()).collect();
    let file = tasks_file(&p, "scarce.txt", &lines);
    let out = p.run(&[
        "tasks", "submit", "-a", "farm", "render", "-f", &file, "--budget", "0.2", "--wait", "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "not every task ran");
    let batch = &json(&out)["batch"];
    assert_eq!(batch["state"], "budget spent", "{batch:#}");
    assert!(number(batch, "not_run") >= 1, "{batch:#}");
    assert_eq!(number(batch, "failed"), 0, "{batch:#}");
}

#[test]
fn bad_batches_are_refused_where_they_are_wrong_and_change_nothing() {
    let p = Platform::new();
    let manifest = farm(&p, "");
    let file = tasks_file(&p, "slow.txt", &vec!["sleep 30".to_owned(); 3]);
    let empty = tasks_file(
        &p,
        "empty.txt",
        &["# nothing here".to_owned(), String::new()],
    );
    let submit = |args: &[&str]| {
        let mut all = vec!["tasks", "submit", "-a", "farm"];
        all.extend_from_slice(args);
        p.fails(&all)
    };

    let not_farm = submit(&["web", "-f", &file, "--deadline", "1m"]);
    assert!(
        not_farm.contains("web is not a task farm (farm's task farms: render)"),
        "{not_farm}"
    );
    let nothing = submit(&["render", "-f", &empty, "--deadline", "1m"]);
    assert!(nothing.contains("holds no task"), "{nothing}");
    let both = submit(&["render", "-f", &file, "--deadline", "1m", "--budget", "3"]);
    assert!(both.contains("cannot be used with"), "{both}");
    let neither = submit(&["render", "-f", &file]);
    assert!(neither.contains("--deadline"), "{neither}");
    let zero = submit(&["render", "-f", &file, "--budget", "0"]);
    assert!(zero.contains("is not a budget"), "{zero}");
    let missing = submit(&["render", "-f", "/nonexistent/tasks.txt", "--deadline", "1m"]);
    assert!(missing.contains("/nonexistent/tasks.txt"), "{missing}");
    assert_eq!(
        p.ok(&["tasks", "ls", "-a", "farm"]).lines().count(),
        1,
        "no batch"
    );

    // One batch at a time; the farm sets its own workers.
    let first = p.ok(&[
        "tasks",
        "submit",
        "-a",
        "farm",
        "render",
        "-f",
        &file,
        "--deadline",
        "5m",
    ]);
    assert!(
        first.starts_with("batch 1 submitted to render: 3 tasks"),
        "{first}"
    );
    let second = submit(&["render", "-f", &file, "--deadline", "5m"]);
    assert!(
        second.contains("batch 1 is still running on render"),
        "{second}"
    );
    p.wait_ps("farm", Duration::from_secs(30), "a worker", |ps| {
        ps.iter()
            .any(|i| field(i, "service") == "render" && field(i, "state") == "running")
    });
    let by_hand = p.fails(&["scale", "-a", "farm", "render=5"]);
    assert!(
        by_hand.contains("render is a task farm: it sets its own workers (at most 8)"),
        "{by_hand}"
    );
    let bad_farm = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("max_workers = 8", "max_workers = 65");
    let bad_path = p.manifest("bad-farm", &bad_farm);
    let refused = p.fails(&["up", "-f", bad_path.to_str().unwrap()]);
    assert!(
        refused.contains(
            "paracloud.toml:7:15: services.render.max_workers: must be between 1 and 64, found 65"
        ),
        "{refused}"
    );
    let render = p.fails(&["k8s", "render", "-f", manifest.to_str().unwrap()]);
    assert!(
        render.contains(
            "services.render.catalog: a task farm's workers are started and stopped by the daemon"
        ),
        "{render}"
    );
    let status = p.ok(&["tasks", "status", "-a", "farm", "1", "-o", "json"]);
    let detail: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        detail["batch"]["state"], "running",
        "the bad up changed nothing"
    );

    // Cancelling stops the workers; what waited is not run.
    let unknown = p.fails(&["tasks", "cancel", "-a", "farm", "7"]);
    assert!(unknown.contains("farm has no running batch 7"), "{unknown}");
    let cancelled = p.ok(&["tasks", "cancel", "-a", "farm", "1"]);
    assert!(cancelled.starts_with("batch 1 cancelled:"), "{cancelled}");
    p.wait_ps(
        "farm",
        Duration::from_secs(15),
        "the workers to stop",
        |ps| {
            !ps.iter()
                .any(|i| field(i, "service") == "render" && field(i, "state") != "exited")
        },
    );
    let status: Value =
        serde_json::from_str(&p.ok(&["tasks", "status", "-a", "farm", "1", "-o", "json"])).unwrap();
    assert_eq!(status["batch"]["state"], "cancelled");
    assert_eq!(number(&status["batch"], "succeeded"), 0);
    assert!(number(&status["batch"], "not_run") >= 1, "{status:#}");
    let gone = p.fails(&["tasks", "status", "-a", "farm", "99"]);
    assert!(gone.contains("farm has no batch 99"), "{gone}");
    assert!(
        p.ps("farm")
            .iter()
            .any(|i| field(i, "service") == "web" && field(i, "state") == "running"),
        "the application's other services ran on"
    );
}

#[test]
fn over_the_remote_api_an_admin_submits_an_operator_cancels_and_a_viewer_only_reads() {
    let p = Platform::new();
    let port = p.listen_remotely();
    farm(&p, "");
    let config = tempfile::tempdir().unwrap();
    let remote = |token: &str, args: &[&str]| {
        let out = p
            .command()
            .env("PARACLOUD_ROOT", "/nonexistent/remote-cli-has-no-root")
            .env("PARACLOUD_HOST", format!("https://127.0.0.1:{port}"))
            .env("PARACLOUD_TOKEN", token)
            .env("PARACLOUD_CONFIG", config.path())
            .args(["-a", "farm"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let file = tasks_file(&p, "remote.txt", &vec!["sleep 30".to_owned(); 2]);
    let submit = [
        "tasks",
        "submit",
        "render",
        "-f",
        file.as_str(),
        "--deadline",
        "5m",
    ];
    let (viewer, operator, admin) = (
        p.token("farm-viewer", "viewer", &[]),
        p.token("farm-ops", "operator", &[]),
        p.token("farm-admin", "admin", &[]),
    );

    // Tasks are command lines run in the application: an operator may not send them.
    let (ok, said) = remote(&operator, &submit);
    assert!(!ok, "{said}");
    assert!(
        said.contains("token farm-ops has the operator role, which may not submit tasks: ask an admin for a token with the admin role"),
        "{said}"
    );
    let (ok, said) = remote(&admin, &submit);
    assert!(ok && said.contains("batch 1 submitted"), "{said}");

    // A viewer reads them, and may not cancel; an operator may.
    let (ok, said) = remote(&viewer, &["tasks", "status", "1"]);
    assert!(ok && said.contains("sleep 30"), "{said}");
    let (ok, said) = remote(&viewer, &["tasks", "cancel", "1"]);
    assert!(
        !ok && said.contains("token farm-viewer has the viewer role"),
        "{said}"
    );
    let (ok, said) = remote(&operator, &["tasks", "cancel", "1"]);
    assert!(ok && said.contains("batch 1 cancelled"), "{said}");
    let events = p.wait_event(
        "farm",
        "batch 1 cancelled (by token farm-ops)",
        Duration::from_secs(10),
    );
    assert!(
        events.contains("batch 1 submitted: 2 tasks, a deadline in 300s (by token farm-admin)"),
        "{events}"
    );
}
