//! `decide` on plain data: every caller kind, the same refusal for the same bad request.

use std::collections::BTreeMap;
use std::path::Path;

use paracloud_manifest::{parse, FileSystem, Origin};
use paracloud_reconcile::{InstanceKey, InstanceState};
use paracloud_state::{AppRecord, InstanceRecord, Snapshot};
use proptest::prelude::*;

use super::*;

struct AnyFs;

impl FileSystem for AnyFs {
    fn exists(&self, _: &Path) -> bool {
        true
    }
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
}

const SHOP: &str = r#"
app = "shop"

[autoscale]
policy = "model"
entry = "web"
slo = { p95 = "200ms" }

[services.web]
image = "host"
command = ["web"]
ports = [{ port = 80, protocol = "http", publish = 8080 }]
autoscale = { min = 1, max = 4 }

[services.api]
image = "host"
command = ["api"]
resources = { cpu = 1 }

[services.api.revisions.canary]
command = ["api", "--canary"]
weight = 10
"#;

const LIMITS: Limits = Limits {
    max_replicas: 200,
    wider_subnet: Some((22, 1007)),
    cores: 4.0,
    memory: 8 << 30,
};

fn manifest(source: &str) -> paracloud_manifest::Manifest {
    let origin = Origin {
        file: "paracloud.toml".into(),
        base_dir: "/".into(),
    };
    parse(source, &origin, &AnyFs).unwrap()
}

fn app(source: &str) -> AppRecord {
    AppRecord::deployed(manifest(source), source)
}

fn shop() -> Snapshot {
    let web1 = InstanceKey::new("shop", "web", 1);
    Snapshot {
        apps: vec![app(SHOP)],
        instances: vec![InstanceRecord {
            key: web1,
            revision: 1,
            state: InstanceState::Starting,
            restarts: 0,
            since: 0,
            started: 0,
            pid: None,
            start_time: None,
            slot: 0,
            weight: None,
            held: false,
            frozen: false,
            cpu: None,
            health_failure: None,
        }],
        networks: Default::default(),
        tokens: vec![],
        ..Snapshot::default()
    }
}

fn web1() -> InstanceKey {
    InstanceKey::new("shop", "web", 1)
}

/// Every kind of caller that may scale.
fn scalers() -> Vec<Caller> {
    vec![
        Caller::Local { uid: Some(0) },
        Caller::Token {
            name: "ci".into(),
            role: Role::Operator,
        },
        Caller::Token {
            name: "ops".into(),
            role: Role::Admin,
        },
        Caller::Instance(web1()),
        Caller::Autoscaler {
            policy: "model".into(),
        },
        Caller::Follower,
    ]
}

fn scale(service: &str, replicas: u32) -> Command {
    Command::Scale {
        app: "shop".into(),
        service: service.into(),
        replicas: Some(replicas),
        cpu: None,
        reason: None,
    }
}

fn refusal(caller: &Caller, command: &Command) -> Refusal {
    decide(caller, command, &shop(), &LIMITS).unwrap_err()
}

