//! `paracloud build`: a Containerfile's steps in order, each looked up in the step cache first;
//! COPY and ADD become layers from the build context, RUN steps run in a sandbox of the
//! runtime (the image so far as its read-only layers, no network) and what they changed becomes
//! a layer; the other instructions change the image config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use paracloud_api::{BuildRequest, BuildResponse, BuildStepView};
use paracloud_image::assemble::{commit_image, LayerBlob};
use paracloud_image::build::{
    cache_get, cache_put, copy_layer, inputs_digest, upper_layer, BuildState,
};
use paracloud_image::containerfile::{self, Instruction, Step};
use paracloud_image::{Reference, Store};
use paracloud_runtime::{InstanceConfig, Limits, Rootfs};

use crate::driver::Driver;
use crate::engine::Engine;
use crate::images::ImageError;

/// The capabilities a RUN step keeps beyond a capsule's defaults: with them, Docker's default
/// set for containers.
const RUN_EXTRA_CAPABILITIES: &[&str] = &["CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP"];

static RUNS: AtomicU64 = AtomicU64::new(0);

fn bad(m: impl Into<String>) -> ImageError {
    ImageError {
        not_found: false,
        bad_request: true,
        message: m.into(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(bad(format!("a build task failed: {e}"))))
}

/// The Containerfile a build reads: the one named, else `Containerfile` or `Dockerfile`.
fn containerfile_path(context: &Path, file: Option<&Path>) -> Result<PathBuf, ImageError> {
    if let Some(file) = file {
        return Ok(if file.is_absolute() {
            file.to_owned()
        } else {
            context.join(file)
        });
    }
    ["Containerfile", "Dockerfile"]
        .iter()
        .map(|n| context.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            bad(format!(
                "{} has no Containerfile or Dockerfile; write one, or name it with -f",
                context.display()
            ))
        })
}

pub async fn build<D: Driver>(
    engine: &Arc<Engine<D>>,
    request: BuildRequest,
) -> Result<BuildResponse, ImageError> {
    if !request.context.is_absolute() || !request.context.is_dir() {
        return Err(bad(format!(
            "the build context {} is not a directory",
            request.context.display()
        )));
    }
    let reference: Reference = request
        .tag
        .parse()
        .map_err(|e: paracloud_image::ReferenceError| bad(format!("{e}; {}", e.hint())))?;
    let reference = reference.normalized();
    let file = containerfile_path(&request.context, request.file.as_deref())?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
    let steps = containerfile::parse(&text, &request.build_args)
        .map_err(|e| bad(format!("{}: {e}", file.display())))?;
    let _no_prune = engine.images.transfers.clone().read_owned().await;
    let store = engine.images.store().clone();
    let mut state: Option<BuildState> = None;
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut views = Vec::new();
    for step in steps {
        let located = |e: String| bad(format!("{}:{}: {e}", file.display(), step.line));
        if let Instruction::Arg { name, default } = &step.instruction {
            let value = request
                .build_args
                .get(name)
                .cloned()
                .or(default.clone())
                .unwrap_or_default();
            args.insert(name.clone(), value);
        }
        if let Instruction::From { image } = &step.instruction {
            let (s, image) = (store.clone(), image.clone());
            state = Some(
                blocking(move || BuildState::from_image(&s, &image).map_err(ImageError::from))
                    .await
                    .map_err(|e| located(e.message))?,
            );
            views.push(view(&step, true));
            continue;
        }
        let Some(current) = state.take() else {
            // ARG before FROM.
            views.push(view(&step, true));
            continue;
        };
        let inputs = match &step.instruction {
            Instruction::Copy { sources, .. } | Instruction::Add { sources, .. } => {
                let (context, sources) = (request.context.clone(), sources.clone());
                Some(
                    blocking(move || inputs_digest(&context, &sources).map_err(ImageError::from))
                        .await
                        .map_err(|e| located(e.message))?,
                )
            }
            _ => None,
        };
        let described = match &step.instruction {
            Instruction::Run(_) => format!("{:?} {args:?}", step.instruction),
            // COPY and ADD resolve their destination through the image's links since layers
            // cached by earlier versions were made: those are not reused.
            copy @ (Instruction::Copy { .. } | Instruction::Add { .. }) => {
                format!("{copy:?} (destination through the image's links)")
            }
            other => format!("{other:?}"),
        };
        let key = current.next_key(&described, inputs.as_ref());
        let (s, k) = (store.clone(), key.clone());
        if let Some(cached) = blocking(move || Ok(cache_get(&s, &k))).await? {
            state = Some(cached);
            views.push(view(&step, true));
            continue;
        }
        let mut next = apply(engine, &store, &request.context, current, &step, &args)
            .await
            .map_err(|e| located(e.message))?;
        next.key = key;
        next.history.push(step.text.clone());
        let (s, saved) = (store.clone(), next.clone());
        blocking(move || cache_put(&s, &saved).map_err(ImageError::from)).await?;
        state = Some(next);
        views.push(view(&step, false));
    }
    let state = state.ok_or_else(|| bad(format!("{}: no FROM", file.display())))?;
    let s = store.clone();
    let tagged = reference.clone();
    let (digest, layers, size) = blocking(move || {
        let layers: Vec<LayerBlob> = state.layers.iter().map(LayerBlob::from).collect();
        let digest = commit_image(&s, &layers, &state.defaults, &state.history, None)?;
        s.tag(&tagged, &digest)?;
        Ok((digest, layers.len(), layers.iter().map(|l| l.size).sum()))
    })
    .await?;
    Ok(BuildResponse {
        reference: reference.to_string(),
        digest: digest.to_string(),
        layers,
        size,
        steps: views,
    })
}

