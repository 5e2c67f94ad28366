//! `decide`: a command checked against a snapshot of the state, and the changes it makes.

use std::collections::{BTreeMap, BTreeSet};

use paracloud_manifest::{MigrateMethod, MIN_CPU};
use paracloud_reconcile::InstanceKey;
use paracloud_state::{AppRecord, Change, Role, Snapshot, TokenRecord};

use crate::caller::authorize;
use crate::{Caller, Command, Decision, Limits, Outcome, Refusal, RefusalKind};

/// Decides `command` asked by `caller` against `snapshot`: who may ask for it, whether it
/// holds, and what it changes. The same bad request gets the same refusal whoever asks.
pub fn decide(
    caller: &Caller,
    command: &Command,
    snapshot: &Snapshot,
    limits: &Limits,
) -> Result<Decision, Refusal> {
    authorize(caller, command)?;
    let mut decision = decide_authorized(caller, command, snapshot, limits)?;
    // What a remote client did is recorded with its token's name.
    if let Caller::Token { name, .. } = caller {
        for change in &mut decision.changes {
            if let Change::Event { message, .. } = change {
                if !message.contains("(by token ") {
                    message.push_str(&format!(" (by token {name})"));
                }
            }
        }
    }
    Ok(decision)
}

fn decide_authorized(
    caller: &Caller,
    command: &Command,
    snapshot: &Snapshot,
    limits: &Limits,
) -> Result<Decision, Refusal> {
    match command {
        Command::Up {
            manifest,
            source,
            origin,
        } => up(manifest, source, origin, snapshot, limits),
        Command::Down { app, volumes } => {
            find_app(snapshot, app)?;
            Ok(Decision::changes(vec![
                Change::MarkRemoving {
                    app: app.clone(),
                    volumes: *volumes,
                },
                event(app, app, "down requested"),
            ]))
        }
        Command::Scale {
            app,
            service,
            replicas,
            cpu,
            reason,
        } => scale(
            caller,
            snapshot,
            limits,
            app,
            service,
            *replicas,
            *cpu,
            reason.as_deref(),
        ),
        Command::SetTraffic {
            app,
            service,
            weights,
        } => traffic(snapshot, app, service, weights),
        Command::Restart { app, service } => {
            let record = live_app(snapshot, app)?;
            find_service(record, service)?;
            Ok(Decision::changes(vec![
                Change::BumpRevision {
                    app: app.clone(),
                    service: service.clone(),
                },
                event(app, service, "restart requested"),
            ]))
        }
        Command::SetWeight { instance, weight } => set_weight(snapshot, instance, *weight),
        Command::Migrate {
            app,
            instance,
            via,
            cpus,
            revision,
        } => migrate(
            snapshot,
            limits,
            app,
            instance,
            via.as_deref(),
            *cpus,
            revision.as_deref(),
        ),
        Command::RunCapsule { .. } => Ok(Decision::changes(Vec::new())),
        Command::SubmitTasks {
            app,
            service,
            tasks,
            goal,
            submitted,
        } => submit_tasks(snapshot, app, service, tasks, *goal, *submitted),
        Command::CancelBatch { app, batch } => cancel_batch(snapshot, app, *batch),
        Command::CreateToken {
            name,
            role,
            hash,
            expires,
        } => create_token(snapshot, name, *role, hash, *expires),
        Command::RevokeToken { name } => {
            let token = snapshot
                .tokens
                .iter()
                .find(|t| t.name == *name)
                .ok_or_else(|| no_token(snapshot, name))?;
            if token.revoked.is_some() {
                return Err(Refusal::new(
                    RefusalKind::Conflict,
                    format!("token {name} is already revoked"),
                ));
            }
            Ok(Decision::changes(vec![
                Change::RevokeToken { name: name.clone() },
                event("", name, format!("token {name} revoked")),
            ]))
        }
    }
}

fn event(app: &str, subject: &str, message: impl Into<String>) -> Change {
    Change::Event {
        app: app.to_owned(),
        subject: subject.to_owned(),
        message: message.into(),
    }
}

