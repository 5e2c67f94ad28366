//! The engine's decisions over the fake driver, on tokio's paused clock: no root, no kernel, no
//! waiting for real time. What the engine asked the driver for, and when, is the evidence.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use paracloud_command::{Caller, Command};
use paracloud_manifest::{parse, FileSystem, Origin};
use paracloud_state::Store;

use super::*;
use crate::fake::{Call, FakeDriver};
use crate::images::Images;

struct AnyFs;

impl FileSystem for AnyFs {
    fn exists(&self, _: &Path) -> bool {
        true
    }
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
}

struct Daemon {
    engine: Arc<Engine<FakeDriver>>,
    driver: FakeDriver,
    _root: tempfile::TempDir,
}

const ROOT: Caller = Caller::Local { uid: Some(0) };

/// An engine over the fake driver with its reconcile loop running. Its data plane cannot start
/// (its program does not exist): routes are written, nothing serves them.
fn daemon() -> Daemon {
    let root = tempfile::tempdir().unwrap();
    let config = DaemonConfig {
        root: root.path().to_owned(),
        cgroup_parent: "unit".into(),
        addresses: crate::addressing::AddressPlan::with_default_size(
            "10.213.0.0/16".parse().unwrap(),
        ),
        exe: root.path().join("no-such-program"),
        settings: Default::default(),
        listen: None,
    };
    let store = Store::open(&root.path().join("state.db")).unwrap();
    let images = Images::open(root.path()).unwrap();
    let driver = FakeDriver::default();
    let engine = Engine::new(config, store, driver.clone(), images);
    tokio::spawn(engine.clone().run());
    Daemon {
        engine,
        driver,
        _root: root,
    }
}

impl Daemon {
    fn up(&self, source: &str) {
        let origin = Origin {
            file: "paracloud.toml".into(),
            base_dir: "/".into(),
        };
        let manifest = parse(source, &origin, &AnyFs).unwrap();
        let command = Command::Up {
            manifest,
            source: source.into(),
            origin: "paracloud.toml".into(),
        };
        self.engine.submit(&ROOT, &command).unwrap();
    }

    fn submit(&self, command: Command) {
        self.engine.submit(&ROOT, &command).unwrap();
    }

    fn events(&self) -> Vec<String> {
        let events = self.engine.store.events(None, 0, 1000).unwrap();
        events
            .into_iter()
            .map(|e| format!("{}: {}", e.subject, e.message))
            .collect()
    }
}

fn scale(service: &str, replicas: Option<u32>, cpu: Option<f64>) -> Command {
    Command::Scale {
        app: "t".into(),
        service: service.into(),
        replicas,
        cpu,
        reason: None,
    }
}

/// Lets the daemon run for `time` of tokio's (paused) clock.
async fn run_for(time: Duration) {
    tokio::time::sleep(time).await;
}

#[tokio::test(start_paused = true)]
async fn a_crashing_instance_restarts_after_a_doubling_backoff() {
    let daemon = daemon();
    daemon.up("app = \"t\"\n[services.w]\nimage = \"host\"\ncommand = [\"crash\"]\n");
    run_for(Duration::from_millis(3_500)).await;
    let starts = daemon.driver.starts_of("t-w-1");
    assert!(starts.len() >= 5, "{starts:?}");
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    // 100 ms, then doubling; a turn of the loop may add a few milliseconds.
    for (gap, backoff) in gaps.iter().zip([100, 200, 400, 800]) {
        assert!(
            (backoff..backoff + 30).contains(gap),
            "gaps {gaps:?}: expected about {backoff} ms"
        );
    }
    let events = daemon.events();
    assert!(
        events.iter().any(|e| e == "w.1: exited with code 1"),
        "{events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_is_recorded_with_its_reason_and_retried_later() {
    let daemon = daemon();
    daemon.up("app = \"t\"\n[services.w]\nimage = \"host\"\ncommand = [\"fail-start\"]\n");
    run_for(Duration::from_millis(500)).await;
    let events = daemon.events();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("w.1: failed to start: sandbox of t-w-1 failed")),
        "{events:?}"
    );
    assert!(daemon.driver.starts_of("t-w-1").len() >= 2);
    assert!(daemon.driver.running().is_empty());
}

