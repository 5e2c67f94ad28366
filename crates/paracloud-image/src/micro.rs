//! Micro-images from host programs: a binary, its ELF interpreter and shared-library closure,
//! and the files named, with a minimal /etc, as one layer.
//!
//! [`elf_needs`] reads what an ELF file asks of the loader (pure); [`Closure`] walks the host
//! filesystem to find those files and every symlink on the way to them, so that the image has
//! the host's layout (usr-merge links included) and the loader finds everything where it looks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::assemble::{commit_image, write_layer, LayerBlob};
use crate::config::ImageDefaults;
use crate::digest::Digest;
use crate::store::{Result, Store, StoreError};

/// What an ELF file asks of the dynamic loader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfNeeds {
    pub interpreter: Option<String>,
    /// DT_NEEDED sonames, in order.
    pub needed: Vec<String>,
    /// DT_RPATH and DT_RUNPATH directories (`$ORIGIN` not yet replaced).
    pub search: Vec<String>,
}

/// Reads an ELF file's needs; `None` when `bytes` is not ELF (a script, data).
pub fn elf_needs(bytes: &[u8]) -> Option<ElfNeeds> {
    if !bytes.starts_with(b"\x7fELF") {
        return None;
    }
    let elf = goblin::elf::Elf::parse(bytes).ok()?;
    Some(ElfNeeds {
        interpreter: elf.interpreter.map(str::to_owned),
        needed: elf.libraries.iter().map(|s| (*s).to_owned()).collect(),
        search: elf
            .rpaths
            .iter()
            .chain(elf.runpaths.iter())
            .flat_map(|p| p.split(':'))
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { host: PathBuf, mode: u32 },
    Symlink { target: PathBuf },
}

/// Directories every instance gets mounted over (tmpfs, proc, devices): nothing of an image
/// there can be seen.
const SHADOWED: &[&str] = &["/tmp", "/var/tmp", "/run", "/proc", "/dev", "/sys"];

/// The files of a micro-image, by their absolute path in the image.
#[derive(Debug, Default)]
pub struct Closure {
    host_root: PathBuf,
    library_dirs: Vec<PathBuf>,
    entries: BTreeMap<PathBuf, Entry>,
    scanned: BTreeSet<PathBuf>,
}

fn not_found(path: &Path, why: &str) -> StoreError {
    StoreError::Invalid(format!("{}: {why}", path.display()))
}

impl Closure {
    /// A closure over the filesystem at `host_root` (normally `/`), whose loader searches the
    /// directories of its /etc/ld.so.conf and the default ones.
    pub fn new(host_root: impl Into<PathBuf>) -> Self {
        let host_root = host_root.into();
        let mut library_dirs = Vec::new();
        read_ld_so_conf(
            &host_root,
            Path::new("/etc/ld.so.conf"),
            &mut library_dirs,
            0,
        );
        for dir in ["/lib", "/usr/lib", "/lib64", "/usr/lib64"] {
            library_dirs.push(PathBuf::from(dir));
        }
        Self {
            host_root,
            library_dirs,
            ..Self::default()
        }
    }

    fn host(&self, path: &Path) -> PathBuf {
        self.host_root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Adds a program and everything it loads.
    pub fn add_program(&mut self, path: &Path) -> Result<()> {
        let real = self.add_path(path, 0)?;
        if !matches!(self.entries.get(&real), Some(Entry::File { .. })) {
            return Err(not_found(path, "is not a regular file"));
        }
        self.add_libraries_of(&real, path)
    }

    /// Where `program` (added with [`Closure::add_program`]) runs from in the image: its own
    /// path, unless that lies under a directory every instance mounts over (/tmp, /run, ...),
    /// which would hide it; then it moves to /usr/local/bin under its own name.
    pub fn program_path(&mut self, program: &Path) -> PathBuf {
        if !SHADOWED.iter().any(|dir| program.starts_with(dir)) {
            return program.to_owned();
        }
        let name = program
            .file_name()
            .map_or_else(|| std::ffi::OsString::from("program"), |n| n.to_os_string());
        let moved = Path::new("/usr/local/bin").join(name);
        let mut at = program.to_owned();
        // Follow the image's own symlinks to the file itself.
        for _ in 0..40 {
            match self.entries.get(&at) {
                Some(Entry::Symlink { target }) => {
                    at = at.parent().unwrap_or(Path::new("/")).join(target);
                }
                Some(Entry::File { host, mode }) => {
                    let file = Entry::File {
                        host: host.clone(),
                        mode: *mode,
                    };
                    self.entries
                        .retain(|path, _| !SHADOWED.iter().any(|dir| path.starts_with(dir)));
                    self.entries.insert(moved.clone(), file);
                    return moved;
                }
                _ => break,
            }
        }
        program.to_owned()
    }

    /// Adds a file or a directory tree as it is on the host, and the libraries of any ELF file
    /// in it.
    pub fn add_tree(&mut self, path: &Path) -> Result<()> {
        let real = self.add_path(path, 0)?;
        let host = self.host(&real);
        let meta = fs::symlink_metadata(&host).map_err(|e| StoreError::Io {
            path: host.clone(),
            source: e,
        })?;
        if meta.is_dir() {
            let mut children: Vec<_> = fs::read_dir(&host)
                .map_err(|e| StoreError::Io {
                    path: host.clone(),
                    source: e,
                })?
                .filter_map(|e| e.ok())
                .map(|e| real.join(e.file_name()))
                .collect();
            children.sort();
            for child in children {
                self.add_tree(&child)?;
            }
        } else if meta.is_file() {
            self.add_libraries_of(&real, path)?;
        }
        Ok(())
    }

    /// Records `path` and every symlink met on the way; returns the real path it ends at.
    fn add_path(&mut self, path: &Path, depth: u32) -> Result<PathBuf> {
        if depth > 40 {
            return Err(not_found(path, "too many levels of symbolic links"));
        }
        if !path.is_absolute() {
            return Err(not_found(path, "is not an absolute path"));
        }
        let normalized = normalize(path);
        let components: Vec<_> = normalized.components().skip(1).collect();
        let mut current = PathBuf::from("/");
        for (i, component) in components.iter().enumerate() {
            let next = current.join(component);
            let host = self.host(&next);
            let meta = fs::symlink_metadata(&host)
                .map_err(|_| not_found(path, "does not exist on this machine"))?;
            let last = i + 1 == components.len();
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&host).map_err(|e| StoreError::Io {
                    path: host.clone(),
                    source: e,
                })?;
                self.entries.insert(
                    next.clone(),
                    Entry::Symlink {
                        target: target.clone(),
                    },
                );
                let mut resolved = if target.is_absolute() {
                    target
                } else {
                    current.join(target)
                };
                for rest in &components[i + 1..] {
                    resolved.push(rest);
                }
                return self.add_path(&normalize(&resolved), depth + 1);
            }
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                self.entries
                    .entry(next.clone())
                    .or_insert(Entry::Dir { mode });
            } else if last && meta.is_file() {
                self.entries.insert(
                    next.clone(),
                    Entry::File {
                        host: host.clone(),
                        mode,
                    },
                );
            } else if last {
                return Err(not_found(path, "is neither a file, a directory nor a link"));
            } else {
                return Err(not_found(path, "has a file where a directory should be"));
            }
            current = next;
        }
        Ok(current)
    }

    fn add_libraries_of(&mut self, real: &Path, as_named: &Path) -> Result<()> {
        if !self.scanned.insert(real.to_owned()) {
            return Ok(());
        }
        let host = self.host(real);
        let bytes = fs::read(&host).map_err(|e| StoreError::Io {
            path: host.clone(),
            source: e,
        })?;
        let Some(needs) = elf_needs(&bytes) else {
            return Ok(());
        };
        drop(bytes);
        if let Some(interpreter) = &needs.interpreter {
            let real_interp = self.add_path(Path::new(interpreter), 0)?;
            self.scanned.insert(real_interp);
        }
        let origin = as_named.parent().unwrap_or(Path::new("/")).to_owned();
        let mut dirs: Vec<PathBuf> = needs
            .search
            .iter()
            .map(|d| PathBuf::from(d.replace("$ORIGIN", &origin.to_string_lossy())))
            .collect();
        dirs.extend(self.library_dirs.iter().cloned());
        for soname in &needs.needed {
            let found = if soname.contains('/') {
                Some(PathBuf::from(soname))
            } else {
                dirs.iter()
                    .map(|d| d.join(soname))
                    .find(|p| self.host(p).exists())
            };
            let Some(found) = found else {
                return Err(StoreError::Invalid(format!(
                    "{} needs {soname}, found in none of {}",
                    as_named.display(),
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            let lib_real = self.add_path(&found, 0)?;
            self.add_libraries_of(&lib_real, &found)?;
        }
        Ok(())
    }

    /// Adds a generated file (the minimal /etc), unless the closure already has one there.
    fn add_generated(
        &mut self,
        path: &str,
        content: &str,
        generated: &mut BTreeMap<PathBuf, (String, u32)>,
    ) {
        let path = PathBuf::from(path);
        if !self.entries.contains_key(&path) {
            generated
                .entry(path)
                .or_insert_with(|| (content.to_owned(), 0o644));
        }
    }

    /// Bytes of the regular files the closure holds.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::File { host, .. } => fs::metadata(host).ok().map(|m| m.size()),
                _ => None,
            })
            .sum()
    }

    /// The paths the image will hold, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.entries.keys().cloned().collect()
    }
}

