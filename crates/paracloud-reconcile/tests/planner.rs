//! The planner against a simulated executor that applies every action at once.

use std::collections::BTreeMap;

use paracloud_manifest::*;
use paracloud_reconcile::*;
use proptest::prelude::*;

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

/// A service with the manifest's defaults (restart always, 100 ms backoff), by the real parser.
fn service(name: &str, replicas: u32) -> Service {
    let source = format!(
        "app = \"shop\"\n[services.{name}]\nimage = \"host\"\ncommand = [\"true\"]\nreplicas = {replicas}\n"
    );
    let origin = Origin {
        file: "paracloud.toml".into(),
        base_dir: "/".into(),
    };
    let mut manifest = parse(&source, &origin, &AnyFs).unwrap();
    manifest.services.remove(name).unwrap()
}

fn app(services: Vec<Service>) -> DesiredApp {
    DesiredApp {
        manifest: Manifest {
            app: "shop".into(),
            services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
            volumes: BTreeMap::new(),
            autoscale: None,
            schedules: BTreeMap::new(),
            capsules: BTreeMap::new(),
            networks: BTreeMap::new(),
        },
        replicas: BTreeMap::new(),
        revisions: BTreeMap::new(),
        cpu: BTreeMap::new(),
    }
}

fn desired(app: DesiredApp) -> Desired {
    Desired {
        apps: [("shop".to_string(), app)].into(),
    }
}

/// Applies a plan the way a perfect driver would: every start succeeds and every stop ends.
fn apply(observed: &mut Observed, desired: &Desired, plan: &Plan, now: Millis) {
    for action in &plan.actions {
        match action {
            Action::EnsureNetwork { app } => {
                observed.networks.insert(app.clone());
            }
            Action::RemoveNetwork { app } => {
                observed.networks.remove(app);
            }
            Action::Start { key, .. } => {
                let revision = desired.apps[&key.app].revision_of(&key.service);
                observed.instances.retain(|i| &i.key != key);
                observed.instances.push(ObservedInstance {
                    key: key.clone(),
                    revision,
                    state: InstanceState::Running {
                        health: Health::None,
                    },
                    restarts: 0,
                    since: now,
                    cpu: None,
                });
            }
            Action::Stop { key, reason } => {
                let instance = observed
                    .instances
                    .iter_mut()
                    .find(|i| &i.key == key)
                    .unwrap();
                instance.state = InstanceState::Exited {
                    exit: ExitInfo {
                        requested: Some(*reason),
                        ..ExitInfo::default()
                    },
                };
            }
            Action::Migrate { key } => {
                // A perfect make-before-break: the successor runs under the next free number,
                // the old instance is gone.
                let revision = desired.apps[&key.app].revision_of(&key.service);
                let next = observed
                    .instances
                    .iter()
                    .filter(|i| i.key.app == key.app && i.key.service == key.service)
                    .map(|i| i.key.index)
                    .max()
                    .unwrap_or(0)
                    + 1;
                observed.instances.retain(|i| &i.key != key);
                observed.instances.push(ObservedInstance {
                    key: InstanceKey::new(&key.app, &key.service, next),
                    revision,
                    state: InstanceState::Running {
                        health: Health::None,
                    },
                    restarts: 0,
                    since: now,
                    cpu: None,
                });
            }
            Action::SetCpu { key, cpu, .. } => {
                observed.applied_cpu.insert(key.clone(), *cpu);
            }
            Action::Failover { key, .. } => {
                let instance = observed
                    .instances
                    .iter_mut()
                    .find(|i| &i.key == key)
                    .unwrap();
                instance.state = InstanceState::Running {
                    health: Health::None,
                };
                instance.restarts = 0;
            }
            Action::Remove { key } => observed.instances.retain(|i| &i.key != key),
            Action::Forget { app, .. } => {
                observed.removing.remove(app);
            }
        }
    }
}

