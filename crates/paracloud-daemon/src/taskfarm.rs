//! Task farms (`catalog = "taskfarm"`): each running batch's tasks run on the farm's workers,
//! as many workers as the batch's goal needs.
//!
//! Every half second, and whenever a task ends, each batch is stepped:
//!
//! 1. its cost grows by the instance time of its workers since the last step (every worker that
//!    is starting or running counts, busy or not);
//! 2. [`paracloud_autoscale::taskfarm::plan`] says how many workers meet its goal, from the run
//!    times learned so far; the farm scales its service to that (through the command layer, as
//!    `paracloud scale` would), never below the workers still running a task;
//! 3. each idle worker among the first `plan` ones takes the next waiting task, run as
//!    `sh -c LINE` inside it (its namespaces, cgroup and environment) with the farm's timeout;
//! 4. a task that fails (an exit code other than 0, a timeout, a worker that went away) waits
//!    again until its retries are spent; once no task waits or runs, the batch is done and its
//!    workers stop.
//!
//! Tasks run at least once: a task running when the daemon stops is run again when it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use paracloud_autoscale::taskfarm::{plan, FarmFacts, FarmPlan, Goal};
use paracloud_command::{Caller, Command};
use paracloud_reconcile::{InstanceKey, InstanceState, Millis};
use paracloud_state::{
    Attempt, BatchGoal, BatchRecord, BatchState, Snapshot, TaskCounts, TaskRecord, TaskState,
};
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::driver::Driver;
use crate::engine::{configured_env, Engine};

/// How often each batch is stepped when no task ends.
const STEP: Duration = Duration::from_millis(500);

/// What a new worker is taken to need to start, until one has been seen starting.
const FIRST_START_MS: Millis = 1_000;

/// A batch the farm is running, as it is known in memory (written to the store each step).
struct Farm {
    batch: BatchRecord,
    tasks: Vec<TaskRecord>,
    /// Running tasks, by position in `tasks`: the worker index each runs on.
    running: BTreeMap<usize, u32>,
    /// Tasks changed since they were last written.
    dirty: BTreeSet<usize>,
    last_step: Millis,
    /// How long workers take to start, as measured (`None`: none seen yet).
    start_ms: Option<Millis>,
    /// When more workers were last asked for, and how many there were then.
    asked: Option<(Millis, usize)>,
    /// How many times a failed task runs again (the farm's `retries`).
    retries: u32,
}

/// A run of a task that ended.
struct Ended {
    batch: u64,
    position: usize,
    result: Result<paracloud_runtime::ExecOutput, String>,
    at: Millis,
}

/// Runs every batch of every task farm, until the daemon stops.
pub async fn run<D: Driver>(engine: Arc<Engine<D>>) {
    let mut farms: BTreeMap<u64, Farm> = BTreeMap::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<Ended>();
    let mut ticker = tokio::time::interval(STEP);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Some(ended) = rx.recv() => {
                record(&mut farms, ended);
                while let Ok(more) = rx.try_recv() {
                    record(&mut farms, more);
                }
            }
        }
        match engine.store.load() {
            Ok(snapshot) => step_all(&engine, &mut farms, &snapshot, &tx),
            Err(e) => tracing::warn!("task farms: cannot read the state: {e}"),
        }
    }
}

fn step_all<D: Driver>(
    engine: &Arc<Engine<D>>,
    farms: &mut BTreeMap<u64, Farm>,
    snapshot: &Snapshot,
    tx: &mpsc::UnboundedSender<Ended>,
) {
    let now = now_ms();
    for batch in &snapshot.batches {
        if farms.contains_key(&batch.id) {
            continue;
        }
        let retries = snapshot
            .apps
            .iter()
            .find(|a| a.name == batch.app)
            .and_then(|a| a.manifest.services.get(&batch.service))
            .and_then(|s| s.task_farm())
            .map_or(0, |f| f.retries);
        match engine.store.tasks(batch.id) {
            Ok(tasks) => {
                farms.insert(batch.id, Farm::resumed(batch.clone(), tasks, retries, now));
            }
            Err(e) => tracing::warn!("task farm: cannot read batch {}: {e}", batch.id),
        }
    }
    let mut finished = Vec::new();
    for (id, farm) in farms.iter_mut() {
        let stored = snapshot.batches.iter().find(|b| b.id == *id);
        if stored.is_none() && farm.batch.state == BatchState::Running {
            // Cancelled (or its application taken down): what waits is not run, what runs is
            // stopped with the workers.
            farm.batch.state = BatchState::Cancelled;
            farm.batch.ended = Some(now);
            farm.give_up_waiting();
        }
        farm.step(engine, snapshot, now, tx);
        if let Err(e) = farm.write(engine) {
            tracing::warn!("task farm: cannot record batch {id}: {e}");
        }
        if farm.batch.state != BatchState::Running && farm.running.is_empty() {
            finished.push(*id);
        }
    }
    for id in finished {
        farms.remove(&id);
    }
}