fn view(step: &Step, cached: bool) -> BuildStepView {
    BuildStepView {
        line: step.line,
        instruction: step.text.clone(),
        cached,
    }
}

/// Does one step that the cache did not have.
async fn apply<D: Driver>(
    engine: &Arc<Engine<D>>,
    store: &Store,
    context: &Path,
    mut state: BuildState,
    step: &Step,
    args: &BTreeMap<String, String>,
) -> Result<BuildState, ImageError> {
    let d = &mut state.defaults;
    match &step.instruction {
        Instruction::From { .. } | Instruction::Arg { .. } => {}
        Instruction::Env(list) => {
            for (k, v) in list {
                d.env
                    .retain(|e| e.split_once('=').map(|(n, _)| n) != Some(k.as_str()));
                d.env.push(format!("{k}={v}"));
            }
        }
        Instruction::Workdir(w) => {
            let base = d.working_dir.clone().unwrap_or_else(|| "/".into());
            d.working_dir = Some(Path::new(&base).join(w).display().to_string());
        }
        Instruction::User(u) => d.user = Some(u.clone()),
        Instruction::Label(list) => d.labels.extend(list.iter().cloned()),
        Instruction::Expose(ports) => {
            for p in ports {
                if !d.exposed_ports.contains(p) {
                    d.exposed_ports.push(p.clone());
                }
            }
        }
        Instruction::Cmd(c) => d.cmd = c.argv(),
        Instruction::Entrypoint(c) => d.entrypoint = c.argv(),
        Instruction::Copy {
            sources,
            dest,
            chown,
        }
        | Instruction::Add {
            sources,
            dest,
            chown,
        } => {
            let add = matches!(step.instruction, Instruction::Add { .. });
            let (s, context, sources, dest, chown) = (
                store.clone(),
                context.to_owned(),
                sources.clone(),
                dest.clone(),
                chown.clone(),
            );
            let workdir = d.working_dir.clone();
            let image = state.clone();
            let layer = blocking(move || {
                let image = image.layer_dirs(&s)?;
                let layer = copy_layer(
                    &s,
                    &context,
                    &image,
                    &sources,
                    &dest,
                    workdir.as_deref(),
                    chown.as_deref(),
                    add,
                )?;
                s.ensure_layer(&layer.blob, &layer.diff_id)?;
                Ok(layer)
            })
            .await?;
            state.layers.push(layer.into());
        }
        Instruction::Run(command) => {
            let layer = run_step(engine, store, &state, command.argv(), args).await?;
            state.layers.push(layer.into());
        }
    }
    Ok(state)
}

