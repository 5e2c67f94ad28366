//! `paracloud k8s`: the application as Kubernetes objects, rendered on this machine.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use paracloud_kube::{HostFile, HostFiles, RenderOptions};

use crate::cli::{K8sCommand, Output};
use crate::commands::{load_manifests, manifest_file};

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
        } => {
            let files = match file.as_slice() {
                [] => vec![manifest_file(None)?],
                files => files.to_vec(),
            };
            render(
                &files,
                &profiles,
                namespace,
                registry,
                !no_namespace,
                output,
            )
        }
        K8sCommand::Install {
            image,
            namespace,
            replicas,
        } => {
            let objects =
                paracloud_kube::install::install(&paracloud_kube::install::InstallOptions {
                    namespace,
                    image,
                    replicas,
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
    namespace: Option<String>,
    registry: Option<String>,
    namespace_object: bool,
    output: Output,
) -> Result<()> {
    let loaded = load_manifests(files, profiles)?;
    let options = RenderOptions {
        namespace,
        registry,
        namespace_object,
        file_objects: true,
        replicas_by_scale: false,
    };
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
pub(crate) async fn operator(
    lease_namespace: String,
    lease_name: String,
    identity: Option<String>,
    lease_duration: std::time::Duration,
    health: Option<std::net::SocketAddr>,
    resync: std::time::Duration,
) -> Result<()> {
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
        },
    )
    .await
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
    kubernetes: bool,
    namespace: Option<String>,
    registry: Option<String>,
) -> Result<()> {
    use kube::api::{Patch, PatchParams};
    use paracloud_kube::{ParacloudApp, ParacloudAppSpec};

    if !kubernetes {
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
            scale: Default::default(),
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
        if files_applied > 0 { format!(", {files_applied} files") } else { String::new() }
    );
    Ok(())
}
