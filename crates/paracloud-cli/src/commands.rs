//! What each command does: talk to the daemon (starting it when `up` needs one) and print.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::BodyExt;
use paracloud_api::{
    AppView, BuildEvent, BuildImage, BuildMicroImage, Client, ClientError, CpuRequest, Down, Event,
    ExportImages, GetApp, GetService, GetStats, ImageSources, ImportImages, InspectImage,
    JsonLines, ListEvents, ListImages, ListInstances, Logs, Migrate, PruneImages, PullImage,
    PushImage, RemoveImage, Restart, RestartDataplane, Route, Scale, ScaleRequest, ServiceView,
    SetCpu, SetTraffic, TrafficRequest, TransferEvent, Up,
};
use paracloud_reconcile::ExitInfo;

use crate::arguments::{parse_cores, parse_scale, split_assignment};
use crate::cli::{Cli, Command, DataplaneCommand, Global, ImageCommand, Output, SimArgs};
use crate::client::{absolute, connect, explain};
use crate::manifests::{load_manifests, manifest_files, resolve_app};
use crate::output::{age, format_time, print, server_line, table};

pub fn run(cli: Cli) -> Result<()> {
    let Cli { global, command } = cli;
    match command {
        Command::Daemon {
            install: false,
            listen,
            ..
        } => run_daemon(&global, listen),
        Command::Daemon {
            install: true,
            unit_dir,
            listen,
        } => install_daemon(&global, &unit_dir, listen),
        Command::Sim(args) => sim(&global, &args),
        Command::ClusterDataplane {
            namespace,
            app,
            routes,
            state_dir,
            stats_listen,
            listen_address,
            listen_ports,
        } => {
            init_tracing();
            // One thread, as the data-plane process (see ARCHITECTURE.md).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::kubernetes::cluster_dataplane(
                paracloud_operator::dataplane::DataplaneOptions {
                    namespace,
                    app,
                    routes,
                    state_dir,
                    stats_listen,
                    listen_address,
                    listen_ports,
                },
            ))
        }
        Command::Operator(args) => {
            init_tracing();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(crate::kubernetes::operator(args))
        }
        Command::NodeAgent {
            runtime,
            runtime_root,
        } => run_node_agent(&global, runtime, runtime_root),
        Command::AgentCapsuleFile { run, name } => {
            crate::agent_exec::agent_capsule_file(&absolute(&global.root)?, run, &name)
        }
        Command::AgentEvent {
            pod,
            listening,
            wait_listening_ms,
        } => crate::agent_exec::agent_event(
            &absolute(&global.root)?,
            &pod,
            listening,
            wait_listening_ms,
        ),
        Command::AgentCapsule {
            pod,
            container,
            capsule,
            timeout_ms,
            args,
        } => crate::agent_exec::agent_capsule(
            &absolute(&global.root)?,
            paracloud_node::capsules::CapsuleRequest {
                pod,
                container,
                capsule,
                args,
                timeout_ms,
            },
        ),
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "paracloud", &mut std::io::stdout());
            Ok(())
        }
        Command::DataplaneProcess {
            config,
            stats,
            drain_timeout,
            drain_file,
        } => {
            use paracloud_runtime::handover;
            // Before any thread starts: they read and clear LISTEN_FDS and NOTIFY_SOCKET.
            let inherited = handover::take_listen_fds();
            let notify = handover::take_notify_socket();
            init_tracing();
            // One thread: every connection is served in its own task without cross-thread
            // wake-ups (see ARCHITECTURE.md, "Data-plane runtime").
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let tuning = paracloud_dataplane::Tuning {
                drain: drain_timeout,
                ..Default::default()
            };
            runtime
                .block_on(async move {
                    let (ready, readiness) = tokio::sync::oneshot::channel();
                    tokio::spawn(async move {
                        if readiness.await.is_ok() {
                            if let Some(socket) = notify {
                                if let Err(e) = handover::notify_ready(&socket) {
                                    tracing::warn!("cannot report readiness to {socket:?}: {e}");
                                }
                            }
                        }
                    });
                    paracloud_dataplane::run(
                        config,
                        stats,
                        inherited,
                        tuning,
                        drain_file,
                        Some(ready),
                    )
                    .await
                })
                .map_err(|e| anyhow!("data plane: {e}"))
        }
        command => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(client_command(&global, command))
        }
    }
}