/// Runs a RUN step in a sandbox over the image so far and returns the layer of its changes.
async fn run_step<D: Driver>(
    engine: &Arc<Engine<D>>,
    store: &Store,
    state: &BuildState,
    argv: Vec<String>,
    args: &BTreeMap<String, String>,
) -> Result<LayerBlob, ImageError> {
    let id = format!(
        "build-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let dir = engine.config.root.join("builds").join(&id);
    let (s, st) = (store.clone(), state.clone());
    let layers = blocking(move || st.layer_dirs(&s).map_err(ImageError::from)).await?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
    // ARGs are in the step's environment, not in the image's.
    let mut env = args.clone();
    env.extend(state.defaults.env_map());
    let config = InstanceConfig {
        id: id.clone(),
        hostname: "build".into(),
        dir: dir.clone(),
        rootfs: Rootfs::Layers { layers },
        argv: argv.clone(),
        env,
        working_dir: state.defaults.working_dir.clone(),
        user: state.defaults.user.clone(),
        mounts: Vec::new(),
        hosts: Vec::new(),
        network: None,
        limits: Limits::default(),
        capabilities: paracloud_runtime::capsule::DEFAULT_CAPABILITIES
            .iter()
            .chain(RUN_EXTRA_CAPABILITIES)
            .map(|c| (*c).to_owned())
            .collect(),
        log_path: dir.join("output.log"),
        owned: Vec::new(),
        userns: None,
        sandbox: Default::default(),
    };
    let result = async {
        let process = engine
            .driver
            .start(&config)
            .await
            .map_err(|e| bad(format!("RUN {argv:?} cannot start: {e}")))?;
        engine
            .driver
            .wait(&id, &process)
            .await
            .map_err(|e| bad(format!("RUN {argv:?}: {e}")))
    }
    .await;
    let driver_cleanup = engine.driver.cleanup(&id);
    let output = std::fs::read_to_string(dir.join("output.log")).unwrap_or_default();
    let outcome = match result {
        Ok(exit) if exit.code == Some(0) => {
            let (s, upper) = (store.clone(), dir.join("upper"));
            blocking(move || {
                let layer = upper_layer(&s, &upper)?;
                s.ensure_layer(&layer.blob, &layer.diff_id)?;
                Ok(layer)
            })
            .await
        }
        Ok(exit) => {
            let how = match (exit.code, exit.signal) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(sig)) => format!("signal {sig}"),
                _ => "an unknown status".into(),
            };
            let tail: Vec<&str> = output.lines().rev().take(15).collect();
            Err(bad(format!(
                "RUN {argv:?} failed with {how}; its output ends with:\n{}\n  hint: RUN steps run in a sandbox without network: a step that downloads (apt-get, pip, curl) cannot work offline; bring the files into the build context and COPY them",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )))
        }
        Err(e) => Err(e),
    };
    let _ = driver_cleanup;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// What a build of `request` would read, checked without building: the Containerfile found
/// and parsed. Its path and number of steps.
pub fn check(request: &BuildRequest) -> Result<(PathBuf, usize), ImageError> {
    if !request.context.is_absolute() || !request.context.is_dir() {
        return Err(bad(format!(
            "the build context {} is not a directory",
            request.context.display()
        )));
    }
    let file = containerfile_path(&request.context, request.file.as_deref())?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
    let steps = containerfile::parse(&text, &request.build_args)
        .map_err(|e| bad(format!("{}: {e}", file.display())))?;
    Ok((file, steps.len()))
}