fn events(decision: &Decision) -> Vec<&str> {
    decision
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Event { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn scaling_an_unknown_service_is_refused_alike_whoever_asks() {
    for caller in scalers() {
        let refused = refusal(&caller, &scale("wbe", 2));
        assert_eq!(refused.kind, RefusalKind::NotFound, "{caller:?}");
        assert_eq!(
            refused.message,
            "application shop has no service named wbe (it has: api, api@canary, web)",
            "{caller:?}"
        );
    }
}

#[test]
fn scaling_an_unknown_application_is_refused_alike_whoever_asks() {
    for caller in scalers() {
        let command = Command::Scale {
            app: "shop".into(),
            service: "web".into(),
            replicas: Some(1),
            cpu: None,
            reason: None,
        };
        let empty = Snapshot::default();
        let refused = decide(&caller, &command, &empty, &LIMITS).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::NotFound, "{caller:?}");
        assert_eq!(refused.message, "no application named shop (none runs)");
    }
}

#[test]
fn up_refuses_more_replicas_than_the_application_subnet_holds() {
    let local = Caller::Local { uid: Some(0) };
    let source =
        "app = \"big\"\n[services.web]\nimage = \"host\"\ncommand = [\"web\"]\nreplicas = 201\n";
    let command = Command::Up {
        manifest: manifest(source),
        source: String::new(),
        origin: "paracloud.toml".into(),
    };
    let refused = refusal(&local, &command);
    assert_eq!(refused.kind, RefusalKind::Invalid);
    assert_eq!(
        refused.message,
        "paracloud.toml: services.web.replicas: replicas 201 is more than the 200 instances an application's subnet holds on this daemon: a daemon started with --app-prefix 22, while no application runs, holds 1007"
    );
    let wide = Limits {
        max_replicas: 1007,
        wider_subnet: None,
        ..LIMITS
    };
    let refused = decide(&local, &scale("web", 1008), &shop(), &wide).unwrap_err();
    assert_eq!(
        refused.message,
        "replicas 1008 is more than the 1007 instances an application's subnet holds on this daemon"
    );
}

#[test]
fn scaling_past_the_machine_limit_is_refused_alike_whoever_asks() {
    for caller in scalers() {
        let refused = refusal(&caller, &scale("web", 201));
        assert_eq!(refused.kind, RefusalKind::Invalid, "{caller:?}");
        assert_eq!(
            refused.message,
            "replicas 201 is more than the 200 instances an application's subnet holds on this daemon: a daemon started with --app-prefix 22, while no application runs, holds 1007"
        );
    }
}

#[test]
fn cpu_out_of_bounds_is_refused_alike_whoever_may_set_it() {
    let callers = scalers()
        .into_iter()
        .filter(|c| !matches!(c, Caller::Instance(_)));
    for caller in callers {
        for (cpu, says) in [
            (1e300, "more than the 4 cores"),
            (f64::NAN, "too small"),
            (0.001, "too small"),
        ] {
            let command = Command::Scale {
                app: "shop".into(),
                service: "api".into(),
                replicas: None,
                cpu: Some(cpu),
                reason: None,
            };
            let refused = refusal(&caller, &command);
            assert_eq!(refused.kind, RefusalKind::Invalid, "{caller:?} {cpu}");
            assert!(refused.message.contains(says), "{}", refused.message);
        }
    }
}

#[test]
fn traffic_on_a_revision_is_refused_with_where_to_set_it() {
    let callers = [
        Caller::Local { uid: Some(0) },
        Caller::Token {
            name: "ops".into(),
            role: Role::Admin,
        },
    ];
    for caller in callers {
        let command = Command::SetTraffic {
            app: "shop".into(),
            service: "api@canary".into(),
            weights: BTreeMap::from([("canary".into(), 20)]),
        };
        let refused = refusal(&caller, &command);
        assert_eq!(refused.kind, RefusalKind::Invalid);
        assert_eq!(
            refused.message,
            "api@canary is revision canary of api: set its share on api, as in `paracloud traffic api canary=10`"
        );
    }
}

#[test]
fn traffic_shares_are_written_with_the_whole_split_in_the_event() {
    let command = Command::SetTraffic {
        app: "shop".into(),
        service: "api".into(),
        weights: BTreeMap::from([("canary".into(), 25)]),
    };
    let decision = decide(&Caller::Local { uid: Some(0) }, &command, &shop(), &LIMITS).unwrap();
    assert_eq!(
        decision.changes[0],
        Change::TrafficWeight {
            app: "shop".into(),
            service: "api@canary".into(),
            weight: Some(25)
        }
    );
    assert_eq!(events(&decision), ["traffic: api 75%, api@canary 25%"]);
    let too_much = Command::SetTraffic {
        app: "shop".into(),
        service: "api".into(),
        weights: BTreeMap::from([("canary".into(), 101)]),
    };
    let refused = refusal(&Caller::Local { uid: None }, &too_much);
    assert_eq!(
        refused.message,
        "canary=101: a share is a percent, from 0 to 100"
    );
    let unknown = Command::SetTraffic {
        app: "shop".into(),
        service: "web".into(),
        weights: BTreeMap::from([("beta".into(), 5)]),
    };
    let refused = refusal(&Caller::Local { uid: None }, &unknown);
    assert_eq!(refused.kind, RefusalKind::NotFound);
    assert!(
        refused.message.contains("it has none"),
        "{}",
        refused.message
    );
}

#[test]
fn an_instance_scales_only_within_the_manifest_bounds() {
    let me = Caller::Instance(web1());
    let refused = refusal(&me, &scale("web", 5));
    assert_eq!(refused.kind, RefusalKind::Conflict);
    assert!(
        refused.message.contains("outside its bounds 1..=4"),
        "{}",
        refused.message
    );
    // Services the manifest leaves out of [autoscale] get its default bounds.
    let refused = refusal(&me, &scale("api", 11));
    assert!(
        refused.message.contains("outside its bounds 1..=10"),
        "{}",
        refused.message
    );
    let mut unbounded = shop();
    unbounded.apps[0].manifest.autoscale = None;
    let refused = decide(&me, &scale("web", 2), &unbounded, &LIMITS).unwrap_err();
    assert_eq!(refused.kind, RefusalKind::Conflict);
    assert!(
        refused.message.contains("has no scaling bounds"),
        "{}",
        refused.message
    );
    let decision = decide(&me, &scale("web", 3), &shop(), &LIMITS).unwrap();
    assert_eq!(decision.outcome, Outcome::Replicas { min: 1, max: 4 });
    assert_eq!(
        events(&decision),
        ["scaled to 3 (asked by web.1 through PaCI)"]
    );
}

#[test]
fn others_scale_past_the_manifest_bounds_as_by_hand() {
    for caller in scalers()
        .into_iter()
        .filter(|c| !matches!(c, Caller::Instance(_)))
    {
        let decision = decide(&caller, &scale("web", 9), &shop(), &LIMITS).unwrap();
        assert_eq!(
            decision.changes[0],
            Change::Replicas {
                app: "shop".into(),
                service: "web".into(),
                replicas: 9
            }
        );
        assert!(decision.changes_desired_state());
    }
}

#[test]
fn an_instance_may_not_act_for_another_or_beyond_its_application() {
    let me = Caller::Instance(web1());
    let other = Command::SetWeight {
        instance: InstanceKey::new("shop", "web", 2),
        weight: Some(0),
    };
    assert_eq!(refusal(&me, &other).kind, RefusalKind::Forbidden);
    let elsewhere = Command::Scale {
        app: "bank".into(),
        service: "web".into(),
        replicas: Some(1),
        cpu: None,
        reason: None,
    };
    assert_eq!(refusal(&me, &elsewhere).kind, RefusalKind::Forbidden);
    for command in [
        Command::Down {
            app: "shop".into(),
            volumes: true,
        },
        Command::Restart {
            app: "shop".into(),
            service: "web".into(),
        },
        Command::Scale {
            app: "shop".into(),
            service: "web".into(),
            replicas: None,
            cpu: Some(2.0),
            reason: None,
        },
    ] {
        let refused = refusal(&me, &command);
        assert_eq!(refused.kind, RefusalKind::Forbidden, "{command:?}");
        assert!(
            refused.message.starts_with("web.1 may not"),
            "{}",
            refused.message
        );
    }
}

#[test]
fn an_instance_sets_its_own_weight_once() {
    let me = Caller::Instance(web1());
    let set = |weight| Command::SetWeight {
        instance: web1(),
        weight,
    };
    let decision = decide(&me, &set(Some(20)), &shop(), &LIMITS).unwrap();
    assert!(decision.changes_routes());
    assert!(!decision.changes_desired_state());
    assert_eq!(events(&decision), ["weight 20% (set through PaCI)"]);
    // The full share is stored as none: asking for it again changes nothing.
    let decision = decide(&me, &set(Some(100)), &shop(), &LIMITS).unwrap();
    assert!(decision.changes.is_empty());
    assert_eq!(refusal(&me, &set(Some(101))).kind, RefusalKind::Invalid);
    let mut gone = shop();
    gone.instances.clear();
    let refused = decide(&me, &set(Some(5)), &gone, &LIMITS).unwrap_err();
    assert_eq!(refused.kind, RefusalKind::Gone);
}

#[test]
fn tokens_are_created_and_revoked_by_admins_alone_and_recorded() {
    let hash = "a".repeat(64);
    let create = |name: &str| Command::CreateToken {
        name: name.into(),
        role: Role::Viewer,
        hash: hash.clone(),
        expires: None,
    };
    let admin = Caller::Token {
        name: "ops".into(),
        role: Role::Admin,
    };
    let decision = decide(&admin, &create("ci"), &shop(), &LIMITS).unwrap();
    assert!(
        matches!(&decision.changes[0], Change::PutToken(t) if t.name == "ci" && t.role == Role::Viewer)
    );
    assert_eq!(
        events(&decision),
        ["token ci created with the viewer role (by token ops)"]
    );
    for role in [Role::Viewer, Role::Operator] {
        let caller = Caller::Token {
            name: "laptop".into(),
            role,
        };
        let refused = decide(&caller, &create("ci"), &shop(), &LIMITS).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Forbidden);
        assert!(
            refused.message.contains("may not create a token"),
            "{}",
            refused.message
        );
    }
    let bad = decide(&admin, &create("-x y"), &shop(), &LIMITS).unwrap_err();
    assert_eq!(bad.kind, RefusalKind::Invalid);
    assert!(
        bad.message
            .starts_with("token name \"-x y\": use 1 to 64 letters"),
        "{}",
        bad.message
    );

    let mut snapshot = shop();
    snapshot.tokens.push(paracloud_state::TokenRecord {
        name: "ci".into(),
        role: Role::Viewer,
        hash: hash.clone(),
        created: 1,
        expires: None,
        revoked: None,
    });
    let taken = decide(&admin, &create("ci"), &snapshot, &LIMITS).unwrap_err();
    assert_eq!(taken.kind, RefusalKind::Conflict);
    let revoke = |name: &str| Command::RevokeToken { name: name.into() };
    let local = Caller::Local { uid: Some(0) };
    assert!(matches!(
        decide(&local, &revoke("ci"), &snapshot, &LIMITS)
            .unwrap()
            .changes[0],
        Change::RevokeToken { .. }
    ));
    let missing = decide(&local, &revoke("nope"), &snapshot, &LIMITS).unwrap_err();
    assert_eq!(missing.kind, RefusalKind::NotFound);
    assert_eq!(
        missing.message,
        "no token named nope (there are: ci); see paracloud token ls"
    );
    // A revoked token's name can be given to a new one; revoking it twice is refused.
    snapshot.tokens[0].revoked = Some(2);
    assert!(decide(&admin, &create("ci"), &snapshot, &LIMITS).is_ok());
    assert_eq!(
        decide(&local, &revoke("ci"), &snapshot, &LIMITS)
            .unwrap_err()
            .kind,
        RefusalKind::Conflict
    );
}

