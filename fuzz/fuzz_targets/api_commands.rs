//! Fuzz target: whatever a client sends as an API request body, decoding it, turning it into a
//! command and deciding it against a deployed shop never panics, no accepted decision sets
//! replicas or CPU outside the limits or names a token out of its rules, and a viewer's token is
//! refused every one of these commands.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use paracloud_api::{
    CpuRequest, MigrateRequest, ScaleRequest, TasksRequest, TokenRequest, TrafficRequest,
    UpRequest,
};
use paracloud_command::{decide, Caller, Command, Limits, Role};
use paracloud_manifest::{parse, FileSystem, Origin};
use paracloud_state::{AppRecord, Change, Snapshot};

struct AnyFs;

impl FileSystem for AnyFs {
    fn exists(&self, _: &Path) -> bool {
        true
    }
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
}

const SHOP: &str = include_str!("../seeds/full.toml");

/// An application with a task farm, for batches of tasks.
const FARM: &str = "app = \"farm\"\n[services.render]\ncatalog = \"taskfarm\"\nimage = \"tools:1\"\n";

/// When the fuzzed batches are submitted, in milliseconds since the epoch.
const NOW: u64 = 1_800_000_000_000;

const LIMITS: Limits = Limits {
    // As many instances as an application's subnet holds on the daemon's default /24.
    max_replicas: 239,
    wider_subnet: Some((22, 1007)),
    cores: 4.0,
    memory: 8 << 30,
};

fn origin() -> Origin {
    Origin {
        file: "paracloud.toml".into(),
        base_dir: "/".into(),
    }
}

fn deployed() -> Snapshot {
    let manifest = parse(SHOP, &origin(), &AnyFs).expect("the seed manifest is valid");
    let farm = parse(FARM, &origin(), &AnyFs).expect("the farm manifest is valid");
    Snapshot {
        apps: vec![
            AppRecord::deployed(manifest, SHOP),
            AppRecord::deployed(farm, FARM),
        ],
        next_batch: 1,
        ..Snapshot::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    static DEPLOYED: std::sync::OnceLock<Snapshot> = std::sync::OnceLock::new();
    let snapshot = DEPLOYED.get_or_init(deployed);
    let app = snapshot.apps[0].name.clone();
    let service = snapshot.apps[0]
        .manifest
        .services
        .keys()
        .nth(kind as usize % 2)
        .cloned()
        .unwrap_or_default();
    let command = match kind % 7 {
        0 => {
            let Ok(up) = serde_json::from_slice::<UpRequest>(body) else {
                return;
            };
            let Ok(manifest) = parse(&up.source, &origin(), &AnyFs) else {
                return;
            };
            Command::Up {
                manifest,
                source: up.source,
                origin: up.origin,
            }
        }
        1 => {
            let Ok(scale) = serde_json::from_slice::<ScaleRequest>(body) else {
                return;
            };
            Command::Scale {
                app,
                service,
                replicas: Some(scale.replicas),
                cpu: None,
                reason: None,
            }
        }
        2 => {
            let Ok(cpu) = serde_json::from_slice::<CpuRequest>(body) else {
                return;
            };
            Command::Scale {
                app,
                service,
                replicas: None,
                cpu: Some(cpu.cpu),
                reason: None,
            }
        }
        3 => {
            let Ok(traffic) = serde_json::from_slice::<TrafficRequest>(body) else {
                return;
            };
            Command::SetTraffic {
                app,
                service,
                weights: traffic.weights,
            }
        }
        5 => {
            let Ok(token) = serde_json::from_slice::<TokenRequest>(body) else {
                return;
            };
            Command::CreateToken {
                name: token.name,
                role: token.role,
                hash: "0".repeat(64),
                expires: token.expires_in_secs,
            }
        }
        6 => {
            let Ok(tasks) = serde_json::from_slice::<TasksRequest>(body) else {
                return;
            };
            let goal = match (tasks.deadline_s, tasks.budget_instance_s) {
                (Some(s), None) => paracloud_state::BatchGoal::Deadline {
                    at: NOW.saturating_add(s.saturating_mul(1000)),
                },
                (None, Some(s)) => paracloud_state::BatchGoal::Budget {
                    instance_ms: s.saturating_mul(1000),
                },
                _ => return,
            };
            Command::SubmitTasks {
                app: "farm".into(),
                service: if kind & 0x80 == 0 { "render".into() } else { service },
                tasks: tasks.tasks,
                goal,
                submitted: NOW,
            }
        }
        _ => {
            let Ok(migrate) = serde_json::from_slice::<MigrateRequest>(body) else {
                return;
            };
            Command::Migrate {
                app,
                instance: format!("{service}.1"),
                via: migrate.via,
                cpus: migrate.cpus,
                revision: migrate.revision,
            }
        }
    };
    // Every command here changes something: a viewer's token is refused them all.
    let viewer = Caller::Token {
        name: "fuzz".into(),
        role: Role::Viewer,
    };
    assert!(
        decide(&viewer, &command, snapshot, &LIMITS).is_err(),
        "a viewer was allowed {command:?}"
    );
    for caller in [
        Caller::Local { uid: Some(0) },
        Caller::Token {
            name: "fuzz".into(),
            role: Role::Operator,
        },
    ] {
        let Ok(decision) = decide(&caller, &command, snapshot, &LIMITS) else {
            continue;
        };
        for change in &decision.changes {
            match change {
                Change::Replicas { replicas, .. } => {
                    assert!(*replicas <= LIMITS.max_replicas, "{change:?}")
                }
                Change::Cpu { cpu: Some(cpu), .. } => {
                    assert!(
                        cpu.is_finite() && *cpu > 0.0 && *cpu <= LIMITS.cores,
                        "{change:?}"
                    )
                }
                Change::PutToken(token) => assert!(
                    !token.name.is_empty() && token.name.len() <= 64,
                    "{change:?}"
                ),
                Change::SubmitBatch { batch, tasks } => {
                    assert!(
                        matches!(caller, Caller::Local { .. }),
                        "only an admin submits tasks: {caller:?}"
                    );
                    assert!(
                        !tasks.is_empty() && tasks.len() <= paracloud_command::MAX_TASKS,
                        "{}",
                        tasks.len()
                    );
                    assert!(tasks.iter().all(|t| !t.trim().is_empty() && !t.contains('\n')));
                    assert_eq!(batch.counts.pending as usize, tasks.len());
                }
                _ => {}
            }
        }
    }
});
