//! The file work of `paracloud build`: a build's state from its `FROM` image, the digest of
//! what a step reads (for the step's cache key), COPY and ADD layers from the build context, and
//! a layer from the upper directory a RUN step left (overlay whiteouts and opaque directories
//! back into OCI ones). The state itself is plain data in `build_cache`, and the store keeps the
//! cache. Running RUN steps is the daemon's: it owns the sandbox.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::assemble::{write_layer, LayerBlob, LAYER_TAR};
use crate::config::ImageDefaults;
use crate::digest::{Digest, HashingWriter};
use crate::dockerignore::Dockerignore;
use crate::store::{descriptor_digest, Result, Store, StoreError};
use crate::unpack::{is_whiteout, OPAQUE_XATTR};

pub use crate::build_cache::{BuildState, CachedLayer};

impl From<LayerBlob> for CachedLayer {
    fn from(l: LayerBlob) -> Self {
        Self {
            blob: l.blob,
            size: l.size,
            diff_id: l.diff_id,
            media_type: l.media_type,
        }
    }
}

impl From<&CachedLayer> for LayerBlob {
    fn from(l: &CachedLayer) -> Self {
        LayerBlob {
            blob: l.blob.clone(),
            size: l.size,
            diff_id: l.diff_id.clone(),
            media_type: l.media_type.clone(),
        }
    }
}

fn invalid(m: impl Into<String>) -> StoreError {
    StoreError::Invalid(m.into())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl BuildState {
    /// `FROM scratch`, or `FROM` an image of the store (the daemon pulls a missing one first).
    pub fn from_image(store: &Store, image: &str) -> Result<Self> {
        if image == "scratch" {
            return Ok(Self {
                layers: Vec::new(),
                defaults: ImageDefaults::default(),
                history: Vec::new(),
                key: Digest::of(b"FROM scratch"),
            });
        }
        let stored = store.image(image).map_err(|e| match e {
            StoreError::NotFound(_) => invalid(format!(
                "FROM {image}: not in the store: `paracloud image pull` or `image import` it first"
            )),
            other => other,
        })?;
        let mut layers = Vec::new();
        for (l, diff_id) in stored
            .manifest
            .layers()
            .iter()
            .zip(stored.config.rootfs().diff_ids())
        {
            layers.push(CachedLayer {
                blob: descriptor_digest(l.digest())?,
                size: l.size(),
                diff_id: diff_id
                    .parse()
                    .map_err(|e| invalid(format!("a diff id: {e}")))?,
                media_type: l.media_type().to_string(),
            });
        }
        let config = store.read_blob(&descriptor_digest(stored.manifest.config().digest())?)?;
        Ok(Self {
            layers,
            defaults: ImageDefaults::from_config(&stored.config).with_docker_extras(&config),
            history: Vec::new(),
            key: Digest::of(format!("FROM {}", stored.digest).as_bytes()),
        })
    }

    /// Unpacked layer directories, bottom first (unpacked again when pruned meanwhile).
    pub fn layer_dirs(&self, store: &Store) -> Result<Vec<PathBuf>> {
        self.layers
            .iter()
            .map(|l| store.ensure_layer(&l.blob, &l.diff_id))
            .collect()
    }
}

/// The state after a step, if a build made it before and its layers are still in the store.
pub fn cache_get(store: &Store, key: &Digest) -> Option<BuildState> {
    store.build_cache_get(key)
}

/// Keeps the state after a step for the next build that takes the same steps.
pub fn cache_put(store: &Store, state: &BuildState) -> Result<()> {
    store.build_cache_put(state)
}

/// A path of the build context, which must stay inside it and not be excluded by its
/// `.dockerignore`.
fn in_context(context: &Path, ignore: &Dockerignore, source: &str) -> Result<PathBuf> {
    let mut out = context.to_owned();
    for c in Path::new(source).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(format!(
                    "{source}: sources must be inside the build context {}",
                    context.display()
                )))
            }
        }
    }
    if out.symlink_metadata().is_err() {
        return Err(invalid(format!(
            "{source}: no such file in the build context {}",
            context.display()
        )));
    }
    // Links resolved, the source stays in the context: a directory link on its way, or the
    // source itself a link to a directory, would otherwise copy the host's files into the image.
    // A link to a file is copied as the link it is; a dangling one too.
    let root = context.canonicalize().map_err(io_at(context))?;
    let resolved = match out.canonicalize() {
        Ok(real) if real.is_dir() || out.symlink_metadata().is_ok_and(|m| !m.is_symlink()) => {
            Some(real)
        }
        _ => out.parent().and_then(|p| p.canonicalize().ok()),
    };
    if let Some(real) = resolved.filter(|real| !real.starts_with(&root)) {
        return Err(invalid(format!(
            "{source}: leads out of the build context {} through a link (to {}); copy what it needs into the context",
            context.display(),
            real.display()
        )));
    }
    let relative = out.strip_prefix(context).unwrap_or(&out);
    if ignore.excludes(&relative.to_string_lossy()) {
        return Err(invalid(format!(
            "{source}: excluded by the .dockerignore of {}; remove the line that excludes it, or add !{}",
            context.display(),
            relative.display()
        )));
    }
    Ok(out)
}