/// Marks the CPU limit (unlimited, as the test manifests say) as written to every instance, as
/// it is once a daemon has run a turn.
fn cpu_written(observed: &mut Observed) {
    let keys: Vec<InstanceKey> = observed.instances.iter().map(|i| i.key.clone()).collect();
    for key in keys {
        observed.applied_cpu.insert(key, None);
    }
}

fn converge(desired: &Desired, observed: &mut Observed) -> usize {
    for round in 0..50 {
        let plan = plan(desired, observed, 1_000);
        if plan.actions.is_empty() {
            return round;
        }
        apply(observed, desired, &plan, 1_000);
    }
    panic!("the plan did not converge: {observed:#?}");
}

fn running(observed: &Observed, service: &str) -> usize {
    observed
        .instances
        .iter()
        .filter(|i| i.key.service == service && i.state.is_running())
        .count()
}

#[test]
fn a_new_app_gets_its_network_before_its_instances() {
    let desired = desired(app(vec![service("web", 2)]));
    let plan = plan(&desired, &Observed::default(), 0);
    assert_eq!(
        plan.actions[0],
        Action::EnsureNetwork { app: "shop".into() }
    );
    assert_eq!(
        &plan.actions[1..],
        &[
            Action::Start {
                key: InstanceKey::new("shop", "web", 1),
                restart: false
            },
            Action::Start {
                key: InstanceKey::new("shop", "web", 2),
                restart: false
            },
        ]
    );
}

#[test]
fn depends_on_healthy_waits_for_a_ready_instance() {
    let mut api = service("api", 1);
    api.depends_on
        .insert("kv".into(), DependsCondition::Healthy);
    let desired = desired(app(vec![api, service("kv", 1)]));
    let mut observed = Observed {
        networks: ["shop".to_string()].into(),
        ..Default::default()
    };
    observed.instances.push(ObservedInstance {
        key: InstanceKey::new("shop", "kv", 1),
        revision: 0,
        state: InstanceState::Running {
            health: Health::Unknown,
        },
        restarts: 0,
        since: 0,
        cpu: None,
    });
    cpu_written(&mut observed);
    let first = plan(&desired, &observed, 0);
    assert!(first.actions.is_empty(), "{first:?}");
    assert_eq!(first.waiting[0].1, "waiting for kv to be healthy");
    observed.instances[0].state = InstanceState::Running {
        health: Health::Healthy,
    };
    let second = plan(&desired, &observed, 0);
    assert_eq!(
        second.actions,
        vec![Action::Start {
            key: InstanceKey::new("shop", "api", 1),
            restart: false
        }]
    );
}

#[test]
fn a_crash_restarts_after_an_exponential_backoff() {
    let desired = desired(app(vec![service("web", 1)]));
    let mut observed = Observed {
        networks: ["shop".to_string()].into(),
        ..Default::default()
    };
    observed.instances.push(ObservedInstance {
        key: InstanceKey::new("shop", "web", 1),
        revision: 0,
        state: InstanceState::Exited {
            exit: ExitInfo {
                code: Some(1),
                ..Default::default()
            },
        },
        restarts: 3,
        since: 10_000,
        cpu: None,
    });
    let early = plan(&desired, &observed, 10_500);
    assert!(early.actions.is_empty());
    assert_eq!(early.wake_at, Some(10_800), "100 ms doubled three times");
    let due = plan(&desired, &observed, 10_800);
    assert_eq!(
        due.actions,
        vec![Action::Start {
            key: InstanceKey::new("shop", "web", 1),
            restart: true
        }]
    );
}

/// A catalogue service `db` of `kind`, with one replica, as the real parser makes it.
fn catalogued(kind: &str) -> Vec<Service> {
    let password = match kind {
        "redis" => "REDIS_PASSWORD",
        _ => "POSTGRES_PASSWORD",
    };
    let source = format!(
        "app = \"shop\"\n[services.db]\ncatalog = \"{kind}\"\nreplicas = 1\nenv = {{ {password} = \"secret\" }}\n"
    );
    let origin = Origin {
        file: "paracloud.toml".into(),
        base_dir: "/".into(),
    };
    parse(&source, &origin, &AnyFs)
        .unwrap()
        .services
        .into_values()
        .collect()
}

