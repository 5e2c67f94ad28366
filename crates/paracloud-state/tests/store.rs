//! The store against a real SQLite file.

use paracloud_manifest::*;
use paracloud_reconcile::{Health, InstanceKey, InstanceState};
use paracloud_state::*;

/// Everything exists, for manifests that name no paths.
struct AnyFs;

impl FileSystem for AnyFs {
    fn exists(&self, _: &std::path::Path) -> bool {
        true
    }
    fn is_dir(&self, _: &std::path::Path) -> bool {
        true
    }
}

/// The shop with two services, built by the real parser.
fn manifest(command: &str, replicas: u32) -> Manifest {
    let source = format!(
        "app = \"shop\"\n[services.web]\nimage = \"host\"\ncommand = [\"{command}\"]\nreplicas = {replicas}\n\
         [services.api]\nimage = \"host\"\ncommand = [\"{command}\"]\nreplicas = {replicas}\n"
    );
    let origin = Origin {
        file: "paracloud.toml".into(),
        base_dir: "/".into(),
    };
    parse(&source, &origin, &AnyFs).unwrap()
}

#[test]
fn an_app_survives_reopening_and_a_changed_spec_gets_a_new_revision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let store = Store::open(&path).unwrap();
        assert!(store
            .put_app(&manifest("a", 2), "src", "paracloud.toml", 1)
            .unwrap()
            .is_empty());
        store.apply(&[replicas("web", 5)], 1).unwrap();
    }
    let store = Store::open(&path).unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.apps.len(), 1);
    assert_eq!(snapshot.apps[0].services["web"].replicas, 5);
    assert_ne!(
        snapshot.apps[0].services["web"].slot,
        snapshot.apps[0].services["api"].slot
    );

    let changed = store
        .put_app(&manifest("b", 2), "src", "paracloud.toml", 2)
        .unwrap();
    assert_eq!(changed, vec!["api".to_string(), "web".to_string()]);
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.apps[0].services["web"].revision, 1);
    assert_eq!(
        snapshot.apps[0].services["web"].replicas, 2,
        "up resets the scale to the manifest"
    );
}

#[test]
fn unknown_apps_and_services_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    store
        .put_app(&manifest("a", 1), "src", "paracloud.toml", 1)
        .unwrap();
    let err = store
        .apply(&[replicas("wbe", 2)], 1)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "application shop has no service named wbe (it has: api, web)"
    );
    let bump = Change::BumpRevision {
        app: "nope".into(),
        service: "web".into(),
    };
    let err = store.apply(&[bump], 1).unwrap_err().to_string();
    assert_eq!(err, "no application named nope");
}

#[test]
fn instances_round_trip_and_slots_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let record = |index, slot| InstanceRecord {
        key: InstanceKey::new("shop", "web", index),
        revision: 0,
        state: InstanceState::Running {
            health: Health::Healthy,
        },
        restarts: 0,
        since: 5,
        started: 5,
        pid: Some(42),
        start_time: Some(7),
        slot,
        weight: None,
        held: false,
        frozen: false,
        cpu: None,
        health_failure: None,
    };
    assert_eq!(store.free_instance_slot("shop").unwrap(), 0);
    store.put_instance(&record(1, 0)).unwrap();
    store.put_instance(&record(2, 1)).unwrap();
    assert_eq!(store.free_instance_slot("shop").unwrap(), 2);
    store
        .delete_instance(&InstanceKey::new("shop", "web", 1))
        .unwrap();
    assert_eq!(store.free_instance_slot("shop").unwrap(), 0);
    let loaded = store.load().unwrap().instances;
    assert_eq!(loaded, vec![record(2, 1)]);

    // Writers of different fields, from many threads at once, undo none of each other's.
    let store = std::sync::Arc::new(store);
    let key = InstanceKey::new("shop", "web", 2);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (store, key) = (store.clone(), key.clone());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    store
                        .update_instance(&key, |r| {
                            if t % 2 == 0 {
                                r.restarts += 1
                            } else {
                                r.since += 1
                            }
                        })
                        .unwrap()
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let updated = store.instance(&key).unwrap().unwrap();
    assert_eq!((updated.restarts, updated.since), (200, 5 + 200));
    let gone = InstanceKey::new("shop", "web", 9);
    assert!(store
        .update_instance(&gone, |r| r.held = true)
        .unwrap()
        .is_none());
    assert!(store.instance(&gone).unwrap().is_none(), "nothing made up");

    // Starts claim a number: many threads starting the same new instance and others at once
    // get one record each, none twice, every one at its own address slot.
    let claims: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let key = InstanceKey::new("shop", "api", 1 + t % 4);
                store
                    .claim_instance(&key, |previous, free| {
                        assert!(previous.is_none());
                        InstanceRecord {
                            key: key.clone(),
                            slot: free,
                            state: InstanceState::Starting,
                            ..record(0, 0)
                        }
                    })
                    .unwrap()
                    .is_some()
            })
        })
        .collect();
    let won = claims
        .into_iter()
        .filter_map(|c| c.join().unwrap().then_some(()))
        .count();
    assert_eq!(won, 4, "one claim per number");
    let slots: std::collections::BTreeSet<u32> = store
        .load()
        .unwrap()
        .instances
        .iter()
        .map(|i| i.slot)
        .collect();
    assert_eq!(
        slots.len(),
        5,
        "web.2 and four api instances, each its own slot"
    );
    // An exited record is claimed again, at its own slot.
    let web = InstanceKey::new("shop", "web", 2);
    store
        .update_instance(&web, |r| {
            r.state = InstanceState::Exited {
                exit: Default::default(),
            }
        })
        .unwrap();
    let again = store
        .claim_instance(&web, |previous, _| InstanceRecord {
            state: InstanceState::Starting,
            ..previous.unwrap().clone()
        })
        .unwrap()
        .unwrap();
    assert_eq!(again.slot, 1);
}