#[test]
fn routes_need_the_role_they_name() {
    use crate::authorize_route;
    let token = |role| Caller::Token {
        name: "laptop".into(),
        role,
    };
    assert!(authorize_route(&token(Role::Viewer), Role::Viewer, "read").is_ok());
    assert!(authorize_route(&token(Role::Admin), Role::Operator, "x").is_ok());
    let refused = authorize_route(&token(Role::Operator), Role::Admin, "build images").unwrap_err();
    assert_eq!(refused.kind, RefusalKind::Forbidden);
    assert_eq!(
        refused.message,
        "token laptop has the operator role, which may not build images: ask an admin for a token with the admin role"
    );
    assert!(authorize_route(&Caller::Local { uid: Some(0) }, Role::Admin, "x").is_ok());
    assert!(authorize_route(&Caller::Follower, Role::Viewer, "read").is_err());
}

#[test]
fn roles_of_tokens_allow_what_they_say() {
    let token = |role| Caller::Token {
        name: "laptop".into(),
        role,
    };
    let down = Command::Down {
        app: "shop".into(),
        volumes: false,
    };
    let viewer = refusal(&token(Role::Viewer), &scale("web", 2));
    assert_eq!(viewer.kind, RefusalKind::Forbidden);
    assert_eq!(
        viewer.message,
        "token laptop has the viewer role, which may not scale: ask an admin for a token with the operator role"
    );
    let operator = refusal(&token(Role::Operator), &down);
    assert_eq!(
        operator.message,
        "token laptop has the operator role, which may not down: ask an admin for a token with the admin role"
    );
    assert!(decide(&token(Role::Admin), &down, &shop(), &LIMITS).is_ok());
    let read = Command::RunCapsule {
        app: "shop".into(),
        capsule: "checksum".into(),
        writes: false,
    };
    let write = Command::RunCapsule {
        app: "shop".into(),
        capsule: "archive".into(),
        writes: true,
    };
    assert!(decide(&token(Role::Operator), &read, &shop(), &LIMITS).is_ok());
    assert_eq!(
        refusal(&token(Role::Operator), &write).kind,
        RefusalKind::Forbidden
    );
    // A token's name is in the event log of what it changed.
    let decision = decide(&token(Role::Operator), &scale("web", 2), &shop(), &LIMITS).unwrap();
    assert_eq!(events(&decision), ["scaled to 2 (by token laptop)"]);
}

