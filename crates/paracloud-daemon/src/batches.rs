//! The API's routes of task farms: submit a batch, follow it, cancel it.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use paracloud_api::{AttemptView, BatchDetail, BatchView, TaskView, TasksRequest};
use paracloud_command::{Command, Outcome};
use paracloud_state::{BatchGoal, BatchRecord, TaskRecord};

use crate::api_error::ApiError;
use crate::clock::now_ms;
use crate::driver::Driver;
use crate::engine::Engine;
use crate::peer::Peer;

type Shared<D> = State<Arc<Engine<D>>>;

pub async fn submit<D: Driver>(
    State(engine): Shared<D>,
    peer: Peer,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    body: Result<Json<TasksRequest>, JsonRejection>,
) -> Result<Json<BatchView>, ApiError> {
    let UrlPath((app, service)) = path?;
    let Json(request) = body?;
    let submitted = now_ms();
    let goal = match (request.deadline_s, request.budget_instance_s) {
        (Some(seconds), None) => BatchGoal::Deadline {
            at: submitted.saturating_add(seconds.saturating_mul(1000)),
        },
        (None, Some(seconds)) => BatchGoal::Budget {
            instance_ms: seconds.saturating_mul(1000),
        },
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give a deadline or a budget, not both: a deadline is met with the fewest workers, a budget spent on the most",
            ))
        }
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give a deadline (deadline_s, `--deadline 10m`) or a budget (budget_instance_s, `--budget 30` instance-minutes)",
            ))
        }
    };
    let command = Command::SubmitTasks {
        app: app.clone(),
        service,
        tasks: request.tasks,
        goal,
        submitted,
    };
    let decision = engine.submit(&peer.caller(), &command)?;
    let Outcome::Batch { id } = decision.outcome else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the batch was not recorded",
        ));
    };
    Ok(Json(batch_view(&stored(&engine, &app, id)?)))
}

pub async fn list<D: Driver>(
    State(engine): Shared<D>,
    path: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<Vec<BatchView>>, ApiError> {
    let UrlPath(app) = path?;
    let batches = engine.store.batches(Some(&app))?;
    if batches.is_empty() {
        paracloud_command::find_app(&engine.store.load()?, &app)?;
    }
    Ok(Json(batches.iter().map(batch_view).collect()))
}

pub async fn get<D: Driver>(
    State(engine): Shared<D>,
    path: Result<UrlPath<(String, u64)>, PathRejection>,
) -> Result<Json<BatchDetail>, ApiError> {
    let UrlPath((app, id)) = path?;
    let batch = stored(&engine, &app, id)?;
    let tasks = engine.store.tasks(id)?;
    Ok(Json(BatchDetail {
        batch: batch_view(&batch),
        tasks: tasks.iter().map(task_view).collect(),
    }))
}

pub async fn cancel<D: Driver>(
    State(engine): Shared<D>,
    peer: Peer,
    path: Result<UrlPath<(String, u64)>, PathRejection>,
) -> Result<Json<BatchView>, ApiError> {
    let UrlPath((app, id)) = path?;
    let command = Command::CancelBatch {
        app: app.clone(),
        batch: id,
    };
    engine.submit(&peer.caller(), &command)?;
    Ok(Json(batch_view(&stored(&engine, &app, id)?)))
}

/// Batch `id` of `app`, or a 404 that says where to look.
fn stored<D: Driver>(engine: &Engine<D>, app: &str, id: u64) -> Result<BatchRecord, ApiError> {
    match engine.store.batch(id)? {
        Some(batch) if batch.app == app => Ok(batch),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{app} has no batch {id} (`paracloud tasks ls -a {app}` lists its batches)"),
        )),
    }
}

pub fn batch_view(batch: &BatchRecord) -> BatchView {
    let (deadline_ms, budget_instance_ms) = match batch.goal {
        BatchGoal::Deadline { at } => (Some(at), None),
        BatchGoal::Budget { instance_ms } => (None, Some(instance_ms)),
    };
    BatchView {
        id: batch.id,
        app: batch.app.clone(),
        service: batch.service.clone(),
        state: batch.state.name().to_owned(),
        submitted_ms: batch.submitted,
        ended_ms: batch.ended,
        deadline_ms,
        budget_instance_ms,
        spent_instance_ms: batch.spent_ms,
        workers: batch.workers,
        peak_workers: batch.peak_workers,
        plan: batch.plan.clone(),
        succeeded: batch.counts.succeeded,
        failed: batch.counts.failed,
        running: batch.counts.running,
        pending: batch.counts.pending,
        not_run: batch.counts.not_run,
    }
}

fn task_view(task: &TaskRecord) -> TaskView {
    TaskView {
        index: task.index,
        command: task.command.clone(),
        state: task.state.name().to_owned(),
        attempts: task
            .attempts
            .iter()
            .map(|a| AttemptView {
                worker: a.worker.clone(),
                started_ms: a.started,
                ended_ms: a.ended,
                code: a.code,
                error: a.error.clone(),
            })
            .collect(),
        stdout: task.stdout.clone(),
        stderr: task.stderr.clone(),
    }
}