/// The application named `app`, or a refusal that names the running ones.
pub fn find_app<'a>(snapshot: &'a Snapshot, app: &str) -> Result<&'a AppRecord, Refusal> {
    snapshot.apps.iter().find(|a| a.name == app).ok_or_else(|| {
        let known: Vec<&str> = snapshot.apps.iter().map(|a| a.name.as_str()).collect();
        let hint = if known.is_empty() {
            "none runs".to_string()
        } else {
            format!("running: {}", known.join(", "))
        };
        Refusal::new(
            RefusalKind::NotFound,
            format!("no application named {app} ({hint})"),
        )
    })
}

/// An application that is not being taken down.
fn live_app<'a>(snapshot: &'a Snapshot, app: &str) -> Result<&'a AppRecord, Refusal> {
    let record = find_app(snapshot, app)?;
    if record.removing.is_some() {
        return Err(Refusal::new(
            RefusalKind::Conflict,
            format!("application {app} is being taken down: `paracloud up` it again first"),
        ));
    }
    Ok(record)
}

/// The spec of a service of `app`, or a refusal that names its services.
pub fn find_service<'a>(
    app: &'a AppRecord,
    service: &str,
) -> Result<&'a paracloud_manifest::Service, Refusal> {
    match (
        app.manifest.services.get(service),
        app.services.get(service),
    ) {
        (Some(spec), Some(_)) => Ok(spec),
        _ => {
            let known: Vec<&str> = app.manifest.services.keys().map(String::as_str).collect();
            Err(Refusal::new(
                RefusalKind::NotFound,
                format!(
                    "application {} has no service named {service} (it has: {})",
                    app.name,
                    known.join(", ")
                ),
            ))
        }
    }
}

fn up(
    manifest: &paracloud_manifest::Manifest,
    source: &str,
    origin: &str,
    snapshot: &Snapshot,
    limits: &Limits,
) -> Result<Decision, Refusal> {
    // What the manifest's own checks cannot know: this machine's size, this daemon's subnets.
    for (name, service) in &manifest.services {
        if service.replicas > limits.max_replicas {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!(
                    "{origin}: services.{name}.replicas: {}",
                    too_many(service.replicas, limits)
                ),
            ));
        }
        let field = format!("services.{name}.resources");
        if let Some(cpu) = service.resources.cpu.filter(|cpu| *cpu > limits.cores) {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!(
                    "{origin}: {field}.cpu: {cpu} is more than the {} cores of this machine: ask for {} at most",
                    limits.cores, limits.cores
                ),
            ));
        }
        if let Some(memory) = service.resources.memory.filter(|m| *m > limits.memory) {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!(
                    "{origin}: {field}.memory: {memory} bytes is more than the {} bytes of memory of this machine: ask for less",
                    limits.memory
                ),
            ));
        }
    }
    // A host address with its family: UDP and TCP ones are bound side by side.
    let published = |p: &paracloud_manifest::Port| p.publish.map(|a| (a, p.protocol.is_udp()));
    let ours: BTreeSet<_> = manifest
        .services
        .values()
        .flat_map(|s| s.ports.iter().filter_map(published))
        .collect();
    let fixed: BTreeSet<_> = manifest
        .services
        .keys()
        .filter_map(|name| manifest.fixed_address(name))
        .collect();
    for other in snapshot
        .apps
        .iter()
        .filter(|a| a.name != manifest.app && a.removing.is_none())
    {
        for name in other.manifest.services.keys() {
            if let Some(address) = other
                .manifest
                .fixed_address(name)
                .filter(|a| fixed.contains(a))
            {
                return Err(Refusal::new(
                    RefusalKind::Conflict,
                    format!(
                        "{origin}: address clash: {address} is the fixed address of service {name} of application {}; \
                         choose another, or take {} down first",
                        other.name, other.name
                    ),
                ));
            }
        }
        for (name, service) in &other.manifest.services {
            for (port, udp) in service.ports.iter().filter_map(published) {
                if ours.contains(&(port, udp)) {
                    let port = match udp {
                        true => format!("{port}/udp"),
                        false => port.to_string(),
                    };
                    return Err(Refusal::new(
                        RefusalKind::Conflict,
                        format!(
                            "{origin}: port clash: {port} is already published by service {name} of application {}; \
                             publish another host port, or take {} down first",
                            other.name, other.name
                        ),
                    ));
                }
            }
        }
    }
    // The services whose instances run differently now: they get a new revision.
    let changed: Vec<String> = match snapshot.apps.iter().find(|a| a.name == manifest.app) {
        Some(old) => manifest
            .services
            .iter()
            .filter(|(name, new)| {
                old.manifest
                    .services
                    .get(*name)
                    .is_some_and(|spec| !spec.runs_as(new))
            })
            .map(|(name, _)| name.clone())
            .collect(),
        None => Vec::new(),
    };
    let app = &manifest.app;
    let what = if changed.is_empty() {
        "deployed".to_string()
    } else {
        format!("deployed; changed: {}", changed.join(", "))
    };
    Ok(Decision {
        changes: vec![
            Change::PutApp {
                manifest: manifest.clone(),
                source: source.to_owned(),
                origin: origin.to_owned(),
            },
            // The network gains the addresses of any new service.
            Change::NetworkStale { app: app.clone() },
            event(app, app, what),
        ],
        outcome: Outcome::Deployed { changed },
    })
}

