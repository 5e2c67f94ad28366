//! Migration as a user meets it: `paracloud migrate INSTANCE` under a constant load, make before
//! break, with the state handed over through PaCI by the Python example (standard library only),
//! or checkpointed and restored by CRIU for a process that knows nothing of it, and the mistakes
//! a user can make, each refused with what to do instead.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn counter_app(p: &Platform, extra: &str) -> std::path::PathBuf {
    let dir = workspace().join("examples/paci-python");
    let text = format!(
        r#"
app = "mig"

[services.counter]
image = "host"
paths = [{dir:?}]
command = ["/usr/bin/python3", "{script}", "8000"]
ports = [{{ port = 8000, protocol = "http", publish = {port} }}]
health = {{ http = "/healthz", interval = "1s" }}
stop_grace_period = "5s"
migrate = "paci"
{extra}

[services.plain]
image = "host"
command = ["/usr/bin/python3", "-m", "http.server", "9000"]
ports = [{{ port = 9000, protocol = "http" }}]
health = {{ tcp = 9000, interval = "1s" }}
stop_signal = "KILL"
"#,
        dir = dir.display().to_string(),
        script = dir.join("counter.py").display(),
        port = p.port(0),
    );
    p.manifest("mig", &text)
}

/// Clients that each count their own counter as fast as they can; returns what each saw
/// answered and the failures.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    done: Vec<Arc<AtomicU64>>,
    failed: Arc<Mutex<Vec<String>>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let mut done = Vec::new();
        for client in 0..clients {
            let (stop, failed) = (stop.clone(), failed.clone());
            let count = Arc::new(AtomicU64::new(0));
            done.push(count.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http_get(port, &format!("/incr/c{client}")) {
                        Ok((200, body)) => {
                            let seen: u64 = body.trim().parse().unwrap_or(0);
                            let want = count.load(Ordering::Relaxed) + 1;
                            if seen != want {
                                failed
                                    .lock()
                                    .unwrap()
                                    .push(format!("c{client}: got {seen}, want {want}"));
                            }
                            count.store(seen.max(want), Ordering::Relaxed);
                        }
                        other => failed.lock().unwrap().push(format!("c{client}: {other:?}")),
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }));
        }
        Self {
            stop,
            threads,
            done,
            failed,
        }
    }

    fn finish(self) -> (Vec<u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (
            self.done
                .iter()
                .map(|d| d.load(Ordering::Relaxed))
                .collect(),
            failed,
        )
    }
}

#[test]
fn a_paci_migration_under_load_keeps_every_count_and_fails_no_request() {
    let p = Platform::new();
    let manifest = counter_app(&p, "");
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let load = Load::start(p.port(0), 4);
    std::thread::sleep(Duration::from_millis(500));
    let out = p.run(&["migrate", "-a", "mig", "counter.1"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}\n{}", p.daemon_log());
    assert!(
        said.contains("migrated counter.1 to counter.2 via paci"),
        "{said}"
    );
    std::thread::sleep(Duration::from_millis(300));
    // And once more, from the instance that took over.
    p.ok(&["migrate", "-a", "mig", "counter.2", "--via", "paci"]);
    std::thread::sleep(Duration::from_millis(300));
    let (done, failed) = load.finish();
    eprintln!("counts during two migrations: {done:?}");
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    for (client, count) in done.iter().enumerate() {
        assert!(*count > 20, "client {client} ran: {count}");
        let (status, body) = http_get(p.port(0), &format!("/get/c{client}")).unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.trim(), count.to_string(), "counter c{client} kept");
    }
    let ps = p.ps("mig");
    let names: Vec<&str> = ps
        .iter()
        .filter(|i| field(i, "service") == "counter")
        .map(|i| field(i, "instance"))
        .collect();
    assert_eq!(names, ["counter.3"]);
    let events = p.events("mig");
    for step in [
        "migration to counter.2 via paci: starting counter.2",
        "counter.2 ready in",
        "state handed over to counter.2 through PaCI",
        "switched: counter.2 takes the traffic of counter.1",
        "drain: acknowledged",
        "migrated to counter.2 via paci in",
        "migrated to counter.3 via paci in",
    ] {
        assert!(events.contains(step), "no {step:?} in\n{events}");
    }
}