/// Lexically removes `.` and `..` (the prefix is a real path: no symlink to step back over).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn read_ld_so_conf(host_root: &Path, file: &Path, out: &mut Vec<PathBuf>, depth: u32) {
    if depth > 8 {
        return;
    }
    let host = host_root.join(file.strip_prefix("/").unwrap_or(file));
    let Ok(text) = fs::read_to_string(&host) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include") {
            for included in expand_include(host_root, pattern.trim()) {
                read_ld_so_conf(host_root, &included, out, depth + 1);
            }
        } else if line.starts_with('/') {
            out.push(PathBuf::from(line));
        }
    }
}

/// `include /etc/ld.so.conf.d/*.conf`: the one glob shape ld.so.conf files use.
fn expand_include(host_root: &Path, pattern: &str) -> Vec<PathBuf> {
    let pattern = Path::new(pattern);
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    let Some((prefix, suffix)) = name.split_once('*') else {
        return vec![pattern.to_owned()];
    };
    let host_dir = host_root.join(dir.strip_prefix("/").unwrap_or(dir));
    let mut found: Vec<PathBuf> = fs::read_dir(host_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
        .map(|n| dir.join(n))
        .collect();
    found.sort();
    found
}

/// What to build: the program, the extra paths, and how to name it.
#[derive(Debug, Clone)]
pub struct MicroImageSpec {
    pub binary: PathBuf,
    pub add: Vec<PathBuf>,
    /// The host filesystem the files come from, normally `/`.
    pub host_root: PathBuf,
    /// Files written into the image as they are given (path, content, mode), over what the
    /// closure and the minimal /etc would put there.
    pub files: Vec<(PathBuf, String, u32)>,
}

/// A built micro-image.
#[derive(Debug, Clone)]
pub struct MicroImage {
    pub digest: Digest,
    pub layer: LayerBlob,
    /// Paths in the image (files, directories, links), sorted.
    pub files: usize,
}

const PASSWD: &str =
    "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n";
const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

/// Builds a one-layer image of a host program and its closure, with a minimal /etc (passwd,
/// group, nsswitch.conf, hosts) and the usual empty mount points; its entrypoint is the program.
pub fn build_micro_image(store: &Store, spec: &MicroImageSpec) -> Result<MicroImage> {
    let mut closure = Closure::new(&spec.host_root);
    closure.add_program(&spec.binary)?;
    for path in &spec.add {
        closure.add_tree(path)?;
    }
    let program = closure.program_path(&spec.binary);
    let mut generated: BTreeMap<PathBuf, (String, u32)> = spec
        .files
        .iter()
        .map(|(path, content, mode)| (path.clone(), (content.clone(), *mode)))
        .collect();
    for path in generated.keys() {
        closure.entries.remove(path);
    }
    closure.add_generated("/etc/passwd", PASSWD, &mut generated);
    closure.add_generated("/etc/group", GROUP, &mut generated);
    closure.add_generated("/etc/nsswitch.conf", NSSWITCH, &mut generated);
    closure.add_generated("/etc/hosts", HOSTS, &mut generated);
    let mut dirs: BTreeMap<PathBuf, u32> = BTreeMap::new();
    for (dir, mode) in [
        ("/etc", 0o755),
        ("/tmp", 0o1777),
        ("/proc", 0o555),
        ("/dev", 0o755),
        ("/sys", 0o555),
        ("/run", 0o755),
        ("/var/tmp", 0o1777),
    ] {
        dirs.insert(PathBuf::from(dir), mode);
    }
    for (path, entry) in &closure.entries {
        if let Entry::Dir { mode } = entry {
            dirs.insert(path.clone(), *mode);
        }
    }
    // Every parent directory of every entry, so that the tar is complete on its own.
    let all: Vec<PathBuf> = closure
        .entries
        .keys()
        .chain(generated.keys())
        .chain(dirs.keys())
        .cloned()
        .collect();
    for path in all {
        for ancestor in path.ancestors().skip(1) {
            if ancestor != Path::new("/") && !closure.entries.contains_key(ancestor) {
                dirs.entry(ancestor.to_owned()).or_insert(0o755);
            }
        }
    }
    let files = closure.entries.len() + generated.len() + dirs.len();
    let layer = write_layer(store, |tar| {
        // One sorted walk: a directory always precedes what it holds.
        let mut items: BTreeMap<PathBuf, Item<'_>> = BTreeMap::new();
        for (path, mode) in &dirs {
            items.insert(path.clone(), Item::Dir(*mode));
        }
        for (path, entry) in &closure.entries {
            match entry {
                Entry::Dir { .. } => {}
                Entry::File { host, mode } => {
                    items.insert(path.clone(), Item::File(host, *mode));
                }
                Entry::Symlink { target } => {
                    items.insert(path.clone(), Item::Link(target));
                }
            }
        }
        for (path, (content, mode)) in &generated {
            items.insert(path.clone(), Item::Text(content, *mode));
        }
        for (path, item) in items {
            let name = path.strip_prefix("/").unwrap_or(&path).to_owned();
            append_item(tar, &name, item)?;
        }
        Ok(())
    })?;
    let defaults = ImageDefaults {
        entrypoint: vec![program.display().to_string()],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..ImageDefaults::default()
    };
    let history = vec![format!(
        "paracloud image build --from-binary {}{}",
        spec.binary.display(),
        spec.add
            .iter()
            .map(|a| format!(" --add {}", a.display()))
            .collect::<String>()
    )];
    let digest = commit_image(
        store,
        std::slice::from_ref(&layer),
        &defaults,
        &history,
        None,
    )?;
    Ok(MicroImage {
        digest,
        layer,
        files,
    })
}

enum Item<'a> {
    Dir(u32),
    File(&'a Path, u32),
    Link(&'a Path),
    Text(&'a str, u32),
}

fn append_item<W: io::Write>(
    tar: &mut tar::Builder<W>,
    name: &Path,
    item: Item<'_>,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    match item {
        Item::Dir(mode) => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(mode);
            header.set_size(0);
            tar.append_data(&mut header, name, io::empty())
        }
        Item::File(host, mode) => {
            let file = fs::File::open(host)?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(mode);
            header.set_size(file.metadata()?.len());
            tar.append_data(&mut header, name, file)
        }
        Item::Link(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            tar.append_link(&mut header, name, target)
        }
        Item::Text(content, mode) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(mode);
            header.set_size(content.len() as u64);
            tar.append_data(&mut header, name, content.as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_needs_its_interpreter_and_libc() {
        let bytes = fs::read("/bin/ls").unwrap();
        let needs = elf_needs(&bytes).unwrap();
        assert!(needs.interpreter.unwrap().contains("ld-linux"));
        assert!(needs.needed.iter().any(|n| n.starts_with("libc.so")));
        assert_eq!(elf_needs(b"#!/bin/sh\necho hi\n"), None);
    }

    #[test]
    fn a_program_under_tmp_moves_to_usr_local_bin_where_instances_see_it() {
        let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
        let program = dir.path().join("tool");
        fs::copy("/bin/ls", &program).unwrap();
        let link = dir.path().join("tool-link");
        std::os::unix::fs::symlink("tool", &link).unwrap();
        let mut closure = Closure::new("/");
        closure.add_program(&link).unwrap();
        assert_eq!(
            closure.program_path(&link),
            Path::new("/usr/local/bin/tool-link")
        );
        let paths = closure.paths();
        assert!(paths.iter().all(|p| !p.starts_with("/tmp")), "{paths:?}");
        assert!(matches!(
            closure.entries.get(Path::new("/usr/local/bin/tool-link")),
            Some(Entry::File { host, .. }) if host.ends_with("tool")
        ));
        let mut usual = Closure::new("/");
        usual.add_program(Path::new("/bin/ls")).unwrap();
        assert_eq!(
            usual.program_path(Path::new("/bin/ls")),
            Path::new("/bin/ls")
        );
    }

    #[test]
    fn the_closure_follows_symlinks_and_holds_every_library() {
        let mut closure = Closure::new("/");
        closure.add_program(Path::new("/bin/ls")).unwrap();
        let paths = closure.paths();
        let names: Vec<String> = paths
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n.starts_with("libc.so")), "{paths:?}");
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{paths:?}");
        assert!(names.iter().any(|n| n == "ls"), "{paths:?}");
        // Every symlink on the host on the way is a symlink in the image too.
        for (path, entry) in &closure.entries {
            let host = fs::symlink_metadata(path).unwrap();
            assert_eq!(
                host.file_type().is_symlink(),
                matches!(entry, Entry::Symlink { .. }),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn a_missing_program_is_named_in_the_error() {
        let mut closure = Closure::new("/");
        let e = closure
            .add_program(Path::new("/no/such/program"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/no/such/program: does not exist on this machine"
        );
    }
}