/// Every file under `path` (itself when a file), sorted, as (path, name relative to `path`).
fn walk(path: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    walk_context(path, &Dockerignore::default(), path)
}

/// [`walk`], leaving out what `ignore` excludes (paths relative to `context`).
fn walk_context(
    context: &Path,
    ignore: &Dockerignore,
    path: &Path,
) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut out = Vec::new();
    let go_ctx = (context, ignore);
    fn go(
        (context, ignore): (&Path, &Dockerignore),
        root: &Path,
        dir: &Path,
        out: &mut Vec<(PathBuf, PathBuf)>,
    ) -> Result<()> {
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io_at(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap_or(&p).to_owned();
            let in_context = p
                .strip_prefix(context)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&p).map_err(io_at(&p))?;
            let excluded = ignore.excludes(&in_context);
            if !excluded {
                out.push((p.clone(), rel));
            }
            if meta.is_dir() && (!excluded || ignore.may_include_below(&in_context)) {
                go((context, ignore), root, &p, out)?;
            }
        }
        Ok(())
    }
    let meta = fs::symlink_metadata(path).map_err(io_at(path))?;
    if meta.is_dir() {
        go(go_ctx, path, path, &mut out)?;
    } else {
        out.push((path.to_owned(), PathBuf::new()));
    }
    Ok(out)
}

/// The digest of the sources a COPY or ADD reads: names, kinds, modes, link targets, contents.
pub fn inputs_digest(context: &Path, ignore: &Dockerignore, sources: &[String]) -> Result<Digest> {
    let mut hasher = HashingWriter::new(io::sink());
    for source in sources {
        let path = in_context(context, ignore, source)?;
        for (file, rel) in walk_context(context, ignore, &path)? {
            let meta = fs::symlink_metadata(&file).map_err(io_at(&file))?;
            let _ = writeln!(hasher, "{source}\0{}\0{:o}", rel.display(), meta.mode());
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&file).map_err(io_at(&file))?;
                let _ = writeln!(hasher, "-> {}", target.display());
            } else if meta.is_file() {
                let mut f = File::open(&file).map_err(io_at(&file))?;
                io::copy(&mut f, &mut hasher).map_err(io_at(&file))?;
            }
        }
    }
    Ok(hasher.finish().1)
}

