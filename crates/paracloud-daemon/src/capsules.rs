//! Capsules: functions that attach to running instances for as long as they run.
//!
//! A run resolves the capsule (built-in or the app's own), matches the selector against the
//! running instances, checks the manifest's policy for every target (all or nothing), records
//! the run, then attaches one capsule per target at once through the [`Driver`]. Output streams
//! back as [`CapsuleRunEvent`]s; files the function leaves in /out are kept under
//! `<root>/capsules/runs/RUN/INSTANCE/` for the caller to fetch (the last [`KEPT_RUNS`] runs,
//! and the runs a schedule's `keep` holds on to: backups the platform keeps).
//!
//! Built-in capsule images are micro-images of host programs (static busybox and the programs
//! the capsule names, with their libraries), tagged `paracloud-capsule/NAME:KEY` in the image
//! store, plus a small directory layer with the entry script at /capsule/run and busybox's
//! applets. KEY digests everything the image is made of, so a changed script or program makes a
//! new image.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paracloud_api::{CapsuleFile, CapsuleRunEvent, CapsuleView};
use paracloud_capsule::{Access, CapsuleSpec, Selector, Target};
use paracloud_manifest::Image;
use paracloud_reconcile::{InstanceKey, InstanceState};
use paracloud_runtime::{CapsuleConfig, Limits, Process, Rootfs};
use paracloud_state::{CapsuleRun, CapsuleTarget};
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::driver::Driver;
use crate::engine::Engine;

/// Output directories of this many last runs are kept (besides those schedules keep).
pub const KEPT_RUNS: i64 = paracloud_manifest::RECENT_RUNS_KEPT as i64;
/// At most this many capsules start at once (each is a fork and a few mounts).
const PARALLEL_ATTACH: usize = 64;
/// How long a capsule gets between SIGTERM at its deadline and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// PATH inside a built-in capsule: its programs first, busybox's applets last.
const CAPSULE_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/capsule/bin";

/// Why a run could not start; the API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum CapsuleError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// A capsule that can attach to instances.
#[derive(Debug, Clone)]
pub struct Capsule {
    pub spec: CapsuleSpec,
    /// What an application's own capsule (`[capsules.NAME]`) is made of; `None` for a built-in
    /// one.
    pub own: Option<OwnCapsule>,
}

/// An application's own capsule, beyond its spec.
#[derive(Debug, Clone)]
pub struct OwnCapsule {
    pub app: String,
    /// Pinned at `up`.
    pub image: Image,
    /// The environment of its command (the image's, under the manifest's).
    pub env: std::collections::BTreeMap<String, String>,
}

/// Every capsule that can attach to the instances of `app` among `apps`: the built-in ones,
/// then the application's own (every application's when `app` is `None`).
pub fn catalog(apps: &[paracloud_state::AppRecord], app: Option<&str>) -> Vec<Capsule> {
    let builtins = paracloud_capsule::builtins()
        .into_iter()
        .map(|spec| Capsule { spec, own: None });
    let own = apps
        .iter()
        .filter(|a| a.removing.is_none() && app.is_none_or(|name| a.name == name))
        .flat_map(|a| {
            a.manifest.capsules.values().map(move |c| Capsule {
                spec: c.spec(),
                own: Some(OwnCapsule {
                    app: a.name.clone(),
                    image: c.image.clone(),
                    env: c.env.clone(),
                }),
            })
        });
    builtins.chain(own).collect()
}

pub fn view(capsule: &Capsule) -> CapsuleView {
    let (app, missing) = match &capsule.own {
        Some(own) => (Some(own.app.clone()), Vec::new()),
        None => (None, missing_programs(&capsule.spec)),
    };
    CapsuleView {
        name: capsule.spec.name.clone(),
        description: capsule.spec.description.clone(),
        usage: capsule.spec.usage.clone(),
        access: access_name(capsule.spec.access).into(),
        capabilities: capsule.spec.capabilities.clone(),
        timeout_ms: capsule.spec.timeout.as_millis() as u64,
        app,
        missing,
    }
}

fn access_name(access: Access) -> &'static str {
    match access {
        Access::Read => "read",
        Access::Write => "write",
    }
}

/// The busybox every built-in capsule is made of, and the capsule's programs, that this machine
/// lacks.
fn missing_programs(spec: &CapsuleSpec) -> Vec<String> {
    paracloud_image::capsule_image::missing_programs(&spec.programs)
}