/// Records a run that ended: the task succeeds, fails for good, or waits for its retry.
fn record(farms: &mut BTreeMap<u64, Farm>, ended: Ended) {
    let Some(farm) = farms.get_mut(&ended.batch) else {
        return;
    };
    farm.running.remove(&ended.position);
    farm.dirty.insert(ended.position);
    let retries = farm.retries;
    // A batch that ended (cancelled, or its budget spent) runs no retry.
    let ended_batch = farm.batch.state != BatchState::Running;
    let cancelled = farm.batch.state == BatchState::Cancelled;
    let task = &mut farm.tasks[ended.position];
    let Some(attempt) = task.attempts.last_mut() else {
        return;
    };
    attempt.ended = Some(ended.at);
    let succeeded = match ended.result {
        Ok(output) => {
            attempt.code = Some(output.code);
            task.stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            task.stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            output.code == 0
        }
        Err(error) => {
            attempt.error = Some(error);
            false
        }
    };
    if cancelled && !succeeded {
        attempt.error = Some("stopped with its workers: the batch was cancelled".into());
    }
    task.state = if succeeded {
        TaskState::Succeeded
    } else if ended_batch || task.attempts.len() > retries as usize {
        TaskState::Failed
    } else {
        TaskState::Pending
    };
}

impl Farm {
    /// A batch as the store has it: tasks recorded as running were lost with the daemon that
    /// ran them, and wait again.
    fn resumed(batch: BatchRecord, mut tasks: Vec<TaskRecord>, retries: u32, now: Millis) -> Self {
        let mut dirty = BTreeSet::new();
        for (position, task) in tasks.iter_mut().enumerate() {
            if task.state == TaskState::Running {
                task.state = TaskState::Pending;
                if let Some(attempt) = task.attempts.last_mut() {
                    attempt.ended = Some(now);
                    attempt.error = Some("the daemon stopped while it ran".into());
                }
                dirty.insert(position);
            }
        }
        Self {
            batch,
            tasks,
            running: BTreeMap::new(),
            dirty,
            last_step: now,
            start_ms: None,
            asked: None,
            retries,
        }
    }

    fn give_up_waiting(&mut self) {
        for (position, task) in self.tasks.iter_mut().enumerate() {
            if task.state == TaskState::Pending {
                task.state = TaskState::NotRun;
                self.dirty.insert(position);
            }
        }
    }

    fn goal(&self) -> Goal {
        match self.batch.goal {
            BatchGoal::Deadline { at } => Goal::Deadline { at },
            BatchGoal::Budget { instance_ms } => Goal::Budget { instance_ms },
        }
    }

    fn facts(&self, now: Millis, max_workers: u32) -> FarmFacts {
        let mut facts = FarmFacts {
            now,
            max_workers,
            start_ms: self.start_ms.unwrap_or(FIRST_START_MS),
            spent_ms: self.batch.spent_ms,
            ..FarmFacts::default()
        };
        for task in &self.tasks {
            let last = task.attempts.last();
            match task.state {
                TaskState::Pending => facts.pending += 1,
                TaskState::Running => {
                    facts
                        .running
                        .push(last.map_or(0, |a| now.saturating_sub(a.started)));
                }
                TaskState::Succeeded | TaskState::Failed => {
                    // A run that ended by itself tells how long a task takes.
                    if let Some(Attempt {
                        started,
                        ended: Some(ended),
                        code: Some(_),
                        ..
                    }) = last
                    {
                        facts.done.push(ended.saturating_sub(*started));
                    }
                }
                TaskState::NotRun => {}
            }
        }
        facts
    }