/// The ids `--chown=USER[:GROUP]` names: numbers as they are, names from the image's
/// `/etc/passwd` and `/etc/group` (`image`: its unpacked layers, lowest first). A user alone
/// takes its group (its primary group when named, the same number when numeric), as Docker does.
pub fn resolve_owner(image: &[PathBuf], chown: Option<&str>) -> Result<(u64, u64)> {
    let Some(chown) = chown else {
        return Ok((0, 0));
    };
    let read = |path: &str| {
        let resolved = resolve_in_image(image, Path::new(path), true);
        top_entry(image, &resolved)
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    };
    let (user, group) = match chown.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (chown, None),
    };
    let (uid, primary) = match user.parse::<u64>() {
        Ok(uid) => (uid, uid),
        Err(_) => id_of(&read("/etc/passwd"), user, 2, 3).ok_or_else(|| {
            invalid(format!(
                "--chown={chown}: the image has no user {user} in its /etc/passwd; give a numeric id, or create the user in an earlier step"
            ))
        })?,
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u64>() {
            Ok(gid) => gid,
            Err(_) => id_of(&read("/etc/group"), g, 2, 2).map(|(gid, _)| gid).ok_or_else(|| {
                invalid(format!(
                    "--chown={chown}: the image has no group {g} in its /etc/group; give a numeric id, or create the group in an earlier step"
                ))
            })?,
        },
    };
    Ok((uid, gid))
}

/// The fields `id` and `second` (0-based) of the `name` line of a passwd or group file.
fn id_of(file: &str, name: &str, id: usize, second: usize) -> Option<(u64, u64)> {
    file.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name)).then_some(())?;
        Some((
            fields.get(id)?.parse().ok()?,
            fields.get(second)?.parse().ok()?,
        ))
    })
}

fn is_archive(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// Symbolic links followed while resolving one path in an image, at most (as the kernel's 40).
const MAX_LINKS: usize = 40;

/// `path` (absolute) as the image made of `layers` (unpacked, lowest first) resolves it: every
/// symbolic link among its parents followed inside the image, and the last component's too
/// when `follow_last`. So `/bin/app` is `/usr/bin/app` in an image whose `/bin` links to
/// `usr/bin`, as it is for Docker; a layer that wrote `/bin/app` as it stands would put a
/// directory `bin` over the link and hide every program of `/usr/bin`.
pub fn resolve_in_image(layers: &[PathBuf], path: &Path, follow_last: bool) -> PathBuf {
    let mut resolved = PathBuf::from("/");
    let mut rest: std::collections::VecDeque<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(name) = rest.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&name);
        if rest.is_empty() && !follow_last {
            return candidate;
        }
        let link = top_entry(layers, &candidate)
            .filter(|entry| entry.is_symlink())
            .and_then(|entry| fs::read_link(entry).ok());
        match link {
            Some(target) if links < MAX_LINKS => {
                links += 1;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => rest.push_front(n.to_owned()),
                        Component::ParentDir => rest.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    resolved
}

/// Where `path` is in the topmost of `layers` that has it; `None` when none has it or the one
/// above deleted it (a whiteout).
fn top_entry(layers: &[PathBuf], path: &Path) -> Option<PathBuf> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let whiteout = relative.file_name().map(|name| {
        let mut wh = std::ffi::OsString::from(".wh.");
        wh.push(name);
        relative.with_file_name(wh)
    });
    for layer in layers.iter().rev() {
        let entry = layer.join(relative);
        if entry.symlink_metadata().is_ok() {
            return Some(entry);
        }
        if whiteout
            .as_ref()
            .is_some_and(|wh| layer.join(wh).symlink_metadata().is_ok())
        {
            return None;
        }
    }
    None
}

/// What a COPY or ADD reads and where it writes.
#[derive(Debug, Clone, Copy)]
pub struct CopyRequest<'a> {
    /// Where the sources are: the build context, or a directory of files of a stage or image.
    pub context: &'a Path,
    pub ignore: &'a Dockerignore,
    /// The image so far: its unpacked layers, lowest first.
    pub image: &'a [PathBuf],
    pub sources: &'a [String],
    pub dest: &'a str,
    pub workdir: Option<&'a str>,
    /// (uid, gid) of every entry (see [`resolve_owner`]).
    pub owner: (u64, u64),
    /// Permission bits of every entry, instead of the sources'.
    pub chmod: Option<u32>,
    /// ADD: local archives are unpacked at the destination.
    pub add: bool,
}

