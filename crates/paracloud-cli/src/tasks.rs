//! `paracloud tasks`: bags of tasks for task farms (`catalog = "taskfarm"`).

use std::io::Read;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use paracloud_api::routes::{CancelBatch, GetBatch, ListBatches, SubmitTasks};
use paracloud_api::{BatchDetail, BatchView, TaskView, TasksRequest};

use crate::cli::{Global, TasksCommand};
use crate::client::{connect, explain};
use crate::manifests::resolve_app;
use crate::output::{print, table};

pub async fn command(global: &Global, command: TasksCommand) -> Result<()> {
    match command {
        TasksCommand::Submit {
            service,
            file,
            deadline,
            budget,
            wait,
        } => submit(global, &service, &file, deadline, budget, wait).await,
        TasksCommand::Ls => ls(global).await,
        TasksCommand::Status { batch } => status(global, batch).await,
        TasksCommand::Logs { batch, task } => logs(global, batch, task).await,
        TasksCommand::Cancel { batch } => cancel(global, batch).await,
    }
}

/// The tasks of a file: one per line, blank lines and `#` comments skipped.
pub fn read_tasks(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

async fn submit(
    global: &Global,
    service: &str,
    file: &std::path::Path,
    deadline: Option<Duration>,
    budget: Option<f64>,
    wait: bool,
) -> Result<()> {
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the tasks from standard input")?;
        text
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("reading the tasks from {}", file.display()))?
    };
    let tasks = read_tasks(&text);
    if tasks.is_empty() {
        bail!(
            "{} holds no task: write one command line per line (blank lines and lines starting with # are skipped)",
            file.display()
        );
    }
    let deadline_s = deadline
        .map(|d| {
            if d < Duration::from_secs(1) {
                bail!("--deadline {d:?} is less than a second: give one such as 90s or 10m");
            }
            Ok(d.as_secs())
        })
        .transpose()?;
    let client = connect(global).await?;
    let app = resolve_app(global, &client, None).await?;
    let route = SubmitTasks {
        app: app.clone(),
        service: service.to_owned(),
        body: TasksRequest {
            tasks,
            deadline_s,
            budget_instance_s: budget.map(|minutes| (minutes * 60.0).round().max(1.0) as u64),
        },
    };
    let batch = client.call(&route).await.map_err(explain)?;
    if !wait {
        print(global.output, &batch, |b| {
            format!(
                "batch {} submitted to {}: {} tasks; `paracloud tasks status {}` follows it\n",
                b.id, b.service, b.pending, b.id
            )
        })?;
        return Ok(());
    }
    eprintln!(
        "batch {} submitted to {}: {} tasks",
        batch.id, batch.service, batch.pending
    );
    let mut last = String::new();
    let detail = loop {
        let detail = client
            .call(&GetBatch {
                app: app.clone(),
                batch: batch.id,
            })
            .await
            .map_err(explain)?;
        let line = progress(&detail.batch);
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if detail.batch.state != "running" && detail.batch.running == 0 {
            break detail;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    print(global.output, &detail, |d| summary(&d.batch))?;
    if detail.batch.failed > 0 || detail.batch.not_run > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// One line of a batch's progress.
fn progress(b: &BatchView) -> String {
    format!(
        "{} succeeded, {} failed, {} running, {} waiting; {} asked for: {}",
        b.succeeded,
        b.failed,
        b.running,
        b.pending,
        match b.workers {
            1 => "1 worker".to_owned(),
            n => format!("{n} workers"),
        },
        b.plan
    )
}

/// A batch's goal as a person reads it.
fn goal(b: &BatchView) -> String {
    match (b.deadline_ms, b.budget_instance_ms) {
        (Some(at), _) => format!(
            "deadline {}s after submit",
            at.saturating_sub(b.submitted_ms).div_ceil(1000)
        ),
        (None, Some(budget)) => format!("budget {}", instance_minutes(budget)),
        (None, None) => "-".into(),
    }
}

fn instance_minutes(ms: u64) -> String {
    format!("{:.2} instance-min", ms as f64 / 60_000.0)
}

/// What a batch came to: its time, cost and goal.
fn summary(b: &BatchView) -> String {
    let took = b
        .ended_ms
        .map(|end| format!("{:.1}s", end.saturating_sub(b.submitted_ms) as f64 / 1000.0))
        .unwrap_or_else(|| "-".into());
    let mut text = format!(
        "batch {} {}: {} succeeded, {} failed, {} not run, in {took}; cost {} ({:.1} instance-seconds), at most {} workers\n",
        b.id,
        b.state,
        b.succeeded,
        b.failed,
        b.not_run,
        instance_minutes(b.spent_instance_ms),
        b.spent_instance_ms as f64 / 1000.0,
        b.peak_workers
    );
    if let (Some(at), Some(end), "done") = (b.deadline_ms, b.ended_ms, b.state.as_str()) {
        text.push_str(&if end <= at {
            format!(
                "deadline met, {:.1}s to spare\n",
                (at - end) as f64 / 1000.0
            )
        } else {
            format!("deadline missed by {:.1}s\n", (end - at) as f64 / 1000.0)
        });
    }
    text
}

async fn ls(global: &Global) -> Result<()> {
    let client = connect(global).await?;
    let app = resolve_app(global, &client, None).await?;
    let batches = client.call(&ListBatches { app }).await.map_err(explain)?;
    print(global.output, &batches, |batches| {
        let rows: Vec<Vec<String>> = batches
            .iter()
            .map(|b| {
                vec![
                    b.id.to_string(),
                    b.service.clone(),
                    b.state.clone(),
                    format!(
                        "{}/{}",
                        b.succeeded,
                        b.succeeded + b.failed + b.running + b.pending + b.not_run
                    ),
                    b.failed.to_string(),
                    b.workers.to_string(),
                    goal(b),
                    instance_minutes(b.spent_instance_ms),
                ]
            })
            .collect();
        table(
            &[
                "BATCH", "SERVICE", "STATE", "DONE", "FAILED", "WORKERS", "GOAL", "COST",
            ],
            &rows,
        )
    })
}

/// Batch `batch` of the application, with its tasks.
async fn detail(global: &Global, batch: u64) -> Result<BatchDetail> {
    let client = connect(global).await?;
    let app = resolve_app(global, &client, None).await?;
    client.call(&GetBatch { app, batch }).await.map_err(explain)
}

async fn status(global: &Global, batch: u64) -> Result<()> {
    let detail = detail(global, batch).await?;
    print(global.output, &detail, |d| {
        let b = &d.batch;
        let mut text = format!(
            "Batch:    {} on {} ({})\nGoal:     {}\nProgress: {}\nCost:     {} so far, at most {} workers\n",
            b.id,
            b.service,
            b.state,
            goal(b),
            progress(b),
            instance_minutes(b.spent_instance_ms),
            b.peak_workers
        );
        if b.state != "running" {
            text.push_str(&summary(b));
        }
        text.push('\n');
        let rows: Vec<Vec<String>> = d.tasks.iter().map(task_row).collect();
        text.push_str(&table(
            &["TASK", "STATE", "RUNS", "WORKER", "TIME", "EXIT", "COMMAND"],
            &rows,
        ));
        text
    })
}

fn task_row(t: &TaskView) -> Vec<String> {
    let last = t.attempts.last();
    vec![
        t.index.to_string(),
        t.state.clone(),
        t.attempts.len().to_string(),
        last.map_or("-".into(), |a| a.worker.clone()),
        last.and_then(|a| a.ended_ms.map(|end| end.saturating_sub(a.started_ms)))
            .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
        last.map_or("-".into(), |a| match (&a.code, &a.error) {
            (Some(code), _) => code.to_string(),
            (None, Some(error)) => error.clone(),
            (None, None) => "-".into(),
        }),
        t.command.clone(),
    ]
}

async fn logs(global: &Global, batch: u64, task: u32) -> Result<()> {
    let detail = detail(global, batch).await?;
    let Some(found) = detail.tasks.iter().find(|t| t.index == task) else {
        bail!(
            "batch {batch} has no task {task}: its tasks are 1 to {}",
            detail.tasks.len()
        );
    };
    print(global.output, found, |t| {
        let mut text = t.stdout.clone();
        if !t.stderr.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&t.stderr);
        }
        text
    })
}

async fn cancel(global: &Global, batch: u64) -> Result<()> {
    let client = connect(global).await?;
    let app = resolve_app(global, &client, None).await?;
    let cancelled = client
        .call(&CancelBatch { app, batch })
        .await
        .map_err(explain)?;
    print(global.output, &cancelled, |b| {
        format!(
            "batch {} cancelled: {} tasks will not run; its workers stop\n",
            b.id, b.not_run
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_file_is_one_command_line_per_line_without_blanks_or_comments() {
        let tasks = read_tasks("# frames\nrender 1\n\n   \n  render 2 --fast  \n#render 3\n");
        assert_eq!(tasks, ["render 1", "render 2 --fast"]);
    }
}
