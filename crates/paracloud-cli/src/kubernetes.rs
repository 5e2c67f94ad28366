//! `paracloud k8s`: the application as Kubernetes objects, rendered on this machine.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use paracloud_kube::{HostFile, HostFiles, RenderOptions};

use crate::cli::{K8sCommand, Output};
use crate::manifests::{load_manifests, manifest_file};

/// The files services bind, read on this machine.
struct LocalFiles;

impl HostFiles for LocalFiles {
    fn read(&self, path: &Path) -> HostFile {
        if path.is_dir() {
            HostFile::Directory
        } else {
            match std::fs::read(path) {
                Ok(bytes) => HostFile::File(bytes),
                Err(_) => HostFile::Missing,
            }
        }
    }
}

pub(crate) fn k8s(command: K8sCommand, output: Output) -> Result<()> {
    match command {
        K8sCommand::Render {
            file,
            profiles,
            namespace,
            registry,
            no_namespace,
            paci,
            dataplane_image,
        } => {
            let files = match file.as_slice() {
                [] => vec![manifest_file(None)?],
                files => files.to_vec(),
            };
            render(
                &files,
                &profiles,
                RenderOptions {
                    namespace,
                    registry,
                    namespace_object: !no_namespace,
                    file_objects: true,
                    replicas_by_scale: false,
                    paci,
                    dataplane: dataplane_image
                        .map(|image| paracloud_kube::dataplane::DataplaneOptions { image }),
                },
                output,
            )
        }
        K8sCommand::Install {
            image,
            namespace,
            replicas,
            no_node_agent,
            node_runtime,
            node_runtime_root,
            dataplane_image,
        } => {
            let objects =
                paracloud_kube::install::install(&paracloud_kube::install::InstallOptions {
                    namespace,
                    dataplane_image: dataplane_image.unwrap_or_else(|| image.clone()),
                    image,
                    replicas,
                    node_agent: (!no_node_agent).then_some(paracloud_kube::install::NodeAgent {
                        runtime: node_runtime,
                        runtime_root: node_runtime_root,
                    }),
                });
            print_objects(&objects, output);
            Ok(())
        }
        K8sCommand::Crd => {
            let crd = paracloud_kube::Object::of(&paracloud_kube::resource::definition());
            print_objects(&[crd], output);
            Ok(())
        }
    }
}

fn render(
    files: &[PathBuf],
    profiles: &[String],
    options: RenderOptions,
    output: Output,
) -> Result<()> {
    let loaded = load_manifests(files, profiles)?;
    let rendered =
        paracloud_kube::render(&loaded.manifest, &options, &LocalFiles).map_err(|e| {
            anyhow!(
                "{} has no Kubernetes form as it is:\n{e}",
                files
                    .first()
                    .map_or_else(String::new, |f| f.display().to_string())
            )
        })?;
    for note in &rendered.left_out {
        eprintln!("left out: {}: {} ({})", note.place, note.message, note.hint);
    }
    print_objects(&rendered.objects, output);
    Ok(())
}

fn print_objects(objects: &[paracloud_kube::Object], output: Output) {
    match output {
        Output::Table | Output::Yaml => print!("{}", paracloud_kube::to_yaml(objects)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&paracloud_kube::to_json_list(objects))
                .expect("JSON values serialize")
        ),
    }
}

/// `paracloud operator`: the operator's process, with the cluster's credentials (in a pod, its
/// ServiceAccount's; elsewhere, the kubeconfig's).
pub(crate) async fn operator(args: crate::cli::OperatorArgs) -> Result<()> {
    let crate::cli::OperatorArgs {
        lease_namespace,
        lease_name,
        identity,
        lease_duration,
        health,
        resync,
        dataplane_stats,
        paci,
        dataplane_image,
    } = args;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow!("cannot reach the Kubernetes API (in a pod: its ServiceAccount; elsewhere: KUBECONFIG or ~/.kube/config): {e}"))?;
    let identity = identity.unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| format!("paracloud-operator-{}", std::process::id()))
    });
    paracloud_operator::run(
        client,
        paracloud_operator::Options {
            lease: paracloud_operator::LeaseOptions {
                namespace: lease_namespace,
                name: lease_name,
                identity,
                duration: lease_duration,
            },
            health,
            resync,
            follow: dataplane_stats
                .map(|stats_url| paracloud_operator::FollowOptions { stats_url }),
            paci,
            dataplane: dataplane_image
                .map(|image| paracloud_kube::dataplane::DataplaneOptions { image }),
        },
    )
    .await
}