/// A catalogue primary that failed its restarts in a row while a replica runs is started from
/// that replica's copy, at its restart's due time; before that many failures, or without a
/// running replica, it restarts on its own data.
#[test]
fn a_primary_that_cannot_come_back_fails_over_to_its_replicas() {
    let primary = |restarts: u32| ObservedInstance {
        key: InstanceKey::new("shop", "db", 1),
        revision: 0,
        state: InstanceState::Exited {
            exit: ExitInfo {
                code: Some(1),
                ..Default::default()
            },
        },
        restarts,
        since: 10_000,
        cpu: None,
    };
    let replica = |state: InstanceState| ObservedInstance {
        key: InstanceKey::new("shop", "db-read", 1),
        revision: 0,
        state,
        restarts: 0,
        since: 0,
        cpu: None,
    };
    // Not ready: with its primary gone, a replica no longer streams, but it can still be copied.
    let running = InstanceState::Running {
        health: Health::Unhealthy,
    };
    let observed = |restarts: u32, replica_state: InstanceState| Observed {
        networks: ["shop".to_string()].into(),
        instances: vec![primary(restarts), replica(replica_state)],
        applied_cpu: [(InstanceKey::new("shop", "db-read", 1), None)].into(),
        ..Default::default()
    };
    let start = Action::Start {
        key: InstanceKey::new("shop", "db", 1),
        restart: true,
    };
    let postgres = desired(app(catalogued("postgres")));
    let due = 10_000 + 800;
    let failover = plan(
        &postgres,
        &observed(FAILOVER_AFTER_RESTARTS, running.clone()),
        due,
    );
    assert_eq!(
        failover.actions,
        vec![Action::Failover {
            key: InstanceKey::new("shop", "db", 1),
            replicas: vec![InstanceKey::new("shop", "db-read", 1)],
        }]
    );
    let early = plan(
        &postgres,
        &observed(FAILOVER_AFTER_RESTARTS, running.clone()),
        due - 1,
    );
    assert!(early.actions.is_empty(), "{:?}", early.actions);
    let fewer = plan(
        &postgres,
        &observed(FAILOVER_AFTER_RESTARTS - 1, running.clone()),
        due,
    );
    assert_eq!(fewer.actions, vec![start.clone()]);
    let gone = InstanceState::Exited {
        exit: ExitInfo::default(),
    };
    let alone = plan(&postgres, &observed(FAILOVER_AFTER_RESTARTS, gone), due);
    assert!(alone.actions.contains(&start), "{:?}", alone.actions);
    // Redis's primary fails over as well.
    let redis = desired(app(catalogued("redis")));
    let failover = plan(&redis, &observed(FAILOVER_AFTER_RESTARTS, running), due);
    assert!(
        failover
            .actions
            .iter()
            .any(|a| matches!(a, Action::Failover { .. })),
        "{:?}",
        failover.actions
    );
}

#[test]
fn on_failure_leaves_a_clean_exit_alone_and_gives_up_after_max_retries() {
    let mut web = service("web", 1);
    web.restart.condition = RestartCondition::OnFailure;
    web.restart.max_retries = Some(2);
    let desired = desired(app(vec![web]));
    let exited = |code, restarts| Observed {
        networks: ["shop".to_string()].into(),
        instances: vec![ObservedInstance {
            key: InstanceKey::new("shop", "web", 1),
            revision: 0,
            state: InstanceState::Exited {
                exit: ExitInfo {
                    code: Some(code),
                    ..Default::default()
                },
            },
            restarts,
            since: 0,
            cpu: None,
        }],
        ..Default::default()
    };
    assert!(plan(&desired, &exited(0, 0), 60_000).actions.is_empty());
    assert_eq!(plan(&desired, &exited(1, 1), 60_000).actions.len(), 1);
    assert!(plan(&desired, &exited(1, 2), 60_000).actions.is_empty());
}