#[test]
fn migrate_refuses_what_it_cannot_do_and_loses_nothing() {
    let p = Platform::new();
    let manifest = counter_app(&p, "");
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let before = pids(&p.ps("mig"));
    for (args, wanted) in [
        (vec!["nope.1"], "no service named nope"),
        (
            vec!["counter.7"],
            "has no instance counter.7 (it has: counter.1, plain.1)",
        ),
        (vec!["counter"], "\"counter\" is not an instance name"),
        (
            vec!["counter.1", "--cpus", "lots"],
            "--cpus \"lots\" is not a number",
        ),
        (vec!["counter.1", "--cpus", "0"], "cpu 0 is too small"),
        (
            vec!["counter.1", "--revision", "7"],
            "counter is at revision 0",
        ),
        (
            vec!["counter.1", "--revision", "newest"],
            "is not a revision",
        ),
        (
            vec!["counter.1", "--via", "teleport"],
            "invalid value 'teleport'",
        ),
        (
            vec!["plain.1", "--via", "paci"],
            "plain.1 does not follow its PaCI events, so it cannot hand its state over",
        ),
    ] {
        let mut full = vec!["migrate", "-a", "mig"];
        full.extend(args.iter().copied());
        let err = p.fails(&full);
        assert!(err.contains(wanted), "{args:?}: {err}");
    }
    // Every refusal came before anything started: the same instances, the same processes.
    assert_eq!(pids(&p.ps("mig")), before);
    let events = p.events("mig");
    assert!(!events.contains("plain.2"), "{events}");
}

#[test]
fn a_restart_migration_moves_a_stateless_instance_to_other_cpus() {
    let p = Platform::new();
    let manifest = counter_app(&p, "");
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let out = p.ok(&[
        "migrate", "-a", "mig", "plain.1", "--via", "restart", "--cpus", "0.5", "-o", "json",
    ]);
    let done: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(done["to"], "plain.2");
    assert_eq!(done["via"], "restart");
    let instance = p.paci_socket("mig", "plain.2");
    let (status, body) = unix_http(&instance, "GET", "/v1/whoami", "");
    assert_eq!(status, 200);
    let me: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(me["resources"]["cpu"], 0.5, "{me}");
    // And the kernel holds it to that: 50 ms of CPU per 100 ms period.
    let id = "mig-plain-2";
    let root = std::path::Path::new("/sys/fs/cgroup");
    let quota = if root.join("cgroup.controllers").exists() {
        std::fs::read_to_string(root.join(p.cgroup_parent()).join(id).join("cpu.max")).unwrap()
    } else {
        std::fs::read_to_string(
            root.join("cpu")
                .join(p.cgroup_parent())
                .join(id)
                .join("cpu.cfs_quota_us"),
        )
        .unwrap()
    };
    assert_eq!(quota.split_whitespace().next(), Some("50000"), "{quota}");
    p.wait_ps("mig", Duration::from_secs(10), "plain.2 alone", |ps| {
        ps.iter().any(|i| field(i, "instance") == "plain.2")
            && !ps.iter().any(|i| field(i, "instance") == "plain.1")
    });
}