/// `paracloud cluster-dataplane`: an application's data plane in its cluster, with the
/// cluster's credentials (in a pod, its ServiceAccount's; elsewhere, the kubeconfig's).
pub(crate) async fn cluster_dataplane(
    options: paracloud_operator::dataplane::DataplaneOptions,
) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow!("cannot reach the Kubernetes API (in a pod: its ServiceAccount; elsewhere: KUBECONFIG or ~/.kube/config): {e}"))?;
    paracloud_operator::dataplane::run(client, options).await
}

/// The field manager of what the CLI applies (the resource and its files), apart from the
/// operator's.
const CLI_MANAGER: &str = "paracloud-cli";

/// The kubeconfig's client, at `context` or its current one.
async fn kube_client(context: Option<&str>) -> Result<kube::Client> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    let config = kube::Config::from_kubeconfig(&options).await.map_err(|e| {
        anyhow!(
            "cannot read the kubeconfig (KUBECONFIG or ~/.kube/config){}: {e}",
            context
                .map(|c| format!(", context {c}"))
                .unwrap_or_default()
        )
    })?;
    kube::Client::try_from(config).map_err(|e| anyhow!("cannot make a Kubernetes client: {e}"))
}

/// `paracloud deploy --kubernetes`: the application as a `ParacloudApp` resource, applied with
/// the user's kubeconfig, and the files it binds as ConfigMaps and Secrets owned by it.
pub(crate) async fn deploy(
    global: &crate::cli::Global,
    files: &[PathBuf],
    profiles: &[String],
    namespace: Option<String>,
    registry: Option<String>,
) -> Result<()> {
    use kube::api::{Patch, PatchParams};
    use paracloud_kube::{ParacloudApp, ParacloudAppSpec};

    if !global.kubernetes {
        anyhow::bail!("deploy goes to a Kubernetes cluster: pass --kubernetes (on this machine, `paracloud up` runs the application)");
    }
    let files = match files {
        [] => vec![manifest_file(None)?],
        files => files.to_vec(),
    };
    let loaded = load_manifests(&files, profiles)?;
    let namespace = namespace.unwrap_or_else(|| loaded.app.clone());
    // Rendered here first: what has no Kubernetes form is refused before anything is applied,
    // and the files are read on this machine.
    let options = RenderOptions {
        namespace: Some(namespace.clone()),
        registry: registry.clone(),
        namespace_object: true,
        file_objects: true,
        replicas_by_scale: false,
        paci: false,
        dataplane: None,
    };
    let rendered =
        paracloud_kube::render(&loaded.manifest, &options, &LocalFiles).map_err(|e| {
            anyhow!(
                "{} has no Kubernetes form as it is:\n{e}",
                files[0].display()
            )
        })?;
    for note in &rendered.left_out {
        eprintln!("left out: {}: {} ({})", note.place, note.message, note.hint);
    }
    let directories = loaded
        .manifest
        .services
        .values()
        .flat_map(|s| s.volumes.iter())
        .filter_map(|v| match v {
            paracloud_manifest::VolumeMount::Bind { source, .. } if source.is_dir() => {
                Some(source.display().to_string())
            }
            _ => None,
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();

    let client = kube_client(global.context.as_deref()).await?;
    let apply = PatchParams::apply(CLI_MANAGER).force();
    // The namespace, where the user may make it; an existing one is fine either way.
    if let Some(ns) = rendered.objects.iter().find(|o| o.key.kind == "Namespace") {
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(client.clone());
        if let Err(e) = namespaces
            .patch(&namespace, &apply, &Patch::Apply(&ns.body))
            .await
        {
            if namespaces
                .get_opt(&namespace)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                anyhow::bail!("cannot create the namespace {namespace}: {e}");
            }
        }
    }
    let mut app = ParacloudApp::new(
        &loaded.app,
        ParacloudAppSpec {
            manifest: loaded.request.source.clone(),
            registry,
            // The scale, the pods' weights and migrations under way are the cluster's to write
            // (`paracloud scale`, the autoscaler, pods through PaCI, `paracloud migrate`): left
            // out, a redeploy keeps them.
            scale: Default::default(),
            weights: Default::default(),
            migrating: Default::default(),
            directories,
        },
    );
    app.metadata.namespace = Some(namespace.clone());
    let apps: kube::Api<ParacloudApp> = kube::Api::namespaced(client.clone(), &namespace);
    let applied = apps
        .patch(&loaded.app, &apply, &Patch::Apply(&app))
        .await
        .map_err(|e| anyhow!("cannot apply ParacloudApp {namespace}/{}: {e} (is the operator installed? `paracloud k8s install --image IMAGE | kubectl apply -f -`)", loaded.app))?;
    let owner = serde_json::json!([{
        "apiVersion": "paracloud.dev/v1alpha1",
        "kind": "ParacloudApp",
        "name": loaded.app,
        "uid": applied.metadata.uid,
    }]);
    let mut files_applied = 0;
    for object in rendered.objects.iter().filter(|o| {
        matches!(o.key.kind.as_str(), "ConfigMap" | "Secret") && o.key.name.contains("-file-")
    }) {
        let mut body = object.body.clone();
        body["metadata"]["ownerReferences"] = owner.clone();
        let resource = if object.key.kind == "Secret" {
            "secrets"
        } else {
            "configmaps"
        };
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("", "v1", &object.key.kind),
            resource,
        );
        let api: kube::Api<kube::api::DynamicObject> =
            kube::Api::namespaced_with(client.clone(), &namespace, &ar);
        api.patch(&object.key.name, &apply, &Patch::Apply(&body))
            .await
            .map_err(|e| anyhow!("cannot apply {}: {e}", object.key))?;
        files_applied += 1;
    }
    println!(
        "applied ParacloudApp {namespace}/{} ({} services{}); the operator runs it: kubectl get paracloudapps -n {namespace}",
        loaded.app,
        loaded.manifest.services.len(),
        match files_applied {
            0 => String::new(),
            1 => ", 1 file".to_owned(),
            n => format!(", {n} files"),
        }
    );
    Ok(())
}

