//! Capsules and a migration's events on a cluster, through the node agents: what the CLI
//! executes in an agent's container through the API server's `pods/exec` (as `kubectl exec`
//! does), and what runs there, `paracloud __agent-capsule`, `__agent-capsule-file` and
//! `__agent-event`, which ask the agent's own socket and read the files a run left.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use k8s_openapi::api::core::v1::Pod;
use tokio::io::AsyncRead;

use crate::cli::Output;

/// `capsule run` on a cluster: what to run, where the node agents are.
pub(crate) struct CapsuleRun {
    pub capsule: String,
    pub selector: String,
    pub timeout_ms: Option<u64>,
    pub args: Vec<String>,
    pub agent_namespace: String,
    /// Where the files a run leaves go, as DIR/POD/FILE.
    pub out: PathBuf,
}

/// A pod a capsule run attaches to: its container and its node.
pub(crate) struct CapsuleTarget {
    pub pod: String,
    pub uid: String,
    pub container: String,
    pub node: String,
}

/// The node agent's container in its DaemonSet's pods.
const AGENT_CONTAINER: &str = "agent";

/// The running node agents of `namespace` (the DaemonSet's pods), by node name.
pub(crate) async fn node_agents(
    client: &kube::Client,
    namespace: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let selector = format!(
        "app.kubernetes.io/name={}",
        paracloud_kube::install::NODE_AGENT
    );
    let list = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(|e| {
            anyhow!("cannot list the node agents in namespace {namespace} (--agent-namespace): {e}")
        })?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| Some((p.spec?.node_name?, p.metadata.name?)))
        .collect())
}

/// The agent's own binary in its container, which it links under its root at start, with its
/// root and one of its hidden commands.
fn agent_binary(hidden: &str) -> Vec<String> {
    let root = paracloud_kube::install::NODE_AGENT_ROOT;
    vec![
        format!("{root}/{}", paracloud_node::OWN_BINARY),
        "--root".into(),
        root.into(),
        hidden.into(),
    ]
}

/// What runs in the agent's container for one target: the capsule, asked of its socket.
pub(crate) fn capsule_command(target: &CapsuleTarget, run: &CapsuleRun) -> Vec<String> {
    let mut command = agent_binary("__agent-capsule");
    command.extend([
        "--pod".into(),
        target.uid.clone(),
        "--container".into(),
        target.container.clone(),
        "--capsule".into(),
        run.capsule.clone(),
    ]);
    if let Some(ms) = run.timeout_ms {
        command.extend(["--timeout-ms".into(), ms.to_string()]);
    }
    command.push("--".into());
    command.extend(run.args.iter().cloned());
    command
}

/// A command started in an agent's container: its standard output to read as it comes, and,
/// once it ended, what it said on standard error and whether it succeeded.
struct InAgent {
    stdout: Box<dyn AsyncRead + Unpin + Send>,
    ended: tokio::task::JoinHandle<(String, bool)>,
    /// Kept until the end: dropped, it would end the streams with it.
    _process: kube::api::AttachedProcess,
}

impl InAgent {
    async fn start(pods: &kube::Api<Pod>, agent: &str, command: Vec<String>) -> Result<InAgent> {
        Self::start_with_input(pods, agent, command, None).await
    }

    /// Starts `command` with `input` on its standard input, closed after it (none: no input).
    async fn start_with_input(
        pods: &kube::Api<Pod>,
        agent: &str,
        command: Vec<String>,
        input: Option<Vec<u8>>,
    ) -> Result<InAgent> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let params = kube::api::AttachParams::default()
            .container(AGENT_CONTAINER)
            .stdin(input.is_some())
            .stdout(true)
            .stderr(true);
        let mut process = pods
            .exec(agent, command, &params)
            .await
            .map_err(|e| anyhow!("cannot execute in the node agent {agent}: {e}"))?;
        let missing = |what| anyhow!("the exec in {agent} gave no {what}");
        if let Some(input) = input {
            let mut stdin = process.stdin().ok_or_else(|| missing("standard input"))?;
            stdin.write_all(&input).await?;
            // Shut down, it closes the command's standard input.
            stdin.shutdown().await?;
        }
        let stdout = process.stdout().ok_or_else(|| missing("standard output"))?;
        let mut stderr = process.stderr().ok_or_else(|| missing("standard error"))?;
        let status = process.take_status();
        let ended = tokio::spawn(async move {
            let mut said = String::new();
            let _ = stderr.read_to_string(&mut said).await;
            let status = match status {
                Some(status) => status.await,
                None => None,
            };
            let succeeded = status.and_then(|s| s.status).as_deref() == Some("Success");
            (
                said.trim().trim_start_matches("error: ").to_owned(),
                succeeded,
            )
        });
        Ok(InAgent {
            stdout: Box::new(stdout),
            ended,
            _process: process,
        })
    }

    /// What it said on standard error and whether it succeeded.
    async fn end(self) -> (String, bool) {
        self.ended.await.unwrap_or_default()
    }
}