#[test]
fn a_new_revision_replaces_instances_one_at_a_time() {
    let mut app = app(vec![service("api", 3)]);
    let desired_before = desired(app.clone());
    let mut observed = Observed::default();
    converge(&desired_before, &mut observed);
    app.revisions.insert("api".into(), 1);
    let desired = desired(app);
    let plan = plan(&desired, &observed, 0);
    let migrations = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Migrate { .. }))
        .count();
    assert_eq!(migrations, 1);
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::Stop { .. })),
        "make before break: nothing is stopped first"
    );
    converge(&desired, &mut observed);
    assert!(observed
        .instances
        .iter()
        .all(|i| i.revision == 1 && i.state.is_running()));
    assert_eq!(running(&observed, "api"), 3);
}

#[test]
fn regression_an_out_of_date_instance_not_yet_ready_is_replaced_not_migrated() {
    // Migrating it was refused (only ready instances migrate) and asked again every turn.
    let mut app = app(vec![service("api", 1)]);
    let mut observed = Observed::default();
    converge(&desired(app.clone()), &mut observed);
    observed.instances[0].state = InstanceState::Running {
        health: Health::Unknown,
    };
    app.revisions.insert("api".into(), 1);
    let plan = plan(&desired(app), &observed, 0);
    assert_eq!(
        plan.actions,
        [Action::Stop {
            key: InstanceKey::new("shop", "api", 1),
            reason: StopReason::Replace
        }]
    );
}

#[test]
fn a_service_under_migration_is_left_alone_and_keeps_its_new_numbers() {
    let desired = desired(app(vec![service("api", 2)]));
    let mut observed = Observed::default();
    converge(&desired, &mut observed);
    // A migration of api.1 has started api.3 beside it.
    observed.instances.push(ObservedInstance {
        key: InstanceKey::new("shop", "api", 3),
        revision: 0,
        state: InstanceState::Starting,
        restarts: 0,
        since: 0,
        cpu: None,
    });
    observed.migrating.insert(("shop".into(), "api".into()));
    assert!(plan(&desired, &observed, 0).actions.is_empty());
    // Done: api.1 was replaced and has stopped; api.2 and api.3 stay, api.1 is removed.
    observed.migrating.clear();
    for instance in &mut observed.instances {
        match instance.key.index {
            1 => {
                instance.state = InstanceState::Exited {
                    exit: ExitInfo {
                        requested: Some(StopReason::Replace),
                        ..ExitInfo::default()
                    },
                }
            }
            3 => {
                instance.state = InstanceState::Running {
                    health: Health::None,
                }
            }
            _ => {}
        }
    }
    cpu_written(&mut observed);
    let plan = plan(&desired, &observed, 0);
    assert_eq!(
        plan.actions,
        [Action::Remove {
            key: InstanceKey::new("shop", "api", 1)
        }]
    );
    // Scaling out later fills the lowest free number.
    apply(&mut observed, &desired, &plan, 0);
    let mut more = app(vec![service("api", 2)]);
    more.replicas.insert("api".into(), 3);
    let more = self::desired(more);
    let plan = self::plan(&more, &observed, 0);
    assert_eq!(
        plan.actions,
        [Action::Start {
            key: InstanceKey::new("shop", "api", 1),
            restart: false
        }]
    );
}

#[test]
fn down_stops_everything_then_removes_the_network_and_forgets_the_app() {
    let desired_up = desired(app(vec![service("web", 2), service("kv", 1)]));
    let mut observed = Observed::default();
    converge(&desired_up, &mut observed);
    observed.removing.insert("shop".into(), true);
    let none = Desired::default();
    let rounds = converge(&none, &mut observed);
    assert!(rounds >= 3, "stop, remove, then network and forget");
    assert!(observed.instances.is_empty());
    assert!(observed.networks.is_empty());
    assert!(observed.removing.is_empty());
}

