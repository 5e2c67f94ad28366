//! `paracloud build`: a Containerfile's stages, those the target needs, wave by wave (the
//! stages of a wave at once); each stage's steps in order, each looked up in the step cache
//! first. COPY and ADD become layers from the build context (less its `.dockerignore`), a stage
//! or an image; RUN steps run in a sandbox of the runtime (the image so far as its read-only
//! layers, no network, the step's mounts) and what they changed becomes a layer, their output
//! streamed as it comes; the other instructions change the image config.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use paracloud_api::{BuildEvent, BuildRequest, BuildResponse, BuildStepView};
use paracloud_image::assemble::{commit_image, LayerBlob};
use paracloud_image::build::{
    cache_get, cache_put, copy_layer, extract, forget_mount_points, inputs_digest, resolve_owner,
    upper_is_empty, upper_layer, BuildState, CopyRequest,
};
use paracloud_image::config::Healthcheck;
use paracloud_image::containerfile::{
    self, CopyArgs, Instruction, Platform, RunArgs, RunMount, Sharing, Stage, StageRef, Step,
};
use paracloud_image::dockerignore::Dockerignore;
use paracloud_image::{Digest, Reference, Store};
use paracloud_runtime::{InstanceConfig, Limits, Mount, Rootfs};
use tokio::sync::mpsc::UnboundedSender;

use crate::driver::Driver;
use crate::engine::Engine;
use crate::images::ImageError;

/// The capabilities a RUN step keeps beyond a capsule's defaults: with them, Docker's default
/// set for containers.
const RUN_EXTRA_CAPABILITIES: &[&str] = &["CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP"];

/// Where a build's progress goes as it happens (none for builds at `up`).
pub type Progress = Option<UnboundedSender<BuildEvent>>;

static RUNS: AtomicU64 = AtomicU64::new(0);

/// One lock per cache mount directory, for `sharing=locked` and `sharing=private`.
type CacheLocks = Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>;
static CACHE_LOCKS: LazyLock<CacheLocks> = LazyLock::new(Default::default);

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

/// A path below `root` that stays inside it.
fn inside(root: &Path, path: &str) -> Option<PathBuf> {
    let mut out = root.to_owned();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// What one build shares between its stages.
struct Build<'a, D: Driver> {
    engine: &'a Arc<Engine<D>>,
    store: Store,
    context: PathBuf,
    ignore: Dockerignore,
    file: PathBuf,
    secrets: BTreeMap<String, PathBuf>,
    progress: Progress,
    /// Each built stage's last state, filled wave by wave.
    done: Mutex<BTreeMap<usize, BuildState>>,
    views: Mutex<BTreeMap<usize, Vec<BuildStepView>>>,
    /// Held while a missing image is pulled.
    pulls: tokio::sync::Mutex<()>,
}

/// A build request checked and its Containerfile parsed: what can be refused before any work.
pub struct Prepared {
    reference: Reference,
    context: PathBuf,
    file: PathBuf,
    parsed: containerfile::Containerfile,
    target: usize,
    ignore: Dockerignore,
    secrets: BTreeMap<String, PathBuf>,
}

/// Builds the image a request describes.
pub async fn build<D: Driver>(
    engine: &Arc<Engine<D>>,
    request: BuildRequest,
    progress: Progress,
) -> Result<BuildResponse, ImageError> {
    run(engine, prepare(request)?, progress).await
}