#[test]
fn a_handover_the_successor_refuses_is_abandoned_and_the_old_instance_serves_on() {
    let p = Platform::new();
    let dir = workspace().join("examples/paci-python");
    // Hands its state over when asked, but takes none from another instance.
    let script = format!(
        "import sys\nsys.path.insert(0, {dir:?})\nfrom paci import Paci\np = Paci()\nme = p.whoami()['instance']\nprint('following', me, flush=True)\nfor e in p.events():\n    if e['kind'] == 'migrate':\n        p.ack(e['id'], state={{'n': 41}})\n    elif e['kind'] == 'restore' and e['from'] != me:\n        p.ack(e['id'], error='this instance takes no state from ' + e['from'])\n    else:\n        print('got', e['kind'], e.get('state'), flush=True)\n        p.ack(e['id'])\n",
        dir = dir.display().to_string()
    );
    let manifest = p.manifest(
        "mig",
        &format!(
            "app = \"mig\"\n[services.picky]\nimage = \"host\"\npaths = [{:?}]\ncommand = [\"/usr/bin/python3\", \"-c\", {script:?}]\nstop_signal = \"KILL\"\nmigrate = \"paci\"\n",
            dir.display().to_string()
        ),
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p
        .ok(&["logs", "-a", "mig", "picky.1"])
        .contains("following")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "picky.1 never followed its events"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = pids(&p.ps("mig"));
    let err = p.fails(&["migrate", "-a", "mig", "picky.1"]);
    assert!(
        err.contains("restore: refused")
            && err.contains("this instance takes no state from picky.1"),
        "{err}"
    );
    assert!(err.contains("picky.1 keeps serving"), "{err}");
    p.wait_ps(
        "mig",
        Duration::from_secs(10),
        "the successor removed",
        |ps| ps.len() == 1,
    );
    assert_eq!(pids(&p.ps("mig")), before);
    let events = p.events("mig");
    assert!(
        events.contains("migration to picky.2 abandoned"),
        "{events}"
    );
    // The old instance got its own state back, so that it serves on as before.
    let log = p.ok(&["logs", "-a", "mig", "picky.1"]);
    assert!(log.contains("got restore {'n': 41}"), "{log}");
}

/// A process that knows nothing of the platform and keeps its state in memory only: a token
/// drawn at start, a counter, and a hash of 1 MiB of random bytes (recomputed every 20 ticks);
/// it prints them with the time every 20 ms. Returns its directory and script.
fn ticker_script(p: &Platform) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = p.root().join("ticker");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("ticker.py");
    std::fs::write(
        &script,
        "import hashlib, os, time\n\
         token = os.urandom(8).hex()\n\
         ballast = bytearray(os.urandom(1 << 20))\n\
         digest = hashlib.sha256(ballast).hexdigest()[:16]\n\
         n = 0\n\
         while True:\n\
         \x20   n += 1\n\
         \x20   print(f'tick {n} {token} {digest} {time.time():.3f}', flush=True)\n\
         \x20   if n % 20 == 0:\n\
         \x20       digest = hashlib.sha256(ballast).hexdigest()[:16]\n\
         \x20   time.sleep(0.02)\n",
    )
    .unwrap();
    (dir, script)
}

/// The ticker (`ticker`, and `peek` with the state root bound inside) and a web server that
/// CRIU cannot move (a listening TCP socket).
fn ticker_app(p: &Platform) -> std::path::PathBuf {
    let (dir, script) = ticker_script(p);
    p.manifest(
        "crm",
        &format!(
            "app = \"crm\"\n[services.ticker]\nimage = \"host\"\npaths = [{dir:?}]\ncommand = [\"/usr/bin/python3\", {script:?}]\nstop_signal = \"KILL\"\nmigrate = \"criu\"\n\n[services.peek]\nimage = \"host\"\npaths = [{root:?}]\ncommand = [\"/usr/bin/python3\", {script:?}]\nstop_signal = \"KILL\"\nmigrate = \"criu\"\n\n[services.web]\nimage = \"host\"\ncommand = [\"/usr/bin/python3\", \"-m\", \"http.server\", \"9000\"]\nports = [{{ port = 9000, protocol = \"http\", publish = {port} }}]\nhealth = {{ tcp = 9000, interval = \"1s\" }}\nstop_signal = \"KILL\"\nmigrate = \"criu\"\n",
            dir = dir.display().to_string(),
            script = script.display().to_string(),
            root = p.root().display().to_string(),
            port = p.port(0),
        ),
    )
}

/// One line of the ticker: (count, token, digest, time in seconds).
fn tick(line: &str) -> Option<(u64, String, String, f64)> {
    let mut words = line.strip_prefix("tick ")?.split_whitespace();
    Some((
        words.next()?.parse().ok()?,
        words.next()?.to_string(),
        words.next()?.to_string(),
        words.next()?.parse().ok()?,
    ))
}

fn ticks(text: &str) -> Vec<(u64, String, String, f64)> {
    text.lines().filter_map(tick).collect()
}