#[test]
fn an_instance_record_from_before_health_failures_still_reads() {
    let older = r#"{"key":{"app":"shop","service":"web","index":1},"revision":0,
        "state":{"state":"running","health":"unknown"},"restarts":0,"since":5,"started":5,
        "pid":42,"start_time":7,"slot":0}"#;
    let record: InstanceRecord = serde_json::from_str(older).unwrap();
    assert_eq!(record.health_failure, None);
}

#[test]
fn events_are_read_in_order_after_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    for i in 0..5 {
        store
            .add_event(i, "shop", "web.1", &format!("event {i}"))
            .unwrap();
    }
    store.add_event(9, "other", "x", "elsewhere").unwrap();
    let events = store.events(Some("shop"), 2, 100).unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>(),
        ["event 2", "event 3", "event 4"]
    );
    assert_eq!(store.events(None, 0, 2).unwrap().len(), 2, "the newest two");
}

#[test]
fn the_capsule_runs_still_running_are_found_for_a_new_daemon_to_settle() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let run = |status: &str| CapsuleRun {
        who: "root".into(),
        capsule: "checksum".into(),
        app: "shop".into(),
        selector: "instance=web.1".into(),
        args: vec![],
        targets: vec![],
        started: 1,
        duration_ms: None,
        status: status.into(),
        detail: String::new(),
        output_bytes: 0,
    };
    let first = store.add_capsule_run(&run("running")).unwrap();
    store.add_capsule_run(&run("ok")).unwrap();
    let third = store.add_capsule_run(&run("running")).unwrap();
    let running: Vec<i64> = store
        .running_capsule_runs()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(running, [first, third]);
    store.update_capsule_run(first, &run("failed")).unwrap();
    assert_eq!(store.running_capsule_runs().unwrap().len(), 1);
}

#[test]
fn a_schedules_last_successful_runs_are_found_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let run = |app: &str, who: &str, status: &str| CapsuleRun {
        who: who.into(),
        capsule: "pg-dump".into(),
        app: app.into(),
        selector: "service=db".into(),
        args: vec![],
        targets: vec![],
        started: 1,
        duration_ms: Some(1),
        status: status.into(),
        detail: String::new(),
        output_bytes: 0,
    };
    let nightly = "schedule nightly";
    let first = store.add_capsule_run(&run("shop", nightly, "ok")).unwrap();
    store
        .add_capsule_run(&run("shop", nightly, "failed"))
        .unwrap();
    store.add_capsule_run(&run("shop", "root", "ok")).unwrap();
    store.add_capsule_run(&run("blog", nightly, "ok")).unwrap();
    let third = store.add_capsule_run(&run("shop", nightly, "ok")).unwrap();
    let fourth = store.add_capsule_run(&run("shop", nightly, "ok")).unwrap();
    assert_eq!(
        store.last_ok_capsule_runs("shop", nightly, 2).unwrap(),
        [fourth, third]
    );
    assert_eq!(
        store.last_ok_capsule_runs("shop", nightly, 10).unwrap(),
        [fourth, third, first]
    );
}