/// Why a service cannot have `replicas` instances, and how to get more.
fn too_many(replicas: u32, limits: &Limits) -> String {
    let more = match limits.wider_subnet {
        Some((prefix, instances)) => format!(
            ": a daemon started with --app-prefix {prefix}, while no application runs, holds {instances}"
        ),
        None => String::new(),
    };
    format!(
        "replicas {replicas} is more than the {} instances an application's subnet holds on this daemon{more}",
        limits.max_replicas
    )
}

#[allow(clippy::too_many_arguments, reason = "the fields of one command")]
fn scale(
    caller: &Caller,
    snapshot: &Snapshot,
    limits: &Limits,
    app: &str,
    service: &str,
    replicas: Option<u32>,
    cpu: Option<f64>,
    reason: Option<&str>,
) -> Result<Decision, Refusal> {
    let record = live_app(snapshot, app)?;
    let spec = find_service(record, service)?;
    if let (Some(farm), false) = (spec.task_farm(), matches!(caller, Caller::TaskFarm { .. })) {
        if replicas.is_some() {
            return Err(Refusal::new(
                RefusalKind::Conflict,
                format!(
                    "{service} is a task farm: it sets its own workers (at most {}) for each batch's goal; submit tasks with `paracloud tasks submit {service} -f FILE --deadline 10m`, or change `max_workers`",
                    farm.max_workers
                ),
            ));
        }
    }
    if let Some(replicas) = replicas {
        if replicas > limits.max_replicas {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                too_many(replicas, limits),
            ));
        }
        if spec.is_catalog_primary() && replicas > 1 {
            let read = paracloud_manifest::catalog::read_service_name(service);
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!(
                    "{service} is the primary of a catalogue service: it runs one instance (two servers must never share its data); scale its read replicas instead: paracloud scale {read}={}",
                    replicas - 1
                ),
            ));
        }
        if let Some(primary) = spec.reads_also_from() {
            if replicas == 0 && spec.catalog.as_ref().is_some_and(|c| c.synchronous) {
                return Err(Refusal::new(
                    RefusalKind::Conflict,
                    format!(
                        "{primary} commits synchronously: each commit waits until a replica has applied it, so {service} keeps at least one; to go without, `up` {primary} with `synchronous = false`"
                    ),
                ));
            }
            let bound = paracloud_manifest::catalog::MAX_REPLICAS;
            if u64::from(replicas) > bound {
                return Err(Refusal::new(
                    RefusalKind::Invalid,
                    format!(
                        "{service} holds the read replicas of {primary}: at most {bound}, asked for {replicas} (each replica streams every write of the primary)"
                    ),
                ));
            }
        }
    }
    if let Some(cpu) = cpu {
        check_cpu(cpu, limits.cores).map_err(|e| Refusal::new(RefusalKind::Invalid, e))?;
    }
    let current = &record.services[service];
    let mut outcome = Outcome::Done;
    if let (Caller::Instance(_), Some(asked)) = (caller, replicas) {
        let bounds = record
            .manifest
            .autoscale
            .as_ref()
            .and_then(|a| a.services.get(service))
            .map(|s| (s.min, s.max));
        let (min, max) = paracloud_paci::check_replicas(service, asked, bounds)
            .map_err(|e| Refusal::new(RefusalKind::Conflict, e))?;
        outcome = Outcome::Replicas { min, max };
    }
    let mut changes = Vec::new();
    if let Some(replicas) = replicas {
        changes.push(Change::Replicas {
            app: app.to_owned(),
            service: service.to_owned(),
            replicas,
        });
    }
    if let Some(cpu) = cpu {
        changes.push(Change::Cpu {
            app: app.to_owned(),
            service: service.to_owned(),
            cpu: Some(cpu),
        });
    }
    let was_cpu = current.cpu(spec);
    let because = |r: Option<&str>| r.map(|r| format!(": {r}")).unwrap_or_default();
    let messages: Vec<String> = match caller {
        Caller::Autoscaler { policy } => {
            let mut parts = Vec::new();
            if let Some(to) = replicas {
                parts.push(format!("instances {} -> {to}", current.replicas));
            }
            if let Some(to) = cpu {
                parts.push(format!("cpu per instance {} -> {to}", cores(was_cpu)));
            }
            vec![format!(
                "autoscaler {policy}: {}{}",
                parts.join(", "),
                because(reason)
            )]
        }
        Caller::Instance(key) => replicas
            .map(|n| {
                format!(
                    "scaled to {n} (asked by {} through PaCI{})",
                    key.name(),
                    because(reason)
                )
            })
            .into_iter()
            .collect(),
        Caller::Follower if reason.is_some() => reason.map(str::to_owned).into_iter().collect(),
        other => {
            let by = match other {
                Caller::Token { name, .. } => format!(" (by token {name})"),
                _ => String::new(),
            };
            let mut messages = Vec::new();
            if let Some(n) = replicas {
                messages.push(format!("scaled to {n}{by}"));
            }
            if let Some(to) = cpu {
                messages.push(format!(
                    "cpu per instance set to {to} (was {}){by}",
                    cores(was_cpu)
                ));
            }
            messages
        }
    };
    changes.extend(messages.into_iter().map(|m| event(app, service, m)));
    Ok(Decision { changes, outcome })
}

