//! Capsules on the node: a built-in capsule of `paracloud-capsule`'s catalog attached to one
//! container of a pod with the local runtime's own code (`paracloud_runtime::capsule`: the
//! container's namespaces from its first process, a cgroup of the capsule's own under the
//! agent's cgroup parent, a subreaper that kills what the function leaves), its output streamed
//! back as it comes, its end recorded in the audit log.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paracloud_api::{CapsuleFile, CapsuleRunEvent};
use paracloud_capsule::{Access, CapsuleSpec};
use paracloud_image::{registries, registry, ImageDefaults, Reference, StoreError};
use paracloud_manifest::{AppCapsule, Image};
use paracloud_runtime::{CapsuleConfig, Limits, Rootfs};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::agent::{now_ms, Agent};
use crate::audit;
use crate::oci::{Container, Pod};
use crate::refresh::refresh;

/// Output directories of this many last runs are kept, as the daemon keeps them.
pub const KEPT_RUNS: usize = 50;

/// PATH inside a built-in capsule: its programs first, busybox's applets last.
const CAPSULE_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/capsule/bin";
/// How long a capsule gets between SIGTERM at its deadline and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// `POST /v1/capsules`: which capsule, on which container of which pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsuleRequest {
    /// The pod's uid, or `NAMESPACE/NAME`.
    pub pod: String,
    /// The container's name in the pod.
    pub container: String,
    /// A built-in capsule (`paracloud capsule ls`).
    pub capsule: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Overrides the capsule's deadline, in milliseconds (a schedule's `timeout`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Why a run could not start; the API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum CapsuleError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// The pod `name` names (its uid, or `NAMESPACE/NAME`) among `pods`.
pub fn find_pod<'a>(
    pods: &'a std::collections::BTreeMap<String, Pod>,
    name: &str,
) -> Option<&'a Pod> {
    pods.get(name).or_else(|| {
        let (namespace, pod) = name.split_once('/')?;
        pods.values()
            .find(|p| p.pod.namespace == namespace && p.pod.name == pod)
    })
}

/// Checks the request, attaches the capsule and returns its events: `Started`, the output,
/// `Exited` and `Finished`. Nothing of it is left in the pod once `Finished` is sent.
pub async fn run(
    agent: &Arc<Agent>,
    caller_uid: Option<u32>,
    request: CapsuleRequest,
) -> Result<mpsc::UnboundedReceiver<CapsuleRunEvent>, CapsuleError> {
    let mut pods = agent.pods();
    if find_pod(&pods, &request.pod).is_none() {
        // Started since the last look, perhaps.
        pods = refresh(agent)
            .await
            .map_err(|e| CapsuleError::Unavailable(e.to_string()))?;
    }
    let pod = find_pod(&pods, &request.pod).cloned().ok_or_else(|| {
        CapsuleError::NotFound(format!(
            "no pod {:?} on this node (by uid or NAMESPACE/NAME)",
            request.pod
        ))
    })?;
    let container = pod.container(&request.container).cloned().ok_or_else(|| {
        let names: Vec<&str> = pod
            .containers
            .iter()
            .filter(|c| !c.name.is_empty())
            .map(|c| c.name.as_str())
            .collect();
        CapsuleError::NotFound(format!(
            "pod {}/{} has no running container {:?}; its containers: {}",
            pod.pod.namespace,
            pod.pod.name,
            request.container,
            names.join(", ")
        ))
    })?;
    let chosen = match paracloud_capsule::builtin(&request.capsule) {
        Some(spec) => {
            deadline(&request, &spec)?;
            let missing = paracloud_image::capsule_image::missing_programs(&spec.programs);
            if !missing.is_empty() {
                return Err(CapsuleError::Unavailable(format!(
                    "capsule {} needs {} on this node; install it",
                    spec.name,
                    missing.join(", ")
                )));
            }
            let rootfs = capsule_root(agent, &spec).await?;
            Chosen {
                spec,
                rootfs,
                env: BTreeMap::new(),
            }
        }
        None => {
            let mut own = own_capsule(agent, &pod, &request.capsule).await?;
            deadline(&request, &own.spec())?;
            let rootfs = own_root(agent, &mut own).await?;
            Chosen {
                spec: own.spec(),
                rootfs,
                env: own.env,
            }
        }
    };
    let spec = chosen.spec.clone();
    let timeout = deadline(&request, &spec)?;
    let target = target_process(container.pid)?;
    let run = agent.next_run.fetch_add(1, Ordering::Relaxed);
    let config = config_for(agent, run, &pod, &container, chosen, &request.args);
    let (events, receiver) = mpsc::unbounded_channel();
    let _ = events.send(CapsuleRunEvent::Started {
        run: run as i64,
        targets: vec![target_name(&pod, &container)],
    });
    let agent = agent.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let Ended {
            code,
            error,
            timed_out,
        } = attach(&agent, &target, &config, timeout, &pod, &container, &events).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let record = audit::Record {
            time: audit::time(now_ms()),
            caller_uid,
            pod: pod.pod.clone(),
            container: container.name.clone(),
            capsule: spec.name.clone(),
            args: request.args.clone(),
            exit: code,
            error: error.clone(),
            duration_ms,
        };
        if let Err(e) = audit::append(&agent.config.audit_log(), &record) {
            tracing::warn!("cannot append to the audit log: {e}");
        }
        let _ = events.send(CapsuleRunEvent::Exited {
            instance: target_name(&pod, &container),
            exit_code: code,
            duration_ms,
            timed_out,
            files: list_files(&config.out_dir),
            error,
        });
        let _ = events.send(CapsuleRunEvent::Finished {
            run: run as i64,
            status: match code {
                Some(0) => "ok",
                _ if timed_out => "timeout",
                _ => "failed",
            }
            .into(),
            duration_ms,
            output_bytes: 0,
        });
        if let Some(runs) = config.out_dir.parent() {
            forget_old_outputs(runs, KEPT_RUNS);
        }
    });
    Ok(receiver)
}