#[test]
fn a_revision_shares_its_service_address_and_keeps_a_set_weight_until_the_next_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let source = "app = \"shop\"\n[services.web]\nimage = \"host\"\ncommand = \"w\"\n\
                  [services.api]\nimage = \"host\"\ncommand = \"a\"\n\
                  [services.api.revisions.canary]\ncommand = \"b\"\nweight = 10\n";
    let origin = Origin {
        file: "paracloud.toml".into(),
        base_dir: "/".into(),
    };
    let manifest = parse(source, &origin, &AnyFs).unwrap();
    store
        .put_app(&manifest, "src", "paracloud.toml", 1)
        .unwrap();
    let services = &store.load().unwrap().apps[0].services;
    assert_eq!(services["api@canary"].slot, services["api"].slot);
    assert_ne!(services["web"].slot, services["api"].slot);
    assert_eq!(services["api@canary"].weight, None);

    store.apply(&[weight("api@canary", Some(30))], 1).unwrap();
    assert_eq!(
        store.load().unwrap().apps[0].services["api@canary"].weight,
        Some(30)
    );
    store
        .put_app(&manifest, "src", "paracloud.toml", 2)
        .unwrap();
    assert_eq!(
        store.load().unwrap().apps[0].services["api@canary"].weight,
        None,
        "up returns to the manifest's weight"
    );
}

#[test]
fn a_set_cpu_holds_until_the_next_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let mut m = manifest("a", 1);
    m.services.get_mut("api").unwrap().resources.cpu = Some(0.5);
    store.put_app(&m, "src", "paracloud.toml", 1).unwrap();
    let cpu_of = |store: &Store| {
        let app = &store.load().unwrap().apps[0];
        let api = &app.services["api"];
        (api.cpu, api.cpu(&app.manifest.services["api"]))
    };
    assert_eq!(cpu_of(&store), (None, Some(0.5)), "the manifest's");
    store.apply(&[cpu("api", Some(1.5))], 1).unwrap();
    assert_eq!(cpu_of(&store), (Some(1.5), Some(1.5)));
    assert!(matches!(
        store.apply(&[cpu("nope", Some(1.0))], 1),
        Err(Error::NoService { .. })
    ));
    store.put_app(&m, "src", "paracloud.toml", 2).unwrap();
    assert_eq!(
        cpu_of(&store),
        (None, Some(0.5)),
        "up returns to the manifest's"
    );
}

#[test]
fn a_database_from_before_the_override_columns_gains_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE services (app TEXT NOT NULL, name TEXT NOT NULL, replicas INTEGER NOT NULL,
             revision INTEGER NOT NULL, slot INTEGER NOT NULL, spec TEXT NOT NULL,
             PRIMARY KEY (app, name));",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    store
        .put_app(&manifest("a", 1), "src", "paracloud.toml", 1)
        .unwrap();
    store
        .apply(&[cpu("web", Some(2.0)), weight("web", Some(5))], 1)
        .unwrap();
    let web = &store.load().unwrap().apps[0].services["web"];
    assert_eq!((web.cpu, web.weight), (Some(2.0), Some(5)));
}

#[test]
fn a_changed_capsule_policy_replaces_no_instance() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    store
        .put_app(&manifest("a", 2), "src", "paracloud.toml", 1)
        .unwrap();
    let mut with_policy = manifest("a", 2);
    with_policy
        .services
        .get_mut("web")
        .unwrap()
        .capsules
        .insert("strace".into(), paracloud_capsule::Access::Read);
    let changed = store
        .put_app(&with_policy, "src", "paracloud.toml", 2)
        .unwrap();
    assert!(changed.is_empty(), "{changed:?}");
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.apps[0].services["web"].revision, 0);
    assert_eq!(
        snapshot.apps[0].manifest.services["web"].capsules.len(),
        1,
        "the new policy is stored"
    );
}

fn replicas(service: &str, replicas: u32) -> Change {
    Change::Replicas {
        app: "shop".into(),
        service: service.into(),
        replicas,
    }
}

fn cpu(service: &str, cpu: Option<f64>) -> Change {
    Change::Cpu {
        app: "shop".into(),
        service: service.into(),
        cpu,
    }
}

fn weight(service: &str, weight: Option<u32>) -> Change {
    Change::TrafficWeight {
        app: "shop".into(),
        service: service.into(),
        weight,
    }
}

#[test]
fn a_decision_is_written_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    store
        .put_app(&manifest("a", 1), "src", "paracloud.toml", 1)
        .unwrap();
    let event = Change::Event {
        app: "shop".into(),
        subject: "web".into(),
        message: "scaled to 7".into(),
    };
    let err = store
        .apply(&[replicas("web", 7), event, replicas("wbe", 2)], 2)
        .unwrap_err();
    assert!(matches!(err, Error::NoService { .. }), "{err}");
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.apps[0].services["web"].replicas, 1);
    assert!(store.events(None, 0, 10).unwrap().is_empty());

    // A decision sees the state it is written to: a replica count read and raised in one
    // transaction.
    let raised = store
        .transact(3, |snapshot| {
            let now = snapshot.apps[0].services["web"].replicas;
            Ok::<_, Error>((vec![replicas("web", now + 1)], now + 1))
        })
        .unwrap();
    assert_eq!(raised, 2);
    assert_eq!(store.load().unwrap().apps[0].services["web"].replicas, 2);
}