/// CPU in cores as the event log shows it.
pub fn cores(cpu: Option<f64>) -> String {
    cpu.map_or_else(|| "unlimited".to_owned(), |c| c.to_string())
}

/// Checks a CPU per instance asked for by hand: within [`paracloud_manifest::MIN_CPU`] and the
/// machine's cores.
pub fn check_cpu(cpu: f64, cores: f64) -> Result<f64, String> {
    if !cpu.is_finite() || cpu < MIN_CPU {
        return Err(format!(
            "cpu {cpu} is too small: an instance gets at least {MIN_CPU} of a core (a number such as 0.5 or 2)"
        ));
    }
    if cpu > cores {
        return Err(format!(
            "cpu {cpu} is more than the {cores} cores of this machine: ask for {cores} at most"
        ));
    }
    Ok(cpu)
}

/// The revisions running beside `service`: their service name (`api@canary`), revision name and
/// current weight (the one `paracloud traffic` set, else the manifest's).
pub fn revisions_of<'a>(
    app: &'a AppRecord,
    service: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str, u32)> + 'a {
    app.manifest.services.iter().filter_map(move |(name, s)| {
        let of = s.revision_of.as_ref().filter(|of| of.service == service)?;
        let weight = app
            .services
            .get(name)
            .and_then(|r| r.weight)
            .unwrap_or(of.weight);
        Some((name.as_str(), of.revision.as_str(), weight))
    })
}