#[tokio::test(start_paused = true)]
async fn scaling_in_sends_the_stop_signal_then_kills_after_the_grace_period() {
    let daemon = daemon();
    daemon.up(
        "app = \"t\"\n[services.w]\nimage = \"host\"\ncommand = [\"stubborn\"]\nreplicas = 2\nstop_grace_period = \"2s\"\n",
    );
    run_for(Duration::from_millis(200)).await;
    assert_eq!(daemon.driver.running(), ["t-w-1", "t-w-2"]);

    daemon.submit(scale("w", Some(1), None));
    run_for(Duration::from_secs(10)).await;
    assert_eq!(daemon.driver.running(), ["t-w-1"]);
    assert_eq!(
        daemon.driver.signals_of("t-w-2"),
        [Signal::SIGTERM, Signal::SIGKILL]
    );
    let at = |wanted: Signal| {
        daemon
            .driver
            .calls()
            .into_iter()
            .find(|(_, c)| matches!(c, Call::Signal { id, signal } if id == "t-w-2" && *signal == wanted))
            .map(|(at, _)| at)
            .unwrap()
    };
    let grace = at(Signal::SIGKILL) - at(Signal::SIGTERM);
    assert!(
        (Duration::from_secs(2)..Duration::from_millis(2_100)).contains(&grace),
        "{grace:?}"
    );
    let events = daemon.events();
    assert!(
        events
            .iter()
            .any(|e| e == "w.2: grace period over: SIGKILL"),
        "{events:?}"
    );
    assert!(daemon.driver.signals_of("t-w-1").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_service_waits_for_its_dependency_to_pass_its_health_check() {
    let daemon = daemon();
    daemon.driver.set_exec("t-kv-1", 1);
    daemon.up(
        "app = \"t\"\n\
         [services.kv]\nimage = \"host\"\ncommand = [\"serve\"]\nhealth = { exec = [\"check\"], interval = \"1s\" }\n\
         [services.api]\nimage = \"host\"\ncommand = [\"serve\"]\ndepends_on = { kv = \"healthy\" }\n",
    );
    run_for(Duration::from_secs(3)).await;
    assert_eq!(daemon.driver.running(), ["t-kv-1"], "api waits for kv");
    let waiting = daemon.engine.waiting();
    assert!(
        waiting
            .iter()
            .any(|(key, why)| key.name() == "api.1" && why.contains("kv")),
        "{waiting:?}"
    );

    daemon.driver.set_exec("t-kv-1", 0);
    run_for(Duration::from_secs(2)).await;
    assert_eq!(daemon.driver.running(), ["t-api-1", "t-kv-1"]);
}

#[tokio::test(start_paused = true)]
async fn a_cpu_change_is_written_once_to_each_running_instance() {
    let daemon = daemon();
    daemon.up(
        "app = \"t\"\n[services.w]\nimage = \"host\"\ncommand = [\"serve\"]\nreplicas = 2\nresources = { cpu = 0.5 }\n",
    );
    run_for(Duration::from_millis(300)).await;
    daemon.submit(scale("w", None, Some(1.5)));
    run_for(Duration::from_secs(3)).await;
    for id in ["t-w-1", "t-w-2"] {
        assert_eq!(
            daemon.driver.cpu_of(id),
            [Some(0.5), Some(1.5)],
            "{id}: its start, then the change, once"
        );
    }
    // `up` again gives the manifest's back, to the same instances (the CPU is no new revision).
    daemon.up(
        "app = \"t\"\n[services.w]\nimage = \"host\"\ncommand = [\"serve\"]\nreplicas = 2\nresources = { cpu = 0.5 }\n",
    );
    run_for(Duration::from_secs(2)).await;
    assert_eq!(
        daemon.driver.cpu_of("t-w-1"),
        [Some(0.5), Some(1.5), Some(0.5)]
    );
    assert_eq!(daemon.driver.running(), ["t-w-1", "t-w-2"]);
}

#[tokio::test(start_paused = true)]
async fn an_update_replaces_instances_one_at_a_time_make_before_break() {
    let daemon = daemon();
    let v1 = "app = \"t\"\n[services.w]\nimage = \"host\"\ncommand = [\"serve\"]\nreplicas = 2\n";
    daemon.up(v1);
    run_for(Duration::from_millis(300)).await;
    daemon.up(&v1.replace("[\"serve\"]", "[\"serve\", \"--v2\"]"));
    run_for(Duration::from_secs(30)).await;
    assert_eq!(daemon.driver.running(), ["t-w-3", "t-w-4"]);
    // Each successor started before its predecessor got its stop signal, and the second move
    // began only once the first was over.
    let order: Vec<String> = daemon
        .driver
        .calls()
        .into_iter()
        .filter_map(|(_, call)| match call {
            Call::Start { id, .. } => Some(format!("start {id}")),
            Call::Signal { id, signal } => Some(format!("{signal} {id}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            "start t-w-1",
            "start t-w-2",
            "start t-w-3",
            "SIGTERM t-w-1",
            "start t-w-4",
            "SIGTERM t-w-2"
        ]
    );
}

/// Found by SIGKILLs of the daemon around an `up` that changed replicas and revision: the
/// reconcile loop started a missing replica under the number a migration had just chosen for
/// its successor, so one instance ran twice in one cgroup, one of its processes untracked.
#[tokio::test(start_paused = true)]
async fn a_number_chosen_for_a_successor_is_not_taken_by_a_scale() {
    let daemon = daemon();
    daemon.up("app = \"t\"\n[services.w]\nimage = \"host\"\ncommand = [\"serve\"]\n");
    run_for(Duration::from_millis(300)).await;
    let successor = daemon
        .engine
        .reserve_successor(&InstanceKey::new("t", "w", 1))
        .unwrap();
    assert_eq!(successor.key.index, 2);
    daemon.submit(scale("w", Some(2), None));
    run_for(Duration::from_secs(1)).await;
    assert!(daemon.driver.starts_of("t-w-2").is_empty());
    // The migration's own start takes the number; the scale is met with it.
    let app = daemon.engine.store.load().unwrap().apps[0].clone();
    let held = StartAs {
        held: true,
        ..StartAs::default()
    };
    daemon
        .engine
        .start(&app, &successor.key, false, held)
        .unwrap();
    drop(successor);
    run_for(Duration::from_secs(1)).await;
    assert_eq!(daemon.driver.starts_of("t-w-2").len(), 1);
    assert_eq!(daemon.driver.running(), ["t-w-1", "t-w-2"]);
    assert_eq!(daemon.driver.duplicates(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_second_start_of_a_starting_or_running_instance_is_refused() {
    let daemon = daemon();
    daemon.up("app = \"t\"\n[services.w]\nimage = \"host\"\ncommand = [\"serve\"]\n");
    run_for(Duration::from_millis(300)).await;
    let app = daemon.engine.store.load().unwrap().apps[0].clone();
    let key = InstanceKey::new("t", "w", 1);
    let again = daemon.engine.start(&app, &key, false, StartAs::default());
    assert!(matches!(again, Err(StartError::Taken)), "{again:?}");
    run_for(Duration::from_secs(1)).await;
    assert_eq!(daemon.driver.starts_of("t-w-1").len(), 1);
    assert_eq!(daemon.driver.duplicates(), Vec::<String>::new());
}

/// A network that cannot be set up is tried again every turn; its events said so every turn.
#[tokio::test(start_paused = true)]
async fn a_network_that_fails_to_set_up_is_said_once() {
    let daemon = daemon();
    daemon.driver.fail_networks(Some("nft not found"));
    daemon.up("app = \"t\"\n[services.w]\nimage = \"host\"\ncommand = [\"serve\"]\n");
    run_for(Duration::from_secs(5)).await;
    let said = |events: &[String]| {
        events
            .iter()
            .filter(|e| e.contains("cannot set up the network: "))
            .count()
    };
    let tries = daemon
        .driver
        .calls()
        .iter()
        .filter(|(_, c)| matches!(c, Call::EnsureNetwork { .. }))
        .count();
    assert!(tries > 2, "tried again: {tries}");
    assert_eq!(said(&daemon.events()), 1, "{:#?}", daemon.events());
    // Once it works, the application comes up.
    daemon.driver.fail_networks(None);
    run_for(Duration::from_secs(2)).await;
    assert_eq!(daemon.driver.running(), ["t-w-1"]);
}

/// A stop decided on a snapshot taken before the instance's process ended, and carried out
/// after its end was recorded, leaves it ended: made `stopping` again, with no process left whose
/// end would be recorded, it stayed listed as stopping for good and its service never settled (as
/// the fault-injection campaign found after a daemon restart).
#[tokio::test(start_paused = true)]
async fn a_stop_decided_before_an_exit_does_not_bring_the_instance_back_as_stopping() {
    let daemon = daemon();
    daemon.up(
        "app = \"t\"\n[services.w]\nimage = \"host\"\ncommand = [\"serve\"]\nreplicas = 2\nrestart = \"no\"\n",
    );
    run_for(Duration::from_millis(300)).await;
    let key = InstanceKey::new("t", "w", 2);
    let before_its_end = daemon.engine.store.load().unwrap();
    let process = daemon.engine.process_of(&key).unwrap();
    daemon
        .engine
        .driver
        .signal(&process, Signal::SIGKILL)
        .unwrap();
    run_for(Duration::from_millis(10)).await;
    let state = |daemon: &Daemon| daemon.engine.store.instance(&key).unwrap().unwrap().state;
    assert!(matches!(state(&daemon), InstanceState::Exited { .. }));

    let stop = Action::Stop {
        key: key.clone(),
        reason: StopReason::ScaleIn,
    };
    daemon.engine.execute(&before_its_end, stop).await;
    run_for(Duration::from_secs(5)).await;
    assert!(
        matches!(state(&daemon), InstanceState::Exited { .. }),
        "{:?}",
        state(&daemon)
    );
}