/// How a capsule run on one pod ended: its number on the agent, the function's exit code and
/// the files it left.
pub(crate) struct Ran {
    run: i64,
    pub code: i32,
    files: Vec<paracloud_api::CapsuleFile>,
}

/// Runs `command` (of [`capsule_command`]) in the agent pod `agent` and prints the run's
/// events as `capsule run` does on one machine (each line after the pod's name when several
/// pods run).
pub(crate) async fn run_capsule(
    pods: &kube::Api<Pod>,
    agent: &str,
    target: &CapsuleTarget,
    command: Vec<String>,
    many: bool,
    output: Output,
) -> Result<Ran> {
    use paracloud_api::CapsuleRunEvent;
    use tokio::io::AsyncBufReadExt;
    let mut started = InAgent::start(pods, agent, command).await?;
    let mut lines = tokio::io::BufReader::new(&mut started.stdout).lines();
    let mut code = None;
    let mut run = None;
    let mut left = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let event: CapsuleRunEvent = serde_json::from_str(&line)
            .map_err(|e| anyhow!("the node agent {agent} answered {line:?}: {e}"))?;
        if output != Output::Table {
            println!("{line}");
        }
        match event {
            CapsuleRunEvent::Started { run: number, .. } => run = Some(number),
            CapsuleRunEvent::Output { stream, text, .. } if output == Output::Table => {
                crate::capsule::print_output(&target.pod, &stream, text, many);
            }
            CapsuleRunEvent::Exited {
                exit_code,
                timed_out,
                files,
                error,
                ..
            } => {
                left = files;
                let this = crate::capsule::report_exit(
                    &target.pod,
                    exit_code,
                    timed_out,
                    error.as_deref(),
                );
                code = Some(this);
            }
            _ => {}
        }
    }
    let (said, _) = started.end().await;
    match (code, run) {
        (Some(code), Some(run)) => Ok(Ran {
            run,
            code,
            files: left,
        }),
        // The agent's command failed before the run: what it said is why.
        _ if said.is_empty() => Err(anyhow!("the node agent {agent} ended without a run")),
        _ => Err(anyhow!("{said}")),
    }
}

/// Fetches the files a run left on its node into `out` (DIR/POD), one exec of the agent's
/// `__agent-capsule-file` each, and says where each went, as on one machine.
pub(crate) async fn fetch_files(
    pods: &kube::Api<Pod>,
    agent: &str,
    target: &CapsuleTarget,
    ran: &Ran,
    out: &Path,
) -> Result<()> {
    if ran.files.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(out).map_err(|e| anyhow!("cannot create {}: {e}", out.display()))?;
    for file in &ran.files {
        let mut command = agent_binary("__agent-capsule-file");
        command.extend([
            "--run".into(),
            ran.run.to_string(),
            "--name".into(),
            file.name.clone(),
        ]);
        let mut started = InAgent::start(pods, agent, command).await?;
        let path = out.join(&file.name);
        let mut written = tokio::fs::File::create(&path)
            .await
            .map_err(|e| anyhow!("cannot create {}: {e}", path.display()))?;
        let copied = tokio::io::copy(&mut started.stdout, &mut written).await?;
        let (said, succeeded) = started.end().await;
        if !succeeded {
            let _ = std::fs::remove_file(&path);
            anyhow::bail!(
                "cannot fetch {} from node {}: {said}",
                file.name,
                target.node
            );
        }
        eprintln!("{}: {} ({copied} bytes)", target.pod, path.display());
    }
    Ok(())
}