#[test]
fn regression_an_unhealthy_instance_with_restart_no_is_left_running() {
    let mut web = service("web", 1);
    web.restart.condition = RestartCondition::No;
    let desired = desired(app(vec![web]));
    let mut observed = Observed {
        networks: ["shop".to_string()].into(),
        instances: vec![ObservedInstance {
            key: InstanceKey::new("shop", "web", 1),
            revision: 0,
            state: InstanceState::Running {
                health: Health::Unhealthy,
            },
            restarts: 0,
            since: 0,
            cpu: None,
        }],
        ..Default::default()
    };
    cpu_written(&mut observed);
    assert!(plan(&desired, &observed, 0).actions.is_empty());
}

#[test]
fn an_unhealthy_instance_whose_check_does_not_restart_is_left_running() {
    let mut web = service("web", 1);
    web.health = Some(paracloud_manifest::HealthCheck {
        probe: paracloud_manifest::Probe::Tcp { port: 80 },
        interval: std::time::Duration::from_secs(1),
        timeout: std::time::Duration::from_secs(1),
        retries: 2,
        start_period: std::time::Duration::ZERO,
        restart: false,
    });
    let observed_with = |health: Health| {
        let mut observed = Observed {
            networks: ["shop".to_string()].into(),
            instances: vec![ObservedInstance {
                key: InstanceKey::new("shop", "web", 1),
                revision: 0,
                state: InstanceState::Running { health },
                restarts: 0,
                since: 0,
                cpu: None,
            }],
            ..Default::default()
        };
        cpu_written(&mut observed);
        observed
    };
    let desired = desired(app(vec![web.clone()]));
    assert!(plan(&desired, &observed_with(Health::Unhealthy), 0)
        .actions
        .is_empty());
    // The same check that restarts: the instance is stopped to be replaced.
    web.health.as_mut().unwrap().restart = true;
    let desired = self::desired(app(vec![web]));
    let actions = plan(&desired, &observed_with(Health::Unhealthy), 0).actions;
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Stop {
                reason: StopReason::Unhealthy,
                ..
            }
        )),
        "{actions:?}"
    );
}

