//! The planner: compares desired and observed state and says what to do next.

use std::collections::{BTreeMap, BTreeSet};

use paracloud_manifest::{DependsCondition, RestartCondition, RestartPolicy, Service};

use crate::model::*;

/// A run at least this long resets the restart backoff.
pub const STABLE_RUN_MS: Millis = 10_000;

/// Restarts in a row, each failing before a stable run, after which a catalogue primary whose
/// replicas can take over is started from its most advanced replica instead of its own data.
pub const FAILOVER_AFTER_RESTARTS: u32 = 3;

/// The delay before the next restart of an instance that has restarted `restarts` times in a row.
pub fn restart_delay(policy: &RestartPolicy, restarts: u32) -> Millis {
    let initial = policy.backoff_initial.as_millis() as u64;
    let max = policy.backoff_max.as_millis() as u64;
    let factor = 1u64.checked_shl(restarts.min(32)).unwrap_or(u64::MAX);
    initial.saturating_mul(factor).min(max.max(initial))
}

/// The restart count to keep after an exit: planned stops and stable runs start the count afresh.
pub fn restarts_after_exit(previous: u32, exit: &ExitInfo) -> u32 {
    if exit.requested.is_some() || exit.ran_ms >= STABLE_RUN_MS {
        0
    } else {
        previous
    }
}

fn should_restart(policy: &RestartPolicy, exit: &ExitInfo, restarts: u32) -> bool {
    match policy.condition {
        RestartCondition::Always => true,
        RestartCondition::OnFailure => {
            exit.is_failure() && policy.max_retries.is_none_or(|max| restarts < max)
        }
        RestartCondition::No => false,
    }
}

