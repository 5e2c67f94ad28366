//! `paracloud capsule ls|run|history` and `paracloud debug`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::BodyExt;
use paracloud_api::{
    CapsuleHistory, CapsuleRunEvent, CapsuleRunRequest, CapsuleRunView, DebugSession,
    GetCapsuleFile, GetCapsuleRun, ListCapsules, ResizeTerminal, RunCapsule, TerminalSize,
};

use crate::cli::{CapsuleCommand, Global, Output};
use crate::client::{connect, explain};
use crate::output::{format_time, print, table};

pub async fn command(global: &Global, command: CapsuleCommand) -> Result<()> {
    match command {
        CapsuleCommand::Ls => ls(global).await,
        CapsuleCommand::Run {
            name,
            selector,
            out,
            timeout,
            args,
            agent_namespace: _,
        } => {
            let code = run(global, &name, &selector, &out, timeout.as_deref(), args).await?;
            if code != 0 {
                std::io::stdout().flush()?;
                std::process::exit(code);
            }
            Ok(())
        }
        CapsuleCommand::Files { run, out } => files(global, run, &out).await,
        CapsuleCommand::History { limit } => history(global, limit).await,
    }
}

/// Downloads the kept files of a past run into `out/INSTANCE/FILE`.
async fn files(global: &Global, run: i64, out: &Path) -> Result<()> {
    let client = connect(global).await?;
    let record = client.call(&GetCapsuleRun { run }).await.map_err(explain)?;
    let mut fetched = 0;
    for target in &record.targets {
        for file in &target.files {
            let dir = out.join(&target.instance);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join(&file.name);
            download(&client, run, &target.instance, &file.name, &path).await?;
            eprintln!(
                "{}: {} ({} bytes)",
                target.instance,
                path.display(),
                file.size
            );
            fetched += 1;
        }
    }
    if fetched == 0 {
        bail!(
            "run {run} ({} on {}) has no files kept: a run's files go once {} newer runs have ended, unless a schedule's `keep` holds them",
            record.capsule,
            record.selector,
            paracloud_manifest::RECENT_RUNS_KEPT
        );
    }
    Ok(())
}

async fn ls(global: &Global) -> Result<()> {
    let route = ListCapsules {
        app: global.app.clone(),
    };
    let capsules = connect(global).await?.call(&route).await.map_err(explain)?;
    print(global.output, &capsules, |capsules| {
        let rows: Vec<Vec<String>> = capsules
            .iter()
            .map(|c| {
                let source = match (&c.app, c.missing.is_empty()) {
                    (Some(app), _) => app.clone(),
                    (None, true) => "built-in".into(),
                    (None, false) => format!("built-in; needs {}", c.missing.join(", ")),
                };
                capsule_row(
                    &c.name,
                    &c.access,
                    &c.capabilities,
                    Duration::from_millis(c.timeout_ms),
                    source,
                    &format!("{} {}", c.description, c.usage),
                )
            })
            .collect();
        table(&["NAME", "ACCESS", "TIMEOUT", "FROM", "DESCRIPTION"], &rows)
    })
}

/// A capsule's line of `capsule ls`: name, the access and capabilities it needs, its deadline,
/// `column` (where it comes from, or which services allow it), what it does.
pub(crate) fn capsule_row(
    name: &str,
    access: &str,
    capabilities: &[String],
    timeout: Duration,
    column: String,
    description: &str,
) -> Vec<String> {
    let needs: Vec<&str> = std::iter::once(access)
        .chain(capabilities.iter().map(|c| c.trim_start_matches("CAP_")))
        .collect();
    vec![
        name.to_owned(),
        needs.join(","),
        humantime::format_duration(timeout).to_string(),
        column,
        description.trim().to_owned(),
    ]
}

/// The selector with `app=` from `-a` when it names none.
fn selector_with_app(global: &Global, selector: &str) -> String {
    match &global.app {
        Some(app) if !selector.split(',').any(|kv| kv.trim().starts_with("app=")) => {
            format!("app={app},{selector}")
        }
        _ => selector.to_string(),
    }
}