/// Where run `run` leaves its files (its `/out`), under the agent's root.
pub fn run_output_dir(root: &std::path::Path, run: u64) -> std::path::PathBuf {
    root.join("capsules").join("runs").join(run.to_string())
}

/// Removes the output directories (`runs/N`) of all but the `keep` newest runs: the agent's
/// run numbers grow, but not by one across its restarts, so the newest are the largest.
fn forget_old_outputs(runs: &std::path::Path, keep: usize) {
    let mut numbered: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(runs)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let number = entry.file_name().to_str()?.parse().ok()?;
            Some((number, entry.path()))
        })
        .collect();
    numbered.sort();
    let old = numbered.len().saturating_sub(keep);
    for (_, dir) in numbered.into_iter().take(old) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `NAMESPACE/POD/CONTAINER`: how a run's events name its target.
fn target_name(pod: &Pod, container: &Container) -> String {
    format!("{}/{}/{}", pod.pod.namespace, pod.pod.name, container.name)
}

/// The container's first process, pinned by its start time against pid reuse.
fn target_process(pid: i32) -> Result<paracloud_runtime::Process, CapsuleError> {
    let gone = || CapsuleError::NotFound(format!("the container's process {pid} is gone"));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|_| gone())?;
    // Fields after the command's closing parenthesis: state is field 3, starttime field 22.
    let start_time = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|f| f.parse().ok())
        .ok_or_else(gone)?;
    paracloud_runtime::adopt_process(pid, start_time)
        .map_err(|e| CapsuleError::Internal(e.to_string()))?
        .ok_or_else(gone)
}

/// The capsule a run attaches: its spec, its root filesystem, and its own variables (an
/// application's capsule's image's and manifest's; none for a built-in one).
struct Chosen {
    spec: CapsuleSpec,
    rootfs: Rootfs,
    env: BTreeMap<String, String>,
}

/// The run's deadline: the request's, else the capsule's; zero is refused (before anything is
/// pulled or started).
fn deadline(request: &CapsuleRequest, spec: &CapsuleSpec) -> Result<Duration, CapsuleError> {
    let timeout = request
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(spec.timeout);
    if timeout.is_zero() {
        return Err(CapsuleError::BadRequest(
            "the timeout must be more than 0 ms".into(),
        ));
    }
    Ok(timeout)
}