fn traffic(
    snapshot: &Snapshot,
    app: &str,
    service: &str,
    weights: &BTreeMap<String, u32>,
) -> Result<Decision, Refusal> {
    let record = live_app(snapshot, app)?;
    let spec = find_service(record, service)?;
    if let Some(of) = &spec.revision_of {
        return Err(Refusal::new(
            RefusalKind::Invalid,
            format!(
                "{service} is revision {} of {}: set its share on {}, as in `paracloud traffic {} {}=10`",
                of.revision, of.service, of.service, of.service, of.revision
            ),
        ));
    }
    let revisions: Vec<(&str, &str, u32)> = revisions_of(record, service).collect();
    for (revision, weight) in weights {
        if !revisions.iter().any(|(_, r, _)| r == revision) {
            let known = if revisions.is_empty() {
                "it has none; declare one in the manifest under [services.NAME.revisions.REVISION]"
                    .to_string()
            } else {
                let names: Vec<&str> = revisions.iter().map(|(_, r, _)| *r).collect();
                format!("its revisions: {}", names.join(", "))
            };
            return Err(Refusal::new(
                RefusalKind::NotFound,
                format!("{service} has no revision named {revision} ({known})"),
            ));
        }
        if *weight > 100 {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!("{revision}={weight}: a share is a percent, from 0 to 100"),
            ));
        }
    }
    let after: Vec<(&str, u32)> = revisions
        .iter()
        .map(|(name, revision, weight)| (*name, weights.get(*revision).copied().unwrap_or(*weight)))
        .collect();
    let total: u32 = after.iter().map(|(_, w)| w).sum();
    if total > 100 {
        return Err(Refusal::new(
            RefusalKind::Invalid,
            format!(
                "the revisions of {service} would get {total}% of its traffic together, more than 100%; \
                 lower some shares (a revision not named keeps its share; set it to 0 to take it out)"
            ),
        ));
    }
    let mut changes: Vec<Change> = weights
        .iter()
        .map(|(revision, weight)| Change::TrafficWeight {
            app: app.to_owned(),
            service: paracloud_manifest::revision_service_name(service, revision),
            weight: Some(*weight),
        })
        .collect();
    let split: Vec<String> = std::iter::once(format!("{service} {}%", 100 - total))
        .chain(after.iter().map(|(name, w)| format!("{name} {w}%")))
        .collect();
    changes.push(event(
        app,
        service,
        format!("traffic: {}", split.join(", ")),
    ));
    Ok(Decision::changes(changes))
}

fn set_weight(
    snapshot: &Snapshot,
    key: &InstanceKey,
    weight: Option<u32>,
) -> Result<Decision, Refusal> {
    let weight = paracloud_paci::WeightRequest { weight }
        .check()
        .map_err(|e| Refusal::new(RefusalKind::Invalid, e))?;
    let Some(record) = snapshot.instances.iter().find(|i| i.key == *key) else {
        return Err(Refusal::new(
            RefusalKind::Gone,
            "this instance is no longer in the state",
        ));
    };
    let stored = (weight != paracloud_paci::FULL_WEIGHT).then_some(weight);
    if record.weight == stored {
        return Ok(Decision::changes(Vec::new()));
    }
    Ok(Decision::changes(vec![
        Change::InstanceWeight {
            key: key.clone(),
            weight: stored,
        },
        event(
            &key.app,
            &key.name(),
            format!("weight {weight}% (set through PaCI)"),
        ),
    ]))
}

/// Reads the method of a migration.
pub fn parse_via(via: &str) -> Result<MigrateMethod, String> {
    match via {
        "paci" => Ok(MigrateMethod::Paci),
        "criu" => Ok(MigrateMethod::Criu),
        "restart" => Ok(MigrateMethod::Restart),
        "switchover" => Ok(MigrateMethod::Switchover),
        other => Err(format!(
            "unknown migration method {other:?}: use paci (the application hands its state over), criu (checkpoint and restore), restart (stateless) or switchover (the primary of a catalogue database)"
        )),
    }
}

/// Splits an instance name such as `kv.2` into its service and index.
pub fn parse_instance(name: &str) -> Result<(String, u32), String> {
    name.rsplit_once('.')
        .and_then(|(service, index)| Some((service.to_string(), index.parse().ok()?)))
        .filter(|(service, _)| !service.is_empty())
        .ok_or_else(|| {
            format!("{name:?} is not an instance name: instances are named SERVICE.N, such as kv.1 (see paracloud ps)")
        })
}