/// `paracloud __agent-capsule-file`, in the node agent's container: the file `name` that run
/// `run` left in its /out, to standard output. The capsule wrote there, so the name must be
/// one plain name and the file a regular one, not a link to elsewhere.
pub(crate) fn agent_capsule_file(root: &Path, run: u64, name: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let plain = Path::new(name).components().count() == 1
        && matches!(
            Path::new(name).components().next(),
            Some(std::path::Component::Normal(_))
        );
    if !plain {
        anyhow::bail!("{name:?} is not the name of a file a capsule left");
    }
    let path = paracloud_node::capsules::run_output_dir(root, run).join(name);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| anyhow!("run {run} left no file {name:?}: {e}"))?;
    if !file.metadata()?.is_file() {
        anyhow::bail!("{name:?} of run {run} is not a regular file");
    }
    std::io::copy(&mut file, &mut std::io::stdout().lock())?;
    Ok(())
}

/// Sends a pod `event` (none: asks only whether it follows its events) through the node agent
/// `agent`, by its `__agent-event` with the event on standard input; the pod's answer.
pub(crate) async fn send_event(
    pods: &kube::Api<Pod>,
    agent: &str,
    pod_uid: &str,
    event: Option<&paracloud_paci::EventKind>,
    wait_listening_ms: u64,
) -> Result<paracloud_node::handover::EventAnswer> {
    use tokio::io::AsyncReadExt;
    let mut command = agent_binary("__agent-event");
    command.extend([
        "--pod".into(),
        pod_uid.into(),
        "--wait-listening-ms".into(),
        wait_listening_ms.to_string(),
    ]);
    let input = match event {
        Some(event) => Some(serde_json::to_vec(event)?),
        None => {
            command.push("--listening".into());
            None
        }
    };
    let mut started = InAgent::start_with_input(pods, agent, command, input).await?;
    let mut answer = Vec::new();
    started.stdout.read_to_end(&mut answer).await?;
    let (said, succeeded) = started.end().await;
    if !succeeded {
        anyhow::bail!("{said}");
    }
    serde_json::from_slice(&answer).map_err(|e| {
        anyhow!(
            "the node agent {agent} answered {:?}: {e}",
            String::from_utf8_lossy(&answer)
        )
    })
}

/// `paracloud __agent-event`, in the node agent's container: sends pod `pod` the event on
/// standard input (with `listening`, none: it asks only whether the pod follows its events)
/// through the agent's socket under `root`, and writes the pod's answer.
pub(crate) fn agent_event(
    root: &Path,
    pod: &str,
    listening: bool,
    wait_listening_ms: u64,
) -> Result<()> {
    use std::io::{Read, Write};
    let event = if listening {
        None
    } else {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Some(serde_json::from_str(&text).map_err(|e| {
            anyhow!("standard input is not a PaCI event (a migrate or restore as JSON): {e}")
        })?)
    };
    let request = paracloud_node::handover::EventRequest {
        pod: pod.to_owned(),
        event,
        wait_listening_ms,
    };
    agent_request(root, "/v1/events", &request, |chunk| {
        let mut out = std::io::stdout().lock();
        out.write_all(chunk)?;
        out.flush()
    })
}

/// `paracloud __agent-capsule`, in the node agent's container: asks the agent's socket under
/// `root` for the run and writes its events to standard output as they come.
pub(crate) fn agent_capsule(
    root: &Path,
    request: paracloud_node::capsules::CapsuleRequest,
) -> Result<()> {
    use std::io::Write;
    agent_request(root, "/v1/capsules", &request, |chunk| {
        let mut out = std::io::stdout().lock();
        out.write_all(chunk)?;
        out.flush()
    })
}

/// POSTs `request` to the agent's own socket under `root` and gives each piece of the answer's
/// body to `write` as it comes; an error answer is the agent's own words.
fn agent_request(
    root: &Path,
    path: &str,
    request: &impl serde::Serialize,
    mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<()> {
    use http_body_util::BodyExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let socket = root.join("agent.sock");
        let client = paracloud_unix_http::UnixHttp::new(&socket, "agent");
        let body = serde_json::to_vec(request)?;
        let response = client
            .send(hyper::Method::POST, path, Some(body))
            .await
            .map_err(|e| match e {
                paracloud_unix_http::Error::Status { body, .. } => {
                    let said: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    anyhow!(
                        "{}",
                        said["error"].as_str().map_or_else(
                            || String::from_utf8_lossy(&body).into_owned(),
                            str::to_owned
                        )
                    )
                }
                other => anyhow!("the node agent at {}: {other}", socket.display()),
            })?;
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                write(data)?;
            }
        }
        Ok(())
    })
}