/// The layer of a COPY (or ADD: local archives are unpacked at the destination; URLs cannot be
/// fetched offline). `dest` is relative to `workdir` unless absolute, and resolved through the
/// symbolic links of the image so far.
pub fn copy_layer(store: &Store, request: &CopyRequest<'_>) -> Result<LayerBlob> {
    let CopyRequest {
        context,
        ignore,
        image,
        sources,
        dest,
        workdir,
        owner: (uid, gid),
        chmod,
        add,
    } = *request;
    for s in sources {
        if s.contains("://") {
            return Err(invalid(format!(
                "ADD {s}: builds run offline and cannot download; fetch it into the build context and COPY it"
            )));
        }
    }
    let dest_abs = if dest.starts_with('/') {
        PathBuf::from(dest)
    } else {
        Path::new(workdir.unwrap_or("/")).join(dest)
    };
    // Through the image's links, as Docker does; a destination that is a directory of the image
    // is copied into, and so is one for a directory's contents or for several sources.
    let whole = resolve_in_image(image, &dest_abs, true);
    let is_dir_in_image = top_entry(image, &whole).is_some_and(|entry| entry.is_dir());
    let into_dir = dest.ends_with('/') || sources.len() > 1 || is_dir_in_image;
    let of_directory = sources
        .iter()
        .any(|s| in_context(context, ignore, s).is_ok_and(|p| p.is_dir()));
    let dest_abs = if into_dir || of_directory {
        whole
    } else {
        resolve_in_image(image, &dest_abs, false)
    };
    let mut plan: Vec<(PathBuf, PathBuf)> = Vec::new(); // (host path, path in image)
    let mut archives: Vec<(PathBuf, PathBuf)> = Vec::new();
    for source in sources {
        let path = in_context(context, ignore, source)?;
        let meta = fs::metadata(&path).map_err(io_at(&path))?;
        if add && meta.is_file() && is_archive(&path) {
            archives.push((path, dest_abs.clone()));
            continue;
        }
        if meta.is_dir() {
            for (file, rel) in walk_context(context, ignore, &path)? {
                plan.push((file, dest_abs.join(rel)));
            }
        } else {
            let target = if into_dir {
                dest_abs.join(path.file_name().unwrap_or_default())
            } else {
                dest_abs.clone()
            };
            plan.push((path, target));
        }
    }
    write_layer(store, |tar| {
        // The destination's parents, so that the layer stands on its own.
        let mut dirs: BTreeMap<PathBuf, ()> = BTreeMap::new();
        for (_, target) in plan.iter().chain(archives.iter()) {
            for a in target.ancestors().skip(1) {
                if a != Path::new("/") {
                    dirs.insert(a.to_owned(), ());
                }
            }
        }
        for (_, target) in &archives {
            dirs.insert(target.clone(), ());
        }
        for dir in dirs.keys() {
            if plan.iter().any(|(_, t)| t == dir) {
                continue;
            }
            let mut h = header(
                tar::EntryType::Directory,
                chmod.unwrap_or(0o755),
                uid,
                gid,
                0,
            );
            tar.append_data(&mut h, rel(dir), io::empty())?;
        }
        for (host, target) in &plan {
            let meta = fs::symlink_metadata(host)?;
            let mode = chmod.unwrap_or(meta.permissions().mode() & 0o7777);
            if meta.file_type().is_symlink() {
                let mut h = header(tar::EntryType::Symlink, 0o777, uid, gid, 0);
                tar.append_link(&mut h, rel(target), fs::read_link(host)?)?;
            } else if meta.is_dir() {
                let mut h = header(tar::EntryType::Directory, mode, uid, gid, 0);
                tar.append_data(&mut h, rel(target), io::empty())?;
            } else {
                let mut h = header(tar::EntryType::Regular, mode, uid, gid, meta.len());
                tar.append_data(&mut h, rel(target), File::open(host)?)?;
            }
        }
        for (archive, target) in &archives {
            let file = File::open(archive)?;
            let mut reader = io::BufReader::new(file);
            let gz = io::BufRead::fill_buf(&mut reader)?.starts_with(&[0x1f, 0x8b]);
            let stream: Box<dyn Read> = if gz {
                Box::new(flate2::read::GzDecoder::new(reader))
            } else {
                Box::new(reader)
            };
            let mut inner = tar::Archive::new(stream);
            for entry in inner.entries()? {
                let mut entry = entry?;
                let path = entry.path()?.into_owned();
                let mut clean = PathBuf::new();
                for c in path.components() {
                    match c {
                        Component::Normal(p) => clean.push(p),
                        Component::ParentDir => {
                            return Err(io::Error::other(format!(
                                "{}: entry {} leaves the archive",
                                archive.display(),
                                path.display()
                            )))
                        }
                        _ => {}
                    }
                }
                if clean.as_os_str().is_empty() {
                    continue;
                }
                let mut h = entry.header().clone();
                h.set_uid(uid);
                h.set_gid(gid);
                let name = rel(&target.join(&clean)).to_owned();
                match h.entry_type() {
                    tar::EntryType::Symlink | tar::EntryType::Link => {
                        let link = entry.link_name()?.unwrap_or_default().into_owned();
                        tar.append_link(&mut h, &name, link)?;
                    }
                    _ => tar.append_data(&mut h, &name, &mut entry)?,
                }
            }
        }
        Ok(())
    })
}

