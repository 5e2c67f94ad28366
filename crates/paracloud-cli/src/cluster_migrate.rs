//! `paracloud --kubernetes migrate POD`: a pod replaced by a successor made beside it, make
//! before break, as on one machine (docs/kubernetes.md, "Migration"). What may move and the
//! changes to make are `paracloud_kube::migration`'s; this module makes them on the API server
//! and sends the PaCI handover through the node agents of both pods' nodes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use paracloud_kube::migration::{self, Plan};
use paracloud_kube::ParacloudApp;
use paracloud_manifest::MigrateMethod;
use paracloud_paci::{EventKind, Target};

/// How long the successor may take to be ready: a cluster pulls an image and probes it.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a pod may take to go once its ReplicaSet removes it: its drain window and its stop
/// grace.
const GONE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the successor has to open its event stream once ready, as on one machine.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// What to migrate, and where the node agents are.
pub(crate) struct Request {
    pub pod: String,
    pub via: Option<String>,
    pub agent_namespace: String,
}

/// The application's resource and the pods of its namespace.
struct Cluster<'a> {
    app: &'a ParacloudApp,
    apps: Api<ParacloudApp>,
    pods: Api<Pod>,
    agents: Api<Pod>,
    client: kube::Client,
    agent_namespace: String,
}

/// A pod of the migration: its name, uid, node and address.
struct Side {
    name: String,
    uid: String,
    node: String,
    ip: Option<std::net::Ipv4Addr>,
}

impl Side {
    fn of(pod: &Pod) -> Side {
        let status = pod.status.as_ref();
        Side {
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            ip: status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
        }
    }
}