/// Runs one simulation: no daemon, no instances, only the model, the trace and the policy.
fn sim(global: &Global, args: &SimArgs) -> Result<()> {
    let model_file = args.model.display().to_string();
    let source = std::fs::read_to_string(&args.model).with_context(|| {
        format!("cannot read the model {model_file}: check the path given to --model")
    })?;
    let model = paracloud_sim::Model::parse(&source, &model_file)
        .map_err(|e| anyhow!("the model is not valid:\n{e}"))?;
    let trace_file = args.trace.display().to_string();
    let text = std::fs::read_to_string(&args.trace).with_context(|| {
        format!("cannot read the trace {trace_file}: check the path given to --trace")
    })?;
    let bucket = match args.bucket {
        Some(seconds) => Some(Duration::try_from_secs_f64(seconds).map_err(|_| {
            anyhow!("--bucket {seconds:?} is too long: give the seconds each count covers")
        })?),
        None => None,
    };
    let options = paracloud_sim::ParseOptions { bucket };
    let mut trace = paracloud_sim::Trace::parse(&text, &options)
        .map_err(|e| anyhow!("the trace is not valid:\n{}", e.in_file(&trace_file)))?;
    if args.start.is_some() || args.duration.is_some() {
        let start = args.start.unwrap_or_default();
        let len = args
            .duration
            .unwrap_or_else(|| trace.duration().saturating_sub(start));
        trace = trace.window(start, len);
    }
    if let Some(factor) = args.speedup {
        trace = trace.speedup(factor);
    }
    if let Some(factor) = args.scale {
        trace = trace.scale(factor);
    }
    if trace.total() <= 0.0 {
        bail!(
            "the trace {trace_file} has no requests{}: check --start and --duration, or the file",
            if args.start.is_some() || args.duration.is_some() {
                " in the chosen window"
            } else {
                ""
            }
        );
    }
    let mut policy = args.policy.build();
    let started = Instant::now();
    let outcome = paracloud_sim::simulate(&model, &trace, policy.as_mut(), args.seed);
    eprintln!(
        "simulated {} ({trace}) in {:.1} s",
        humantime::format_duration(Duration::from_secs(outcome.seconds)),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.timeline {
        let json = serde_json::to_string(&outcome)?;
        std::fs::write(path, json).with_context(|| {
            format!(
                "cannot write the timeline to {}: check the directory",
                path.display()
            )
        })?;
    }
    let summary = outcome.summary();
    let slo = model.slo;
    print(global.output, &summary, |s| {
        let percentile = format!("p{}", (slo.percentile * 100.0 * 10.0).round() / 10.0);
        let mut out = String::new();
        let mut field = |name: &str, value: String| out.push_str(&format!("{name:<10}{value}\n"));
        field("Policy:", format!("{} (seed {})", s.policy, s.seed));
        field(
            "Requests:",
            format!(
                "{} ({} answered, {} dropped{})",
                s.requests,
                outcome.answered,
                s.dropped,
                if outcome.in_flight > 0 {
                    format!(", {} unfinished at the end", outcome.in_flight)
                } else {
                    String::new()
                }
            ),
        );
        field(
            "SLO:",
            format!(
                "{percentile} <= {} ms missed in {} of {} seconds with requests",
                slo.latency_ms, s.slo_violation_seconds, outcome.seconds_with_arrivals
            ),
        );
        field(
            "Latency:",
            format!("p95 {:.1} ms, p99 {:.1} ms", s.p95_ms, s.p99_ms),
        );
        field(
            "Cost:",
            format!(
                "{:.0} instance-seconds, {:.0} CPU-seconds",
                s.instance_seconds, s.cpu_seconds
            ),
        );
        field("Actions:", s.actions.to_string());
        out
    })
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Writes `paracloud.service` (or `paracloud-<root's name>.service` for a root other than the
/// default) into `unit_dir`: the daemon of this root with these settings, restarted whenever it
/// ends, its instances left running across restarts (they are re-adopted).
fn install_daemon(
    global: &Global,
    unit_dir: &Path,
    listen: Option<std::net::SocketAddr>,
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the paracloud binary")?;
    let root = absolute(&global.root)?;
    let name = if root == Path::new("/var/lib/paracloud") {
        "paracloud".to_string()
    } else {
        let tag: String = root
            .to_string_lossy()
            .trim_matches('/')
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("paracloud-{tag}")
    };
    let unit = crate::install::unit(&exe, &root, &global.daemon, listen);
    let path = unit_dir.join(format!("{name}.service"));
    std::fs::create_dir_all(unit_dir)
        .with_context(|| format!("cannot create {}", unit_dir.display()))?;
    std::fs::write(&path, unit).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    println!("enable it with: systemctl daemon-reload && systemctl enable --now {name}");
    Ok(())
}

/// How many instances' reasons a failed wait names; the rest are counted.
const SHOWN_REASONS: usize = 10;

/// The first `at_most` of `reasons`, then how many more there are.
fn first_reasons(reasons: &[String], at_most: usize) -> String {
    let shown = reasons[..reasons.len().min(at_most)].join("; ");
    match reasons.len().saturating_sub(at_most) {
        0 => shown,
        more => format!("{shown}; and {more} more not ready"),
    }
}

fn run_daemon(global: &Global, listen: Option<std::net::SocketAddr>) -> Result<()> {
    init_tracing();
    let exe = std::env::current_exe().context("cannot find the paracloud binary")?;
    let root = absolute(&global.root)?;
    let config = paracloud_daemon::DaemonConfig {
        root,
        cgroup_parent: global.daemon.cgroup_parent.clone(),
        addresses: paracloud_daemon::addressing::AddressPlan::new(
            global.daemon.subnet,
            global.daemon.app_prefix,
        )
        .map_err(anyhow::Error::msg)?,
        exe,
        settings: Default::default(),
        listen,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(paracloud_daemon::run(config))?;
    Ok(())
}

fn run_node_agent(
    global: &Global,
    runtime: crate::cli::NodeRuntime,
    runtime_root: PathBuf,
) -> Result<()> {
    init_tracing();
    let config = paracloud_node::Config {
        root: absolute(&global.root)?,
        runtime: match runtime {
            crate::cli::NodeRuntime::Crun => paracloud_node::OciRuntime::Crun,
            crate::cli::NodeRuntime::Runc => paracloud_node::OciRuntime::Runc,
        },
        runtime_root: absolute(&runtime_root)?,
        cgroup_root: "/sys/fs/cgroup".into(),
        cgroup_parent: global.daemon.cgroup_parent.clone(),
        helper_exe: std::env::current_exe().context("cannot find the paracloud binary")?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // In its pod, the ServiceAccount's token; elsewhere, the kubeconfig's credentials.
        let cluster = match kube::Client::try_default().await {
            Ok(client) => {
                let node = std::env::var("NODE_NAME")
                    .ok()
                    .filter(|n| !n.is_empty())
                    .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
                    .unwrap_or_default();
                Some(paracloud_node::Cluster::new(client, node))
            }
            Err(e) => {
                tracing::warn!(
                    "no API server ({e}): pods' PaCI requests for instances will be refused"
                );
                None
            }
        };
        paracloud_node::run(config, cluster).await
    })?;
    Ok(())
}

/// `paracloud convert`: prints the paracloud.toml a Compose file reads as.
fn convert(files: &[PathBuf], profiles: &[String]) -> Result<()> {
    let files = match files {
        [] => vec![paracloud_compose::FILE_NAMES
            .iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .ok_or_else(|| anyhow!("no compose.yaml, compose.yml, docker-compose.yaml or docker-compose.yml here: pass the Compose file with -f"))?],
        files => files.to_vec(),
    };
    let loaded = load_manifests(&files, profiles)?;
    print!("{}", loaded.request.source);
    Ok(())
}

async fn client_command(global: &Global, command: Command) -> Result<()> {
    if global.kubernetes {
        return crate::kubernetes::cluster_command(global, command).await;
    }
    match command {
        Command::Up {
            file,
            detach,
            timeout,
            profiles,
            dry_run,
        } => {
            let files = manifest_files(&file)?;
            if dry_run {
                // A dry run starts nothing, so there is nothing to wait for.
                let _ = (detach, timeout);
                up_dry_run(global, &files, &profiles).await
            } else {
                up(global, &files, &profiles, detach, timeout).await
            }
        }
        Command::Convert { file, profiles } => convert(&file, &profiles),
        Command::Token(command) => crate::access::token(global, command).await,
        Command::K8s(command) => crate::kubernetes::k8s(command, global.output),
        Command::Deploy {
            file,
            profiles,
            namespace,
            registry,
        } => crate::kubernetes::deploy(global, &file, &profiles, namespace, registry).await,
        Command::Operator(_) | Command::ClusterDataplane { .. } => {
            unreachable!("the operator and the cluster's data plane have runtimes of their own")
        }
        Command::Context(command) => crate::access::context(global, command).await,
        Command::Down { file, volumes } => down(global, file.as_deref(), volumes).await,
        Command::Ps { file, all_apps } => ps(global, file.as_deref(), all_apps).await,
        Command::Logs {
            target,
            follow,
            tail,
        } => logs(global, target, follow, tail).await,
        Command::Scale {
            services,
            cpu,
            detach,
        } => scale(global, &services, cpu.as_deref(), detach).await,
        Command::Restart { services } => restart(global, services).await,
        Command::Migrate {
            instance,
            via,
            revision,
            cpus,
            agent_namespace: _,
        } => migrate(global, &instance, via, revision, cpus.as_deref()).await,
        Command::Traffic { service, shares } => traffic(global, &service, &shares).await,
        Command::Describe { service } => describe(global, &service).await,
        Command::Events { follow } => events(global, follow).await,
        Command::Top { once } => top(global, once).await,
        Command::Images => image_command(global, ImageCommand::Ls).await,
        Command::Build(args) => build(global, args).await,
        Command::Image(command) => image_command(global, command).await,
        Command::Catalog(command) => crate::catalog::command(global, command).await,
        Command::Tasks(command) => crate::tasks::command(global, command).await,
        Command::Capsule(command) => crate::capsule::command(global, command).await,
        Command::Debug { instance, command } => {
            crate::capsule::debug(global, &instance, &command).await
        }
        Command::Dataplane(DataplaneCommand::Restart { drain_timeout }) => {
            restart_dataplane(global, drain_timeout).await
        }
        Command::Daemon { .. }
        | Command::NodeAgent { .. }
        | Command::AgentCapsule { .. }
        | Command::AgentCapsuleFile { .. }
        | Command::AgentEvent { .. }
        | Command::DataplaneProcess { .. }
        | Command::Completion { .. }
        | Command::Sim(_) => {
            unreachable!("handled before the client runtime")
        }
    }
}

/// Where a pull of `reference` would look, in order (the daemon's registries.toml decides).
async fn sources_of(
    client: &Client,
    reference: &str,
) -> Result<Vec<paracloud_api::ImageSourceView>> {
    client
        .call(&ImageSources(paracloud_api::SourcesRequest {
            reference: reference.to_owned(),
        }))
        .await
        .map_err(explain)
}

/// Adds the credentials, from this user's Docker config, of each registry of `sources` (the
/// mirrors and the registry a pull may reach) that `auths` lacks.
fn add_credentials(
    config: &crate::docker_config::DockerConfig,
    sources: Vec<paracloud_api::ImageSourceView>,
    auths: &mut BTreeMap<String, paracloud_api::RegistryCredentials>,
) -> Result<()> {
    let search = std::env::var_os("PATH");
    for source in sources {
        if auths.contains_key(&source.registry) {
            continue;
        }
        if let Some(found) = config.credentials(&source.registry, search.as_deref())? {
            auths.insert(source.registry, found);
        }
    }
    Ok(())
}

/// The credentials of every registry a pull of `reference` may reach.
async fn auths_for(
    client: &Client,
    config: &crate::docker_config::DockerConfig,
    reference: &str,
    auths: &mut BTreeMap<String, paracloud_api::RegistryCredentials>,
) -> Result<()> {
    let sources = sources_of(client, reference).await?;
    add_credentials(config, sources, auths)
}

/// Pulls the images of a manifest that the store lacks, with the progress of each, before the
/// deployment asks for them (the daemon would pull them too, but silently and without the
/// user's credentials).
async fn pull_missing(client: &Client, origin: &str, images: &[(String, String)]) -> Result<()> {
    let mut config = None;
    for (reference, user) in images {
        match client
            .call(&InspectImage {
                name: reference.clone(),
            })
            .await
        {
            Err(ClientError::Api { status, .. }) if status == 404 => {}
            // In the store, or a problem `up` itself will name.
            _ => continue,
        }
        if config.is_none() {
            config = Some(crate::docker_config::DockerConfig::load()?);
        }
        let mut auths = BTreeMap::new();
        if let Some(config) = &config {
            auths_for(client, config, reference, &mut auths).await?;
        }
        eprintln!("pulling {reference}");
        let request = paracloud_api::TransferRequest {
            reference: reference.clone(),
            target: None,
            username: None,
            password: None,
            auths,
        };
        let pulled = transfer(client, &PullImage(request)).await.map_err(|e| {
            anyhow!(
                "{origin}: {user}: image {reference} is not in the store and cannot be pulled: {e:#}\n(build or import it, or name a mirror of its registry in the state root's registries.toml)"
            )
        })?;
        eprintln!(
            "pulled {} {}",
            pulled.reference.as_deref().unwrap_or(reference),
            pulled.digest
        );
    }
    Ok(())
}

/// `up --dry-run`: the daemon checks what `up` would, and changes nothing.
async fn up_dry_run(global: &Global, files: &[PathBuf], profiles: &[String]) -> Result<()> {
    let mut manifest = load_manifests(files, profiles)?;
    let client = connect(global).await?;
    let config = crate::docker_config::DockerConfig::load()?;
    let mut auths = BTreeMap::new();
    for (reference, _) in &manifest.images {
        // A bad reference is the dry run's to locate, with the others.
        if let Ok(sources) = sources_of(&client, reference).await {
            add_credentials(&config, sources, &mut auths)?;
        }
    }
    manifest.request.dry_run = true;
    manifest.request.auths = auths;
    let response = client.call(&Up(manifest.request)).await.map_err(explain)?;
    print(global.output, &response, |r| {
        let mut out = String::new();
        for check in &r.checked {
            out.push_str(&format!(
                "{}: {}: {}\n",
                check.user, check.image, check.status
            ));
        }
        if !r.changed.is_empty() {
            out.push_str(&format!("would change: {}\n", r.changed.join(", ")));
        }
        let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        out.push_str(&format!(
            "{}: {} is valid; nothing was started\n",
            r.app,
            shown.join(" + ")
        ));
        out
    })
}

async fn up(
    global: &Global,
    files: &[PathBuf],
    profiles: &[String],
    detach: bool,
    timeout: Duration,
) -> Result<()> {
    let manifest = load_manifests(files, profiles)?;
    let client = connect(global).await?;
    pull_missing(&client, &manifest.request.origin, &manifest.images).await?;
    let response = client.call(&Up(manifest.request)).await.map_err(explain)?;
    if !response.changed.is_empty() {
        eprintln!(
            "changed: {} (instances are replaced one by one)",
            response.changed.join(", ")
        );
    }
    if detach {
        eprintln!("{} deployed", response.app);
        return Ok(());
    }
    wait_ready(&client, &response.app, None, timeout).await?;
    let app = client
        .call(&GetApp {
            app: response.app.clone(),
        })
        .await
        .map_err(explain)?;
    wait_published(&app, timeout).await?;
    for service in &app.services {
        for published in &service.published {
            eprintln!("{}: {published}", service.name);
        }
    }
    eprintln!("{} is up", response.app);
    Ok(())
}

/// A service is settled when it has exactly its wanted instances, all ready at its revision.
/// Without a health check, an instance must also have stayed up for a second, so that a command
/// that exits at once is reported rather than taken for ready.
/// A one-off job (restarted never or only on failure) is settled once its instances have
/// completed, exit code 0.
fn settled(service: &ServiceView) -> bool {
    let min_uptime = if service.spec.health.is_some() { 0 } else { 1 };
    let job = service.spec.restart.condition != paracloud_manifest::RestartCondition::Always;
    service.instances.len() as u32 == service.replicas
        && service.instances.iter().all(|i| {
            let completed = job
                && i.state == "exited"
                && i.exit
                    .as_ref()
                    .is_some_and(|e| e.requested.is_none() && !e.is_failure());
            i.revision == service.revision
                && (completed
                    || (i.state == "running" && i.uptime_seconds.unwrap_or(0) >= min_uptime))
        })
}

/// Waits until the data plane listens on every published address of services with instances.
async fn wait_published(app: &AppView, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for service in app.services.iter().filter(|s| s.replicas > 0) {
        // A UDP address cannot be probed by connecting; the data plane binds it with the rest.
        let tcp = service.spec.ports.iter().filter(|p| !p.protocol.is_udp());
        for address in tcp.filter_map(|p| p.publish) {
            while tokio::net::TcpStream::connect(address).await.is_err() {
                if Instant::now() > deadline {
                    bail!(
                        "{}: nothing listens on {address} yet; see `paracloud events`",
                        service.name
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    Ok(())
}

/// Waits until every service (or `only` these) is settled, printing progress as it changes.
async fn wait_ready(
    client: &Client,
    app: &str,
    only: Option<&[String]>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let view = client
            .call(&GetApp { app: app.into() })
            .await
            .map_err(explain)?;
        let services: Vec<&ServiceView> = view
            .services
            .iter()
            .filter(|s| only.is_none_or(|o| o.contains(&s.name)))
            .collect();
        for service in &services {
            let line = format!(
                "{} {}/{} ready",
                service.name, service.ready, service.replicas
            );
            if shown.get(&service.name) != Some(&line) {
                eprintln!("  {line}");
                shown.insert(service.name.clone(), line);
            }
            // Only the instances the daemon started for the service's current revision count:
            // after a failed deploy, the old revision's exits are not the new one's.
            let crash_looping = service
                .instances
                .iter()
                .filter(|i| i.revision == service.revision)
                .find(|i| i.restarts >= 3 && i.exit.is_some());
            if let Some(bad) = crash_looping {
                let logs = instance_log_tail(client, app, &bad.instance).await;
                let why = bad
                    .exit
                    .as_ref()
                    .map(ExitInfo::describe)
                    .unwrap_or_default();
                bail!(
                    "service {} does not come up: {} {why} ({} restarts)\nlast lines of its output:\n{logs}\n(see `paracloud logs {}` and `paracloud describe {}`)",
                    service.name,
                    bad.instance,
                    bad.restarts,
                    bad.instance,
                    service.name
                );
            }
        }
        if services.iter().all(|s| settled(s)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let reasons: Vec<String> = services
                .iter()
                .flat_map(|s| not_ready(s).into_iter().chain(s.waiting.clone()))
                .collect();
            bail!(
                "not ready after {} s{}; see `paracloud describe` and `paracloud logs`",
                timeout.as_secs(),
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {}", first_reasons(&reasons, SHOWN_REASONS))
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Why each instance of the service's current revision is not ready: what its health probes
/// answer, how it ended, or its state.
fn not_ready(service: &ServiceView) -> Vec<String> {
    service
        .instances
        .iter()
        .filter(|i| i.revision == service.revision && i.state != "running")
        .map(|i| {
            let why = match (&i.health_failure, &i.exit) {
                (Some(failure), _) => failure.to_string(),
                (None, Some(exit)) => exit.describe(),
                (None, None) => i.state.clone(),
            };
            format!("{}: {why}", i.instance)
        })
        .collect()
}

async fn instance_log_tail(client: &Client, app: &str, instance: &str) -> String {
    let logs = Logs {
        app: app.into(),
        target: Some(instance.into()),
        tail: Some(10),
        follow: false,
    };
    match client.stream(&logs).await {
        Ok(body) => match body.collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(e) => format!("(cannot read: {e})"),
        },
        Err(e) => format!("(cannot read: {e})"),
    }
}

async fn down(global: &Global, file: Option<&Path>, volumes: bool) -> Result<()> {
    let client = connect(global).await?;
    let app = resolve_app(global, &client, file).await?;
    let view = client
        .call(&Down {
            app: app.clone(),
            volumes,
        })
        .await
        .map_err(explain)?;
    let count: usize = view.services.iter().map(|s| s.instances.len()).sum();
    eprintln!("stopping {count} instances of {app}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match client.call(&GetApp { app: app.clone() }).await {
            Err(ClientError::Api { status, .. }) if status == hyper::StatusCode::NOT_FOUND => break,
            Err(e) => return Err(explain(e)),
            Ok(_) if Instant::now() > deadline => {
                bail!("{app} is still being removed after 120 s; see `paracloud events`")
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    eprintln!(
        "{app} removed{}",
        if volumes {
            " with its volumes"
        } else {
            " (volumes kept; --volumes removes them)"
        }
    );
    Ok(())
}

async fn ps(global: &Global, file: Option<&Path>, all_apps: bool) -> Result<()> {
    let client = connect(global).await?;
    let app = if all_apps {
        None
    } else {
        match resolve_app(global, &client, file).await {
            Ok(app) => Some(app),
            // Nothing runs: an empty list, as docker ps shows.
            Err(_) if global.app.is_none() && file.is_none() => None,
            Err(e) => return Err(e),
        }
    };
    let instances = client.call(&ListInstances { app }).await.map_err(explain)?;
    print(global.output, &instances, |instances| {
        let rows: Vec<Vec<String>> = instances
            .iter()
            .map(|i| {
                vec![
                    i.app.clone(),
                    i.service.clone(),
                    i.instance.clone(),
                    i.state.clone(),
                    i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    i.address.clone().unwrap_or_else(|| "-".into()),
                    i.uptime_seconds.map(age).unwrap_or_else(|| "-".into()),
                    i.restarts.to_string(),
                ]
            })
            .collect();
        table(
            &[
                "APP", "SERVICE", "INSTANCE", "STATE", "PID", "ADDRESS", "UPTIME", "RESTARTS",
            ],
            &rows,
        )
    })
}

async fn logs(global: &Global, target: Option<String>, follow: bool, tail: usize) -> Result<()> {
    let client = connect(global).await?;
    let app = resolve_app(global, &client, None).await?;
    let logs = Logs {
        app,
        target,
        tail: Some(tail),
        follow,
    };
    let mut body = client.stream(&logs).await.map_err(explain)?;
    let mut stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            stdout.write_all(&data)?;
            stdout.flush()?;
        }
    }
    Ok(())
}

async fn scale(global: &Global, specs: &[String], cpu: Option<&str>, detach: bool) -> Result<()> {
    let cpu = cpu.map(parse_cores).transpose()?;
    let pairs = specs
        .iter()
        .map(|s| parse_scale(s, cpu.is_some()))
        .collect::<Result<Vec<_>>>()?;
    let client = connect(global).await?;
    let app = resolve_app(global, &client, None).await?;
    for (service, replicas) in &pairs {
        if let Some(cpu) = cpu {
            let route = SetCpu {
                app: app.clone(),
                service: service.clone(),
                body: CpuRequest { cpu },
            };
            client.call(&route).await.map_err(explain)?;
        }
        if let Some(replicas) = replicas {
            let route = Scale {
                app: app.clone(),
                service: service.clone(),
                body: ScaleRequest {
                    replicas: *replicas,
                },
            };
            client.call(&route).await.map_err(explain)?;
        }
    }
    if !detach {
        let names: Vec<String> = pairs.iter().map(|(s, _)| s.clone()).collect();
        wait_ready(&client, &app, Some(&names), Duration::from_secs(120)).await?;
    }
    for (service, replicas) in &pairs {
        if let Some(replicas) = replicas {
            eprintln!("{service}: {replicas} instances");
        }
        if let Some(cpu) = cpu {
            eprintln!("{service}: {cpu} CPU per instance");
        }
    }
    Ok(())
}

/// Parses `canary=20` into (revision, percent).
fn parse_share(spec: &str) -> Result<(String, u32)> {
    let (revision, percent) = split_assignment(spec, "revision", "percent", "canary=20")?;
    let percent = percent
        .trim_end_matches('%')
        .parse::<u32>()
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| {
            anyhow!("`{spec}`: the share is a percent from 0 to 100 (e.g. {revision}=20)")
        })?;
    Ok((revision.to_string(), percent))
}

async fn traffic(global: &Global, service: &str, shares: &[String]) -> Result<()> {
    let weights = shares
        .iter()
        .map(|s| parse_share(s))
        .collect::<Result<BTreeMap<_, _>>>()?;
    let client = connect(global).await?;
    let app = resolve_app(global, &client, None).await?;
    let view = if weights.is_empty() {
        let route = GetService {
            app,
            service: service.into(),
        };
        client.call(&route).await.map_err(explain)?
    } else {
        let route = SetTraffic {
            app,
            service: service.into(),
            body: TrafficRequest { weights },
        };
        client.call(&route).await.map_err(explain)?
    };
    print(global.output, &view.traffic, |traffic| {
        if traffic.is_empty() {
            return format!(
                "{service} has no revisions: all its requests go to it \
                 (declare one under [services.{service}.revisions.NAME])\n"
            );
        }
        let rows: Vec<Vec<String>> = traffic
            .iter()
            .map(|t| {
                vec![
                    t.service.clone(),
                    t.revision.clone().unwrap_or_else(|| "-".into()),
                    format!("{}%", t.weight),
                    t.ready.to_string(),
                ]
            })
            .collect();
        table(&["SERVICE", "REVISION", "SHARE", "READY"], &rows)
    })
}

async fn restart(global: &Global, services: Vec<String>) -> Result<()> {
    let client = connect(global).await?;
    let app = resolve_app(global, &client, None).await?;
    let services = if services.is_empty() {
        let view = client
            .call(&GetApp { app: app.clone() })
            .await
            .map_err(explain)?;
        view.services.into_iter().map(|s| s.name).collect()
    } else {
        services
    };
    for service in &services {
        let route = Restart {
            app: app.clone(),
            service: service.clone(),
        };
        client.call(&route).await.map_err(explain)?;
    }
    wait_ready(&client, &app, Some(&services), Duration::from_secs(120)).await?;
    eprintln!("restarted {}", services.join(", "));
    Ok(())
}

async fn migrate(
    global: &Global,
    instance: &str,
    via: Option<String>,
    revision: Option<String>,
    cpus: Option<&str>,
) -> Result<()> {
    let cpus = cpus
        .map(|c| {
            c.parse::<f64>().map_err(|_| {
                anyhow::anyhow!("--cpus {c:?} is not a number of cores: write it like 0.5 or 2")
            })
        })
        .transpose()?;
    let client = connect(global).await?;
    let app = resolve_app(global, &client, None).await?;
    let request = paracloud_api::MigrateRequest {
        via,
        revision,
        cpus,
    };
    let route = Migrate {
        app,
        instance: instance.into(),
        body: request,
    };
    let done = client.call(&route).await.map_err(explain)?;
    crate::output::migrated(global.output, &done)
}

/// `paracloud dataplane restart`: a new data plane, the old one drained; says both pids and how
/// long each step took.
async fn restart_dataplane(global: &Global, drain_timeout: Duration) -> Result<()> {
    let drain_timeout_ms = u64::try_from(drain_timeout.as_millis()).unwrap_or(u64::MAX);
    let client = connect(global).await?;
    let request = paracloud_api::DataplaneRestartRequest {
        drain_timeout_ms: Some(drain_timeout_ms),
    };
    let done = client
        .call(&RestartDataplane(request))
        .await
        .map_err(explain)?;
    if global.output != Output::Table {
        return print(global.output, &done, |_| String::new());
    }
    match done.old_pid {
        Some(old) => {
            eprintln!(
                "data plane restarted: pid {old} -> pid {} (ready in {} ms)",
                done.new_pid, done.ready_ms
            );
            if done.drained {
                eprintln!(
                    "pid {old} drained in {} ms: every connection finished",
                    done.drain_ms
                );
            } else {
                eprintln!(
                    "pid {old} ended after {} ms: the connections still open at the drain timeout ({}) were closed",
                    done.drain_ms,
                    humantime::format_duration(drain_timeout)
                );
            }
        }
        None => eprintln!(
            "no data plane was running: started pid {} (ready in {} ms)",
            done.new_pid, done.ready_ms
        ),
    }
    Ok(())
}

async fn describe(global: &Global, service: &str) -> Result<()> {
    let client = connect(global).await?;
    let app = resolve_app(global, &client, None).await?;
    let view = client
        .call(&GetService {
            app: app.clone(),
            service: service.into(),
        })
        .await
        .map_err(explain)?;
    let events = client
        .call(&ListEvents {
            app: Some(app),
            after: None,
            limit: Some(500),
        })
        .await
        .map_err(explain)?;
    print(global.output, &view, |v| {
        let spec = &v.spec;
        let mut out = String::new();
        let mut field = |name: &str, value: String| out.push_str(&format!("{name:<14}{value}\n"));
        field("Service:", format!("{} (app {})", v.name, v.app));
        field("Address:", v.address.clone());
        field(
            "Published:",
            if v.published.is_empty() {
                "-".into()
            } else {
                v.published.join(", ")
            },
        );
        field(
            "Replicas:",
            format!("{} wanted, {} ready", v.replicas, v.ready),
        );
        field("Revision:", v.revision.to_string());
        field(
            "User ids:",
            match &v.host_ids {
                None => "a user namespace per instance: root inside is an unprivileged host user"
                    .to_string(),
                Some(why) => format!("the host's: {why}"),
            },
        );
        if let Some(of) = &spec.revision_of {
            field(
                "Revision of:",
                format!(
                    "{} as `{}`, {}% of its traffic",
                    of.service, of.revision, of.weight
                ),
            );
        }
        if !v.traffic.is_empty() {
            let split: Vec<String> = v
                .traffic
                .iter()
                .map(|t| format!("{} {}% ({} ready)", t.service, t.weight, t.ready))
                .collect();
            field("Traffic:", split.join(", "));
        }
        if let Some(idle) = spec.scale_to_zero {
            field(
                "Scale to 0:",
                format!("after {} idle", humantime::format_duration(idle)),
            );
        }
        if let Some(catalogued) = &spec.catalog {
            let entry = paracloud_manifest::catalog::entry_of(catalogued.kind);
            let role = match &catalogued.role {
                paracloud_manifest::CatalogRole::Primary => format!(
                    "the primary (the write address); its replicas are {}",
                    paracloud_manifest::catalog::read_service_name(&v.name)
                ),
                paracloud_manifest::CatalogRole::ReadReplicas { primary } => {
                    format!("the replicas of {primary} (the read address, over them and {primary})")
                }
                paracloud_manifest::CatalogRole::Site => match catalogued.kind {
                    paracloud_manifest::CatalogKind::Php => "its instances, each an nginx in front of php-fpm serving the application's root read-only".to_owned(),
                    _ => "its instances, each an nginx serving the site's root read-only".to_owned(),
                },
                paracloud_manifest::CatalogRole::Workers(farm) => format!(
                    "its workers: at most {}, each task retried {} times, stopped after {}",
                    farm.max_workers,
                    farm.retries,
                    humantime::format_duration(std::time::Duration::from_millis(
                        farm.task_timeout_ms
                    ))
                ),
            };
            let name = match catalogued.version.as_str() {
                "" => entry.name.to_owned(),
                version => format!("{} {version}", entry.name),
            };
            field("Catalogue:", format!("{name}, {role}"));
        }
        field("Image:", format!("{:?}", spec.image));
        field("Command:", spec.argv().join(" "));
        let ports: Vec<String> = spec
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol.name()))
            .collect();
        field("Ports:", ports.join(", "));
        field(
            "Health:",
            spec.health
                .as_ref()
                .map(|h| {
                    format!(
                        "{:?} every {:?}{}",
                        h.probe,
                        h.interval,
                        if h.restart {
                            ""
                        } else {
                            " (not restarted when it fails: it leaves the routes)"
                        }
                    )
                })
                .unwrap_or("-".into()),
        );
        let r = &spec.resources;
        field(
            "Resources:",
            format!(
                "cpu {}{}, memory {}, pids {}",
                v.cpu.map(|c| c.to_string()).unwrap_or("unlimited".into()),
                if v.cpu == r.cpu {
                    String::new()
                } else {
                    let manifest = r.cpu.map(|c| c.to_string()).unwrap_or("unlimited".into());
                    format!(" (changed since `up`; the manifest says {manifest})")
                },
                r.memory
                    .map(|m| format!("{} MiB", m / (1024 * 1024)))
                    .unwrap_or("unlimited".into()),
                r.pids.map(|p| p.to_string()).unwrap_or("unlimited".into())
            ),
        );
        field(
            "Restart:",
            format!("{:?}", spec.restart.condition).to_lowercase(),
        );
        let rows: Vec<Vec<String>> = v
            .instances
            .iter()
            .map(|i| {
                vec![
                    i.instance.clone(),
                    i.state.clone(),
                    i.pid.map(|p| p.to_string()).unwrap_or("-".into()),
                    i.address.clone().unwrap_or("-".into()),
                    i.uptime_seconds.map(age).unwrap_or("-".into()),
                    i.restarts.to_string(),
                    i.capacity_rps
                        .map(|rps| {
                            // A database server's requests are its queries.
                            let unit = if i.queries_per_second.is_some() {
                                "queries/s"
                            } else {
                                "req/s"
                            };
                            format!("{rps:.0} {unit}")
                        })
                        .unwrap_or("-".into()),
                ]
            })
            .collect();
        out.push_str("\nInstances:\n");
        out.push_str(&table(
            &[
                "INSTANCE", "STATE", "PID", "ADDRESS", "UPTIME", "RESTARTS", "CAPACITY",
            ],
            &rows,
        ));
        for w in &v.waiting {
            out.push_str(&format!("waiting: {w}\n"));
        }
        for i in &v.instances {
            if let Some(failure) = &i.health_failure {
                out.push_str(&format!("health: {}: {failure}\n", i.instance));
            }
        }
        for i in &v.instances {
            if let Some(line) = server_line(i) {
                out.push_str(&format!("server: {}: {line}\n", i.instance));
            }
        }
        let prefix = format!("{}.", v.name);
        let recent: Vec<&Event> = events
            .iter()
            .filter(|e| e.subject == v.name || e.subject.starts_with(&prefix))
            .collect();
        out.push_str("\nEvents:\n");
        for e in recent.iter().rev().take(15).rev() {
            out.push_str(&format!(
                "  {}  {:<8} {}\n",
                format_time(e.at),
                e.subject,
                e.message
            ));
        }
        out
    })
}

async fn events(global: &Global, follow: bool) -> Result<()> {
    let client = connect(global).await?;
    let app = global.app.clone();
    let mut after = 0i64;
    loop {
        let route = ListEvents {
            app: app.clone(),
            after: Some(after),
            limit: Some(1000),
        };
        let events = client.call(&route).await.map_err(explain)?;
        if global.output == Output::Table {
            for e in &events {
                println!(
                    "{}  {:<10} {:<10} {}",
                    format_time(e.at),
                    e.app,
                    e.subject,
                    e.message
                );
            }
        } else {
            for e in &events {
                println!("{}", serde_json::to_string(e)?);
            }
        }
        after = events.last().map(|e| e.id).unwrap_or(after);
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One row of `top`: a listener (a service's address or published port) or one of its instances.
fn top_row(
    name: String,
    counters: &paracloud_dataplane::CounterValues,
    second: &paracloud_dataplane::LastSecond,
    weight: Option<u32>,
) -> Vec<String> {
    let ms = |v: f64| {
        if second.requests == 0 {
            "-".to_string()
        } else {
            format!("{v:.1}")
        }
    };
    vec![
        name,
        second.requests.to_string(),
        second.errors.to_string(),
        ms(second.p50_ms),
        ms(second.p95_ms),
        ms(second.p99_ms),
        counters.in_flight.max(counters.active).to_string(),
        counters.requests.to_string(),
        counters.accepted.to_string(),
        if counters.held == 0 {
            "-".to_string()
        } else {
            format!(
                "{} (max {:.0} ms)",
                counters.held,
                counters.held_max_us as f64 / 1000.0
            )
        },
        weight.map_or("-".to_string(), |w| w.to_string()),
    ]
}

async fn top(global: &Global, once: bool) -> Result<()> {
    let client = connect(global).await?;
    let app = resolve_app(global, &client, None).await.ok();
    let route = GetStats { app };
    loop {
        let snapshot = client.call(&route).await.map_err(explain)?;
        if !once && global.output == Output::Table {
            // Clear the screen and go home, as top does.
            print!("\x1b[2J\x1b[H");
        }
        print(global.output, &snapshot, |snapshot| {
            let mut rows = Vec::new();
            for listener in &snapshot.listeners {
                rows.push(top_row(
                    listener.name.clone(),
                    &listener.counters,
                    &listener.last_second,
                    None,
                ));
                for backend in &listener.backends {
                    let name = format!(
                        "  {}{}",
                        backend.id,
                        if backend.ejected { " (ejected)" } else { "" }
                    );
                    rows.push(top_row(
                        name,
                        &backend.counters,
                        &backend.last_second,
                        Some(backend.weight),
                    ));
                }
            }
            let mut out = table(
                &[
                    "LISTENER / INSTANCE",
                    "REQ/S",
                    "ERR/S",
                    "P50 MS",
                    "P95 MS",
                    "P99 MS",
                    "ACTIVE",
                    "REQUESTS",
                    "CONNECTIONS",
                    "COLD STARTS",
                    "WEIGHT",
                ],
                &rows,
            );
            if !snapshot.calls.is_empty() {
                let calls: Vec<Vec<String>> = snapshot
                    .calls
                    .iter()
                    .map(|c| {
                        vec![
                            format!("{} -> {}", c.from, c.to),
                            c.last_second.to_string(),
                            c.requests.to_string(),
                        ]
                    })
                    .collect();
                out.push('\n');
                out.push_str(&table(&["CALLS", "PER SECOND", "TOTAL"], &calls));
            }
            out
        })?;
        if once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn password(auth: &crate::cli::RegistryAuth) -> Result<Option<String>> {
    if auth.password_stdin {
        let mut text = String::new();
        std::io::stdin().read_line(&mut text)?;
        return Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(std::env::var("PARACLOUD_REGISTRY_PASSWORD").ok())
}

/// Sends a pull or push and follows its progress: a bar per layer when stderr is a terminal.
async fn transfer(
    client: &Client,
    route: &impl Route<Answer = JsonLines<TransferEvent>>,
) -> Result<paracloud_api::ImageRef> {
    use std::io::IsTerminal;

    let mut events = client.lines(route).await.map_err(explain)?;
    let bars = std::io::stderr()
        .is_terminal()
        .then(indicatif::MultiProgress::new);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let mut by_digest: std::collections::HashMap<String, indicatif::ProgressBar> =
        std::collections::HashMap::new();
    let mut outcome = None;
    while let Some(event) = events
        .next()
        .await
        .context("reading the transfer's progress")?
    {
        match (&event, &bars) {
            (TransferEvent::Started { digest, size }, Some(bars)) => {
                let bar = bars.add(indicatif::ProgressBar::new(*size));
                bar.set_style(style.clone());
                bar.set_prefix(digest.trim_start_matches("sha256:")[..12].to_owned());
                by_digest.insert(digest.clone(), bar);
            }
            (TransferEvent::Bytes { digest, done }, Some(_)) => {
                if let Some(bar) = by_digest.get(digest) {
                    bar.set_position(*done);
                }
            }
            (TransferEvent::Done { digest }, Some(_)) => {
                if let Some(bar) = by_digest.get(digest) {
                    bar.finish();
                }
            }
            (TransferEvent::Finished { .. } | TransferEvent::Failed { .. }, _) => {
                outcome = Some(event.clone());
            }
            _ => {}
        }
    }
    match outcome {
        Some(TransferEvent::Finished { reference, digest }) => Ok(paracloud_api::ImageRef {
            reference: Some(reference),
            digest,
        }),
        Some(TransferEvent::Failed { error }) => bail!("{error}"),
        _ => bail!("the daemon ended the transfer without saying how it went; see its log"),
    }
}

fn print_transferred(global: &Global, done: &paracloud_api::ImageRef) -> Result<()> {
    print(global.output, done, |d| {
        format!(
            "{} {}\n",
            d.reference.as_deref().unwrap_or_default(),
            d.digest
        )
    })
}

/// `--secret id=NAME,src=FILE` (also `source=`, and `type=file`), as docker takes it.
fn secret(text: &str) -> Result<(String, PathBuf)> {
    let (mut id, mut src) = (None, None);
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v.to_owned()),
            Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
            Some(("type", "file")) => {}
            _ => bail!(
                "--secret {text:?}: {part:?} is not id=NAME, src=FILE or type=file (such as --secret id=token,src=./token.txt)"
            ),
        }
    }
    match (id, src) {
        (Some(id), Some(src)) if !id.is_empty() => Ok((id, absolute(&src)?)),
        _ => bail!("--secret {text:?} needs id=NAME and src=FILE (such as --secret id=token,src=./token.txt)"),
    }
}

async fn build(global: &Global, args: crate::cli::BuildArgs) -> Result<()> {
    let mut build_args = std::collections::BTreeMap::new();
    for pair in &args.build_args {
        let (name, value) = pair.split_once('=').ok_or_else(|| {
            anyhow!("--build-arg {pair:?} is not NAME=VALUE (such as --build-arg VERSION=2)")
        })?;
        build_args.insert(name.to_owned(), value.to_owned());
    }
    let request = paracloud_api::BuildRequest {
        context: absolute(&args.context)?,
        file: args.file.map(|f| absolute(&f)).transpose()?,
        tag: args.tag,
        build_args,
        target: args.target,
        platform: args.platform,
        secrets: args
            .secrets
            .iter()
            .map(|s| secret(s))
            .collect::<Result<_>>()?,
    };
    let client = connect(global).await?;
    let mut events = client.lines(&BuildImage(request)).await.map_err(explain)?;
    // The steps and the RUN steps' output as they come, on stderr; the outcome on stdout.
    let mut outcome = None;
    while let Some(event) = events
        .next()
        .await
        .context("reading the build's progress")?
    {
        match event {
            BuildEvent::Step { step } => eprintln!(
                "[{}] line {}{} {}",
                step.stage,
                step.line,
                if step.cached { " CACHED" } else { "" },
                step.instruction
            ),
            // A line of no stage: what the build does besides its steps (pulling a base image).
            BuildEvent::Output { stage, text, .. } if stage.is_empty() => eprintln!("{text}"),
            BuildEvent::Output { stage, line, text } => eprintln!("[{stage}] line {line} | {text}"),
            BuildEvent::Finished { build } => outcome = Some(Ok(build)),
            BuildEvent::Failed { error } => outcome = Some(Err(error)),
        }
    }
    let built = match outcome {
        Some(Ok(built)) => built,
        Some(Err(error)) => bail!("{error}"),
        None => bail!("the daemon ended the build without saying how it went; see its log"),
    };
    print(global.output, &built, |b| {
        format!(
            "built {} ({}): {} layers, {}\n",
            b.reference,
            b.digest,
            b.layers,
            human_size(b.size)
        )
    })
}

/// Bytes as docker shows sizes: 7.5MB, 812kB.
fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2}GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0}kB", b / 1e3)
    } else {
        format!("{bytes}B")
    }
}

fn image_refs_table(refs: &[paracloud_api::ImageRef]) -> String {
    let rows: Vec<Vec<String>> = refs
        .iter()
        .map(|r| {
            vec![
                r.reference.clone().unwrap_or_else(|| "<none>".into()),
                r.digest.clone(),
            ]
        })
        .collect();
    table(&["IMAGE", "DIGEST"], &rows)
}

async fn image_command(global: &Global, command: ImageCommand) -> Result<()> {
    // The daemon owns the store; as `up` does, the command starts one when none runs.
    let client = connect(global).await?;
    match command {
        ImageCommand::Pull { reference, auth } => {
            let request = paracloud_api::TransferRequest {
                reference,
                target: None,
                username: auth.username.clone(),
                password: password(&auth)?,
                auths: Default::default(),
            };
            let mut request = request;
            let config = crate::docker_config::DockerConfig::load()?;
            auths_for(&client, &config, &request.reference, &mut request.auths).await?;
            let done = transfer(&client, &PullImage(request)).await?;
            print_transferred(global, &done)
        }
        ImageCommand::Push { name, target, auth } => {
            let request = paracloud_api::TransferRequest {
                reference: name,
                target,
                username: auth.username.clone(),
                password: password(&auth)?,
                auths: Default::default(),
            };
            let done = transfer(&client, &PushImage(request)).await?;
            print_transferred(global, &done)
        }
        ImageCommand::Ls => {
            let images = client.call(&ListImages).await.map_err(explain)?;
            print(global.output, &images, |images| {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        let (name, tag) = i
                            .reference
                            .rsplit_once(':')
                            .filter(|(_, t)| !t.contains('/'))
                            .unwrap_or((&i.reference, ""));
                        vec![
                            name.to_owned(),
                            tag.to_owned(),
                            i.digest
                                .trim_start_matches("sha256:")
                                .chars()
                                .take(12)
                                .collect(),
                            i.layers.to_string(),
                            human_size(i.size),
                        ]
                    })
                    .collect();
                table(&["REPOSITORY", "TAG", "IMAGE ID", "LAYERS", "SIZE"], &rows)
            })
        }
        ImageCommand::Build {
            from_binary,
            add,
            tag,
        } => {
            let request = paracloud_api::MicroImageRequest {
                binary: absolute(&from_binary)?,
                add: add.iter().map(|a| absolute(a)).collect::<Result<_>>()?,
                tag,
            };
            let built = client
                .call(&BuildMicroImage(request))
                .await
                .map_err(explain)?;
            print(global.output, &built, |b| {
                format!(
                    "built {} ({}): {} in one layer, {} entries\n",
                    b.reference,
                    b.digest,
                    human_size(b.size),
                    b.files
                )
            })
        }
        ImageCommand::Inspect { name } => {
            let detail = client.call(&InspectImage { name }).await.map_err(explain)?;
            // The table form is YAML: a nested record reads best so.
            let format = match global.output {
                Output::Table => Output::Yaml,
                other => other,
            };
            print(format, &detail, |_| String::new())
        }
        ImageCommand::Rm { names } => {
            let mut removed = Vec::new();
            for name in &names {
                let r = client
                    .call(&RemoveImage { name: name.clone() })
                    .await
                    .map_err(explain)?;
                removed.extend(r.removed);
            }
            print(global.output, &removed, |removed| {
                removed.iter().map(|r| format!("untagged {r}\n")).collect()
            })
        }
        ImageCommand::Prune => {
            let pruned = client.call(&PruneImages).await.map_err(explain)?;
            print(global.output, &pruned, |p| {
                format!(
                    "removed {} blobs and {} unpacked layers, {} freed\n",
                    p.blobs,
                    p.layers,
                    human_size(p.bytes)
                )
            })
        }
        ImageCommand::Import { path, tag } => {
            let request = paracloud_api::ImportRequest {
                path: absolute(&path)?,
                tag,
            };
            let imported = client.call(&ImportImages(request)).await.map_err(explain)?;
            print(global.output, &imported, |r| image_refs_table(r))
        }
        ImageCommand::Export { names, to } => {
            let request = paracloud_api::ExportRequest {
                names,
                path: absolute(&to)?,
            };
            let exported = client.call(&ExportImages(request)).await.map_err(explain)?;
            print(global.output, &exported, |r| image_refs_table(r))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_wait_names_ten_instances_and_counts_the_rest() {
        let reasons: Vec<String> = (1..=1000).map(|n| format!("web.{n}: starting")).collect();
        let said = first_reasons(&reasons, SHOWN_REASONS);
        assert!(
            said.starts_with("web.1: starting; web.2: starting;"),
            "{said}"
        );
        assert!(
            said.ends_with("web.10: starting; and 990 more not ready"),
            "{said}"
        );
        assert_eq!(
            first_reasons(&reasons[..2], 10),
            "web.1: starting; web.2: starting"
        );
    }

    #[test]
    fn scale_arguments_say_what_is_wrong() {
        assert_eq!(
            parse_scale("api=3", false).unwrap(),
            ("api".into(), Some(3))
        );
        assert_eq!(
            parse_scale("api=0", false).unwrap(),
            ("api".into(), Some(0))
        );
        assert_eq!(
            parse_scale("api", false).unwrap_err().to_string(),
            "`api` is not SERVICE=COUNT: write for example api=3 \
             (or name it alone with --cpu CORES to change its CPU per instance)"
        );
        assert!(parse_scale("api=-1", false)
            .unwrap_err()
            .to_string()
            .contains("whole number"));
        assert!(parse_scale("=2", false)
            .unwrap_err()
            .to_string()
            .contains("names no service"));
    }

    #[test]
    fn with_cpu_a_service_may_be_named_alone() {
        assert_eq!(parse_scale("api", true).unwrap(), ("api".into(), None));
        assert_eq!(parse_scale("api=2", true).unwrap(), ("api".into(), Some(2)));
        assert_eq!(parse_cores("1.5").unwrap(), 1.5);
        for bad in ["0", "-1", "abc", "inf", "NaN"] {
            let err = parse_cores(bad).unwrap_err().to_string();
            assert!(err.contains("such as --cpu 0.5"), "{bad}: {err}");
        }
    }

    #[test]
    fn traffic_shares_are_percents() {
        assert_eq!(parse_share("canary=20").unwrap(), ("canary".into(), 20));
        assert_eq!(parse_share("canary=5%").unwrap(), ("canary".into(), 5));
        assert_eq!(
            parse_share("canary").unwrap_err().to_string(),
            "`canary` is not REVISION=PERCENT: write for example canary=20"
        );
        assert!(parse_share("=2")
            .unwrap_err()
            .to_string()
            .contains("names no revision"));
        assert!(parse_share("canary=101")
            .unwrap_err()
            .to_string()
            .contains("a percent from 0 to 100"));
    }
}