/// Checks a request and parses its Containerfile.
pub fn prepare(request: BuildRequest) -> Result<Prepared, ImageError> {
    if !request.context.is_absolute() || !request.context.is_dir() {
        return Err(bad(format!(
            "the build context {} is not a directory",
            request.context.display()
        )));
    }
    let platform = Platform::this_machine();
    if let Some(p) = request.platform.as_deref() {
        if !platform.matches(p) {
            return Err(bad(format!(
                "--platform {p}: builds run on this machine's platform, {}, and do not emulate others; leave --platform out or give {}",
                platform.name(),
                platform.name()
            )));
        }
    }
    let reference: Reference = request
        .tag
        .parse()
        .map_err(|e: paracloud_image::ReferenceError| bad(format!("{e}; {}", e.hint())))?;
    let reference = reference.normalized();
    let file = containerfile_path(&request.context, request.file.as_deref())?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
    let parsed = containerfile::parse(&text, &request.build_args)
        .map_err(|e| bad(format!("{}: {e}", file.display())))?;
    let target = parsed
        .target(request.target.as_deref())
        .map_err(|e| bad(format!("{}: {e}", file.display())))?;
    for (id, path) in &request.secrets {
        if !path.is_absolute() || !path.is_file() {
            return Err(bad(format!(
                "--secret id={id}: {} is not a file; give src=FILE, a file the daemon can read",
                path.display()
            )));
        }
    }
    // `NAME.dockerignore` beside the Containerfile first, as BuildKit reads it, then the
    // context's `.dockerignore`.
    let own = file
        .file_name()
        .map(|n| file.with_file_name(format!("{}.dockerignore", n.to_string_lossy())));
    let ignore = own
        .iter()
        .chain([&request.context.join(".dockerignore")])
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| Dockerignore::parse(&t))
        .unwrap_or_default();
    Ok(Prepared {
        reference,
        context: request.context,
        file,
        parsed,
        target,
        ignore,
        secrets: request.secrets,
    })
}