/// Migrates the pod: checks it may move, marks its service as under a migration (its pods
/// now serve, the successor will not yet; the autoscaler leaves it alone), scales it up by
/// one, waits for the successor, hands the state over through PaCI (the service's method, or
/// `--via`), switches the requests to the successor, then has the ReplicaSet remove the old
/// pod and ends the migration. A failure before the switch removes the successor the same way
/// and leaves the old pod serving.
pub(crate) async fn migrate(
    client: &kube::Client,
    app: &ParacloudApp,
    request: &Request,
) -> Result<paracloud_api::MigrateResponse> {
    let started = Instant::now();
    let namespace = app.metadata.namespace.clone().unwrap_or_default();
    let manifest = paracloud_kube::reconcile::manifest(app)
        .map_err(|e| anyhow!("the resource's manifest is not valid:\n{e}"))?;
    let cluster = Cluster {
        app,
        apps: Api::namespaced(client.clone(), &namespace),
        pods: Api::namespaced(client.clone(), &namespace),
        agents: Api::namespaced(client.clone(), &request.agent_namespace),
        client: client.clone(),
        agent_namespace: request.agent_namespace.clone(),
    };
    let via = request.via.as_deref().map(method).transpose()?;
    let old_pod = cluster
        .pods
        .get_opt(&request.pod)
        .await
        .map_err(|e| anyhow!("cannot read pod {}: {e}", request.pod))?
        .ok_or_else(|| {
            anyhow!(
                "no pod {} in namespace {namespace}: `paracloud --kubernetes ps` lists the application's pods",
                request.pod
            )
        })?;
    let plan = migration::plan(app, &manifest, &old_pod, via).map_err(|e| anyhow!("{e}"))?;
    let old = Side::of(&old_pod);
    let old_agent = match plan.via {
        MigrateMethod::Paci => {
            let agent = cluster.agent_of(&old).await?;
            let answer =
                crate::agent_exec::send_event(&cluster.agents, &agent, &old.uid, None, 0).await?;
            if !answer.listening {
                anyhow::bail!(
                    "{} does not follow its PaCI events, so it cannot hand its state over; migrate it with --via restart (its state is not kept), or set the service's `migrate`",
                    old.name
                );
            }
            Some(agent)
        }
        _ => None,
    };

    // The service's pods now: the successor is the one that was not there; those serving
    // take the requests until the switch, the successor none.
    let pods = cluster.list(&plan).await?;
    let before: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let serving: Vec<String> = pods
        .iter()
        .filter(|p| migration::is_ready(p) && p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    cluster.serving(&plan.service, Some(&serving)).await?;
    if let Err(e) = cluster.scale(&plan.service, plan.replicas + 1).await {
        cluster.end(&plan).await;
        return Err(e);
    }
    eprintln!(
        "{}: starting its successor ({} pods of {} for now)",
        old.name,
        plan.replicas + 1,
        plan.service
    );
    let new = match cluster.successor(&plan, &before).await {
        Ok(new) => new,
        Err(e) => {
            let _ = cluster.retire(&plan, None, &old, &e.to_string()).await;
            cluster.end(&plan).await;
            return Err(e);
        }
    };
    let mut handover = None;
    if let Some(old_agent) = &old_agent {
        match cluster.hand_over(old_agent, &old, &new).await {
            Ok(done) => handover = Some(done),
            Err(e) => {
                let why = format!("{e:#}; {} keeps serving", old.name);
                if let Err(e) = cluster.retire(&plan, Some(&new), &old, &why).await {
                    eprintln!("{e:#}");
                }
                cluster.end(&plan).await;
                anyhow::bail!("the migration of {} was abandoned: {why}", old.name);
            }
        }
    }
    // The switch: the successor serves, the old pod no more.
    let switched: Vec<String> = serving
        .iter()
        .filter(|p| **p != old.name)
        .cloned()
        .chain([new.name.clone()])
        .collect();
    cluster
        .serving(&plan.service, Some(&switched))
        .await
        .map_err(|e| {
            anyhow!(
                "{e:#}: {} handed its state to {}, and both run while only {} serves; end the migration with {} and scale {} back with `paracloud --kubernetes scale {}={}`",
                old.name,
                new.name,
                old.name,
                migration::end_command(app, &plan.service),
                plan.service,
                plan.service,
                plan.replicas
            )
        })?;
    let retired = cluster.retire(&plan, Some(&old), &new, "").await;
    cluster.end(&plan).await;
    if let Err(e) = retired {
        anyhow::bail!(
            "the migration of {} did not end as asked: {e:#}, with the state as it was at the handover",
            old.name
        );
    }
    let done = paracloud_api::MigrateResponse {
        from: old.name.clone(),
        to: new.name.clone(),
        via: plan.via.name().into(),
        took_ms: started.elapsed().as_millis() as u64,
        handover_ms: handover.map(|(ms, _)| ms),
        state_bytes: handover.map(|(_, bytes)| bytes),
    };
    let state = match handover {
        Some((ms, bytes)) => format!(": state of {bytes} bytes handed over in {ms} ms"),
        None => String::new(),
    };
    cluster
        .record(
            "Normal",
            "Migrated",
            &format!(
                "pod {} migrated to {} via {} in {} ms{state}",
                done.from, done.to, done.via, done.took_ms
            ),
        )
        .await;
    Ok(done)
}

/// Whether a pod of the service's label is the service's own: its revisions' pods carry the
/// label too.
fn is_own(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_none_or(|l| !l.contains_key(paracloud_kube::names::REVISION_LABEL))
}

/// `--via`'s value as a method.
fn method(via: &str) -> Result<MigrateMethod> {
    match via {
        "paci" => Ok(MigrateMethod::Paci),
        "restart" => Ok(MigrateMethod::Restart),
        "criu" => Ok(MigrateMethod::Criu),
        other => Err(anyhow!(
            "--via {other:?} is not a method: paci, criu or restart"
        )),
    }
}

impl Cluster<'_> {
    fn name(&self) -> String {
        self.app.metadata.name.clone().unwrap_or_default()
    }

    /// The service's own pods now, whatever their state.
    async fn list(&self, plan: &Plan) -> Result<Vec<Pod>> {
        let mut pods = self
            .pods
            .list(&ListParams::default().labels(&self.selector(plan)))
            .await
            .map_err(|e| anyhow!("cannot list the pods of {}: {e}", plan.service))?
            .items;
        pods.retain(is_own);
        Ok(pods)
    }

    /// The label selector of the service's pods, its revisions' included.
    fn selector(&self, plan: &Plan) -> String {
        use paracloud_kube::names::{object_name, SERVICE_LABEL};
        format!(
            "{},{SERVICE_LABEL}={}",
            paracloud_kube::reconcile::selector(self.app),
            object_name(&plan.service)
        )
    }

    /// The node agent of the pod's node.
    async fn agent_of(&self, side: &Side) -> Result<String> {
        let agents = crate::agent_exec::node_agents(&self.client, &self.agent_namespace).await?;
        agents.get(&side.node).cloned().ok_or_else(|| {
            anyhow!(
                "no node agent runs on node {:?} of pod {} in namespace {} (give --agent-namespace the namespace of `paracloud k8s install -n`): its PaCI events go through it",
                side.node,
                side.name,
                self.agent_namespace
            )
        })
    }

    /// Sets the service's pods on the resource; the operator and the ReplicaSet carry it out.
    async fn scale(&self, service: &str, replicas: u32) -> Result<()> {
        let patch = migration::scale_patch(service, replicas);
        self.apps
            .patch(&self.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| anyhow!("cannot scale {service} to {replicas} pods: {e}"))?;
        Ok(())
    }

    /// The service's pods now, as the resource asks for them.
    async fn replicas(&self, service: &str) -> Result<u32> {
        let app = self
            .apps
            .get(&self.name())
            .await
            .map_err(|e| anyhow!("cannot read {}: {e}", self.name()))?;
        let manifest = paracloud_kube::reconcile::manifest(&app)
            .map_err(|e| anyhow!("the resource's manifest is not valid:\n{e}"))?;
        paracloud_kube::autoscale::current(&app, &manifest, service)
            .map(|c| c.replicas)
            .ok_or_else(|| anyhow!("{service} is gone from the resource's manifest"))
    }

    /// Marks the service as under a migration, with the pods that take requests meanwhile, or
    /// (`None`) ends it.
    async fn serving(&self, service: &str, serving: Option<&[String]>) -> Result<()> {
        let patch = migration::serving_patch(service, serving);
        self.apps
            .patch(&self.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot mark the migration of {service} on {}: {e}",
                    self.name()
                )
            })?;
        Ok(())
    }

    /// Ends the service's migration: every pod takes requests, the autoscaler is back. One
    /// that cannot be ended is said, with how to end it.
    async fn end(&self, plan: &Plan) {
        if let Err(e) = self.serving(&plan.service, None).await {
            eprintln!(
                "{e:#}: end it with {}",
                migration::end_command(self.app, &plan.service)
            );
        }
    }

    /// Waits for the pod the ReplicaSet makes beside `before`, and for it to be ready, watching
    /// the service's pods.
    async fn successor(&self, plan: &Plan, before: &BTreeSet<String>) -> Result<Side> {
        use futures::TryStreamExt;
        use kube::runtime::{reflector, watcher, WatchStreamExt};
        let (pods, writer) = reflector::store();
        let config = watcher::Config::default().labels(&self.selector(plan));
        let changes = reflector(writer, watcher(self.pods.clone(), config)).touched_objects();
        let mut changes = std::pin::pin!(changes);
        let found = tokio::time::timeout(READY_TIMEOUT, async {
            while changes
                .try_next()
                .await
                .map_err(|e| anyhow!("cannot follow the pods of {}: {e}", plan.service))?
                .is_some()
            {
                let now: Vec<Pod> = pods
                    .state()
                    .iter()
                    .map(|p| (**p).clone())
                    .filter(is_own)
                    .collect();
                let Some(pod) = migration::successor(before, &now) else {
                    continue;
                };
                let side = Side::of(pod);
                if migration::is_ready(pod) {
                    return Ok(side);
                }
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if matches!(phase, Some("Failed" | "Succeeded")) {
                    anyhow::bail!(
                        "the successor {} ended before it was ready (phase {}): `kubectl describe pod {}` says why",
                        side.name,
                        phase.unwrap_or_default(),
                        side.name
                    );
                }
            }
            anyhow::bail!("the watch of the pods of {} ended", plan.service)
        })
        .await;
        found.unwrap_or_else(|_| {
            Err(anyhow!(
                "no successor of {} was ready within {} s: `kubectl get pods` and the operator's log say why",
                plan.service,
                READY_TIMEOUT.as_secs()
            ))
        })
    }

    /// Asks the old pod for its state (`migrate`) and gives it to the new one (`restore`), each
    /// through its node's agent; the time it took and the state's size.
    async fn hand_over(&self, old_agent: &str, old: &Side, new: &Side) -> Result<(u64, u64)> {
        let new_agent = self.agent_of(new).await?;
        let wait = LISTEN_WAIT.as_millis() as u64;
        let listening =
            crate::agent_exec::send_event(&self.agents, &new_agent, &new.uid, None, wait).await?;
        if !listening.listening {
            anyhow::bail!(
                "{} did not open its PaCI event stream within {} s of being ready",
                new.name,
                LISTEN_WAIT.as_secs()
            );
        }
        let asked = Instant::now();
        let migrate = EventKind::Migrate {
            to: Target {
                instance: new.name.clone(),
                address: new.ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            },
        };
        let answer =
            crate::agent_exec::send_event(&self.agents, old_agent, &old.uid, Some(&migrate), 0)
                .await?;
        let state = answer.state.unwrap_or(serde_json::Value::Null);
        let bytes = serde_json::to_vec(&state).map_or(0, |v| v.len() as u64);
        let restore = EventKind::Restore {
            from: old.name.clone(),
            state: state.clone(),
        };
        let restored =
            crate::agent_exec::send_event(&self.agents, &new_agent, &new.uid, Some(&restore), 0)
                .await;
        if let Err(e) = restored {
            // The old pod handed its state over and waits: give it back, so that it serves on
            // as before.
            let back = EventKind::Restore {
                from: old.name.clone(),
                state,
            };
            let _ =
                crate::agent_exec::send_event(&self.agents, old_agent, &old.uid, Some(&back), 0)
                    .await;
            return Err(e);
        }
        Ok((asked.elapsed().as_millis() as u64, bytes))
    }

    /// Has the ReplicaSet remove `going` (none: the successor, whenever it appears, is the pod
    /// too many): the lowest deletion cost, then the service one pod smaller, then waits for
    /// it to be gone. A step that fails is said, with what is left to do by hand; `why` (a
    /// migration abandoned) is recorded as an Event. The ReplicaSet removes a pod that is not
    /// ready before any deletion cost counts: should `staying` go instead, that is the error.
    async fn retire(
        &self,
        plan: &Plan,
        going: Option<&Side>,
        staying: &Side,
        why: &str,
    ) -> Result<()> {
        let cost = migration::first_to_go();
        if let Some(going) = going {
            if let Err(e) = self
                .pods
                .patch(&going.name, &PatchParams::default(), &Patch::Merge(&cost))
                .await
            {
                eprintln!(
                    "cannot mark {} as the first to go: {e}; the ReplicaSet chooses which pod goes",
                    going.name
                );
            }
        }
        let scaled = match self.replicas(&plan.service).await {
            Ok(replicas) => self.scale(&plan.service, replicas.saturating_sub(1)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = scaled {
            eprintln!(
                "{e:#}: scale {} back with `paracloud --kubernetes scale {}={}`",
                plan.service, plan.service, plan.replicas
            );
        }
        if !why.is_empty() {
            self.record("Warning", "MigrationAbandoned", why).await;
        }
        let Some(going) = going else {
            return Ok(());
        };
        use kube::runtime::wait::{await_condition, conditions::is_deleted};
        let first = tokio::time::timeout(GONE_TIMEOUT, async {
            tokio::select! {
                ended = await_condition(self.pods.clone(), &going.name, is_deleted(&going.uid)) => {
                    ended.map(|_| true)
                }
                ended = await_condition(self.pods.clone(), &staying.name, is_deleted(&staying.uid)) => {
                    ended.map(|_| false)
                }
            }
        });
        match first.await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(anyhow!(
                "the ReplicaSet removed {} instead of {} (a pod that is not ready goes first, whatever its deletion cost); {} still runs",
                staying.name,
                going.name,
                going.name
            )),
            Ok(Err(e)) => {
                eprintln!("cannot follow pod {}: {e}", going.name);
                Ok(())
            }
            Err(_) => {
                eprintln!(
                    "{} is still there after {} s: `kubectl describe pod {}` says why",
                    going.name,
                    GONE_TIMEOUT.as_secs(),
                    going.name
                );
                Ok(())
            }
        }
    }

    /// An Event on the resource, as `kubectl describe paracloudapp` shows them; one the user
    /// may not write is said instead.
    async fn record(&self, kind: &'static str, reason: &'static str, message: &str) {
        let note = paracloud_kube::reconcile::Note {
            kind,
            reason,
            message: message.to_owned(),
        };
        let reporter = paracloud_kube::reconcile::Reporter {
            component: "cli",
            instance: "paracloud",
        };
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        // Unique enough among one resource's Events.
        let suffix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let event = serde_json::from_value::<Event>(note.event(self.app, reporter, &now, suffix));
        let namespace = self.app.metadata.namespace.clone().unwrap_or_default();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let created = match event {
            Ok(event) => events
                .create(&PostParams::default(), &event)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = created {
            eprintln!("cannot record the Event {reason} on {}: {e}", self.name());
        }
    }
}