/// Copies what `path` is in the image made of `layers` (unpacked, lowest first; links among its
/// parents followed, whiteouts and opaque directories applied) to the same path under `out`,
/// owners and modes kept: the files `COPY --from` and the mounts' `from=` read. Returns where
/// it put them: the path as the image resolves it, relative to `out`.
pub fn extract(layers: &[PathBuf], path: &str, out: &Path) -> Result<PathBuf> {
    let absolute = Path::new("/").join(path);
    let resolved = resolve_in_image(layers, &absolute, true);
    let relative = resolved.strip_prefix("/").unwrap_or(&resolved).to_owned();
    // The layers whose view of the parents still counts: cut below one that deletes a parent
    // or makes it opaque.
    let mut visible: Vec<PathBuf> = Vec::new();
    for layer in layers.iter().rev() {
        visible.insert(0, layer.clone());
        let mut hidden = false;
        for a in relative.ancestors().skip(1) {
            if a.as_os_str().is_empty() {
                break;
            }
            let dir = layer.join(a);
            if is_whiteout(&dir)
                || xattr::get(&dir, OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y")
            {
                hidden = true;
            }
        }
        if hidden {
            break;
        }
    }
    let target = out.join(&relative);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    if !merged_copy(&visible, &relative, &target)? {
        return Err(invalid(format!("{path}: no such file in the image")));
    }
    Ok(relative)
}

/// Copies the merged entry `relative` of `layers` (lowest first) to `target`; false when no
/// layer has it.
fn merged_copy(layers: &[PathBuf], relative: &Path, target: &Path) -> Result<bool> {
    // The topmost layer that has the entry decides what it is; a directory takes the entries of
    // the directories below it, down to an opaque one or one that is not a directory.
    let mut dirs: Vec<PathBuf> = Vec::new();
    for layer in layers.iter().rev() {
        let entry = layer.join(relative);
        let Ok(meta) = fs::symlink_metadata(&entry) else {
            continue;
        };
        if is_whiteout(&entry) {
            break;
        }
        if !meta.is_dir() {
            if dirs.is_empty() {
                copy_entry(&entry, &meta, target)?;
                return Ok(true);
            }
            break;
        }
        dirs.push(layer.clone());
        if xattr::get(&entry, OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y") {
            break;
        }
    }
    let Some(top) = dirs.first() else {
        return Ok(false);
    };
    let top_entry = top.join(relative);
    let meta = fs::symlink_metadata(&top_entry).map_err(io_at(&top_entry))?;
    fs::create_dir_all(target).map_err(io_at(target))?;
    let mut names: std::collections::BTreeSet<std::ffi::OsString> = Default::default();
    for dir in &dirs {
        let path = dir.join(relative);
        for e in fs::read_dir(&path).map_err(io_at(&path))?.flatten() {
            names.insert(e.file_name());
        }
    }
    // Lowest first again, for the children's own view.
    let below: Vec<PathBuf> = dirs.iter().rev().cloned().collect();
    for name in names {
        merged_copy(&below, &relative.join(&name), &target.join(&name))?;
    }
    std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid())).map_err(io_at(target))?;
    fs::set_permissions(target, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_at(target))?;
    Ok(true)
}