/// Computes the next actions. Pure: the same inputs always give the same plan.
pub fn plan(desired: &Desired, observed: &Observed, now: Millis) -> Plan {
    let mut plan = Plan::default();
    let mut by_app: BTreeMap<&str, Vec<&ObservedInstance>> = BTreeMap::new();
    for instance in &observed.instances {
        by_app
            .entry(instance.key.app.as_str())
            .or_default()
            .push(instance);
    }

    for (name, app) in &desired.apps {
        if !observed.networks.contains(name) {
            plan.actions
                .push(Action::EnsureNetwork { app: name.clone() });
        }
        let instances = by_app.get(name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        for service in app.manifest.services.values() {
            // A migration under way owns its service's instances until it is done.
            if observed
                .migrating
                .contains(&(name.clone(), service.name.clone()))
            {
                continue;
            }
            plan_service(&mut plan, app, service, instances, now);
        }
        // Instances of services the manifest no longer has.
        for instance in instances {
            if !app.manifest.services.contains_key(&instance.key.service) {
                retire(&mut plan, instance, StopReason::ScaleIn);
            }
        }
    }

    let mut gone: BTreeSet<&str> = observed.networks.iter().map(String::as_str).collect();
    gone.extend(by_app.keys().copied());
    gone.extend(observed.removing.keys().map(String::as_str));
    for app in gone {
        if desired.apps.contains_key(app) {
            continue;
        }
        let instances = by_app.get(app).map(Vec::as_slice).unwrap_or(&[]);
        for instance in instances {
            retire(&mut plan, instance, StopReason::Down);
        }
        if instances.is_empty() {
            if observed.networks.contains(app) {
                plan.actions.push(Action::RemoveNetwork {
                    app: app.to_string(),
                });
            }
            if let Some(&volumes) = observed.removing.get(app) {
                plan.actions.push(Action::Forget {
                    app: app.to_string(),
                    volumes,
                });
            }
        }
    }

    // CPU limits: every running instance of a desired application gets the one its spec and
    // overrides give, written once per change (and once for each after a daemon start).
    for (name, app) in &desired.apps {
        let instances = by_app.get(name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        for instance in instances.iter().filter(|i| i.state.is_running()) {
            let service = &instance.key.service;
            let Some(spec) = app.manifest.services.get(service) else {
                continue;
            };
            let wanted = effective_cpu(instance.cpu, app.cpu.get(service).copied(), spec);
            match observed.applied_cpu.get(&instance.key) {
                Some(applied) if *applied == wanted => {}
                applied => plan.actions.push(Action::SetCpu {
                    key: instance.key.clone(),
                    cpu: wanted,
                    resize: applied.is_some(),
                }),
            }
        }
    }

    // Network first, then stops, starts and removals, in that order.
    plan.actions.sort_by_key(|action| match action {
        Action::EnsureNetwork { .. } => 0,
        Action::Stop { .. } => 1,
        Action::Start { .. } => 2,
        Action::Migrate { .. } => 2,
        Action::Failover { .. } => 2,
        Action::SetCpu { .. } => 2,
        Action::Remove { .. } => 3,
        Action::RemoveNetwork { .. } => 4,
        Action::Forget { .. } => 5,
    });
    plan
}

/// Stops a running instance that is no longer wanted, or removes it once it has exited.
fn retire(plan: &mut Plan, instance: &ObservedInstance, reason: StopReason) {
    match instance.state {
        InstanceState::Running { .. } => plan.actions.push(Action::Stop {
            key: instance.key.clone(),
            reason,
        }),
        InstanceState::Exited { .. } => plan.actions.push(Action::Remove {
            key: instance.key.clone(),
        }),
        // A start or a stop under way finishes first.
        InstanceState::Starting | InstanceState::Stopping { .. } => {}
    }
}

fn plan_service(
    plan: &mut Plan,
    app: &DesiredApp,
    service: &Service,
    app_instances: &[&ObservedInstance],
    now: Millis,
) {
    let wanted = app.replicas_of(&service.name) as usize;
    let revision = app.revision_of(&service.name);
    let instances: BTreeMap<u32, &ObservedInstance> = app_instances
        .iter()
        .filter(|i| i.key.service == service.name)
        .map(|i| (i.key.index, *i))
        .collect();
    let blocked_by = unmet_dependency(service, app_instances);
    // Replace one instance at a time, and only while none is starting or being replaced.
    let mut replacing = instances.values().any(|i| {
        matches!(
            &i.state,
            InstanceState::Starting | InstanceState::Stopping { reason: StopReason::Replace }
        ) || matches!(&i.state, InstanceState::Exited { exit } if exit.requested == Some(StopReason::Replace))
    });

    // The instances that count toward `wanted`: all but those stopping or stopped by the
    // platform. Names are not fixed: a migration leaves its instance under a new index, so the
    // lowest-numbered ones are kept and missing ones take the lowest free numbers.
    let counted: Vec<&ObservedInstance> = instances
        .values()
        .copied()
        .filter(|i| !planned_out(&i.state))
        .collect();
    let (kept, extra) = counted.split_at(counted.len().min(wanted));
    for instance in extra {
        retire(plan, instance, StopReason::ScaleIn);
    }
    for instance in kept {
        let key = instance.key.clone();
        match &instance.state {
            InstanceState::Starting | InstanceState::Stopping { .. } => {}
            InstanceState::Running { health } => {
                if instance.revision < revision && !replacing {
                    replacing = true;
                    // A catalogue service's primary stops first: two servers must never share
                    // its data.
                    if instance.state.is_ready() && !service.is_catalog_primary() {
                        plan.actions.push(Action::Migrate { key });
                    } else {
                        // It takes no traffic: nothing to hand over or keep serving.
                        plan.actions.push(Action::Stop {
                            key,
                            reason: StopReason::Replace,
                        });
                    }
                } else if *health == Health::Unhealthy
                    && service.restart.condition != RestartCondition::No
                    && service.health.as_ref().is_none_or(|h| h.restart)
                {
                    plan.actions.push(Action::Stop {
                        key,
                        reason: StopReason::Unhealthy,
                    });
                }
            }
            InstanceState::Exited { .. } if instance.revision < revision => {
                // An update after a failed deploy: the new revision is a new program, not a
                // restart of the old one, so it starts now, whatever the old one's backoff,
                // restart count or restart policy.
                match &blocked_by {
                    None => plan.actions.push(Action::Start {
                        key,
                        restart: false,
                    }),
                    Some(why) => plan.waiting.push((key, why.clone())),
                }
            }
            InstanceState::Exited { exit } => {
                if !should_restart(&service.restart, exit, instance.restarts) {
                    continue;
                }
                let due = instance.since + restart_delay(&service.restart, instance.restarts);
                let failover = failover_from(service, instance, exit, app_instances);
                if now >= due && !failover.is_empty() {
                    plan.actions.push(Action::Failover {
                        key,
                        replicas: failover,
                    });
                } else if now >= due {
                    plan.actions.push(Action::Start { key, restart: true });
                } else {
                    plan.wake_at = Some(plan.wake_at.map_or(due, |w| w.min(due)));
                    plan.waiting
                        .push((key, format!("restarting in {} ms (backoff)", due - now)));
                }
            }
        }
    }
    // Missing instances take the lowest numbers no live instance holds; the record of one the
    // platform stopped there is reused (a planned start, not a restart by policy).
    let busy = |index: u32| {
        instances.get(&index).is_some_and(|i| {
            !matches!(i.state, InstanceState::Exited { .. }) || !planned_out(&i.state)
        })
    };
    let mut reused = Vec::new();
    let mut index = 0;
    for _ in kept.len()..wanted {
        index += 1;
        while busy(index) {
            index += 1;
        }
        let key = InstanceKey::new(&app.manifest.app, &service.name, index);
        reused.push(index);
        match &blocked_by {
            None => plan.actions.push(Action::Start {
                key,
                restart: false,
            }),
            Some(why) => plan.waiting.push((key, why.clone())),
        }
    }
    // Records of instances the platform stopped that no start reuses are removed.
    for instance in instances.values() {
        if matches!(instance.state, InstanceState::Exited { .. })
            && planned_out(&instance.state)
            && !reused.contains(&instance.key.index)
        {
            plan.actions.push(Action::Remove {
                key: instance.key.clone(),
            });
        }
    }
}

/// The replicas a catalogue primary fails over to: when it cannot come back on its own data
/// (it failed [`FAILOVER_AFTER_RESTARTS`] restarts in a row) and its kind promotes replicas, the
/// running instances of its read service; none otherwise.
fn failover_from(
    service: &Service,
    instance: &ObservedInstance,
    exit: &ExitInfo,
    app_instances: &[&ObservedInstance],
) -> Vec<InstanceKey> {
    let promotes = service
        .catalog
        .as_ref()
        .is_some_and(|c| c.kind.promotes_replicas());
    if !service.is_catalog_primary()
        || !promotes
        || exit.requested.is_some()
        || !exit.is_failure()
        || instance.restarts < FAILOVER_AFTER_RESTARTS
    {
        return Vec::new();
    }
    let read = paracloud_manifest::catalog::read_service_name(&service.name);
    app_instances
        .iter()
        .filter(|i| i.key.service == read && i.state.is_running())
        .map(|i| i.key.clone())
        .collect()
}

/// Stopping, or stopped by the platform (scale-in, replacement, down): no longer counted. An
/// instance stopped for failing its health checks still counts: it is restarted in its place
/// (by its restart policy, with backoff), as a liveness probe's container is, rather than
/// replaced by a new one beside it, which its own restart would then make one too many.
fn planned_out(state: &InstanceState) -> bool {
    match state {
        InstanceState::Stopping { reason } => *reason != StopReason::Unhealthy,
        InstanceState::Exited { exit } => matches!(
            exit.requested,
            Some(StopReason::Replace | StopReason::ScaleIn | StopReason::Down)
        ),
        _ => false,
    }
}

/// The first dependency of `service` that does not yet meet its condition, as a reason to wait.
fn unmet_dependency(service: &Service, app_instances: &[&ObservedInstance]) -> Option<String> {
    for (dependency, condition) in &service.depends_on {
        let mut of_dependency = app_instances
            .iter()
            .filter(|i| &i.key.service == dependency);
        let met = match condition {
            DependsCondition::Started => of_dependency.any(|i| i.state.is_running()),
            DependsCondition::Healthy => of_dependency.any(|i| i.state.is_ready()),
            DependsCondition::Completed => of_dependency.any(|i| {
                matches!(&i.state, InstanceState::Exited { exit }
                    if exit.requested.is_none() && !exit.is_failure())
            }),
        };
        if !met {
            let word = match condition {
                DependsCondition::Started => "started",
                DependsCondition::Healthy => "healthy",
                DependsCondition::Completed => "completed",
            };
            return Some(format!("waiting for {dependency} to be {word}"));
        }
    }
    None
}