/// The capsule `name` of the pod's application (`[capsules.NAME]` of its manifest), the
/// application proven by the pod's owners on the API server.
async fn own_capsule(
    agent: &Arc<Agent>,
    pod: &Pod,
    name: &str,
) -> Result<AppCapsule, CapsuleError> {
    let unknown = |also: String| {
        CapsuleError::NotFound(format!(
            "no capsule {name:?} on this node: the built-in ones are {}{also}",
            paracloud_capsule::builtin_names().join(", ")
        ))
    };
    let Some(cluster) = agent.cluster.as_ref() else {
        return Err(unknown(
            "; an application's own capsules are read from its resource, and this agent reaches no API server".into(),
        ));
    };
    let mut proven = agent.proven.lock().await;
    let Some(app) = proven.app(cluster, pod).await else {
        return Err(unknown(format!(
            "; pod {}/{} is of no ParacloudApp (its owners lead to none), so it has no capsules of its own",
            pod.pod.namespace, pod.pod.name
        )));
    };
    let own = app.manifest.capsules.get(name).cloned().ok_or_else(|| {
        let own: Vec<&str> = app.manifest.capsules.keys().map(String::as_str).collect();
        unknown(format!(
            ", and {}'s own are {}",
            app.manifest.app,
            if own.is_empty() {
                "none".to_owned()
            } else {
                own.join(", ")
            }
        ))
    })?;
    // The application's image and command run as root on the node: with no more than a pod
    // of it may add, whoever wrote its manifest.
    let beyond = paracloud_kube::render::beyond_baseline(&own.capabilities);
    if !beyond.is_empty() {
        return Err(CapsuleError::BadRequest(format!(
            "capsule {name} asks for {}, beyond what the Baseline Pod Security Standard lets a pod add; an application's own capsule gets no more on a cluster",
            beyond.join(", ")
        )));
    }
    Ok(own)
}

/// The application's capsule's image in the agent's store, pulled first when the store lacks
/// it (as a pod's image with `imagePullPolicy: IfNotPresent`), through the mirrors of
/// `<root>/registries.toml`; the image's variables and command are taken into `own`.
async fn own_root(agent: &Arc<Agent>, own: &mut AppCapsule) -> Result<Rootfs, CapsuleError> {
    let Image::Stored { reference, .. } = &own.image else {
        return Err(CapsuleError::Unavailable(format!(
            "capsule {}: its image is a layout or a directory of the deploying machine, which a node cannot read; push it to a registry (`paracloud image push`) and name it there in the manifest",
            own.name
        )));
    };
    let parsed: Reference = reference.parse().map_err(|e| {
        CapsuleError::BadRequest(format!("capsule {}: image {reference:?}: {e}", own.name))
    })?;
    let store = agent
        .images
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if matches!(store.lookup(reference), Err(StoreError::NotFound(_))) {
        let registries = registries::load(&agent.config.root.join("registries.toml"))
            .map_err(CapsuleError::Unavailable)?;
        let quiet: registry::ProgressFn = Arc::new(|_| {});
        registry::pull_via(&store, &parsed, &registries, &registry::Auths::new(), quiet)
            .await
            .map_err(|e| {
                CapsuleError::Unavailable(format!(
                    "capsule {}: image {reference} cannot be pulled on this node: {e}",
                    own.name
                ))
            })?;
        tracing::info!("capsule {}: image {reference} pulled", own.name);
    }
    let wanted = reference.clone();
    let image = tokio::task::spawn_blocking(move || {
        let digest = store.lookup(&wanted)?;
        store.image_by_digest(&digest)
    })
    .await
    .map_err(|e| CapsuleError::Internal(e.to_string()))?
    .map_err(|e| {
        CapsuleError::Unavailable(format!("capsule {}: image {reference}: {e}", own.name))
    })?;
    own.take_image_defaults(&ImageDefaults::from_config(&image.config));
    if let Some(why) = own.nothing_to_run() {
        return Err(CapsuleError::BadRequest(why));
    }
    Ok(Rootfs::Layers {
        layers: image.layers,
    })
}