fn migrate(
    snapshot: &Snapshot,
    limits: &Limits,
    app: &str,
    instance: &str,
    via: Option<&str>,
    cpus: Option<f64>,
    revision: Option<&str>,
) -> Result<Decision, Refusal> {
    let invalid = |e: String| Refusal::new(RefusalKind::Invalid, e);
    let (service, index) = parse_instance(instance).map_err(invalid)?;
    let via = via.map(parse_via).transpose().map_err(invalid)?;
    let cpu = cpus
        .map(|c| check_cpu(c, limits.cores))
        .transpose()
        .map_err(|e| invalid(format!("--cpus: {e}")))?;
    let record = live_app(snapshot, app)?;
    let spec = find_service(record, &service)?;
    let via = match via {
        via if spec.is_catalog_primary() => {
            if via.is_some_and(|v| v != MigrateMethod::Switchover) {
                return Err(invalid(format!(
                    "{service} is the primary of a catalogue service, which moves by switchover alone (its successor follows it and takes over once it stopped, so that two servers never share its data): leave --via out"
                )));
            }
            Some(MigrateMethod::Switchover)
        }
        Some(MigrateMethod::Switchover) => {
            return Err(invalid(format!(
                "--via switchover moves the primary of a catalogue database (PostgreSQL, MariaDB or Redis), and {service} is not one: use paci, criu or restart"
            )))
        }
        via => via,
    };
    if let Some(revision) = revision {
        let current = record.services[&service].revision;
        let asked: Option<u64> = match revision {
            "latest" => Some(current),
            n => n.parse().ok(),
        };
        match asked {
            Some(r) if r == current => {}
            Some(r) => {
                return Err(Refusal::new(
                    RefusalKind::Conflict,
                    format!(
                        "{service} is at revision {current}: an instance can only be moved to it (the state keeps one spec per service; `up` the manifest of the revision you want, which moves every instance, or run it beside the service as [services.{service}.revisions.NAME]); asked for {r}"
                    ),
                ))
            }
            None => {
                return Err(invalid(format!(
                    "--revision {revision:?} is not a revision: give a number such as {current}, or latest"
                )))
            }
        }
    }
    Ok(Decision {
        changes: Vec::new(),
        outcome: Outcome::Migrate {
            key: InstanceKey::new(app, &service, index),
            via,
            cpu,
        },
    })
}

/// The most characters of a token's name.
pub const MAX_TOKEN_NAME: usize = 64;

fn create_token(
    snapshot: &Snapshot,
    name: &str,
    role: Role,
    hash: &str,
    expires: Option<paracloud_reconcile::Millis>,
) -> Result<Decision, Refusal> {
    let valid = !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        return Err(Refusal::new(
            RefusalKind::Invalid,
            format!(
                "token name {name:?}: use 1 to {MAX_TOKEN_NAME} letters, digits, '-', '_', '.' or '@', starting with a letter or digit (such as ci-deploy or alice@laptop)"
            ),
        ));
    }
    if hash.len() != 64 || !hash.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(Refusal::new(
            RefusalKind::Invalid,
            "a token's hash is 64 lowercase hexadecimal digits (SHA-256)",
        ));
    }
    if let Some(existing) = snapshot.tokens.iter().find(|t| t.name == name) {
        if existing.revoked.is_none() {
            return Err(Refusal::new(
                RefusalKind::Conflict,
                format!(
                    "a token named {name} exists already: revoke it first (paracloud token revoke {name}) or choose another name"
                ),
            ));
        }
    }
    let token = TokenRecord {
        name: name.to_owned(),
        role,
        hash: hash.to_owned(),
        created: 0,
        expires,
        revoked: None,
    };
    Ok(Decision::changes(vec![
        Change::PutToken(token),
        event(
            "",
            name,
            format!("token {name} created with the {} role", role.name()),
        ),
    ]))
}

fn no_token(snapshot: &Snapshot, name: &str) -> Refusal {
    let known: Vec<&str> = snapshot.tokens.iter().map(|t| t.name.as_str()).collect();
    Refusal::new(
        RefusalKind::NotFound,
        format!(
            "no token named {name} (there are: {}); see paracloud token ls",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        ),
    )
}

/// The most tasks one batch takes.
pub const MAX_TASKS: usize = 100_000;

/// The longest command line of a task, in bytes.
const MAX_TASK_BYTES: usize = 64 * 1024;