/// The commands that act on an application in a cluster, with --kubernetes.
pub(crate) async fn cluster_command(
    global: &crate::cli::Global,
    command: crate::cli::Command,
) -> Result<()> {
    use crate::cli::Command;
    match command {
        Command::Deploy {
            file,
            profiles,
            namespace,
            registry,
        } => deploy(global, &file, &profiles, namespace, registry).await,
        Command::Ps { file, .. } => {
            let cluster = Cluster::find(global, file.as_deref()).await?;
            cluster.ps(global.output).await
        }
        Command::Scale { services, cpu, .. } => {
            let cluster = Cluster::find(global, None).await?;
            cluster.scale(&services, cpu.as_deref()).await
        }
        Command::Describe { service } => {
            let cluster = Cluster::find(global, None).await?;
            cluster.describe(&service, global.output).await
        }
        Command::Logs {
            target,
            follow,
            tail,
        } => {
            if follow {
                anyhow::bail!("logs --follow is not available with --kubernetes: `kubectl logs -f` follows a pod");
            }
            let cluster = Cluster::find(global, None).await?;
            cluster.logs(target.as_deref(), tail).await
        }
        Command::Events { follow } => {
            if follow {
                anyhow::bail!("events --follow is not available with --kubernetes: `kubectl get events -w` follows them");
            }
            let cluster = Cluster::find(global, None).await?;
            cluster.events(global.output).await
        }
        Command::Capsule(crate::cli::CapsuleCommand::Ls) => {
            let cluster = Cluster::find(global, None).await?;
            cluster.capsules(global.output)
        }
        Command::Capsule(crate::cli::CapsuleCommand::Run {
            name,
            selector,
            timeout,
            args,
            agent_namespace,
            out,
        }) => {
            let timeout_ms = crate::capsule::timeout_ms(timeout.as_deref())?;
            let cluster = Cluster::find(global, None).await?;
            let run = crate::agent_exec::CapsuleRun {
                capsule: name,
                selector,
                timeout_ms,
                args,
                agent_namespace,
                out,
            };
            let code = cluster.run_capsule(&run, global.output).await?;
            if code != 0 {
                std::io::Write::flush(&mut std::io::stdout())?;
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Migrate {
            instance,
            via,
            revision,
            cpus,
            agent_namespace,
        } => {
            if revision.is_some() || cpus.is_some() {
                anyhow::bail!("--revision and --cpus do not act on a cluster: the successor is a pod of the service's Deployment as it is (`paracloud --kubernetes scale --cpu` changes its CPU)");
            }
            let cluster = Cluster::find(global, None).await?;
            let request = crate::cluster_migrate::Request {
                pod: instance,
                via,
                agent_namespace,
            };
            let done = crate::cluster_migrate::migrate(&cluster.client, &cluster.app, &request).await?;
            crate::output::migrated(global.output, &done)
        }
        other => anyhow::bail!(
            "{} does not act on a cluster: with --kubernetes, deploy, ps, logs, scale, describe, events, migrate, capsule ls and capsule run do (kubectl does the rest)",
            command_name(&other)
        ),
    }
}

fn command_name(command: &crate::cli::Command) -> String {
    let debug = format!("{command:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("this command")
        .to_lowercase()
}

/// An application's resource in the cluster.
struct Cluster {
    client: kube::Client,
    app: paracloud_kube::ParacloudApp,
    namespace: String,
}

impl Cluster {
    /// The application of -a (else the manifest's, else the only one) in the kubeconfig's
    /// cluster, in whichever namespace it is.
    async fn find(global: &crate::cli::Global, file: Option<&Path>) -> Result<Cluster> {
        use paracloud_kube::ParacloudApp;
        let client = kube_client(global.context.as_deref()).await?;
        let wanted = match (&global.app, file) {
            (Some(app), _) => Some(app.clone()),
            (None, Some(file)) => Some(load_manifests(&[file.to_path_buf()], &[])?.app),
            (None, None) => manifest_file(None)
                .ok()
                .and_then(|f| load_manifests(&[f], &[]).ok())
                .map(|l| l.app),
        };
        let all: kube::Api<ParacloudApp> = kube::Api::all(client.clone());
        let found: Vec<ParacloudApp> = match all.list(&Default::default()).await {
            Ok(list) => list.items,
            // No right to list every namespace: the application's own namespace, by its name.
            Err(kube::Error::Api(e)) if e.code == 403 && wanted.is_some() => {
                let name = wanted.clone().unwrap_or_default();
                let api: kube::Api<ParacloudApp> = kube::Api::namespaced(client.clone(), &name);
                api.get_opt(&name).await?.into_iter().collect()
            }
            Err(e) => return Err(anyhow!("cannot list the cluster's ParacloudApps: {e}")),
        };
        let mut matching: Vec<ParacloudApp> = found
            .into_iter()
            .filter(|a| {
                wanted
                    .as_ref()
                    .is_none_or(|w| a.metadata.name.as_ref() == Some(w))
            })
            .collect();
        let app = match matching.len() {
            1 => matching.remove(0),
            0 => anyhow::bail!(
                "{} in the cluster: deploy it with `paracloud deploy --kubernetes -f FILE`",
                wanted.map_or("no ParacloudApp".to_owned(), |w| format!(
                    "no ParacloudApp {w}"
                ))
            ),
            _ => anyhow::bail!(
                "several ParacloudApps match ({}): say which with -a APP",
                matching
                    .iter()
                    .map(|a| format!(
                        "{}/{}",
                        a.metadata.namespace.clone().unwrap_or_default(),
                        a.metadata.name.clone().unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let namespace = app.metadata.namespace.clone().unwrap_or_default();
        Ok(Cluster {
            client,
            app,
            namespace,
        })
    }

    fn name(&self) -> String {
        self.app.metadata.name.clone().unwrap_or_default()
    }

    /// The application's pods: service, readiness, phase, restarts, node.
    async fn ps(&self, output: Output) -> Result<()> {
        use k8s_openapi::api::core::v1::Pod;
        let pods: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), &self.namespace);
        let selector = paracloud_kube::reconcile::selector(&self.app);
        let list = pods
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .map_err(|e| anyhow!("cannot list the pods of {}: {e}", self.name()))?;
        let mut rows = Vec::new();
        let mut json = Vec::new();
        for pod in &list.items {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let service = labels
                .get(paracloud_kube::names::WORKLOAD_LABEL)
                .cloned()
                .unwrap_or_default();
            let status = pod.status.clone().unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let restarts: i32 = status
                .container_statuses
                .iter()
                .flatten()
                .map(|c| c.restart_count)
                .sum();
            let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            json.push(serde_json::json!({
                "pod": name, "service": service, "ready": ready, "phase": phase,
                "restarts": restarts, "node": node, "ip": status.pod_ip,
            }));
            rows.push(vec![
                name,
                service,
                if ready { "yes".into() } else { "no".into() },
                phase,
                restarts.to_string(),
                node,
            ]);
        }
        rows.sort();
        match output {
            Output::Table => print!(
                "{}",
                crate::output::table(
                    &["POD", "SERVICE", "READY", "PHASE", "RESTARTS", "NODE"],
                    &rows
                )
            ),
            Output::Json => println!("{}", serde_json::to_string_pretty(&json)?),
            Output::Yaml => print!("{}", serde_yaml_ng::to_string(&json)?),
        }
        Ok(())
    }

    /// The last `tail` lines of each pod of a service (`web`), of one pod (`web-5d9c-x2`), or of
    /// every pod, each line after its pod's name.
    async fn logs(&self, target: Option<&str>, tail: usize) -> Result<()> {
        use k8s_openapi::api::core::v1::Pod;
        let pods: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), &self.namespace);
        let selector = paracloud_kube::reconcile::selector(&self.app);
        let list = pods
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .map_err(|e| anyhow!("cannot list the pods of {}: {e}", self.name()))?;
        let mut chosen: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| match target {
                None => true,
                Some(t) => {
                    p.metadata.name.as_deref() == Some(t)
                        || p.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(paracloud_kube::names::WORKLOAD_LABEL))
                            .map(String::as_str)
                            == Some(paracloud_kube::names::object_name(t).as_str())
                }
            })
            .collect();
        if chosen.is_empty() {
            anyhow::bail!(
                "{} has no pod {}: `paracloud --kubernetes ps` lists them",
                self.name(),
                target.map_or("yet".to_owned(), |t| format!("of {t}"))
            );
        }
        chosen.sort_by_key(|p| p.metadata.name.clone());
        for pod in chosen {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let container = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .map(|c| c.name.clone());
            let params = kube::api::LogParams {
                container,
                tail_lines: Some(i64::try_from(tail).unwrap_or(i64::MAX)),
                ..Default::default()
            };
            let text = pods
                .logs(&name, &params)
                .await
                .map_err(|e| anyhow!("cannot read the log of {name}: {e}"))?;
            for line in text.lines() {
                println!("{name} | {line}");
            }
        }
        Ok(())
    }

    /// Writes the resource's scale, as the autoscaler does: the operator carries it out.
    async fn scale(&self, specs: &[String], cpu: Option<&str>) -> Result<()> {
        use kube::api::{Patch, PatchParams};
        let cpu = cpu.map(crate::arguments::parse_cores).transpose()?;
        let pairs = specs
            .iter()
            .map(|s| crate::arguments::parse_scale(s, cpu.is_some()))
            .collect::<Result<Vec<_>>>()?;
        let manifest = self.manifest()?;
        let mut scale = serde_json::Map::new();
        for (service, replicas) in &pairs {
            if !manifest.services.contains_key(service) {
                return Err(self.no_service(&manifest, service));
            }
            let mut entry = serde_json::Map::new();
            if let Some(replicas) = replicas {
                if *replicas > paracloud_manifest::MAX_INSTANCES {
                    anyhow::bail!(
                        "{service}={replicas}: at most {} pods per service",
                        paracloud_manifest::MAX_INSTANCES
                    );
                }
                entry.insert("replicas".into(), serde_json::json!(replicas));
            }
            if let Some(cpu) = cpu {
                entry.insert("cpu".into(), serde_json::json!(cpu));
            }
            scale.insert(service.clone(), serde_json::Value::Object(entry));
        }
        let apps: kube::Api<paracloud_kube::ParacloudApp> =
            kube::Api::namespaced(self.client.clone(), &self.namespace);
        let patch = serde_json::json!({ "spec": { "scale": scale } });
        apps.patch(&self.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| anyhow!("cannot scale {}: {e}", self.name()))?;
        for (service, replicas) in &pairs {
            let mut said = Vec::new();
            if let Some(r) = replicas {
                said.push(format!("{r} pods"));
            }
            if let Some(c) = cpu {
                said.push(format!("{c} CPU per pod"));
            }
            println!("{service}: {} (the operator applies it)", said.join(", "));
        }
        Ok(())
    }

    /// Runs a built-in capsule on every running pod of the application the selector matches,
    /// through the node agent of each pod's node: the agent's `paracloud __agent-capsule`,
    /// executed in its container through the API server (`pods/exec`, as `kubectl exec`). The
    /// service's capsule policy is checked first, as on one machine. Returns the exit code to
    /// leave with: 0 when every pod's function succeeded, else the first failure's.
    async fn run_capsule(
        &self,
        run: &crate::agent_exec::CapsuleRun,
        output: Output,
    ) -> Result<i32> {
        let manifest = self.manifest()?;
        let spec = paracloud_capsule::builtin(&run.capsule)
            .or_else(|| manifest.capsules.get(&run.capsule).map(|c| c.spec()))
            .ok_or_else(|| {
                let own: Vec<&str> = manifest.capsules.keys().map(String::as_str).collect();
                anyhow!(
                    "no capsule {:?}: the built-in ones are {}, and {}'s own are {} (`paracloud --kubernetes capsule ls`)",
                    run.capsule,
                    paracloud_capsule::builtin_names().join(", "),
                    manifest.app,
                    if own.is_empty() { "none".to_owned() } else { own.join(", ") }
                )
            })?;
        let selector = paracloud_capsule::Selector::parse(&run.selector)
            .map_err(|e| anyhow!("--selector {:?}: {e}", run.selector))?;
        let targets = self.capsule_targets(&manifest, &spec, &selector).await?;
        if targets.is_empty() {
            anyhow::bail!(
                "no running pod of {} matches --selector {:?}: `paracloud --kubernetes ps` lists them",
                self.name(),
                run.selector
            );
        }
        let agents = crate::agent_exec::node_agents(&self.client, &run.agent_namespace).await?;
        if agents.is_empty() {
            anyhow::bail!(
                "no node agent runs in namespace {}: give --agent-namespace the namespace of `paracloud k8s install -n`",
                run.agent_namespace
            );
        }
        let many = targets.len() > 1;
        let mut runs = tokio::task::JoinSet::new();
        for (index, target) in targets.into_iter().enumerate() {
            let agent = agents.get(&target.node).cloned();
            let exec: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(self.client.clone(), &run.agent_namespace);
            let command = crate::agent_exec::capsule_command(&target, run);
            let out = run.out.join(&target.pod);
            runs.spawn(async move {
                let Some(agent) = agent else {
                    eprintln!(
                        "{}: no node agent runs on node {:?} (`paracloud k8s install` puts one on every node)",
                        target.pod, target.node
                    );
                    return (index, 1);
                };
                let ran =
                    crate::agent_exec::run_capsule(&exec, &agent, &target, command, many, output)
                        .await;
                let fetched = match &ran {
                    Ok(ran) => crate::agent_exec::fetch_files(&exec, &agent, &target, ran, &out).await,
                    Err(_) => Ok(()),
                };
                match ran.and_then(|ran| fetched.map(|()| ran.code)) {
                    Ok(code) => (index, code),
                    Err(e) => {
                        eprintln!("{}: {e:#}", target.pod);
                        (index, 1)
                    }
                }
            });
        }
        // The first failure in the pods' order, whichever ended first.
        let mut codes = std::collections::BTreeMap::new();
        while let Some(ended) = runs.join_next().await {
            let (index, code) = ended.unwrap_or((usize::MAX, 1));
            codes.insert(index, code);
        }
        Ok(codes.into_values().find(|&c| c != 0).unwrap_or(0))
    }

    /// The capsules that run on the cluster (the built-in ones, then the application's own),
    /// each with the services of the application whose policy lets it attach, and with which
    /// access.
    fn capsules(&self, output: Output) -> Result<()> {
        let manifest = self.manifest()?;
        let mut rows = Vec::new();
        let mut json = Vec::new();
        let own = manifest
            .capsules
            .values()
            .map(|c| (c.spec(), Some(manifest.app.clone())));
        let all = paracloud_capsule::builtins()
            .into_iter()
            .map(|spec| (spec, None))
            .chain(own);
        for (spec, app) in all {
            let allowed: Vec<String> = manifest
                .services
                .iter()
                .filter(|(service, s)| {
                    paracloud_capsule::check(&spec, service, &s.capsules).is_ok()
                })
                .map(|(service, _)| service.clone())
                .collect();
            json.push(serde_json::json!({
                "name": spec.name, "access": spec.access.name(),
                "capabilities": spec.capabilities, "timeout_ms": spec.timeout.as_millis() as u64,
                "description": spec.description, "usage": spec.usage, "services": allowed,
                "app": app,
            }));
            rows.push(crate::capsule::capsule_row(
                &spec.name,
                spec.access.name(),
                &spec.capabilities,
                spec.timeout,
                if allowed.is_empty() {
                    "-".into()
                } else {
                    allowed.join(",")
                },
                &format!("{} {}", spec.description, spec.usage),
            ));
        }
        crate::output::print(output, &json, |_| {
            crate::output::table(
                &["NAME", "ACCESS", "TIMEOUT", "SERVICES", "DESCRIPTION"],
                &rows,
            )
        })
    }

    /// The running pods the selector matches, each after its service's policy allows the
    /// capsule (a refusal refuses the whole run, before anything runs).
    async fn capsule_targets(
        &self,
        manifest: &paracloud_manifest::Manifest,
        spec: &paracloud_capsule::CapsuleSpec,
        selector: &paracloud_capsule::Selector,
    ) -> Result<Vec<crate::agent_exec::CapsuleTarget>> {
        use k8s_openapi::api::core::v1::Pod;
        use paracloud_kube::names::{object_name, REVISION_LABEL};
        let pods: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), &self.namespace);
        let list = pods
            .list(
                &kube::api::ListParams::default()
                    .labels(&paracloud_kube::reconcile::selector(&self.app)),
            )
            .await
            .map_err(|e| anyhow!("cannot list the pods of {}: {e}", self.name()))?;
        let mut targets = Vec::new();
        for pod in list.items {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            // A revision's pods are their own service's, as on one machine.
            if labels.contains_key(REVISION_LABEL) {
                continue;
            }
            let Some((service, service_spec)) =
                paracloud_kube::names::service_of(manifest, &labels)
            else {
                continue;
            };
            let name = pod.metadata.name.clone().unwrap_or_default();
            let target = paracloud_capsule::Target {
                app: manifest.app.clone(),
                service: service.clone(),
                instance: name.clone(),
                labels: service_spec.labels.clone(),
            };
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if !running || !selector.matches(&target) {
                continue;
            }
            paracloud_capsule::check(spec, service, &service_spec.capsules)?;
            targets.push(crate::agent_exec::CapsuleTarget {
                pod: name,
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                container: object_name(service),
                node: pod.spec.and_then(|s| s.node_name).unwrap_or_default(),
            });
        }
        targets.sort_by(|a, b| a.pod.cmp(&b.pod));
        Ok(targets)
    }

    fn manifest(&self) -> Result<paracloud_manifest::Manifest> {
        paracloud_kube::reconcile::manifest(&self.app)
            .map_err(|e| anyhow!("the resource's manifest is not valid:\n{e}"))
    }

    /// The error for a service the application does not have, with those it has.
    fn no_service(&self, manifest: &paracloud_manifest::Manifest, service: &str) -> anyhow::Error {
        let services: Vec<&str> = manifest.services.keys().map(String::as_str).collect();
        anyhow!(
            "{} has no service {service}: its services are {}",
            self.name(),
            services.join(", ")
        )
    }

    /// The resource's conditions and one service's pods, as the operator last saw them.
    async fn describe(&self, service: &str, output: Output) -> Result<()> {
        let status = self.app.status.clone().unwrap_or_default();
        let manifest = self.manifest()?;
        let Some(spec) = manifest.services.get(service) else {
            return Err(self.no_service(&manifest, service));
        };
        let object = paracloud_kube::names::object_name(service);
        let pods = status.services.get(&object).cloned().unwrap_or_default();
        let scale = self
            .app
            .spec
            .scale
            .get(service)
            .cloned()
            .unwrap_or_default();
        let view = serde_json::json!({
            "app": self.name(),
            "namespace": self.namespace,
            "service": service,
            "pods": { "wanted": pods.replicas, "ready": pods.ready },
            "scale": scale,
            "image": format!("{:?}", spec.image),
            "conditions": status.conditions,
        });
        match output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&view)?),
            Output::Yaml => print!("{}", serde_yaml_ng::to_string(&view)?),
            Output::Table => {
                println!(
                    "service:    {service} of {} (namespace {})",
                    self.name(),
                    self.namespace
                );
                println!("pods:       {} ready of {}", pods.ready, pods.replicas);
                if let Some(r) = scale.replicas {
                    println!("scaled to:  {r} pods");
                }
                if let Some(c) = scale.cpu {
                    println!("cpu:        {c} per pod (in place)");
                }
                println!("conditions:");
                let rows: Vec<Vec<String>> = status
                    .conditions
                    .iter()
                    .map(|c| {
                        vec![
                            c.type_.clone(),
                            c.status.clone(),
                            c.reason.clone(),
                            c.message.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    crate::output::table(&["TYPE", "STATUS", "REASON", "MESSAGE"], &rows)
                );
            }
        }
        Ok(())
    }

    /// The Events recorded on the resource, oldest first.
    async fn events(&self, output: Output) -> Result<()> {
        use k8s_openapi::api::core::v1::Event;
        let events: kube::Api<Event> = kube::Api::namespaced(self.client.clone(), &self.namespace);
        let list = events
            .list(&kube::api::ListParams::default().fields(&format!(
                "involvedObject.kind=ParacloudApp,involvedObject.name={}",
                self.name()
            )))
            .await
            .map_err(|e| anyhow!("cannot list the events of {}: {e}", self.name()))?;
        let mut items: Vec<(String, String, String, String)> = list
            .items
            .iter()
            .map(|e| {
                (
                    e.last_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .unwrap_or_default(),
                    e.type_.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default(),
                )
            })
            .collect();
        items.sort();
        match output {
            Output::Table => {
                let rows: Vec<Vec<String>> = items
                    .into_iter()
                    .map(|(t, k, r, m)| vec![t, k, r, m])
                    .collect();
                print!(
                    "{}",
                    crate::output::table(&["TIME", "TYPE", "REASON", "MESSAGE"], &rows)
                );
            }
            _ => {
                let json: Vec<serde_json::Value> = items
                    .into_iter()
                    .map(|(t, k, r, m)| serde_json::json!({ "time": t, "type": k, "reason": r, "message": m }))
                    .collect();
                if output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&json)?);
                } else {
                    print!("{}", serde_yaml_ng::to_string(&json)?);
                }
            }
        }
        Ok(())
    }
}