/// One instance a run attaches to.
struct Attachment {
    key: InstanceKey,
    process: Arc<Process>,
}

/// What a run was asked, checked: the capsule, its targets and its arguments.
pub struct Prepared {
    pub run: i64,
    capsule: Capsule,
    app: String,
    access: Access,
    targets: Vec<Attachment>,
    args: Vec<String>,
    timeout: Duration,
    record: CapsuleRun,
}

impl Prepared {
    pub fn targets(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.key.name()).collect()
    }
}

/// Resolves and checks a run, and records it (refusals included); nothing runs yet.
pub fn prepare<D: Driver>(
    engine: &Engine<D>,
    caller: &paracloud_command::Caller,
    who: &str,
    request: &paracloud_api::CapsuleRunRequest,
) -> Result<Prepared, CapsuleError> {
    let selector = Selector::parse(&request.selector)
        .map_err(|e| CapsuleError::BadRequest(format!("selector {:?}: {e}", request.selector)))?;
    let snapshot = engine
        .store
        .load()
        .map_err(|e| CapsuleError::Internal(e.to_string()))?;
    let apps: Vec<&str> = snapshot
        .apps
        .iter()
        .filter(|a| a.removing.is_none())
        .map(|a| a.name.as_str())
        .collect();
    let app = match (&selector.app, apps.as_slice()) {
        (Some(app), _) if apps.contains(&app.as_str()) => app.clone(),
        (Some(app), _) => {
            return Err(CapsuleError::NotFound(format!(
                "no application {app:?} is deployed (deployed: {})",
                list_or_none(&apps)
            )))
        }
        (None, [only]) => only.to_string(),
        (None, []) => {
            return Err(CapsuleError::NotFound(
                "no application is deployed: run `paracloud up` first".into(),
            ))
        }
        (None, _) => {
            return Err(CapsuleError::BadRequest(format!(
                "several applications are deployed ({}): add app=NAME to the selector",
                apps.join(", ")
            )))
        }
    };
    let record = snapshot
        .apps
        .iter()
        .find(|a| a.name == app)
        .expect("listed above");
    let capsules = catalog(&snapshot.apps, Some(&app));
    let capsule = capsules
        .iter()
        .find(|c| c.spec.name == request.capsule)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = capsules.iter().map(|c| c.spec.name.as_str()).collect();
            CapsuleError::NotFound(format!(
                "there is no capsule {:?}{}; `paracloud capsule ls` lists them ({})",
                request.capsule,
                did_you_mean(&request.capsule, &names),
                names.join(", ")
            ))
        })?;
    // Whether the caller may run it at all (a viewer's token may not; an operator's may run
    // capsules that only read), before anything about the instances is told.
    let command = paracloud_command::Command::RunCapsule {
        app: app.clone(),
        capsule: capsule.spec.name.clone(),
        writes: capsule.spec.access == Access::Write,
    };
    paracloud_command::authorize(caller, &command)
        .map_err(|refusal| CapsuleError::Refused(refusal.message))?;
    let mut running = Vec::new();
    let mut matched = Vec::new();
    for instance in &snapshot.instances {
        if instance.key.app != app || !matches!(instance.state, InstanceState::Running { .. }) {
            continue;
        }
        running.push(instance.key.name());
        let labels = record
            .manifest
            .services
            .get(&instance.key.service)
            .map(|s| s.labels.clone())
            .unwrap_or_default();
        let target = Target {
            app: app.clone(),
            service: instance.key.service.clone(),
            instance: instance.key.name(),
            labels,
        };
        if selector.matches(&target) {
            matched.push(instance.key.clone());
        }
    }
    if matched.is_empty() {
        running.sort();
        return Err(CapsuleError::NotFound(format!(
            "no running instance of {app} matches {} (running: {})",
            request.selector,
            list_or_none(&running.iter().map(String::as_str).collect::<Vec<_>>())
        )));
    }
    matched.sort_by_key(|k| (k.service.clone(), k.index));

    let mut run = CapsuleRun {
        who: who.to_string(),
        capsule: capsule.spec.name.clone(),
        app: app.clone(),
        selector: request.selector.clone(),
        args: request.args.clone(),
        targets: matched
            .iter()
            .map(|k| CapsuleTarget {
                instance: k.name(),
                exit_code: None,
                duration_ms: None,
                output_bytes: 0,
            })
            .collect(),
        started: now_ms(),
        duration_ms: None,
        status: "running".into(),
        detail: String::new(),
        output_bytes: 0,
    };
    // The policy: every target's service must allow the capsule with the access it needs.
    let access = capsule.spec.access;
    for service in matched
        .iter()
        .map(|k| &k.service)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let allowed = record
            .manifest
            .services
            .get(service)
            .map(|s| s.capsules.clone())
            .unwrap_or_default();
        match paracloud_capsule::check(&capsule.spec, service, &allowed) {
            Ok(_) => {}
            Err(refusal) => {
                run.status = "refused".into();
                run.detail = refusal.to_string();
                run.duration_ms = Some(0);
                if let Err(e) = engine.store.add_capsule_run(&run) {
                    tracing::error!("cannot record the refused capsule run: {e}");
                }
                engine.event(
                    &app,
                    &capsule.spec.name,
                    &format!("capsule refused for {who}: {refusal}"),
                );
                return Err(CapsuleError::Refused(refusal.to_string()));
            }
        }
    }
    if capsule.own.is_none() {
        let missing = missing_programs(&capsule.spec);
        if !missing.is_empty() {
            return Err(CapsuleError::Unavailable(format!(
                "capsule {} needs {} on this machine; install {} (on Debian: apt-get install {})",
                capsule.spec.name,
                missing.join(", "),
                if missing.len() == 1 { "it" } else { "them" },
                missing
                    .iter()
                    .map(|m| if m == "busybox" {
                        "busybox-static"
                    } else {
                        m.as_str()
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        }
    }
    let targets = matched
        .into_iter()
        .filter_map(|key| {
            let process = engine.live_process(&key)?;
            Some(Attachment { key, process })
        })
        .collect::<Vec<_>>();
    if targets.is_empty() {
        return Err(CapsuleError::NotFound(
            "the matching instances stopped meanwhile".into(),
        ));
    }
    run.targets
        .retain(|t| targets.iter().any(|a| a.key.name() == t.instance));
    let timeout = request
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(capsule.spec.timeout);
    if timeout.is_zero() {
        return Err(CapsuleError::BadRequest(
            "the timeout must be more than 0 ms".into(),
        ));
    }
    let id = engine
        .store
        .add_capsule_run(&run)
        .map_err(|e| CapsuleError::Internal(e.to_string()))?;
    engine.event(
        &app,
        &capsule.spec.name,
        &format!(
            "capsule run {id} by {who} attaches to {}",
            run.targets
                .iter()
                .map(|t| t.instance.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    Ok(Prepared {
        run: id,
        capsule,
        app,
        access,
        targets,
        args: request.args.clone(),
        timeout,
        record: run,
    })
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn did_you_mean(name: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| (strsim::levenshtein(name, n), *n))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| format!(" (did you mean {n:?}?)"))
        .unwrap_or_default()
}

/// Where run `run`'s files from `instance` are kept.
pub fn output_dir(root: &Path, run: i64, instance: &str) -> PathBuf {
    root.join("capsules")
        .join("runs")
        .join(run.to_string())
        .join(instance)
}

/// Runs a prepared run to its end, sending its events; records how it ended.
pub async fn execute<D: Driver>(
    engine: Arc<Engine<D>>,
    prepared: Prepared,
    events: mpsc::UnboundedSender<CapsuleRunEvent>,
) {
    let started = Instant::now();
    let Prepared {
        run,
        capsule,
        app,
        access,
        targets,
        args,
        timeout,
        record,
    } = prepared;
    let _ = events.send(CapsuleRunEvent::Started {
        run,
        targets: targets.iter().map(|t| t.key.name()).collect(),
    });
    let results = match capsule_root(&engine, &capsule).await {
        Err(message) => targets
            .iter()
            .map(|target| {
                let outcome = Outcome {
                    error: Some(message.clone()),
                    ..Outcome::default()
                };
                let _ = events.send(CapsuleRunEvent::Exited {
                    instance: target.key.name(),
                    exit_code: None,
                    duration_ms: 0,
                    timed_out: false,
                    files: vec![],
                    error: outcome.error.clone(),
                });
                (target.key.name(), outcome)
            })
            .collect(),
        Ok(rootfs) => {
            use futures::StreamExt;
            let attaches: Vec<_> = targets
                .into_iter()
                .map(|target| {
                    let command = capsule.spec.command(&args);
                    let config = config_for(
                        &engine.config.root,
                        run,
                        &target.key,
                        &capsule,
                        access,
                        rootfs.clone(),
                        command,
                    );
                    let (engine, events) = (engine.clone(), events.clone());
                    async move { attach_one(&engine, &target, config, timeout, &events).await }
                })
                .collect();
            futures::stream::iter(attaches)
                .buffer_unordered(PARALLEL_ATTACH)
                .collect::<Vec<_>>()
                .await
        }
    };
    let finished = conclude(
        &engine,
        run,
        &app,
        &capsule.spec.name,
        record,
        &results,
        started,
    );
    let _ = events.send(finished);
    ready_next(&engine);
}

/// Records how a run ended (its targets' outcomes) and says so in the events.
fn conclude<D: Driver>(
    engine: &Engine<D>,
    run: i64,
    app: &str,
    capsule: &str,
    mut record: CapsuleRun,
    results: &[(String, Outcome)],
    started: Instant,
) -> CapsuleRunEvent {
    let mut status = if results.is_empty() { "failed" } else { "ok" };
    for (instance, outcome) in results {
        if let Some(t) = record.targets.iter_mut().find(|t| &t.instance == instance) {
            t.exit_code = outcome.exit_code;
            t.duration_ms = Some(outcome.duration_ms);
            t.output_bytes = outcome.output_bytes;
        }
        record.output_bytes += outcome.output_bytes;
        if outcome.timed_out {
            status = "timeout";
        } else if outcome.exit_code != Some(0) && status == "ok" {
            status = "failed";
        }
        if let (Some(error), true) = (&outcome.error, record.detail.is_empty()) {
            record.detail = format!("{instance}: {error}");
        }
    }
    record.status = status.into();
    let duration_ms = started.elapsed().as_millis() as u64;
    record.duration_ms = Some(duration_ms);
    if let Err(e) = engine.store.update_capsule_run(run, &record) {
        tracing::warn!("cannot record the end of capsule run {run}: {e}");
    }
    engine.event(
        app,
        capsule,
        &format!("capsule run {run} ended: {status} after {duration_ms} ms"),
    );
    forget_old_outputs(engine, run);
    CapsuleRunEvent::Finished {
        run,
        status: status.into(),
        duration_ms,
        output_bytes: record.output_bytes,
    }
}

/// Runs a prepared run of one target on a terminal (`paracloud debug`): `terminal` is the
/// replica side of a pseudo-terminal the caller relays. Returns the exit code once the run is
/// recorded.
pub async fn execute_on_terminal<D: Driver>(
    engine: Arc<Engine<D>>,
    prepared: Prepared,
    terminal: std::os::fd::OwnedFd,
) -> Option<i32> {
    let started = Instant::now();
    let Prepared {
        run,
        capsule,
        app,
        access,
        targets,
        args,
        timeout,
        record,
    } = prepared;
    let target = targets.first()?;
    let instance = target.key.name();
    let mut outcome = Outcome::default();
    match capsule_root(&engine, &capsule).await {
        Err(message) => outcome.error = Some(message),
        Ok(rootfs) => {
            let argv = capsule.spec.command(&args);
            let mut config = config_for(
                &engine.config.root,
                run,
                &target.key,
                &capsule,
                access,
                rootfs,
                argv,
            );
            config.tty = true;
            match engine
                .driver
                .attach(&target.process, &config, Some(terminal))
            {
                Err(e) => outcome.error = Some(e.to_string()),
                Ok(mut child) => {
                    let status = match tokio::time::timeout(timeout, child.wait()).await {
                        Ok(status) => status.ok(),
                        Err(_) => {
                            outcome.timed_out = true;
                            stop(&mut child).await
                        }
                    };
                    outcome.exit_code = status.map(exit_code);
                }
            }
            detach(&engine, config).await;
        }
    }
    outcome.duration_ms = started.elapsed().as_millis() as u64;
    let code = outcome.exit_code;
    conclude(
        &engine,
        run,
        &app,
        &capsule.spec.name,
        record,
        &[(instance, outcome)],
        started,
    );
    code
}

/// SIGTERM to the capsule's runner (it kills the function and all it started), SIGKILL after
/// [`STOP_GRACE`].
async fn stop(child: &mut tokio::process::Child) -> Option<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    }
}

/// The exit code, or 128 + the signal that ended the process.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    })
}

/// The capsule's config for one target.
fn config_for(
    root: &Path,
    run: i64,
    key: &InstanceKey,
    capsule: &Capsule,
    access: Access,
    rootfs: Rootfs,
    argv: Vec<String>,
) -> CapsuleConfig {
    // Every capsule mounts its scratch over the same directory, each in its own namespace.
    let dir = root.join("capsules");
    // An application's capsule starts from its image's and manifest's variables (PATH
    // included); the platform's own are set over them.
    let mut env = capsule
        .own
        .as_ref()
        .map(|own| own.env.clone())
        .unwrap_or_default();
    env.entry("PATH".into())
        .or_insert_with(|| CAPSULE_PATH.into());
    env.extend([
        ("TARGET".to_string(), "/target".to_string()),
        ("OUT".into(), "/out".into()),
        ("HOME".into(), "/tmp".into()),
        ("PARACLOUD_APP".into(), key.app.clone()),
        ("PARACLOUD_SERVICE".into(), key.service.clone()),
        ("PARACLOUD_INSTANCE".into(), key.name()),
    ]);
    if let Ok(term) = std::env::var("TERM") {
        env.insert("TERM".into(), term);
    }
    let env = env.into_iter().collect();
    CapsuleConfig {
        id: capsule_id(run, key),
        dir,
        rootfs,
        argv,
        env,
        out_dir: output_dir(root, run, &key.name()),
        write_target: access == Access::Write,
        capabilities: capsule.spec.capabilities.clone(),
        limits: Limits {
            cpu: Some(capsule.spec.limits.cpu),
            memory: Some(capsule.spec.limits.memory),
            pids: Some(capsule.spec.limits.pids),
            disk: None,
            ..Default::default()
        },
        tty: false,
    }
}

/// The id of the capsule of run `run` on `key`, which names its cgroup: unique among instances
/// and capsules.
fn capsule_id(run: i64, key: &InstanceKey) -> String {
    format!("cap{run}-{}", key.id())
}

impl<D: Driver> Engine<D> {
    /// At start: the runs a killed daemon left recorded as running can report to no one any
    /// more. Each is recorded as failed, and what is left of its capsules (their cgroups, and a
    /// function still running in them, whose runner outlived the daemon) is removed.
    pub fn settle_interrupted_capsule_runs(&self) -> Result<(), paracloud_state::Error> {
        for (run, mut record) in self.store.running_capsule_runs()? {
            for target in &record.targets {
                let Some((service, index)) = target
                    .instance
                    .rsplit_once('.')
                    .and_then(|(s, i)| Some((s, i.parse().ok()?)))
                else {
                    continue;
                };
                let id = capsule_id(run, &InstanceKey::new(&record.app, service, index));
                // Removes the cgroup (killing what is in it) as for an instance's leftovers.
                if let Err(e) = self.driver.cleanup(&id) {
                    tracing::warn!("cannot remove what is left of capsule {id}: {e}");
                }
            }
            record.status = "failed".into();
            record.detail = "the daemon restarted during the run".into();
            self.store.update_capsule_run(run, &record)?;
            self.event(
                &record.app,
                &record.capsule,
                &format!("capsule run {run} failed: the daemon restarted during the run"),
            );
        }
        Ok(())
    }
}

/// How the capsule on one target ended.
#[derive(Default)]
struct Outcome {
    exit_code: Option<i32>,
    duration_ms: u64,
    output_bytes: u64,
    timed_out: bool,
    error: Option<String>,
}

async fn attach_one<D: Driver>(
    engine: &Arc<Engine<D>>,
    target: &Attachment,
    config: CapsuleConfig,
    timeout: Duration,
    events: &mpsc::UnboundedSender<CapsuleRunEvent>,
) -> (String, Outcome) {
    let instance = target.key.name();
    let started = Instant::now();
    let mut outcome = Outcome::default();
    let mut child = match engine.driver.attach(&target.process, &config, None) {
        Ok(child) => child,
        Err(e) => {
            outcome.error = Some(e.to_string());
            detach(engine, config.clone()).await;
            return finish(instance, outcome, started, &config, events);
        }
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // stderr is kept whole as well: the runner's own failure is read from it.
    let pump = |pipe: Option<tokio::process::ChildStdout>| {
        let events = events.clone();
        let instance = instance.clone();
        async move { forward(pipe, "stdout", &instance, &events).await }
    };
    let pump_err = |pipe: Option<tokio::process::ChildStderr>| {
        let events = events.clone();
        let instance = instance.clone();
        async move { forward(pipe, "stderr", &instance, &events).await }
    };
    let out_task = tokio::spawn(pump(stdout));
    let err_task = tokio::spawn(pump_err(stderr));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            outcome.timed_out = true;
            stop(&mut child).await
        }
    };
    let (out_bytes, _) = out_task.await.unwrap_or_default();
    let (err_bytes, err_text) = err_task.await.unwrap_or_default();
    outcome.output_bytes = out_bytes + err_bytes;
    let code = status.map(exit_code);
    if let Some(code) = code {
        if let Some(failure) = paracloud_runtime::capsule::setup_failure(code, err_text.as_bytes())
        {
            outcome.error = Some(failure);
        }
    }
    outcome.exit_code = if outcome.error.is_some() { None } else { code };
    if outcome.timed_out {
        outcome.error = Some(format!(
            "stopped at its deadline of {}",
            humantime::format_duration(timeout)
        ));
    }
    detach(engine, config.clone()).await;
    finish(instance, outcome, started, &config, events)
}

fn finish(
    instance: String,
    mut outcome: Outcome,
    started: Instant,
    config: &CapsuleConfig,
    events: &mpsc::UnboundedSender<CapsuleRunEvent>,
) -> (String, Outcome) {
    let files = list_files(&config.out_dir);
    outcome.output_bytes += files.iter().map(|f| f.size).sum::<u64>();
    outcome.duration_ms = started.elapsed().as_millis() as u64;
    let _ = events.send(CapsuleRunEvent::Exited {
        instance: instance.clone(),
        exit_code: outcome.exit_code,
        duration_ms: outcome.duration_ms,
        timed_out: outcome.timed_out,
        files,
        error: outcome.error.clone(),
    });
    (instance, outcome)
}

/// Removes the capsule's cgroup (and anything left in it), off the async threads.
async fn detach<D: Driver>(engine: &Arc<Engine<D>>, config: CapsuleConfig) {
    let engine = engine.clone();
    let id = config.id.clone();
    let result = tokio::task::spawn_blocking(move || engine.driver.detach(&config)).await;
    if let Ok(Err(e)) = result {
        tracing::warn!("detaching capsule {id}: {e}");
    }
}

/// Readies the next attaches in the background, once a run has ended (so that starting runners
/// ahead takes no CPU from the run itself).
fn ready_next<D: Driver>(engine: &Arc<Engine<D>>) {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = engine.driver.ready_capsules() {
            tracing::warn!("cannot start capsule runners ahead: {e}");
        }
    });
}