/// Runs the capsule and prints its output as it comes; returns the exit code to leave with:
/// 0 when every target's function succeeded, else the first failure's.
async fn run(
    global: &Global,
    name: &str,
    selector: &str,
    out: &Path,
    timeout: Option<&str>,
    args: Vec<String>,
) -> Result<i32> {
    let timeout_ms = timeout_ms(timeout)?;
    let request = CapsuleRunRequest {
        capsule: name.to_string(),
        selector: selector_with_app(global, selector),
        args,
        timeout_ms,
    };
    let client = connect(global).await?;
    let mut events = client.lines(&RunCapsule(request)).await.map_err(explain)?;
    let mut targets = 0usize;
    let mut run_id = 0;
    let mut code = 0;
    let mut finished = false;
    while let Some(event) = events.next().await.context("reading the run's events")? {
        if global.output != Output::Table {
            println!("{}", serde_json::to_string(&event)?);
        }
        match event {
            CapsuleRunEvent::Started { run, targets: t } => {
                run_id = run;
                targets = t.len();
            }
            CapsuleRunEvent::Output {
                instance,
                stream,
                text,
            } if global.output == Output::Table => {
                print_output(&instance, &stream, text, targets > 1);
            }
            CapsuleRunEvent::Output { .. } => {}
            CapsuleRunEvent::Exited {
                instance,
                exit_code,
                timed_out,
                files,
                error,
                ..
            } => {
                for file in &files {
                    let dir = out.join(&instance);
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    let path = dir.join(&file.name);
                    download(&client, run_id, &instance, &file.name, &path).await?;
                    eprintln!("{instance}: {} ({} bytes)", path.display(), file.size);
                }
                let this = report_exit(&instance, exit_code, timed_out, error.as_deref());
                if code == 0 {
                    code = this;
                }
            }
            CapsuleRunEvent::Finished { .. } => finished = true,
        }
    }
    std::io::stdout().flush()?;
    if !finished {
        bail!("the daemon ended capsule run {run_id} before it finished; see `paracloud capsule history`");
    }
    Ok(code)
}

/// `--timeout` in milliseconds, or what is wrong with it.
pub(crate) fn timeout_ms(timeout: Option<&str>) -> Result<Option<u64>> {
    timeout
        .map(|t| {
            humantime::parse_duration(t)
                .map(|d| d.as_millis() as u64)
                .with_context(|| format!("--timeout {t:?} is not a duration: write 30s, 2m or 1h"))
        })
        .transpose()
}

/// Prints a target's output as it comes, each line after the target's name when several run.
pub(crate) fn print_output(target: &str, stream: &str, text: String, many: bool) {
    let text = if many {
        prefix_lines(target, &text)
    } else {
        text
    };
    if stream == "stderr" {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}

/// The exit code a target's end leaves with (124 at its deadline, 1 when it never ran), and
/// why it failed, said on standard error.
pub(crate) fn report_exit(
    target: &str,
    exit_code: Option<i32>,
    timed_out: bool,
    error: Option<&str>,
) -> i32 {
    if let Some(error) = error {
        eprintln!("{target}: {error}");
    }
    let code = match (exit_code, timed_out) {
        (_, true) => 124,
        (Some(c), _) => c,
        (None, _) => 1,
    };
    if code != 0 && error.is_none() {
        eprintln!("{target}: exit code {code}");
    }
    code
}

fn prefix_lines(instance: &str, text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| format!("{instance} | {line}"))
        .collect()
}