#[test]
fn the_autoscaler_records_both_moves_and_its_reason_in_one_event() {
    let command = Command::Scale {
        app: "shop".into(),
        service: "api".into(),
        replicas: Some(3),
        cpu: Some(1.5),
        reason: Some("p95 over the SLO".into()),
    };
    let caller = Caller::Autoscaler {
        policy: "model".into(),
    };
    let decision = decide(&caller, &command, &shop(), &LIMITS).unwrap();
    assert_eq!(
        events(&decision),
        ["autoscaler model: instances 1 -> 3, cpu per instance 1 -> 1.5: p95 over the SLO"]
    );
    assert_eq!(decision.changes.len(), 3);
}

#[test]
fn a_taken_down_application_is_not_scaled_or_restarted() {
    let mut snapshot = shop();
    snapshot.apps[0].removing = Some(false);
    for command in [
        scale("web", 2),
        Command::Restart {
            app: "shop".into(),
            service: "web".into(),
        },
    ] {
        let refused = decide(&Caller::Follower, &command, &snapshot, &LIMITS)
            .or_else(|_| decide(&Caller::Local { uid: None }, &command, &snapshot, &LIMITS))
            .unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Conflict);
        assert!(refused.message.contains("being taken down"));
    }
}

#[test]
fn up_names_the_services_whose_instances_change_and_refuses_a_published_port_in_use() {
    let local = Caller::Local { uid: Some(0) };
    let changed = manifest(&SHOP.replace("command = [\"web\"]", "command = [\"web\", \"-v\"]"));
    let command = Command::Up {
        manifest: changed,
        source: String::new(),
        origin: "paracloud.toml".into(),
    };
    let decision = decide(&local, &command, &shop(), &LIMITS).unwrap();
    assert_eq!(
        decision.outcome,
        Outcome::Deployed {
            changed: vec!["web".into()]
        }
    );
    assert_eq!(events(&decision), ["deployed; changed: web"]);
    let clash = manifest(&SHOP.replace("app = \"shop\"", "app = \"bank\""));
    let command = Command::Up {
        manifest: clash,
        source: String::new(),
        origin: "bank.toml".into(),
    };
    let refused = refusal(&local, &command);
    assert_eq!(refused.kind, RefusalKind::Conflict);
    assert!(
        refused
            .message
            .starts_with("bank.toml: port clash: 127.0.0.1:8080 is already published by service web of application shop"),
        "{}",
        refused.message
    );
}