/// Sends a pipe's output as events; returns the bytes read and the text (for stderr).
async fn forward(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    stream: &str,
    instance: &str,
    events: &mpsc::UnboundedSender<CapsuleRunEvent>,
) -> (u64, String) {
    let Some(pipe) = pipe else {
        return (0, String::new());
    };
    let (total, kept) = paracloud_runtime::capsule_output::relay_text(pipe, |text| {
        let _ = events.send(CapsuleRunEvent::Output {
            instance: instance.to_string(),
            stream: stream.to_string(),
            text,
        });
    })
    .await;
    (
        total,
        if stream == "stderr" {
            kept
        } else {
            String::new()
        },
    )
}

/// The files run `run` left on `instance` that are still kept.
pub fn kept_files(root: &Path, run: i64, instance: &str) -> Vec<CapsuleFile> {
    list_files(&output_dir(root, run, instance))
}

fn list_files(dir: &Path) -> Vec<CapsuleFile> {
    paracloud_runtime::capsule_output::files_in(dir)
        .into_iter()
        .map(|(name, size)| CapsuleFile { name, size })
        .collect()
}

/// Removes the output directories of runs older than the last [`KEPT_RUNS`], but those of the
/// runs the applications' schedules keep. When the kept runs cannot be read, nothing is removed
/// (until the next run ends).
fn forget_old_outputs<D: Driver>(engine: &Engine<D>, latest: i64) {
    let kept = match kept_by_schedules(engine) {
        Ok(kept) => kept,
        Err(e) => {
            tracing::warn!("cannot read which capsule runs schedules keep: {e}");
            return;
        }
    };
    let runs = engine.config.root.join("capsules").join("runs");
    for entry in std::fs::read_dir(&runs).into_iter().flatten().flatten() {
        let old = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i64>().ok())
            .is_some_and(|n| n <= latest - KEPT_RUNS && !kept.contains(&n));
        if old {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The runs whose files schedules keep: of each `[schedules.NAME]` with `keep = N`, its last N
/// runs that ended `ok` (a failed backup does not push a good one out).
fn kept_by_schedules<D: Driver>(
    engine: &Engine<D>,
) -> Result<std::collections::BTreeSet<i64>, paracloud_state::Error> {
    let mut kept = std::collections::BTreeSet::new();
    for app in engine.store.load()?.apps {
        for (name, schedule) in &app.manifest.schedules {
            let Some(keep) = schedule.keep else { continue };
            let who = paracloud_command::Caller::Schedule { name: name.clone() }.describe();
            kept.extend(engine.store.last_ok_capsule_runs(&app.name, &who, keep)?);
        }
    }
    Ok(kept)
}

/// A file run `run` left on `instance`, if it is one (the names come from the caller).
pub fn output_file(root: &Path, run: i64, instance: &str, name: &str) -> Option<PathBuf> {
    let plain = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    if !plain(instance) || !plain(name) {
        return None;
    }
    let path = output_dir(root, run, instance).join(name);
    path.is_file().then_some(path)
}

/// The capsule's root filesystem.
pub async fn capsule_root<D: Driver>(
    engine: &Arc<Engine<D>>,
    capsule: &Capsule,
) -> Result<Rootfs, String> {
    let engine = engine.clone();
    let capsule = capsule.clone();
    tokio::task::spawn_blocking(move || match &capsule.own {
        Some(own) => engine.images.rootfs(&own.image),
        None => builtin_root(&engine, &capsule.spec),
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The image of a built-in capsule (built on first use) and its script layer.
fn builtin_root<D: Driver>(engine: &Engine<D>, spec: &CapsuleSpec) -> Result<Rootfs, String> {
    let capsule = paracloud_image::capsule_image::BuiltinCapsule {
        name: &spec.name,
        script: spec.script,
        programs: &spec.programs,
        trees: &spec.trees,
    };
    let layers_dir = engine.config.root.join("capsules").join("layers");
    let layers = paracloud_image::capsule_image::builtin_layers(
        capsule,
        &layers_dir,
        |tag, busybox, programs| engine.images.micro_layers(tag, busybox, programs),
    )?;
    Ok(Rootfs::Layers { layers })
}

/// Runs the applications' scheduled capsules (`[schedules.NAME]`): once a second, each schedule
/// whose next time since the last look has come starts a run, recorded as by `schedule NAME`.
/// A schedule that cannot run (nothing matches, the policy refuses) says so in the events.
pub async fn run_schedules<D: Driver>(engine: Arc<Engine<D>>) {
    let seconds = || (now_ms() / 1000) as i64;
    let mut last = seconds();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = seconds();
        if now <= last {
            continue;
        }
        let Ok(snapshot) = engine.store.load() else {
            continue;
        };
        for record in snapshot.apps.iter().filter(|a| a.removing.is_none()) {
            for (name, schedule) in &record.manifest.schedules {
                if schedule.cron.next_after(last).is_some_and(|at| at <= now) {
                    fire(&engine, &record.name, name, schedule);
                }
            }
        }
        last = now;
    }
}

/// Starts one run of a scheduled capsule; its events go nowhere, its record to the history.
fn fire<D: Driver>(
    engine: &Arc<Engine<D>>,
    app: &str,
    name: &str,
    schedule: &paracloud_manifest::ScheduledCapsule,
) {
    let names_app = Selector::parse(&schedule.selector).is_ok_and(|s| s.app.is_some());
    let selector = if names_app {
        schedule.selector.clone()
    } else {
        format!("app={app},{}", schedule.selector)
    };
    let request = paracloud_api::CapsuleRunRequest {
        capsule: schedule.capsule.clone(),
        selector,
        args: schedule.args.clone(),
        timeout_ms: schedule.timeout.map(|t| t.as_millis() as u64),
    };
    let caller = paracloud_command::Caller::Schedule {
        name: name.to_owned(),
    };
    let who = caller.describe();
    match prepare(engine, &caller, &who, &request) {
        Ok(prepared) => {
            let (events, _) = mpsc::unbounded_channel();
            tokio::spawn(execute(engine.clone(), prepared, events));
        }
        Err(e) => engine.event(app, &who, &format!("did not run: {e}")),
    }
}