/// The built-in capsule's image in the agent's store (built on first use) and its script layer.
async fn capsule_root(agent: &Arc<Agent>, spec: &CapsuleSpec) -> Result<Rootfs, CapsuleError> {
    let agent = agent.clone();
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || {
        let capsule = paracloud_image::capsule_image::BuiltinCapsule {
            name: &spec.name,
            script: spec.script,
            programs: &spec.programs,
            trees: &spec.trees,
        };
        let layers_dir = agent.config.root.join("capsules").join("layers");
        paracloud_image::capsule_image::builtin_layers(capsule, &layers_dir, |tag, busybox, add| {
            let store = agent.images.lock().unwrap_or_else(|e| e.into_inner());
            paracloud_image::capsule_image::micro_layers(&store, tag, busybox, add)
        })
        .map(|layers| Rootfs::Layers { layers })
    })
    .await
    .map_err(|e| CapsuleError::Internal(e.to_string()))?
    .map_err(CapsuleError::Unavailable)
}

fn config_for(
    agent: &Agent,
    run: u64,
    pod: &Pod,
    container: &Container,
    chosen: Chosen,
    args: &[String],
) -> CapsuleConfig {
    let root = &agent.config.root;
    let Chosen {
        spec,
        rootfs,
        mut env,
    } = chosen;
    // An application's capsule starts from its image's and manifest's variables (PATH
    // included); the platform's own are set over them.
    env.entry("PATH".into())
        .or_insert_with(|| CAPSULE_PATH.into());
    env.extend([
        ("TARGET".to_string(), "/target".to_string()),
        ("OUT".into(), "/out".into()),
        ("HOME".into(), "/tmp".into()),
        ("PARACLOUD_POD_NAMESPACE".into(), pod.pod.namespace.clone()),
        ("PARACLOUD_POD".into(), pod.pod.name.clone()),
        ("PARACLOUD_CONTAINER".into(), container.name.clone()),
    ]);
    let env = env.into_iter().collect();
    CapsuleConfig {
        id: format!("cap{run}"),
        // Every capsule mounts its scratch over the same directory, each in its own namespace.
        dir: root.join("capsules"),
        rootfs,
        argv: spec.command(args),
        env,
        out_dir: run_output_dir(root, run),
        write_target: spec.access == Access::Write,
        capabilities: spec.capabilities.clone(),
        limits: Limits {
            cpu: Some(spec.limits.cpu),
            memory: Some(spec.limits.memory),
            pids: Some(spec.limits.pids),
            ..Default::default()
        },
        tty: false,
    }
}

/// How a capsule ended: its exit code (`None` when it never ran) and why not, if not.
struct Ended {
    code: Option<i32>,
    error: Option<String>,
    timed_out: bool,
}

/// Runs the capsule to its end or deadline, its output sent as events, then removes its cgroup
/// (and anything left in it); returns its exit code (124 at the deadline) or why it never ran.
async fn attach(
    agent: &Arc<Agent>,
    target: &paracloud_runtime::Process,
    config: &CapsuleConfig,
    timeout: Duration,
    pod: &Pod,
    container: &Container,
    events: &mpsc::UnboundedSender<CapsuleRunEvent>,
) -> Ended {
    let instance = target_name(pod, container);
    let mut ended = Ended {
        code: None,
        error: None,
        timed_out: false,
    };
    match agent.runtime.attach(target, config, None) {
        Ok(mut child) => {
            let out = tokio::spawn(forward(
                child.stdout.take(),
                "stdout",
                instance.clone(),
                events.clone(),
            ));
            let err = tokio::spawn(forward(
                child.stderr.take(),
                "stderr",
                instance.clone(),
                events.clone(),
            ));
            let status = match tokio::time::timeout(timeout, child.wait()).await {
                Ok(status) => status.ok().map(exit_code),
                Err(_) => {
                    ended.timed_out = true;
                    stop(&mut child).await;
                    None
                }
            };
            let _ = out.await;
            let stderr = err.await.unwrap_or_default();
            if ended.timed_out {
                ended.error = Some(format!(
                    "stopped at its deadline of {} s",
                    timeout.as_secs()
                ));
            } else if let Some(code) = status {
                match paracloud_runtime::capsule::setup_failure(code, stderr.as_bytes()) {
                    Some(failure) => ended.error = Some(failure),
                    None => ended.code = Some(code),
                }
            } else {
                ended.error = Some("the capsule's runner could not be waited for".into());
            }
        }
        Err(e) => ended.error = Some(e.to_string()),
    }
    let detach_agent = agent.clone();
    let detach_config = config.clone();
    match tokio::task::spawn_blocking(move || detach_agent.runtime.detach(&detach_config)).await {
        Ok(Err(e)) => tracing::warn!("detaching capsule {}: {e}", config.id),
        Err(e) => tracing::warn!("detaching capsule {}: {e}", config.id),
        Ok(Ok(())) => {}
    }
    ended
}