fn copy_entry(entry: &Path, meta: &fs::Metadata, target: &Path) -> Result<()> {
    if meta.file_type().is_symlink() {
        let link = fs::read_link(entry).map_err(io_at(entry))?;
        std::os::unix::fs::symlink(link, target).map_err(io_at(target))?;
        return std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid()))
            .map_err(io_at(target));
    }
    if !meta.is_file() {
        // Devices, fifos and sockets are not copied.
        return Ok(());
    }
    fs::copy(entry, target).map_err(io_at(target))?;
    // The owner first: changing it clears set-id bits the mode then puts back.
    std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid())).map_err(io_at(target))?;
    fs::set_permissions(target, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_at(target))
}

/// Removes from a RUN step's upper directory the mount points the sandbox made for its mounts
/// (`targets`, absolute), and the directories made only to hold them: empty, and not in the
/// image (`image`: its unpacked layers, lowest first). What a mount covered is no layer's.
pub fn forget_mount_points(image: &[PathBuf], upper: &Path, targets: &[String]) -> Result<()> {
    for target in targets {
        let mut path = PathBuf::from(target);
        loop {
            if path == Path::new("/") || top_entry(image, &path).is_some() {
                break;
            }
            let entry = upper.join(rel(&path));
            let Ok(meta) = fs::symlink_metadata(&entry) else {
                break;
            };
            let empty = if meta.is_dir() {
                fs::read_dir(&entry)
                    .map_err(io_at(&entry))?
                    .next()
                    .is_none()
            } else {
                meta.is_file() && meta.len() == 0
            };
            if !empty {
                break;
            }
            if meta.is_dir() {
                fs::remove_dir(&entry).map_err(io_at(&entry))?;
            } else {
                fs::remove_file(&entry).map_err(io_at(&entry))?;
            }
            if !path.pop() {
                break;
            }
        }
    }
    Ok(())
}