/// Builds a prepared request's target stage and tags the image.
pub async fn run<D: Driver>(
    engine: &Arc<Engine<D>>,
    prepared: Prepared,
    progress: Progress,
) -> Result<BuildResponse, ImageError> {
    let Prepared {
        reference,
        context,
        file,
        parsed,
        target,
        ignore,
        secrets,
    } = prepared;
    let _no_prune = engine.images.transfers.clone().read_owned().await;
    let b = Build {
        engine,
        store: engine.images.store().clone(),
        context,
        ignore,
        file,
        secrets,
        progress,
        done: Mutex::new(BTreeMap::new()),
        views: Mutex::new(BTreeMap::new()),
        pulls: tokio::sync::Mutex::new(()),
    };
    for wave in parsed.waves(target) {
        // Every stage of the wave runs to its end, also when another fails: a RUN step cut
        // short would leave its sandbox behind. The first failure is the build's.
        let results =
            futures::future::join_all(wave.iter().map(|i| b.stage(&parsed.stages[*i]))).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, ImageError>>()?;
    }
    let state = b.state_of(target).ok_or_else(|| {
        bad(format!(
            "{}: the target stage was not built",
            b.file.display()
        ))
    })?;
    let s = b.store.clone();
    let tagged = reference.clone();
    let (digest, layers, size) = blocking(move || {
        let layers: Vec<LayerBlob> = state.layers.iter().map(LayerBlob::from).collect();
        let digest = commit_image(&s, &layers, &state.defaults, &state.history, None)?;
        s.tag(&tagged, &digest)?;
        Ok((digest, layers.len(), layers.iter().map(|l| l.size).sum()))
    })
    .await?;
    let steps = lock(&b.views).values().flatten().cloned().collect();
    Ok(BuildResponse {
        reference: reference.to_string(),
        digest: digest.to_string(),
        layers,
        size,
        steps,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<D: Driver> Build<'_, D> {
    fn state_of(&self, stage: usize) -> Option<BuildState> {
        lock(&self.done).get(&stage).cloned()
    }

    fn located(&self, line: usize) -> impl Fn(ImageError) -> ImageError + '_ {
        move |e| bad(format!("{}:{line}: {}", self.file.display(), e.message))
    }

    fn report(&self, stage: &Stage, line: usize, text: &str, cached: bool) {
        let view = BuildStepView {
            stage: stage.label(),
            line,
            instruction: text.to_owned(),
            cached,
        };
        if let Some(tx) = &self.progress {
            let _ = tx.send(BuildEvent::Step { step: view.clone() });
        }
        lock(&self.views).entry(stage.index).or_default().push(view);
    }

    /// A stage's or an image's state, for `FROM` and for what `--from` and `from=` read.
    async fn state_at(&self, what: &StageRef) -> Result<BuildState, ImageError> {
        match what {
            StageRef::Stage(i) => self
                .state_of(*i)
                .ok_or_else(|| bad(format!("stage {i} is not built yet"))),
            StageRef::Image(image) => {
                self.pull_if_missing(image).await?;
                let (s, image) = (self.store.clone(), image.clone());
                blocking(move || BuildState::from_image(&s, &image).map_err(ImageError::from)).await
            }
        }
    }

    /// Pulls an image a build reads (FROM, `--from`, `from=`) when the store lacks it, as
    /// BuildKit does: through the mirrors of `registries.toml`, without credentials (pull it
    /// first for a registry that asks for them). One pull at a time in a build.
    async fn pull_if_missing(&self, image: &str) -> Result<(), ImageError> {
        if image == "scratch" {
            return Ok(());
        }
        let _one = self.pulls.lock().await;
        let (s, wanted) = (self.store.clone(), image.to_owned());
        let missing = blocking(move || {
            Ok(matches!(
                s.lookup(&wanted),
                Err(paracloud_image::StoreError::NotFound(_))
            ))
        })
        .await?;
        // A name that is not a reference is for the store's lookup to explain.
        let Some(reference) = missing.then(|| image.parse::<Reference>().ok()).flatten() else {
            return Ok(());
        };
        if let Some(tx) = &self.progress {
            let _ = tx.send(BuildEvent::Output {
                stage: String::new(),
                line: 0,
                text: format!("pulling {image}: not in the store"),
            });
        }
        let registries = self.engine.images.registries()?;
        let quiet: paracloud_image::registry::ProgressFn = Arc::new(|_| {});
        paracloud_image::registry::pull_via(
            &self.store,
            &reference,
            &registries,
            &paracloud_image::registry::Auths::new(),
            quiet,
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            bad(format!(
                "FROM {image}: not in the store, and pulling it failed: {e}; `paracloud image pull` or `image import` it first"
            ))
        })
    }

    async fn stage(&self, stage: &Stage) -> Result<(), ImageError> {
        let mut state = self
            .state_at(&stage.base)
            .await
            .map_err(self.located(stage.line))?;
        self.report(stage, stage.line, &stage.text, true);
        let mut args: BTreeMap<String, String> = BTreeMap::new();
        for step in &stage.steps {
            let located = self.located(step.line);
            if let Instruction::Arg {
                name,
                value: Some(value),
            } = &step.instruction
            {
                args.insert(name.clone(), value.clone());
            }
            let inputs = self.inputs(step).await.map_err(&located)?;
            let described = match &step.instruction {
                Instruction::Run(_) => format!("{:?} {args:?}", step.instruction),
                // COPY and ADD resolve their destination through the image's links since layers
                // cached by earlier versions were made: those are not reused.
                copy @ (Instruction::Copy(_) | Instruction::Add(_)) => {
                    format!("{copy:?} (destination through the image's links)")
                }
                other => format!("{other:?}"),
            };
            let key = state.next_key(&described, inputs.as_ref());
            let (s, k) = (self.store.clone(), key.clone());
            if let Some(cached) = blocking(move || Ok(cache_get(&s, &k))).await? {
                state = cached;
                self.report(stage, step.line, &step.text, true);
                continue;
            }
            let mut next = self
                .apply(stage, state, step, &args)
                .await
                .map_err(&located)?;
            next.key = key;
            next.history.push(step.text.clone());
            let (s, saved) = (self.store.clone(), next.clone());
            blocking(move || cache_put(&s, &saved).map_err(ImageError::from)).await?;
            state = next;
            self.report(stage, step.line, &step.text, false);
        }
        lock(&self.done).insert(stage.index, state);
        Ok(())
    }

    /// The digest of what a step reads besides the image so far: the context's files it
    /// copies or binds, the stages and images it reads (their keys and digests). Secrets and
    /// cache mounts are not in it.
    async fn inputs(&self, step: &Step) -> Result<Option<Digest>, ImageError> {
        let mut parts: Vec<String> = Vec::new();
        match &step.instruction {
            Instruction::Copy(c) | Instruction::Add(c) => match &c.from {
                None => {
                    let (context, ignore, sources) =
                        (self.context.clone(), self.ignore.clone(), c.sources.clone());
                    let d = blocking(move || {
                        inputs_digest(&context, &ignore, &sources).map_err(ImageError::from)
                    })
                    .await?;
                    parts.push(d.to_string());
                }
                Some(from) => parts.push(self.source_key(from).await?),
            },
            Instruction::Run(r) => {
                for m in &r.mounts {
                    match m {
                        RunMount::Bind {
                            from: None, source, ..
                        } => {
                            let (context, source) = (self.context.clone(), source.clone());
                            let d = blocking(move || {
                                let source = if source.is_empty() {
                                    ".".into()
                                } else {
                                    source
                                };
                                inputs_digest(&context, &Dockerignore::default(), &[source])
                                    .map_err(ImageError::from)
                            })
                            .await?;
                            parts.push(d.to_string());
                        }
                        RunMount::Bind {
                            from: Some(from), ..
                        }
                        | RunMount::Cache {
                            from: Some(from), ..
                        } => parts.push(self.source_key(from).await?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        Ok((!parts.is_empty()).then(|| Digest::of(parts.join("\n").as_bytes())))
    }

    async fn source_key(&self, from: &StageRef) -> Result<String, ImageError> {
        match from {
            StageRef::Stage(_) => Ok(self.state_at(from).await?.key.to_string()),
            StageRef::Image(image) => {
                self.pull_if_missing(image)
                    .await
                    .map_err(|e| bad(e.message.replacen("FROM ", "--from=", 1)))?;
                let (s, image) = (self.store.clone(), image.clone());
                blocking(move || {
                    s.image(&image).map(|i| i.digest.to_string()).map_err(|e| {
                        bad(format!(
                            "--from={image}: neither a stage before this line nor an image of the store ({e}); name a stage (FROM ... AS {image}) or pull the image first"
                        ))
                    })
                })
                .await
            }
        }
    }

    /// A directory for this build's scratch files, removed when the step is done.
    fn scratch(&self) -> Result<PathBuf, ImageError> {
        let id = format!(
            "build-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.engine.config.root.join("builds").join(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// Does one step that the cache did not have.
    async fn apply(
        &self,
        stage: &Stage,
        mut state: BuildState,
        step: &Step,
        args: &BTreeMap<String, String>,
    ) -> Result<BuildState, ImageError> {
        let d = &mut state.defaults;
        match &step.instruction {
            Instruction::Arg { .. } => {}
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
            Instruction::Cmd(c) => d.cmd = c.argv_with(&d.shell),
            Instruction::Entrypoint(c) => d.entrypoint = c.argv_with(&d.shell),
            Instruction::Shell(shell) => d.shell = shell.clone(),
            Instruction::Healthcheck(check) => {
                d.healthcheck = Some(check.clone().unwrap_or_else(|| Healthcheck {
                    test: vec!["NONE".into()],
                    ..Healthcheck::default()
                }))
            }
            Instruction::StopSignal(s) => d.stop_signal = Some(s.clone()),
            Instruction::Volume(list) => {
                for v in list {
                    if !d.volumes.contains(v) {
                        d.volumes.push(v.clone());
                    }
                }
            }
            Instruction::Copy(c) | Instruction::Add(c) => {
                let add = matches!(step.instruction, Instruction::Add(_));
                let layer = self.copy(&state, c, add).await?;
                state.layers.push(layer.into());
            }
            Instruction::Run(run) => {
                if let Some(layer) = self.run_step(stage, step, &state, run, args).await? {
                    state.layers.push(layer.into());
                }
            }
        }
        Ok(state)
    }

    async fn copy(
        &self,
        state: &BuildState,
        c: &CopyArgs,
        add: bool,
    ) -> Result<LayerBlob, ImageError> {
        if !c.inline.is_empty() && !c.sources.is_empty() {
            return Err(bad(
                "a COPY of heredocs and files at once is not supported; write one COPY for the heredocs and one for the files",
            ));
        }
        let scratch = self.scratch()?;
        // Where the sources are read: the context, the stage or image's files, or the heredocs.
        let from_layers = match &c.from {
            Some(from) => Some(
                self.state_at(from)
                    .await
                    .map_err(|e| bad(format!("--from: {}", e.message)))?,
            ),
            None => None,
        };
        let (s, st, c2, scratch2) = (
            self.store.clone(),
            state.clone(),
            c.clone(),
            scratch.clone(),
        );
        let (context, ignore) = (self.context.clone(), self.ignore.clone());
        let workdir = state.defaults.working_dir.clone();
        let result = blocking(move || {
            let image = st.layer_dirs(&s)?;
            let owner = resolve_owner(&image, c2.chown.as_deref())?;
            let (root, ignore, sources) = if let Some(from) = from_layers {
                let layers = from.layer_dirs(&s)?;
                // Each source where the image resolves it (through its links, as Docker does).
                let mut resolved = Vec::new();
                for source in &c2.sources {
                    let at = extract(&layers, source, &scratch2)
                        .map_err(|e| bad(format!("--from: {}", ImageError::from(e).message)))?;
                    resolved.push(at.display().to_string());
                }
                (scratch2.clone(), Dockerignore::default(), resolved)
            } else if !c2.inline.is_empty() {
                for f in &c2.inline {
                    let path = scratch2.join(&f.name);
                    std::fs::write(&path, &f.content)
                        .map_err(|e| bad(format!("cannot write {}: {e}", path.display())))?;
                    std::fs::set_permissions(
                        &path,
                        std::os::unix::fs::PermissionsExt::from_mode(0o644),
                    )
                    .map_err(|e| bad(format!("cannot write {}: {e}", path.display())))?;
                }
                let names = c2.inline.iter().map(|f| f.name.clone()).collect();
                (scratch2.clone(), Dockerignore::default(), names)
            } else {
                (context, ignore, c2.sources.clone())
            };
            let layer = copy_layer(
                &s,
                &CopyRequest {
                    context: &root,
                    ignore: &ignore,
                    image: &image,
                    sources: &sources,
                    dest: &c2.dest,
                    workdir: workdir.as_deref(),
                    owner,
                    chmod: c2.chmod,
                    add,
                },
            )?;
            s.ensure_layer(&layer.blob, &layer.diff_id)?;
            Ok(layer)
        })
        .await;
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    /// The host side of a RUN step's mounts; `held`: the locks of `sharing=locked` caches.
    async fn mounts(
        &self,
        run: &RunArgs,
        workdir: Option<&str>,
        dir: &Path,
        held: &mut Vec<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<Vec<Mount>, ImageError> {
        let mut out = Vec::new();
        for (n, m) in run.mounts.iter().enumerate() {
            let target = Path::new(workdir.unwrap_or("/"))
                .join(m.target())
                .display()
                .to_string();
            let scratch = dir.join(format!("mount-{n}"));
            let (source, read_only) = match m {
                RunMount::Bind {
                    from: None,
                    source,
                    read_write,
                    ..
                } => {
                    // Links resolved, it must still be in the context: a link to / is not a
                    // way to bind the host's files.
                    let context = self.context.canonicalize().unwrap_or(self.context.clone());
                    let path = inside(&self.context, source)
                        .and_then(|p| p.canonicalize().ok())
                        .filter(|p| p.starts_with(&context))
                        .ok_or_else(|| {
                            bad(format!(
                                "RUN --mount=type=bind,source={source}: not a path of the build context {} (links included)",
                                self.context.display()
                            ))
                        })?;
                    if *read_write {
                        // Writes go to a copy, discarded with the step.
                        let (context, copied, s2) =
                            (self.context.clone(), source.clone(), scratch.clone());
                        let at = blocking(move || {
                            extract(&[context], &copied, &s2).map_err(ImageError::from)
                        })
                        .await?;
                        (scratch.join(at), false)
                    } else {
                        (path, true)
                    }
                }
                RunMount::Bind {
                    from: Some(from),
                    source,
                    read_write,
                    ..
                } => {
                    let state = self.state_at(from).await?;
                    let (s, source2, s2) = (self.store.clone(), source.clone(), scratch.clone());
                    let at = blocking(move || {
                        let layers = state.layer_dirs(&s)?;
                        extract(&layers, &source2, &s2).map_err(ImageError::from)
                    })
                    .await
                    .map_err(|e| bad(format!("RUN --mount from=: {}", e.message)))?;
                    (scratch.join(at), !*read_write)
                }
                RunMount::Cache {
                    id,
                    sharing,
                    from,
                    source,
                    mode,
                    uid,
                    gid,
                    read_only,
                    ..
                } => {
                    let name = Digest::of(id.as_bytes()).hex().to_owned();
                    let cache = self.store.root().join("build-mounts").join(name);
                    let lock = lock(&CACHE_LOCKS).entry(cache.clone()).or_default().clone();
                    let cache = match sharing {
                        Sharing::Shared => cache,
                        Sharing::Locked => {
                            held.push(lock.lock_owned().await);
                            cache
                        }
                        // In use by another step: a new, empty one of this step's own.
                        Sharing::Private => match lock.try_lock_owned() {
                            Ok(guard) => {
                                held.push(guard);
                                cache
                            }
                            Err(_) => scratch.clone(),
                        },
                    };
                    if !cache.exists() {
                        self.new_cache(&cache, from.as_ref(), source, *mode, *uid, *gid)
                            .await?;
                    }
                    (cache, *read_only)
                }
                RunMount::Secret {
                    id,
                    required,
                    mode,
                    uid,
                    gid,
                    ..
                } => {
                    let Some(file) = self.secrets.get(id) else {
                        if *required {
                            return Err(bad(format!(
                                "RUN --mount=type=secret,id={id}: no secret {id} was given; build with --secret id={id},src=FILE"
                            )));
                        }
                        continue;
                    };
                    let copy = dir.join(format!("secret-{n}"));
                    std::fs::copy(file, &copy).map_err(|e| {
                        bad(format!(
                            "--secret id={id}: cannot read {}: {e}",
                            file.display()
                        ))
                    })?;
                    std::os::unix::fs::chown(&copy, Some(*uid), Some(*gid))
                        .and_then(|()| {
                            std::fs::set_permissions(
                                &copy,
                                std::os::unix::fs::PermissionsExt::from_mode(*mode),
                            )
                        })
                        .map_err(|e| bad(format!("cannot prepare the secret {id}: {e}")))?;
                    (copy, true)
                }
                // A directory of its own, emptied with the step (not memory: the sandbox binds).
                RunMount::Tmpfs { .. } => {
                    std::fs::create_dir_all(&scratch)
                        .map_err(|e| bad(format!("cannot create {}: {e}", scratch.display())))?;
                    (scratch, false)
                }
            };
            out.push(Mount {
                source,
                target,
                read_only,
                size: None,
            });
        }
        Ok(out)
    }

    /// A cache mount's directory, made the first time: empty, or seeded from a stage or image.
    async fn new_cache(
        &self,
        cache: &Path,
        from: Option<&StageRef>,
        source: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(), ImageError> {
        let made = |e: std::io::Error| bad(format!("cannot make {}: {e}", cache.display()));
        let parent = cache.parent().unwrap_or(cache);
        std::fs::create_dir_all(parent).map_err(made)?;
        let staging = parent.join(format!(".new-{}", RUNS.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&staging);
        let seeded = match from {
            Some(from) => {
                let state = self.state_at(from).await?;
                let (s, source, st) = (self.store.clone(), source.to_owned(), staging.clone());
                blocking(move || {
                    let layers = state.layer_dirs(&s)?;
                    let at = extract(&layers, &source, &st).map_err(ImageError::from)?;
                    Ok(st.join(at))
                })
                .await
                .map_err(|e| bad(format!("RUN --mount=type=cache,from=: {}", e.message)))?
            }
            None => {
                std::fs::create_dir_all(&staging).map_err(made)?;
                std::os::unix::fs::chown(&staging, Some(uid), Some(gid)).map_err(made)?;
                std::fs::set_permissions(
                    &staging,
                    std::os::unix::fs::PermissionsExt::from_mode(mode),
                )
                .map_err(made)?;
                staging.clone()
            }
        };
        // Another step may have made it meanwhile: then that one is used.
        if std::fs::rename(&seeded, cache).is_err() && !cache.exists() {
            return Err(bad(format!("cannot make {}", cache.display())));
        }
        let _ = std::fs::remove_dir_all(&staging);
        Ok(())
    }

    /// Runs a RUN step in a sandbox over the image so far and returns the layer of its changes
    /// (none when it changed nothing).
    async fn run_step(
        &self,
        stage: &Stage,
        step: &Step,
        state: &BuildState,
        run: &RunArgs,
        args: &BTreeMap<String, String>,
    ) -> Result<Option<LayerBlob>, ImageError> {
        let engine = self.engine;
        let argv = run.command.argv_with(&state.defaults.shell);
        let dir = self.scratch()?;
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (s, st) = (self.store.clone(), state.clone());
        let layers = blocking(move || st.layer_dirs(&s).map_err(ImageError::from)).await?;
        let mut held = Vec::new();
        let mounts = match self
            .mounts(run, state.defaults.working_dir.as_deref(), &dir, &mut held)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let targets: Vec<String> = mounts.iter().map(|m| m.target.clone()).collect();
        // ARGs are in the step's environment, not in the image's.
        let mut env = args.clone();
        env.extend(state.defaults.env_map());
        let log_path = dir.join("output.log");
        let config = InstanceConfig {
            id: id.clone(),
            hostname: "build".into(),
            dir: dir.clone(),
            rootfs: Rootfs::Layers {
                layers: layers.clone(),
            },
            argv: argv.clone(),
            env,
            working_dir: state.defaults.working_dir.clone(),
            user: state.defaults.user.clone(),
            mounts,
            hosts: Vec::new(),
            network: None,
            limits: Limits::default(),
            capabilities: paracloud_runtime::capsule::DEFAULT_CAPABILITIES
                .iter()
                .chain(RUN_EXTRA_CAPABILITIES)
                .map(|c| (*c).to_owned())
                .collect(),
            log_path: log_path.clone(),
            owned: Vec::new(),
            userns: None,
            sandbox: Default::default(),
        };
        let mut follow = OutputFollower::new(&log_path, stage.label(), step.line);
        let result = async {
            let process = engine
                .driver
                .start(&config)
                .await
                .map_err(|e| bad(format!("RUN {argv:?} cannot start: {e}")))?;
            let wait = engine.driver.wait(&id, &process);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    exit = &mut wait => break exit.map_err(|e| bad(format!("RUN {argv:?}: {e}"))),
                    () = tokio::time::sleep(Duration::from_millis(200)) => follow.forward(&self.progress, false),
                }
            }
        }
        .await;
        follow.forward(&self.progress, true);
        drop(held);
        let _ = engine.driver.cleanup(&id);
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        let outcome = match result {
            Ok(exit) if exit.code == Some(0) => {
                let (s, upper) = (self.store.clone(), dir.join("upper"));
                blocking(move || {
                    forget_mount_points(&layers, &upper, &targets)?;
                    if upper_is_empty(&upper)? {
                        return Ok(None);
                    }
                    let layer = upper_layer(&s, &upper)?;
                    s.ensure_layer(&layer.blob, &layer.diff_id)?;
                    Ok(Some(layer))
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
                    "RUN {argv:?} failed with {how}; its output ends with:\n{}\n  hint: RUN steps run in a sandbox without network: a step that downloads (apt-get, pip, curl) cannot work offline; bring the files into the build context and COPY them, or keep downloads in a --mount=type=cache",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )))
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&dir);
        outcome
    }
}

/// Sends the lines a RUN step writes to its log as build events, as they come.
struct OutputFollower {
    path: PathBuf,
    stage: String,
    line: usize,
    offset: u64,
    partial: String,
}

impl OutputFollower {
    fn new(path: &Path, stage: String, line: usize) -> Self {
        Self {
            path: path.to_owned(),
            stage,
            line,
            offset: 0,
            partial: String::new(),
        }
    }

    /// Sends the complete lines written since the last call (all of it when `last`).
    fn forward(&mut self, progress: &Progress, last: bool) {
        let Some(tx) = progress else {
            return;
        };
        let mut bytes = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.path) {
            if f.seek(SeekFrom::Start(self.offset)).is_ok() {
                let _ = f.read_to_end(&mut bytes);
            }
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = self.partial.find('\n') {
            let text: String = self.partial.drain(..=end).collect();
            let _ = tx.send(BuildEvent::Output {
                stage: self.stage.clone(),
                line: self.line,
                text: text.trim_end_matches('\n').to_owned(),
            });
        }
        if last && !self.partial.is_empty() {
            let _ = tx.send(BuildEvent::Output {
                stage: self.stage.clone(),
                line: self.line,
                text: std::mem::take(&mut self.partial),
            });
        }
    }
}

/// What a build of `request` would read, checked without building: the Containerfile found
/// and parsed, the target stage found. Its path and the number of steps the target needs
/// (its stages' FROM lines included).
pub fn check(request: &BuildRequest) -> Result<(PathBuf, usize), ImageError> {
    let prepared = prepare(request.clone())?;
    let steps = prepared
        .parsed
        .waves(prepared.target)
        .iter()
        .flatten()
        .map(|i| 1 + prepared.parsed.stages[*i].steps.len())
        .sum();
    Ok((prepared.file, steps))
}