/// SIGTERM to the capsule's runner (it kills the function and all it started), SIGKILL after
/// [`STOP_GRACE`].
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// The exit code, or 128 + the signal that ended the process.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    })
}

/// Sends a pipe's output as events; returns what came on it (the runner's failure is read from
/// stderr), up to 64 KiB.
async fn forward(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    stream: &'static str,
    instance: String,
    events: mpsc::UnboundedSender<CapsuleRunEvent>,
) -> String {
    let Some(pipe) = pipe else {
        return String::new();
    };
    let (_, kept) = paracloud_runtime::capsule_output::relay_text(pipe, |text| {
        let _ = events.send(CapsuleRunEvent::Output {
            instance: instance.clone(),
            stream: stream.to_string(),
            text,
        });
    })
    .await;
    kept
}

fn list_files(dir: &std::path::Path) -> Vec<CapsuleFile> {
    paracloud_runtime::capsule_output::files_in(dir)
        .into_iter()
        .map(|(name, size)| CapsuleFile { name, size })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::PodRef;

    #[test]
    fn only_the_newest_runs_outputs_are_kept() {
        let runs = tempfile::tempdir().unwrap();
        // Numbers as an agent gives them across a restart: not one apart.
        let numbers: Vec<u64> = (0..30)
            .map(|n| 1_700_000_000_000 + n)
            .chain((0..25).map(|n| 1_800_000_000_000 + n))
            .collect();
        for n in &numbers {
            std::fs::create_dir(runs.path().join(n.to_string())).unwrap();
            std::fs::write(runs.path().join(n.to_string()).join("out.txt"), "x").unwrap();
        }
        std::fs::create_dir(runs.path().join("notes")).unwrap();
        forget_old_outputs(runs.path(), KEPT_RUNS);
        let mut left: Vec<String> = std::fs::read_dir(runs.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<String> = numbers[5..].iter().map(u64::to_string).collect();
        expected.push("notes".into());
        expected.sort();
        assert_eq!(left, expected, "the 50 newest and what is not a run");
    }

    fn pod(uid: &str, namespace: &str, name: &str) -> (String, Pod) {
        (
            uid.to_string(),
            Pod {
                pod: PodRef {
                    uid: uid.into(),
                    namespace: namespace.into(),
                    name: name.into(),
                },
                app: None,
                service: None,
                containers: Vec::new(),
            },
        )
    }

    #[test]
    fn a_pod_is_named_by_its_uid_or_its_namespace_and_name() {
        let pods = [pod("u1", "shop", "web-0"), pod("u2", "other", "web-0")]
            .into_iter()
            .collect();
        assert_eq!(find_pod(&pods, "u2").unwrap().pod.namespace, "other");
        assert_eq!(find_pod(&pods, "shop/web-0").unwrap().pod.uid, "u1");
        assert!(
            find_pod(&pods, "web-0").is_none(),
            "a name alone is ambiguous"
        );
        assert!(find_pod(&pods, "shop/web-1").is_none());
    }
}