    fn step<D: Driver>(
        &mut self,
        engine: &Arc<Engine<D>>,
        snapshot: &Snapshot,
        now: Millis,
        tx: &mpsc::UnboundedSender<Ended>,
    ) {
        let app = &self.batch.app.clone();
        let service = &self.batch.service.clone();
        let record = snapshot
            .apps
            .iter()
            .find(|a| a.name == *app && a.removing.is_none());
        let spec = record.and_then(|r| r.manifest.services.get(service));
        let Some((record, spec, farm)) =
            record.and_then(|r| spec.and_then(|s| s.task_farm().map(|f| (r, s, *f))))
        else {
            // Its application or farm is gone: nothing more can run.
            if self.batch.state == BatchState::Running {
                self.batch.state = BatchState::Cancelled;
                self.batch.ended = Some(now);
                self.give_up_waiting();
            }
            self.running.clear();
            self.batch.counts = self.counts();
            return;
        };
        // The workers, lowest number first: those starting or running count (and cost).
        let mut alive: Vec<(u32, bool)> = snapshot
            .instances
            .iter()
            .filter(|i| i.key.app == *app && i.key.service == *service)
            .filter(|i| {
                matches!(
                    i.state,
                    InstanceState::Starting | InstanceState::Running { .. }
                )
            })
            .map(|i| (i.key.index, i.state.is_ready()))
            .collect();
        alive.sort_unstable();
        if self.batch.state == BatchState::Running {
            let elapsed = now.saturating_sub(self.last_step);
            self.batch.spent_ms += elapsed * alive.len() as u64;
        }
        self.last_step = now;
        self.measure_start(&alive, now);

        if let (BatchGoal::Budget { instance_ms }, BatchState::Running) =
            (self.batch.goal, self.batch.state)
        {
            if self.batch.spent_ms >= instance_ms
                && self.tasks.iter().any(|t| t.state == TaskState::Pending)
            {
                self.give_up_waiting();
                self.batch.state = BatchState::BudgetSpent;
                self.batch.ended = Some(now);
            }
        }

        let planned = plan(self.goal(), &self.facts(now, farm.max_workers));
        if self.batch.state == BatchState::Running && planned.workers == 0 {
            self.batch.state = BatchState::Done;
            self.batch.ended = Some(now);
            self.batch.plan = planned.reason.clone();
        }
        let busy: BTreeSet<u32> = self.running.values().copied().collect();
        let keep = alive
            .iter()
            .rposition(|(index, _)| busy.contains(index))
            .map_or(0, |p| p as u32 + 1);
        let wanted = match self.batch.state {
            BatchState::Running => planned.workers.max(keep),
            // Cancelled: the workers stop, and the tasks on them.
            BatchState::Cancelled => 0,
            // Done, or the budget spent: the tasks that run finish.
            BatchState::Done | BatchState::BudgetSpent => keep,
        };
        if self.batch.state == BatchState::Running {
            self.batch.plan = planned.reason.clone();
            self.batch.workers = planned.workers;
        } else {
            self.batch.workers = wanted;
        }
        self.batch.peak_workers = self.batch.peak_workers.max(alive.len() as u32);
        let current = record.services.get(service).map_or(0, |s| s.replicas);
        if wanted != current {
            if wanted as usize > alive.len() {
                self.asked = Some((now, alive.len()));
            }
            let command = Command::Scale {
                app: app.clone(),
                service: service.clone(),
                replicas: Some(wanted),
                cpu: None,
                reason: Some(format!(
                    "batch {}: {}",
                    self.batch.id,
                    self.reason(&planned)
                )),
            };
            if let Err(e) = engine.submit(
                &Caller::TaskFarm {
                    batch: self.batch.id,
                },
                &command,
            ) {
                tracing::warn!("task farm batch {}: cannot scale: {e}", self.batch.id);
            }
        }
        if self.batch.state == BatchState::Running {
            self.assign(engine, spec, &farm, &alive, planned.workers, now, tx);
        }
        self.batch.counts = self.counts();
        if self.batch.state != BatchState::Running && self.running.is_empty() {
            self.ended(engine, now);
        }
    }

    fn reason(&self, planned: &FarmPlan) -> String {
        match self.batch.state {
            BatchState::Running => planned.reason.clone(),
            state => format!("{}, its workers stop", state.name()),
        }
    }

    /// Learns how long a worker takes to start: from the last ask for more to the first new one
    /// ready.
    fn measure_start(&mut self, alive: &[(u32, bool)], now: Millis) {
        let Some((asked, before)) = self.asked else {
            return;
        };
        let ready = alive.iter().filter(|(_, ready)| *ready).count();
        if ready > before {
            let took = now.saturating_sub(asked);
            self.start_ms = Some(self.start_ms.map_or(took, |s| (s + took) / 2));
            self.asked = None;
        }
    }