async fn download(
    client: &paracloud_api::Client,
    run: i64,
    instance: &str,
    name: &str,
    path: &Path,
) -> Result<()> {
    let route = GetCapsuleFile {
        run,
        instance: instance.into(),
        name: name.into(),
    };
    let mut body = client.stream(&route).await.map_err(explain)?;
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            file.write_all(&data)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

async fn history(global: &Global, limit: u32) -> Result<()> {
    let route = CapsuleHistory {
        limit: Some(limit),
        app: global.app.clone(),
    };
    let runs = connect(global).await?.call(&route).await.map_err(explain)?;
    print(global.output, &runs, |runs| {
        let rows: Vec<Vec<String>> = runs
            .iter()
            .map(|r| {
                let targets: Vec<String> = r
                    .targets
                    .iter()
                    .map(|t| match t.exit_code {
                        Some(code) => format!("{}={code}", t.instance),
                        None => t.instance.clone(),
                    })
                    .collect();
                vec![
                    r.id.to_string(),
                    format_time(r.started),
                    r.who.clone(),
                    r.capsule.clone(),
                    targets.join(" "),
                    r.args.join(" "),
                    r.duration_ms.map_or("-".into(), |d| format!("{d}ms")),
                    if r.detail.is_empty() {
                        r.status.clone()
                    } else {
                        format!("{}: {}", r.status, r.detail)
                    },
                    r.output_bytes.to_string(),
                ]
            })
            .collect();
        table(
            &[
                "RUN", "STARTED", "WHO", "CAPSULE", "TARGETS", "ARGS", "TOOK", "STATUS", "OUTPUT",
            ],
            &rows,
        )
    })
}

/// Puts the terminal in raw mode for as long as it lives.
struct RawTerminal {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawTerminal {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Self { saved: None };
        }
        let Ok(saved) = nix::sys::termios::tcgetattr(&stdin) else {
            return Self { saved: None };
        };
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &raw);
        Self { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// The size of our terminal, when stdout is one.
fn terminal_size() -> Option<(u16, u16)> {
    use std::os::fd::AsFd;
    paracloud_runtime::terminal_size(std::io::stdout().as_fd())
}

/// `paracloud debug INSTANCE [-- COMMAND]`: relays this terminal (or stdin and stdout) to the
/// debug capsule until it exits, then leaves with its exit code.
pub async fn debug(global: &Global, instance: &str, command: &[String]) -> Result<()> {
    let route = DebugSession {
        instance: instance.into(),
        app: global.app.clone(),
        command: command.to_vec(),
        size: terminal_size().map(|(rows, cols)| TerminalSize { rows, cols }),
    };
    let client = connect(global).await?;
    let upgraded = client
        .switch(&route, paracloud_api::DEBUG_UPGRADE)
        .await
        .map_err(explain)?;
    let run: Option<i64> = upgraded
        .headers
        .get("x-paracloud-run")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (mut from_daemon, mut to_daemon) = tokio::io::split(upgraded.io);
    let resizer = run
        .filter(|_| terminal_size().is_some())
        .map(|run| tokio::spawn(follow_window_size(client.clone(), run)));
    let raw = RawTerminal::enter();
    let input = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut to_daemon).await;
        // Stdin ended (a pipe): the shell sees end of input as well.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut to_daemon, &[4]).await;
        to_daemon
    });
    let mut stdout = tokio::io::stdout();
    let _ = tokio::io::copy(&mut from_daemon, &mut stdout).await;
    let _ = tokio::io::AsyncWriteExt::flush(&mut stdout).await;
    input.abort();
    if let Some(resizer) = resizer {
        resizer.abort();
    }
    drop(raw);
    // The reading of a terminal that stays open cannot be cancelled (it is a blocking read on a
    // thread of the runtime, which would wait for the next key press): leave from here.
    std::process::exit(session_exit_code(&client, run).await?)
}

/// The exit code of the debug session's command, from the run's record (written before the
/// daemon closed the connection).
async fn session_exit_code(client: &paracloud_api::Client, run: Option<i64>) -> Result<i32> {
    let Some(run) = run else {
        return Ok(0);
    };
    let route = CapsuleHistory {
        limit: Some(200),
        app: None,
    };
    let runs: Vec<CapsuleRunView> = client.call(&route).await.map_err(explain)?;
    let Some(record) = runs.iter().find(|r| r.id == run) else {
        return Ok(0);
    };
    if !record.detail.is_empty() && record.status != "ok" {
        eprintln!("debug: {}", record.detail);
    }
    Ok(record
        .targets
        .first()
        .and_then(|t| t.exit_code)
        .unwrap_or(if record.status == "ok" { 0 } else { 1 }))
}

/// Resizes the session's terminal whenever ours changes size (SIGWINCH), as `kubectl debug`
/// does; a failed resize leaves the old size.
async fn follow_window_size(client: paracloud_api::Client, run: i64) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut changes) = signal(SignalKind::window_change()) else {
        return;
    };
    while changes.recv().await.is_some() {
        let Some((rows, cols)) = terminal_size() else {
            continue;
        };
        let route = ResizeTerminal {
            run,
            body: TerminalSize { rows, cols },
        };
        let _ = client.call(&route).await;
    }
}
