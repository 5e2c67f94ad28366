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