fn rel(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// Paths the sandbox itself creates in an instance's upper layer (mount points and the /etc
/// files it binds): not the step's doing, so not in its layer when they are empty.
const SANDBOX_MADE: &[&str] = &[
    "proc",
    "dev",
    "sys",
    "tmp",
    "etc",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
];

/// Whether a RUN step's upper directory holds no change of its own (what the sandbox made for
/// itself left out): such a step adds no layer, as with BuildKit.
pub fn upper_is_empty(upper: &Path) -> Result<bool> {
    for (path, relative) in walk(upper)? {
        let meta = fs::symlink_metadata(&path).map_err(io_at(&path))?;
        let made = SANDBOX_MADE.contains(&relative.to_string_lossy().as_ref())
            && (meta.is_dir() || (meta.is_file() && meta.len() == 0));
        if !made {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The layer of what a RUN step changed: its sandbox's upper directory, with overlay
/// whiteouts as `.wh.NAME` and opaque directories as `.wh..wh..opq`.
pub fn upper_layer(store: &Store, upper: &Path) -> Result<LayerBlob> {
    let entries = walk(upper)?;
    write_layer(store, |tar| {
        for (path, relative) in &entries {
            let meta = fs::symlink_metadata(path)?;
            let rel_str = relative.to_string_lossy();
            if SANDBOX_MADE.contains(&rel_str.as_ref())
                && ((meta.is_dir() && fs::read_dir(path)?.next().is_none())
                    || (meta.is_file() && meta.len() == 0))
            {
                continue;
            }
            let (uid, gid) = (u64::from(meta.uid()), u64::from(meta.gid()));
            let mode = meta.permissions().mode() & 0o7777;
            if is_whiteout(path) {
                let name = relative.parent().unwrap_or(Path::new("")).join(format!(
                    ".wh.{}",
                    relative.file_name().unwrap_or_default().to_string_lossy()
                ));
                let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, 0);
                tar.append_data(&mut h, name, io::empty())?;
            } else if meta.file_type().is_symlink() {
                let mut h = header(tar::EntryType::Symlink, 0o777, uid, gid, 0);
                tar.append_link(&mut h, relative, fs::read_link(path)?)?;
            } else if meta.is_dir() {
                let mut h = header(tar::EntryType::Directory, mode, uid, gid, 0);
                tar.append_data(&mut h, relative, io::empty())?;
                if xattr::get(path, OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y") {
                    let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, 0);
                    tar.append_data(&mut h, relative.join(".wh..wh..opq"), io::empty())?;
                }
            } else if meta.is_file() {
                let mut h = header(tar::EntryType::Regular, mode, uid, gid, meta.len());
                tar.append_data(&mut h, relative, File::open(path)?)?;
            }
            // Sockets and fifos a step left behind are not image content.
        }
        Ok(())
    })
}

/// The media type of the layers builds write.
pub const BUILD_LAYER_MEDIA_TYPE: &str = LAYER_TAR;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_source_cannot_leave_the_context_through_a_link() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "host's").unwrap();
        let context = tempfile::tempdir().unwrap();
        let c = context.path();
        fs::create_dir_all(c.join("inside")).unwrap();
        fs::write(c.join("inside/file"), "ours").unwrap();
        symlink(outside.path(), c.join("out-dir")).unwrap();
        symlink(outside.path().join("secret"), c.join("out-file")).unwrap();
        symlink("inside", c.join("in-dir")).unwrap();
        symlink("/nowhere", c.join("dangling")).unwrap();
        let ignore = Dockerignore::default();
        for escaping in ["out-dir", "out-dir/secret", "out-dir/"] {
            let e = in_context(c, &ignore, escaping).unwrap_err().to_string();
            assert!(
                e.contains("leads out of the build context"),
                "{escaping}: {e}"
            );
        }
        // Copied as links, not followed.
        for kept in [
            "out-file",
            "dangling",
            "in-dir",
            "in-dir/file",
            "inside/file",
        ] {
            assert!(in_context(c, &ignore, kept).is_ok(), "{kept}");
        }
    }

    /// A merged-/usr image: /bin and /lib link to usr/bin and usr/lib (one relative link, one
    /// absolute), and an upper layer that links /opt/tool on and deleted /srv.
    fn merged_usr() -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        for d in ["usr/bin", "usr/lib", "srv", "etc"] {
            fs::create_dir_all(lower.join(d)).unwrap();
        }
        symlink("usr/bin", lower.join("bin")).unwrap();
        symlink("/usr/lib", lower.join("lib")).unwrap();
        fs::create_dir_all(upper.join("opt")).unwrap();
        symlink("../bin/../etc", upper.join("opt/tool")).unwrap();
        fs::write(upper.join(".wh.srv"), "").unwrap();
        symlink("loop-b", upper.join("loop-a")).unwrap();
        symlink("loop-a", upper.join("loop-b")).unwrap();
        (dir, vec![lower, upper])
    }

    #[test]
    fn paths_resolve_through_the_links_of_every_layer() {
        let (_dir, layers) = merged_usr();
        let resolve = |p: &str, last: bool| resolve_in_image(&layers, Path::new(p), last);
        assert_eq!(resolve("/bin/app", false), Path::new("/usr/bin/app"));
        assert_eq!(resolve("/lib/x/y.so", false), Path::new("/usr/lib/x/y.so"));
        assert_eq!(resolve("/bin", true), Path::new("/usr/bin"));
        assert_eq!(resolve("/bin", false), Path::new("/bin"), "the link itself");
        // ../bin/../etc from /opt: /bin is /usr/bin, whose parent's etc is /usr/etc.
        assert_eq!(resolve("/opt/tool/conf", false), Path::new("/usr/etc/conf"));
        assert_eq!(resolve("/srv/www", false), Path::new("/srv/www"));
        assert_eq!(resolve("/new/dir/file", true), Path::new("/new/dir/file"));
        assert_eq!(resolve("/../../bin/x", false), Path::new("/usr/bin/x"));
        assert!(
            resolve("/loop-a/x", false).starts_with("/"),
            "a loop of links ends"
        );
        assert!(
            top_entry(&layers, Path::new("/srv")).is_none(),
            "deleted above"
        );
        assert!(top_entry(&layers, Path::new("/usr/bin")).is_some_and(|e| e.is_dir()));
    }

    #[test]
    fn chown_names_resolve_from_the_image_files() {
        let (_dir, layers) = merged_usr();
        fs::write(
            layers[0].join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(layers[0].join("etc/group"), "root:x:0:\nstaff:x:50:app\n").unwrap();
        let owner = |c: &str| resolve_owner(&layers, Some(c));
        assert_eq!(
            owner("app").unwrap(),
            (1000, 1001),
            "the user's primary group"
        );
        assert_eq!(owner("app:staff").unwrap(), (1000, 50));
        assert_eq!(owner("7").unwrap(), (7, 7));
        assert_eq!(owner("7:staff").unwrap(), (7, 50));
        assert_eq!(resolve_owner(&layers, None).unwrap(), (0, 0));
        let e = owner("nobody").unwrap_err().to_string();
        assert!(e.contains("no user nobody in its /etc/passwd"), "{e}");
        let e = owner("app:wheel").unwrap_err().to_string();
        assert!(e.contains("no group wheel"), "{e}");
    }

    #[test]
    fn extracting_applies_links_whiteouts_and_opaque_directories() {
        let (dir, mut layers) = merged_usr();
        fs::write(layers[0].join("usr/bin/tool"), "lower").unwrap();
        fs::write(layers[0].join("usr/bin/old"), "deleted above").unwrap();
        fs::write(layers[0].join("srv/gone"), "").unwrap();
        let top = dir.path().join("top");
        fs::create_dir_all(top.join("usr/bin")).unwrap();
        fs::write(top.join("usr/bin/tool"), "upper").unwrap();
        fs::write(top.join("usr/bin/new"), "new").unwrap();
        layers.push(top.clone());
        // A whiteout as unpacking leaves it: a 0/0 character device (needs root to make).
        let whiteout = |p: &str| {
            std::process::Command::new("mknod")
                .arg(top.join(p))
                .args(["c", "0", "0"])
                .status()
                .is_ok_and(|s| s.success())
        };
        let made = whiteout("usr/bin/old") && whiteout("srv");
        let out = dir.path().join("out");
        assert_eq!(
            extract(&layers, "/bin", &out).unwrap(),
            Path::new("usr/bin")
        );
        let read = |p: &str| fs::read_to_string(out.join(p)).ok();
        assert_eq!(read("usr/bin/tool").as_deref(), Some("upper"));
        assert_eq!(read("usr/bin/new").as_deref(), Some("new"));
        if made {
            assert_eq!(read("usr/bin/old"), None, "deleted by the whiteout");
        }
        if made {
            let e = extract(&layers, "/srv", &dir.path().join("o2"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("/srv: no such file in the image"), "{e}");
        }
        assert!(extract(&layers, "/nothing", &dir.path().join("o3")).is_err());
    }

    #[test]
    fn mount_points_leave_the_upper_directory_unless_the_image_has_them() {
        let (dir, layers) = merged_usr();
        let upper = dir.path().join("run-upper");
        fs::create_dir_all(upper.join("usr/bin")).unwrap();
        fs::create_dir_all(upper.join("root/.cache/go")).unwrap();
        fs::create_dir_all(upper.join("run/secrets")).unwrap();
        fs::write(upper.join("run/secrets/token"), "").unwrap();
        fs::write(upper.join("run/kept"), "written by the step").unwrap();
        fs::create_dir_all(upper.join("etc/cache")).unwrap();
        forget_mount_points(
            &layers,
            &upper,
            &[
                "/root/.cache/go".into(),
                "/run/secrets/token".into(),
                "/etc/cache".into(),
                "/usr/bin".into(),
            ],
        )
        .unwrap();
        assert!(!upper.join("root").exists(), "made only for the mount");
        assert!(!upper.join("run/secrets").exists());
        assert!(upper.join("run/kept").exists(), "the step's own file stays");
        assert!(upper.join("etc").is_dir() && !upper.join("etc/cache").exists());
        assert!(upper.join("usr/bin").is_dir(), "in the image");
    }
}