#[test]
fn regression_an_application_created_again_does_not_inherit_the_old_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    store
        .put_app(&manifest("a", 1), "src", "paracloud.toml", 1)
        .unwrap();
    let event = |message: &str| Change::Event {
        app: "shop".into(),
        subject: "web".into(),
        message: message.into(),
    };
    store.apply(&[event("web.1 crashed")], 2).unwrap();
    store.forget_app("shop").unwrap();
    store
        .put_app(&manifest("a", 1), "src", "paracloud.toml", 3)
        .unwrap();
    store.apply(&[event("deployed")], 4).unwrap();
    let messages: Vec<String> = store
        .events(Some("shop"), 0, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(messages, ["deployed"]);
}

#[test]
fn the_address_plan_holds_while_applications_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.keep_address_plan("10.213.0.0/16 /24").unwrap(), None);
        assert_eq!(
            store.keep_address_plan("10.213.0.0/16 /22").unwrap(),
            None,
            "no application has a subnet yet: the plan may change"
        );
        store
            .put_app(&manifest("a", 1), "src", "paracloud.toml", 1)
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.keep_address_plan("10.213.0.0/16 /24").unwrap(),
        Some("10.213.0.0/16 /22".to_string()),
        "shop's subnet was given under /22"
    );
    assert_eq!(store.keep_address_plan("10.213.0.0/16 /22").unwrap(), None);
    store.forget_app("shop").unwrap();
    assert_eq!(store.keep_address_plan("10.9.0.0/16 /24").unwrap(), None);
    assert_eq!(
        store.keep_address_plan("10.213.0.0/16 /22").unwrap(),
        None,
        "kept by no application"
    );
}

#[test]
fn a_task_farm_keeps_its_workers_and_its_batches_across_an_up_and_a_cancel_marks_what_waited() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let source = "app = \"farm\"\n[services.render]\ncatalog = \"taskfarm\"\nimage = \"tools:1\"\n";
    let origin = Origin {
        file: "paracloud.toml".into(),
        base_dir: "/".into(),
    };
    let farm = parse(source, &origin, &AnyFs).unwrap();
    store.put_app(&farm, source, "paracloud.toml", 1).unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.next_batch, 1);
    let batch = BatchRecord {
        id: snapshot.next_batch,
        app: "farm".into(),
        service: "render".into(),
        submitted: 1,
        goal: BatchGoal::Deadline { at: 60_000 },
        state: BatchState::Running,
        ended: None,
        spent_ms: 0,
        workers: 0,
        peak_workers: 0,
        plan: String::new(),
        counts: TaskCounts {
            pending: 2,
            ..TaskCounts::default()
        },
    };
    let tasks = vec!["echo 1".to_owned(), "echo 2".to_owned()];
    store
        .apply(&[Change::SubmitBatch { batch, tasks }], 2)
        .unwrap();
    store
        .apply(
            &[Change::Replicas {
                app: "farm".into(),
                service: "render".into(),
                replicas: 3,
            }],
            3,
        )
        .unwrap();
    store.put_app(&farm, source, "paracloud.toml", 4).unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(
        snapshot.apps[0].services["render"].replicas, 3,
        "an up leaves the farm's workers to its batch"
    );
    assert_eq!(snapshot.batches.len(), 1, "the running batch");
    assert_eq!(snapshot.next_batch, 2);

    store.apply(&[Change::CancelBatch { id: 1 }], 5).unwrap();
    let snapshot = store.load().unwrap();
    assert!(snapshot.batches.is_empty(), "no batch runs");
    let cancelled = store.batch(1).unwrap().unwrap();
    assert_eq!(
        (cancelled.state, cancelled.ended, cancelled.counts.not_run),
        (BatchState::Cancelled, Some(5), 2)
    );
    let states: Vec<TaskState> = store
        .tasks(1)
        .unwrap()
        .into_iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(states, [TaskState::NotRun, TaskState::NotRun]);
    assert_eq!(
        store.load().unwrap().next_batch,
        2,
        "numbers are never reused"
    );

    // Its application's removal takes its batches with it.
    store.forget_app("farm").unwrap();
    assert!(store.batches(None).unwrap().is_empty());
}