#[test]
fn migrate_checks_the_request_before_the_state() {
    let local = Caller::Local { uid: Some(0) };
    let migrate = |instance: &str, via: Option<&str>, revision: Option<&str>| Command::Migrate {
        app: "shop".into(),
        instance: instance.into(),
        via: via.map(Into::into),
        cpus: None,
        revision: revision.map(Into::into),
    };
    assert_eq!(
        refusal(&local, &migrate("web", None, None)).kind,
        RefusalKind::Invalid
    );
    assert_eq!(
        refusal(&local, &migrate("web.1", Some("teleport"), None)).kind,
        RefusalKind::Invalid
    );
    assert_eq!(
        refusal(&local, &migrate("web.1", None, Some("7"))).kind,
        RefusalKind::Conflict
    );
    let decision = decide(
        &local,
        &migrate("web.1", Some("criu"), Some("latest")),
        &shop(),
        &LIMITS,
    )
    .unwrap();
    assert_eq!(
        decision.outcome,
        Outcome::Migrate {
            key: web1(),
            via: Some(paracloud_manifest::MigrateMethod::Criu),
            cpu: None
        }
    );
    assert!(decision.changes.is_empty());
}

/// A catalogue database's primary moves by switchover alone, and nothing else does.
#[test]
fn a_catalogue_primary_migrates_by_switchover_alone() {
    let local = Caller::Local { uid: Some(0) };
    let snapshot = Snapshot {
        apps: vec![app(
            "app = \"pg\"\n[services.db]\ncatalog = \"postgres\"\nreplicas = 1\nenv = { POSTGRES_PASSWORD = \"secret\" }\n",
        )],
        ..Snapshot::default()
    };
    let migrate = |instance: &str, via: Option<&str>| Command::Migrate {
        app: "pg".into(),
        instance: instance.into(),
        via: via.map(Into::into),
        cpus: None,
        revision: None,
    };
    for via in [None, Some("switchover")] {
        let decision = decide(&local, &migrate("db.1", via), &snapshot, &LIMITS).unwrap();
        assert_eq!(
            decision.outcome,
            Outcome::Migrate {
                key: InstanceKey::new("pg", "db", 1),
                via: Some(paracloud_manifest::MigrateMethod::Switchover),
                cpu: None
            }
        );
    }
    // MariaDB's primary moves by switchover as well.
    let mariadb = Snapshot {
        apps: vec![app(
            "app = \"pg\"\n[services.db]\ncatalog = \"mariadb\"\nenv = { MARIADB_ROOT_PASSWORD = \"secret\" }\n",
        )],
        ..Snapshot::default()
    };
    let decision = decide(&local, &migrate("db.1", None), &mariadb, &LIMITS).unwrap();
    assert!(matches!(
        decision.outcome,
        Outcome::Migrate {
            via: Some(paracloud_manifest::MigrateMethod::Switchover),
            ..
        }
    ));
    for (instance, via, said) in [
        ("db.1", "restart", "moves by switchover alone"),
        ("db.1", "paci", "moves by switchover alone"),
        ("db-read.1", "switchover", "db-read is not one"),
    ] {
        let refused =
            decide(&local, &migrate(instance, Some(via)), &snapshot, &LIMITS).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Invalid);
        assert!(refused.message.contains(said), "{}", refused.message);
    }
}