/// Waits until `instance` has printed at least `count` ticks; returns them.
fn wait_ticks(p: &Platform, instance: &str, count: usize) -> Vec<(u64, String, String, f64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = ticks(&p.ok(&["logs", "-a", "crm", instance]));
        if seen.len() >= count {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{instance} printed {} ticks, not {count}\n{}",
            seen.len(),
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pid_of(p: &Platform, instance: &str) -> i32 {
    let ps = p.ps("crm");
    let found = ps
        .iter()
        .find(|i| field(i, "instance") == instance)
        .unwrap_or_else(|| panic!("no {instance} in {ps:?}"));
    found["pid"].as_i64().unwrap() as i32
}

/// Moves `from` to `to` by CRIU and checks that the process went on from where it was: the
/// successor's first tick follows the old instance's last, with the same token and memory.
fn criu_move(p: &Platform, from: &str, to: &str) {
    let old_pid = pid_of(p, from);
    // Held open, the old log stays readable after the old instance is removed.
    let mut old_log =
        std::fs::File::open(p.root().join("instances/crm").join(from).join("output.log")).unwrap();
    let out = p.run(&["migrate", "-a", "crm", from, "-o", "json"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.daemon_log()
    );
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["to"], to);
    assert_eq!(done["via"], "criu");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut old_log, &mut text).unwrap();
    let before = ticks(&text);
    let last = before.last().expect("the old instance ticked").clone();

    let after = wait_ticks(p, to, 30);
    let first = &after[0];
    assert_eq!(
        first.0,
        last.0 + 1,
        "{to} went on from tick {} where {from} stopped at {}",
        first.0,
        last.0
    );
    for (n, t) in after.iter().enumerate() {
        assert_eq!(t.0, first.0 + n as u64, "ticks of {to} follow each other");
        assert_eq!(t.1, last.1, "the token drawn at start is kept");
        // Recomputed every 20 ticks over the restored memory: the same bytes.
        assert_eq!(t.2, last.2, "the hash of the 1 MiB in memory is kept");
    }
    eprintln!(
        "{from} -> {to} by CRIU in {} ms (checkpoint to ready {} ms, {} bytes of images); the process paused {:.0} ms between its ticks {} and {}",
        done["took_ms"],
        done["handover_ms"],
        done["state_bytes"],
        (first.3 - last.3) * 1000.0,
        last.0,
        first.0
    );

    // The restored process is the daemon's child, in the successor's cgroup; the old one is gone.
    let pid = pid_of(p, to);
    assert_ne!(pid, old_pid);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: i32 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(Some(ppid), p.daemon_pid(), "{to} is the daemon's child");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let own = format!("{}/crm-{}", p.cgroup_parent(), to.replace('.', "-"));
    assert!(cgroups.contains(&own), "{to} is in {own}: {cgroups}");
    assert!(!alive(old_pid), "{from} ended");
}

#[test]
fn a_criu_migration_keeps_the_memory_of_a_process_that_knows_nothing_of_it() {
    let p = Platform::new();
    let manifest = ticker_app(&p);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    wait_ticks(&p, "ticker.1", 10);
    criu_move(&p, "ticker.1", "ticker.2");
    // A restored instance is an instance like any other: it moves again.
    criu_move(&p, "ticker.2", "ticker.3");
    // Regression: with the state root bound inside (`peek`), the log is reachable through the
    // instance's root too, and CRIU names it by that mount; it must still go to the new log.
    wait_ticks(&p, "peek.1", 10);
    criu_move(&p, "peek.1", "peek.2");
    let names: Vec<String> = p
        .wait_ps("crm", Duration::from_secs(10), "ticker.3 alone", |ps| {
            ps.iter()
                .filter(|i| field(i, "service") == "ticker")
                .count()
                == 1
        })
        .iter()
        .filter(|i| field(i, "service") == "ticker")
        .map(|i| field(i, "instance").to_string())
        .collect();
    assert_eq!(names, ["ticker.3"]);
    let events = p.events("crm");
    for step in [
        "migration to ticker.2 via criu: starting ticker.2",
        "checkpointed by CRIU in",
        "ticker.2   restored from its checkpoint, pid",
        "switched: ticker.2 takes the traffic of ticker.1",
        "migrated to ticker.2 via criu in",
        "migrated to ticker.3 via criu in",
    ] {
        assert!(events.contains(step), "no {step:?} in\n{events}");
    }
}

#[test]
fn a_criu_migration_that_cannot_checkpoint_leaves_the_old_instance_serving() {
    let p = Platform::new();
    let manifest = ticker_app(&p);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let before = pids(&p.ps("crm"));
    let pid = pid_of(&p, "web.1");
    // A listening TCP socket: CRIU cannot checkpoint it on current kernels, and says so.
    let err = p.fails(&["migrate", "-a", "crm", "web.1", "--via", "criu"]);
    assert!(err.contains("web.1 keeps serving"), "{err}");
    assert!(err.contains("by CRIU failed"), "{err}");
    // The same process, running again (not left stopped by the checkpoint), and serving.
    assert_eq!(pids(&p.ps("crm")), before);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
    assert_ne!(state, 'T', "web.1 was resumed: {stat}");
    let (status, _) = http_get(p.port(0), "/").unwrap();
    assert_eq!(status, 200);
    let events = p.events("crm");
    assert!(events.contains("migration to web.2 abandoned"), "{events}");
    // What CRIU wrote for the failed move stays for a look until the application goes.
    let checkpoints = p.root().join("checkpoints/crm");
    assert!(checkpoints.join("crm-web-2").is_dir(), "{events}");
    p.ok(&["down", "-a", "crm"]);
    assert!(!checkpoints.exists(), "down removes the checkpoints");
}

#[test]
fn a_daemon_killed_during_a_criu_migration_resumes_the_old_instance_on_restart() {
    let p = Platform::new();
    let (dir, script) = ticker_script(&p);
    // While `hold` exists the health check fails, so the restored successor never becomes
    // ready and the move waits, the old instance stopped by its checkpoint, until the test has
    // killed the daemon. The old instance's next check is a minute away.
    let hold = dir.join("hold");
    let manifest = p.manifest(
        "crm",
        &format!(
            "app = \"crm\"\n[services.ticker]\nimage = \"host\"\npaths = [{dir:?}]\ncommand = [\"/usr/bin/python3\", {script:?}]\nhealth = {{ exec = [\"/bin/sh\", \"-c\", \"test ! -e {hold}\"], interval = \"60s\" }}\nstop_signal = \"KILL\"\nmigrate = \"criu\"\n",
            dir = dir.display().to_string(),
            script = script.display().to_string(),
            hold = hold.display(),
        ),
    );
    let manifest = manifest.to_str().unwrap();
    p.ok(&["up", "-f", manifest]);
    wait_ticks(&p, "ticker.1", 10);
    let old_pid = pid_of(&p, "ticker.1");
    std::fs::write(&hold, "").unwrap();

    let mut migrate = p
        .command()
        .args(["migrate", "-a", "crm", "ticker.1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    p.wait_event(
        "crm",
        "ticker.2   restored from its checkpoint",
        Duration::from_secs(30),
    );
    let stat = std::fs::read_to_string(format!("/proc/{old_pid}/stat")).unwrap();
    let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
    assert_eq!(state, 'T', "ticker.1 is stopped by its checkpoint: {stat}");
    let daemon = p.daemon_pid().unwrap();
    kill9(daemon);
    while alive(daemon) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = migrate.wait();
    // No daemon to ask: the log file itself.
    let log = p.root().join("instances/crm/ticker.1/output.log");
    let before = ticks(&std::fs::read_to_string(log).unwrap());
    let last = before.last().expect("ticker.1 ticked").clone();
    std::fs::remove_file(&hold).unwrap();

    // A new daemon (started by up): ticker.1 runs on from where it stopped, ticker.2 is gone.
    p.ok(&["up", "-f", manifest]);
    let ps = p.wait_ps("crm", Duration::from_secs(20), "ticker.1 alone", |ps| {
        ps.len() == 1 && field(&ps[0], "instance") == "ticker.1"
    });
    assert_eq!(ps[0]["pid"].as_i64(), Some(old_pid as i64));
    let stat = std::fs::read_to_string(format!("/proc/{old_pid}/stat")).unwrap();
    let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
    assert_ne!(state, 'T', "ticker.1 was resumed: {stat}");
    let after = wait_ticks(&p, "ticker.1", before.len() + 10);
    assert_eq!(
        after[before.len()].0,
        last.0 + 1,
        "ticker.1 went on where it stopped"
    );
    assert!(
        after.iter().all(|t| t.1 == last.1),
        "the same process, token kept"
    );
    let events = p.events("crm");
    for step in [
        "ticker.1   resumed: the daemon restarted during its CRIU migration",
        "ticker.2   stopped: the daemon restarted during the migration that started it",
    ] {
        assert!(events.contains(step), "no {step:?} in\n{events}");
    }
}