    /// Gives each idle, ready worker among the first `workers` the next waiting task.
    #[allow(clippy::too_many_arguments)]
    fn assign<D: Driver>(
        &mut self,
        engine: &Arc<Engine<D>>,
        spec: &paracloud_manifest::Service,
        farm: &paracloud_manifest::TaskFarm,
        alive: &[(u32, bool)],
        workers: u32,
        now: Millis,
        tx: &mpsc::UnboundedSender<Ended>,
    ) {
        let busy: BTreeSet<u32> = self.running.values().copied().collect();
        let idle = alive
            .iter()
            .take(workers as usize)
            .filter(|(index, ready)| *ready && !busy.contains(index))
            .map(|(index, _)| *index);
        for index in idle {
            let Some(position) = self
                .tasks
                .iter()
                .position(|t| t.state == TaskState::Pending)
            else {
                return;
            };
            let key = InstanceKey::new(&self.batch.app, &self.batch.service, index);
            let Some(process) = engine.live_process(&key) else {
                continue;
            };
            let task = &mut self.tasks[position];
            task.state = TaskState::Running;
            task.attempts.push(Attempt {
                worker: key.name(),
                started: now,
                ended: None,
                code: None,
                error: None,
            });
            self.running.insert(position, index);
            self.dirty.insert(position);
            let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), task.command.clone()];
            let env: Vec<(String, String)> = configured_env(spec, &key).into_iter().collect();
            let timeout = Duration::from_millis(farm.task_timeout_ms);
            let engine = engine.clone();
            let tx = tx.clone();
            let batch = self.batch.id;
            tokio::spawn(async move {
                let result = engine
                    .driver
                    .exec(&process, &argv, &env, timeout)
                    .await
                    .map_err(|e| match e {
                        paracloud_runtime::Error::Sys {
                            source: nix::Error::ETIMEDOUT,
                            ..
                        } => {
                            format!("stopped after the task timeout of {timeout:?}")
                        }
                        other => format!("{} went away: {other}", key.name()),
                    });
                let _ = tx.send(Ended {
                    batch,
                    position,
                    result,
                    at: now_ms(),
                });
            });
        }
    }

    fn counts(&self) -> TaskCounts {
        let mut counts = TaskCounts::default();
        for task in &self.tasks {
            match task.state {
                TaskState::Succeeded => counts.succeeded += 1,
                TaskState::Failed => counts.failed += 1,
                TaskState::Running => counts.running += 1,
                TaskState::Pending => counts.pending += 1,
                TaskState::NotRun => counts.not_run += 1,
            }
        }
        counts
    }

    /// The batch's end, in the application's events.
    fn ended<D: Driver>(&self, engine: &Arc<Engine<D>>, now: Millis) {
        let batch = &self.batch;
        let took = now.saturating_sub(batch.submitted);
        let not_run = batch.counts.not_run;
        let mut message = format!(
            "batch {} {} after {:.1}s: {} succeeded, {} failed",
            batch.id,
            batch.state.name(),
            took as f64 / 1000.0,
            batch.counts.succeeded,
            batch.counts.failed,
        );
        if not_run > 0 {
            message.push_str(&format!(", {not_run} not run"));
        }
        message.push_str(&format!(
            "; {:.1} instance-seconds, at most {} workers",
            batch.spent_ms as f64 / 1000.0,
            batch.peak_workers
        ));
        if let (BatchGoal::Deadline { at }, BatchState::Done) = (batch.goal, batch.state) {
            let end = batch.ended.unwrap_or(now);
            if end <= at {
                message.push_str(&format!(
                    "; the deadline met with {:.1}s to spare",
                    (at - end) as f64 / 1000.0
                ));
            } else {
                message.push_str(&format!(
                    "; the deadline missed by {:.1}s",
                    (end - at) as f64 / 1000.0
                ));
            }
        }
        engine.event(&batch.app, &batch.service, &message);
    }

    fn write<D: Driver>(&mut self, engine: &Arc<Engine<D>>) -> Result<(), paracloud_state::Error> {
        let tasks: Vec<&TaskRecord> = self.dirty.iter().map(|&p| &self.tasks[p]).collect();
        engine.store.update_batch(&self.batch, &tasks)?;
        self.dirty.clear();
        Ok(())
    }
}