proptest! {
    /// Whatever is asked, a refusal changes nothing and a decision's writes name only what the
    /// snapshot holds.
    #[test]
    fn scale_decisions_stay_within_the_limits(replicas in 0u32..400, cpu in -1.0f64..8.0) {
        for caller in scalers() {
            let command = Command::Scale {
                app: "shop".into(),
                service: "web".into(),
                replicas: Some(replicas),
                cpu: (!matches!(caller, Caller::Instance(_))).then_some(cpu),
                reason: None,
            };
            if let Ok(decision) = decide(&caller, &command, &shop(), &LIMITS) {
                for change in &decision.changes {
                    match change {
                        Change::Replicas { replicas, .. } => prop_assert!(*replicas <= 200),
                        Change::Cpu { cpu: Some(cpu), .. } => prop_assert!((0.01..=4.0).contains(cpu)),
                        Change::Event { .. } => {}
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
            }
        }
    }
}

#[test]
fn up_refuses_more_cpu_or_memory_than_this_machine_has() {
    let local = Caller::Local { uid: Some(0) };
    for (resources, says) in [
        (
            "cpu = 6",
            "services.web.resources.cpu: 6 is more than the 4 cores of this machine",
        ),
        (
            "memory = \"16G\"",
            "services.web.resources.memory: 17179869184 bytes is more than the 8589934592 bytes",
        ),
    ] {
        let source = SHOP.replace(
            "autoscale = { min = 1, max = 4 }",
            &format!("autoscale = {{ min = 1, max = 4 }}\nresources = {{ {resources} }}"),
        );
        let command = Command::Up {
            manifest: manifest(&source),
            source: source.clone(),
            origin: "paracloud.toml".into(),
        };
        let refused = decide(&local, &command, &Snapshot::default(), &LIMITS).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Invalid);
        assert!(refused.message.contains(says), "{}", refused.message);
    }
}

/// A catalogue PostgreSQL, synchronous, with one read replica.
const CATALOGUE: &str = r#"
app = "shop"

[services.db]
catalog = "postgres"
replicas = 1
synchronous = true
env = { POSTGRES_PASSWORD = "secret" }
"#;

#[test]
fn a_catalogue_primary_stays_one_instance_and_its_replicas_within_their_bound() {
    let snapshot = Snapshot {
        apps: vec![app(CATALOGUE)],
        ..shop()
    };
    let scale_to = |service: &str, replicas: u32| Command::Scale {
        app: "shop".into(),
        service: service.into(),
        replicas: Some(replicas),
        cpu: None,
        reason: None,
    };
    let decided =
        |command: &Command| decide(&Caller::Local { uid: Some(0) }, command, &snapshot, &LIMITS);
    let refused = decided(&scale_to("db", 2)).unwrap_err();
    assert_eq!(refused.kind, RefusalKind::Invalid);
    assert!(
        refused
            .message
            .ends_with("scale its read replicas instead: paracloud scale db-read=1"),
        "{}",
        refused.message
    );
    assert!(
        decided(&scale_to("db", 1)).is_ok(),
        "one is the primary's number"
    );
    let refused = decided(&scale_to("db-read", 9)).unwrap_err();
    assert_eq!(refused.kind, RefusalKind::Invalid);
    assert!(
        refused.message.contains("at most 8, asked for 9"),
        "{}",
        refused.message
    );
    assert!(decided(&scale_to("db-read", 8)).is_ok());
    // Synchronous commits wait for a replica: the last one stays.
    let refused = decided(&scale_to("db-read", 0)).unwrap_err();
    assert_eq!(refused.kind, RefusalKind::Conflict);
    assert!(
        refused.message.starts_with("db commits synchronously"),
        "{}",
        refused.message
    );
}

const FARM: &str = r#"
app = "shop"
[services.web]
image = "web:1"
[services.render]
catalog = "taskfarm"
image = "tools:1"
max_workers = 4
"#;

#[test]
fn a_task_farm_takes_batches_for_a_goal_one_at_a_time_and_sets_its_own_workers() {
    use paracloud_state::{BatchGoal, BatchState};
    let snapshot = Snapshot {
        apps: vec![app(FARM)],
        next_batch: 7,
        ..shop()
    };
    let submit = |service: &str, tasks: &[&str], goal: BatchGoal| Command::SubmitTasks {
        app: "shop".into(),
        service: service.into(),
        tasks: tasks.iter().map(|t| (*t).to_owned()).collect(),
        goal,
        submitted: 1_000,
    };
    let deadline = BatchGoal::Deadline { at: 61_000 };
    let admin = Caller::Local { uid: Some(0) };
    let decision = decide(
        &admin,
        &submit("render", &["echo 1", "echo 2"], deadline),
        &snapshot,
        &LIMITS,
    )
    .unwrap();
    assert_eq!(decision.outcome, Outcome::Batch { id: 7 });
    let Change::SubmitBatch { batch, tasks } = &decision.changes[0] else {
        panic!("{:?}", decision.changes);
    };
    assert_eq!(
        (batch.id, batch.state, batch.counts.pending),
        (7, BatchState::Running, 2)
    );
    assert_eq!(tasks, &["echo 1", "echo 2"]);
    assert!(
        matches!(&decision.changes[1], Change::Event { message, .. } if message == "batch 7 submitted: 2 tasks, a deadline in 60s")
    );

    let refused = |command: &Command, snapshot: &Snapshot, caller: &Caller| {
        decide(caller, command, snapshot, &LIMITS).unwrap_err()
    };
    let not_farm = refused(&submit("web", &["true"], deadline), &snapshot, &admin);
    assert_eq!(not_farm.kind, RefusalKind::Invalid);
    assert_eq!(
        not_farm.message,
        "web is not a task farm (shop's task farms: render)"
    );
    assert!(refused(&submit("render", &[], deadline), &snapshot, &admin)
        .message
        .contains("no tasks"));
    assert_eq!(
        refused(
            &submit("render", &["true", " "], deadline),
            &snapshot,
            &admin
        )
        .message,
        "task 2 is empty"
    );
    assert!(refused(
        &submit("render", &["true"], BatchGoal::Deadline { at: 1_000 }),
        &snapshot,
        &admin
    )
    .message
    .contains("deadline has passed"));
    assert!(refused(
        &submit("render", &["true"], BatchGoal::Budget { instance_ms: 0 }),
        &snapshot,
        &admin
    )
    .message
    .contains("budget of 0"));

    // One batch at a time per farm.
    let mut busy = snapshot.clone();
    busy.batches.push(batch.clone());
    let second = refused(&submit("render", &["true"], deadline), &busy, &admin);
    assert_eq!(second.kind, RefusalKind::Conflict);
    assert!(
        second
            .message
            .starts_with("batch 7 is still running on render"),
        "{}",
        second.message
    );

    // Tasks run commands in the application: an admin's; an operator may cancel.
    let operator = Caller::Token {
        name: "ops".into(),
        role: Role::Operator,
    };
    assert_eq!(
        refused(&submit("render", &["true"], deadline), &snapshot, &operator).kind,
        RefusalKind::Forbidden
    );
    let cancel = Command::CancelBatch {
        app: "shop".into(),
        batch: 7,
    };
    assert!(matches!(
        decide(&operator, &cancel, &busy, &LIMITS).unwrap().changes[0],
        Change::CancelBatch { id: 7 }
    ));
    assert_eq!(
        refused(&cancel, &snapshot, &operator).kind,
        RefusalKind::NotFound
    );

    // The farm sets its workers; nobody else does.
    let scale = Command::Scale {
        app: "shop".into(),
        service: "render".into(),
        replicas: Some(3),
        cpu: None,
        reason: None,
    };
    let by_hand = refused(&scale, &snapshot, &admin);
    assert!(
        by_hand.message.contains("sets its own workers (at most 4)"),
        "{}",
        by_hand.message
    );
    assert!(decide(&Caller::TaskFarm { batch: 7 }, &scale, &snapshot, &LIMITS).is_ok());
    assert_eq!(
        refused(
            &submit("render", &["true"], deadline),
            &snapshot,
            &Caller::TaskFarm { batch: 7 }
        )
        .kind,
        RefusalKind::Forbidden
    );
}