fn submit_tasks(
    snapshot: &Snapshot,
    app: &str,
    service: &str,
    tasks: &[String],
    goal: paracloud_state::BatchGoal,
    submitted: paracloud_reconcile::Millis,
) -> Result<Decision, Refusal> {
    use paracloud_state::{BatchGoal, BatchRecord, BatchState, TaskCounts};
    let record = live_app(snapshot, app)?;
    let spec = find_service(record, service)?;
    let Some(farm) = spec.task_farm() else {
        let farms: Vec<&str> = record
            .manifest
            .services
            .iter()
            .filter(|(_, s)| s.task_farm().is_some())
            .map(|(name, _)| name.as_str())
            .collect();
        let hint = if farms.is_empty() {
            format!("{app} has none: add a service with `catalog = \"taskfarm\"` and `up` it")
        } else {
            format!("{app}'s task farms: {}", farms.join(", "))
        };
        return Err(Refusal::new(
            RefusalKind::Invalid,
            format!("{service} is not a task farm ({hint})"),
        ));
    };
    if tasks.is_empty() {
        return Err(Refusal::new(
            RefusalKind::Invalid,
            "the batch has no tasks: give one command line per line (blank lines and lines starting with # are skipped)",
        ));
    }
    if tasks.len() > MAX_TASKS {
        return Err(Refusal::new(
            RefusalKind::TooLarge,
            format!(
                "{} tasks is more than the {MAX_TASKS} a batch takes: split them into batches",
                tasks.len()
            ),
        ));
    }
    for (i, task) in tasks.iter().enumerate() {
        let problem = if task.trim().is_empty() {
            Some("is empty".to_owned())
        } else if task.contains(['\0', '\n']) {
            Some("holds a NUL or a line break: a task is one command line".to_owned())
        } else if task.len() > MAX_TASK_BYTES {
            Some(format!(
                "is {} bytes, more than the {MAX_TASK_BYTES} a task takes",
                task.len()
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                format!("task {} {problem}", i + 1),
            ));
        }
    }
    match goal {
        BatchGoal::Deadline { at } if at <= submitted => {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                "the deadline has passed: give a duration from now, such as --deadline 10m",
            ));
        }
        BatchGoal::Budget { instance_ms: 0 } => {
            return Err(Refusal::new(
                RefusalKind::Invalid,
                "a budget of 0 runs nothing: give instance-minutes, such as --budget 30",
            ));
        }
        _ => {}
    }
    if let Some(running) = snapshot
        .batches
        .iter()
        .find(|b| b.app == app && b.service == service)
    {
        return Err(Refusal::new(
            RefusalKind::Conflict,
            format!(
                "batch {id} is still running on {service}: wait for it (`paracloud tasks status {id}`) or cancel it (`paracloud tasks cancel {id}`)",
                id = running.id
            ),
        ));
    }
    let id = snapshot.next_batch;
    let goal_text = match goal {
        BatchGoal::Deadline { at } => format!(
            "a deadline in {}s",
            at.saturating_sub(submitted).div_ceil(1000)
        ),
        BatchGoal::Budget { instance_ms } => {
            format!("a budget of {} instance-seconds", instance_ms / 1000)
        }
    };
    let batch = BatchRecord {
        id,
        app: app.to_owned(),
        service: service.to_owned(),
        submitted,
        goal,
        state: BatchState::Running,
        ended: None,
        spent_ms: 0,
        workers: 0,
        peak_workers: 0,
        plan: format!(
            "waiting for the farm (at most {} workers)",
            farm.max_workers
        ),
        counts: TaskCounts {
            pending: tasks.len() as u32,
            ..TaskCounts::default()
        },
    };
    Ok(Decision {
        changes: vec![
            Change::SubmitBatch {
                batch,
                tasks: tasks.to_vec(),
            },
            event(
                app,
                service,
                format!("batch {id} submitted: {} tasks, {goal_text}", tasks.len()),
            ),
        ],
        outcome: Outcome::Batch { id },
    })
}

fn cancel_batch(snapshot: &Snapshot, app: &str, batch: u64) -> Result<Decision, Refusal> {
    find_app(snapshot, app)?;
    let Some(running) = snapshot
        .batches
        .iter()
        .find(|b| b.id == batch && b.app == app)
    else {
        return Err(Refusal::new(
            RefusalKind::NotFound,
            format!("{app} has no running batch {batch} (`paracloud tasks ls` lists its batches)"),
        ));
    };
    Ok(Decision::changes(vec![
        Change::CancelBatch { id: batch },
        event(app, &running.service, format!("batch {batch} cancelled")),
    ]))
}