#[test]
fn regression_after_a_failed_deploy_the_new_revision_starts_at_once_as_a_fresh_instance() {
    // It waited for the old revision's backoff (seconds after many crashes) and was started as
    // a restart of it, carrying its restart count; with `restart = "no"` it never started.
    for condition in [RestartCondition::Always, RestartCondition::No] {
        let mut web = service("web", 1);
        web.restart.condition = condition;
        let mut app = app(vec![web]);
        app.revisions.insert("web".into(), 2);
        let observed = Observed {
            networks: ["shop".to_string()].into(),
            instances: vec![ObservedInstance {
                key: InstanceKey::new("shop", "web", 1),
                revision: 1,
                state: InstanceState::Exited {
                    exit: ExitInfo {
                        code: Some(1),
                        ..Default::default()
                    },
                },
                restarts: 6,
                since: 10_000,
                cpu: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            plan(&desired(app), &observed, 10_001).actions,
            [Action::Start {
                key: InstanceKey::new("shop", "web", 1),
                restart: false
            }],
            "{condition:?}"
        );
    }
}

proptest! {
    /// Whatever the replica counts and the order of scaling, a perfect driver ends with exactly
    /// the wanted number of running instances, indices 1..=n, and the plan then stays empty.
    #[test]
    fn scaling_converges_to_the_wanted_counts(steps in prop::collection::vec((0u32..6, 0u32..6), 1..6)) {
        let mut observed = Observed::default();
        for (web, api) in steps {
            let mut app = app(vec![service("web", 1), service("api", 1)]);
            app.replicas.insert("web".into(), web);
            app.replicas.insert("api".into(), api);
            let desired = desired(app);
            converge(&desired, &mut observed);
            prop_assert_eq!(running(&observed, "web"), web as usize);
            prop_assert_eq!(running(&observed, "api"), api as usize);
            let max_index = observed.instances.iter().filter(|i| i.key.service == "web").map(|i| i.key.index).max().unwrap_or(0);
            prop_assert_eq!(max_index, web);
        }
    }

    #[test]
    fn restart_delay_is_monotonic_and_capped(restarts in 0u32..80) {
        let policy = service("x", 1).restart;
        let a = restart_delay(&policy, restarts);
        let b = restart_delay(&policy, restarts + 1);
        prop_assert!(a <= b);
        prop_assert!(b <= 30_000);
        prop_assert!(a >= 100);
    }
}

fn cpu_actions(plan: &Plan) -> Vec<(String, Option<f64>, bool)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::SetCpu { key, cpu, resize } => Some((key.name(), *cpu, *resize)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_planner_writes_each_running_instance_cpu_once_per_change() {
    let mut web = service("web", 2);
    web.resources.cpu = Some(0.5);
    let mut desired = desired(app(vec![web]));
    let mut observed = Observed::default();
    converge(&desired, &mut observed);
    // Every running instance got the manifest's limit written once.
    assert_eq!(
        observed.applied_cpu.values().collect::<Vec<_>>(),
        [&Some(0.5), &Some(0.5)]
    );
    assert!(cpu_actions(&plan(&desired, &observed, 1_000)).is_empty());

    // `scale --cpu` (or the autoscaler) sets the service's: each instance is resized once.
    desired
        .apps
        .get_mut("shop")
        .unwrap()
        .cpu
        .insert("web".into(), 1.5);
    let first = plan(&desired, &observed, 1_000);
    assert_eq!(
        cpu_actions(&first),
        [
            ("web.1".into(), Some(1.5), true),
            ("web.2".into(), Some(1.5), true)
        ]
    );
    apply(&mut observed, &desired, &first, 1_000);
    assert!(cpu_actions(&plan(&desired, &observed, 1_000)).is_empty());

    // An instance's own CPU (`migrate --cpus`) wins over its service's.
    observed.instances[0].cpu = Some(2.0);
    assert_eq!(
        cpu_actions(&plan(&desired, &observed, 1_000)),
        [("web.1".into(), Some(2.0), true)]
    );
}

#[test]
fn after_a_daemon_start_every_running_instance_gets_its_cpu_written_without_a_resize() {
    let mut web = service("web", 1);
    web.resources.cpu = None;
    let desired = desired(app(vec![web]));
    let mut observed = Observed::default();
    converge(&desired, &mut observed);
    observed.applied_cpu.clear();
    observed.instances.push(ObservedInstance {
        key: InstanceKey::new("shop", "web", 9),
        revision: 0,
        state: InstanceState::Exited {
            exit: ExitInfo::default(),
        },
        restarts: 0,
        since: 0,
        cpu: None,
    });
    assert_eq!(
        cpu_actions(&plan(&desired, &observed, 1_000)),
        [("web.1".into(), None, false)],
        "unlimited, written once; the exited instance has no cgroup to write"
    );
}

#[test]
fn regression_an_instance_stopped_as_unhealthy_is_restarted_in_place_not_doubled() {
    // It counted as gone while it stopped: a second instance was started beside it, then its
    // own restart made one too many and the second was stopped again, every cycle.
    let desired = desired(app(vec![service("web", 1)]));
    let mut observed = Observed {
        networks: ["shop".to_string()].into(),
        instances: vec![ObservedInstance {
            key: InstanceKey::new("shop", "web", 1),
            revision: 0,
            state: InstanceState::Stopping {
                reason: StopReason::Unhealthy,
            },
            restarts: 0,
            since: 0,
            cpu: None,
        }],
        ..Default::default()
    };
    assert!(plan(&desired, &observed, 0).actions.is_empty());
    observed.instances[0].state = InstanceState::Exited {
        exit: ExitInfo {
            requested: Some(StopReason::Unhealthy),
            ..ExitInfo::default()
        },
    };
    let restarted = plan(&desired, &observed, 1_000);
    assert_eq!(
        restarted.actions,
        [Action::Start {
            key: InstanceKey::new("shop", "web", 1),
            restart: true
        }]
    );
}
