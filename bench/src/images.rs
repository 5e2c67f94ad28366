//! The images benchmark: pulling (and unpacking) a multi-layer image of about 100 MB from a
//! local registry with Paracloud against `skopeo copy` to an OCI layout then `umoci unpack`,
//! rounds interleaved; and starting an instance from that layered image against from `host`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use flate2::write::GzEncoder;
use paracloud_image::assemble::{commit_image, LayerBlob, LAYER_TAR_GZIP};
use paracloud_image::digest::Digest;
use paracloud_image::registry::{pull, push, ProgressFn};
use paracloud_image::{ImageDefaults, Reference, Store};
use paracloud_runtime::{InstanceConfig, Limits, Rootfs, Runtime, RuntimeConfig};
use serde::Serialize;

use crate::host;
use crate::stats::Summary;

#[derive(Debug, Clone)]
pub struct ImagesOptions {
    /// Layers of the image (its size is split evenly over them).
    pub layers: usize,
    /// Uncompressed megabytes of the whole image.
    pub megabytes: usize,
    /// Pull rounds (each: one Paracloud pull, one skopeo + umoci, in alternating order).
    pub rounds: usize,
    /// Instance starts per root filesystem.
    pub starts: usize,
}

#[derive(Debug, Serialize)]
pub struct ImagesReport {
    pub layers: usize,
    /// Bytes of the layer blobs (gzip) the registry serves.
    pub compressed_bytes: u64,
    /// Bytes of the layers unpacked.
    pub uncompressed_bytes: u64,
    pub paracloud_pull: Summary,
    pub skopeo_umoci: Summary,
    /// The skopeo copy part of the peer's time alone.
    pub skopeo_copy: Summary,
    /// skopeo + umoci over Paracloud (above 1: Paracloud is faster).
    pub pull_ratio: f64,
    pub start_layered: Summary,
    pub start_host: Summary,
    /// Layered over host (at most 1: the goal is met).
    pub start_ratio: f64,
    pub layered_lowerdirs: usize,
}

/// A registry server of the distribution for the run, on a port of its own.
struct RegistryServer {
    child: Child,
    port: u16,
}

impl RegistryServer {
    fn start(dir: &Path) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("registry.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("registry").display()
            ),
        )?;
        let log = fs::File::create(dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("docker-registry (apt-get install docker-registry)")?;
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Text-like content (compresses about as real files do) mixed with random bytes.
fn content(seed: &mut u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the ",
        "image ",
        "layer ",
        "paracloud ",
        "service ",
        "instance ",
        "return ",
        "static ",
        "const ",
        "fn ",
        "0x7f ",
        "ELF ",
        "lib ",
        "usr ",
        "share ",
        "doc ",
        "\n",
    ];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if (*seed >> 33).is_multiple_of(3) {
            out.extend_from_slice(&seed.to_le_bytes());
        } else {
            out.extend_from_slice(WORDS[(*seed >> 40) as usize % WORDS.len()].as_bytes());
        }
    }
    out.truncate(len);
    out
}

fn gzip_layer(store: &Store, files: &[(String, Vec<u8>, u32)]) -> Result<LayerBlob> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, name, &data[..])?;
    }
    let raw = tar.into_inner()?;
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw)?;
    let compressed = gz.finish()?;
    let (blob, size) = store.put_blob(&compressed[..], None)?;
    Ok(LayerBlob {
        blob,
        size,
        diff_id: Digest::of(&raw),
        media_type: LAYER_TAR_GZIP.into(),
    })
}

/// The image: `layers` gzip layers of files, and busybox (static) on top to run.
fn make_image(store: &Store, opts: &ImagesOptions) -> Result<(Digest, u64, u64)> {
    let per_layer = opts.megabytes * 1_000_000 / opts.layers.max(1);
    let file_size = 100_000;
    let mut seed = 42u64;
    let mut layers = Vec::new();
    let mut raw = 0u64;
    for l in 0..opts.layers {
        let files: Vec<(String, Vec<u8>, u32)> = (0..per_layer / file_size)
            .map(|i| {
                (
                    format!("usr/share/bench/layer{l}/file{i:05}"),
                    content(&mut seed, file_size),
                    0o644,
                )
            })
            .collect();
        raw += files.iter().map(|f| f.1.len() as u64).sum::<u64>();
        layers.push(gzip_layer(store, &files)?);
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox-static is needed (apt-get install busybox-static)")?;
    let bb = fs::read(busybox)?;
    raw += bb.len() as u64;
    layers.push(gzip_layer(store, &[("bin/busybox".into(), bb, 0o755)])?);
    let compressed = layers.iter().map(|l| l.size).sum();
    let defaults = ImageDefaults {
        cmd: vec!["/bin/busybox".into(), "true".into()],
        ..Default::default()
    };
    let digest = commit_image(store, &layers, &defaults, &[], None)?;
    Ok((digest, compressed, raw))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn drop_dir(path: &Path) {
    let _ = fs::remove_dir_all(path);
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

pub fn run(opts: &ImagesOptions, scratch: &Path) -> Result<ImagesReport> {
    let dir = scratch.join("images");
    fs::create_dir_all(&dir)?;
    for tool in ["skopeo", "umoci", "docker-registry"] {
        ensure!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is needed (apt-get install skopeo umoci docker-registry)"
        );
    }
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let registry = RegistryServer::start(&dir)?;
    let source = Store::open(dir.join("source"))?;
    eprintln!(
        "images: making a {} MB image of {} layers ...",
        opts.megabytes, opts.layers
    );
    let (digest, compressed, raw) = make_image(&source, opts)?;
    source.tag(&"bench:1".parse()?, &digest)?;
    let target: Reference = format!("127.0.0.1:{}/bench/layered:1", registry.port).parse()?;
    let quiet: ProgressFn = Arc::new(|_| {});
    tokio.block_on(push(&source, "bench:1", &target, None, quiet.clone()))?;

    let mut ours = Vec::new();
    let mut peer = Vec::new();
    let mut copy_only = Vec::new();
    let mut last_store = None;
    for round in 0..opts.rounds {
        crate::check_interrupted()?;
        let run_ours = |n: usize| -> Result<(f64, PathBuf)> {
            let root = dir.join(format!("pc-{n}"));
            drop_dir(&root);
            let store = Store::open(&root)?;
            let start = Instant::now();
            let pulled = tokio.block_on(pull(&store, &target, None, quiet.clone()))?;
            let took = ms(start.elapsed());
            ensure!(pulled == digest, "pulled {pulled}, pushed {digest}");
            Ok((took, root))
        };
        let run_peer = |n: usize| -> Result<(f64, f64)> {
            let layout = dir.join(format!("oci-{n}"));
            let bundle = dir.join(format!("bundle-{n}"));
            drop_dir(&layout);
            drop_dir(&bundle);
            let start = Instant::now();
            run_cmd(
                Command::new("skopeo")
                    .args(["copy", "--quiet", "--src-tls-verify=false"])
                    .arg(format!("docker://{target}"))
                    .arg(format!("oci:{}:1", layout.display())),
            )?;
            let copied = ms(start.elapsed());
            run_cmd(
                Command::new("umoci")
                    .args(["unpack", "--image"])
                    .arg(format!("{}:1", layout.display()))
                    .arg(&bundle),
            )?;
            let took = ms(start.elapsed());
            drop_dir(&layout);
            drop_dir(&bundle);
            Ok((took, copied))
        };
        // Alternate who goes first, so that neither always meets the colder caches.
        if round % 2 == 0 {
            let (t, root) = run_ours(round)?;
            ours.push(t);
            let (p, c) = run_peer(round)?;
            peer.push(p);
            copy_only.push(c);
            if let Some(old) = last_store.replace(root) {
                drop_dir(&old);
            }
        } else {
            let (p, c) = run_peer(round)?;
            peer.push(p);
            copy_only.push(c);
            let (t, root) = run_ours(round)?;
            ours.push(t);
            if let Some(old) = last_store.replace(root) {
                drop_dir(&old);
            }
        }
        eprintln!(
            "images: round {}: paracloud {:.0} ms, skopeo+umoci {:.0} ms",
            round + 1,
            ours[round],
            peer[round]
        );
    }
    let store_root = last_store.context("no round ran")?;
    let store = Store::open(&store_root)?;
    let image = store.image_by_digest(&digest)?;
    let (layered, hosted) = starts(opts, &dir, &image.layers)?;
    drop(registry);
    drop_dir(&dir);

    let paracloud_pull = Summary::of(&ours).context("no pull")?;
    let skopeo_umoci = Summary::of(&peer).context("no pull")?;
    let start_layered = Summary::of(&layered).context("no start")?;
    let start_host = Summary::of(&hosted).context("no start")?;
    Ok(ImagesReport {
        layers: image.layers.len(),
        compressed_bytes: compressed,
        uncompressed_bytes: raw,
        pull_ratio: skopeo_umoci.median_ms / paracloud_pull.median_ms,
        paracloud_pull,
        skopeo_umoci,
        skopeo_copy: Summary::of(&copy_only).context("no pull")?,
        start_ratio: start_layered.median_ms / start_host.median_ms,
        start_layered,
        start_host,
        layered_lowerdirs: image.layers.len(),
    })
}

/// Instance start (sandbox created to the command running: `Runtime::spawn` returns once it
/// has exec'd) from the layered image and from `host`, alternating, the same static busybox.
fn starts(opts: &ImagesOptions, dir: &Path, layers: &[PathBuf]) -> Result<(Vec<f64>, Vec<f64>)> {
    let cgroup_parent = format!("paracloud-bench-images-{}", std::process::id());
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let runtime = Runtime::new(RuntimeConfig {
        cgroup_root: "/sys/fs/cgroup".into(),
        cgroup_parent: cgroup_parent.clone(),
        helper_exe: std::env::current_exe().context("cannot find the bench binary")?,
    })?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox-static is needed")?;
    let mut layered = Vec::new();
    let mut hosted = Vec::new();
    let result = (|| -> Result<()> {
        for n in 0..opts.starts + 2 {
            crate::check_interrupted()?;
            for host_first in [n % 2 == 0, n % 2 != 0] {
                let (rootfs, argv0) = if host_first {
                    (
                        Rootfs::Host {
                            extra_paths: vec![],
                        },
                        busybox.to_owned(),
                    )
                } else {
                    (
                        Rootfs::Layers {
                            layers: layers.to_vec(),
                        },
                        "/bin/busybox".to_owned(),
                    )
                };
                let id = format!("img-{n}-{}", u8::from(host_first));
                let inst = dir.join(&id);
                fs::create_dir_all(&inst)?;
                let cfg = InstanceConfig {
                    id: id.clone(),
                    hostname: "bench".into(),
                    dir: inst.clone(),
                    rootfs,
                    argv: vec![argv0, "sleep".into(), "30".into()],
                    env: BTreeMap::from([("PATH".to_string(), "/bin".to_string())]),
                    working_dir: None,
                    user: None,
                    mounts: vec![],
                    hosts: vec![],
                    network: None,
                    limits: Limits::default(),
                    capabilities: vec![],
                    log_path: inst.join("output.log"),
                    owned: Vec::new(),
                    userns: None,
                    sandbox: Default::default(),
                };
                let start = Instant::now();
                let process = tokio.block_on(runtime.spawn(&cfg))?;
                let took = ms(start.elapsed());
                let _ = runtime.signal(&process, nix::sys::signal::Signal::SIGKILL);
                let _ = tokio.block_on(runtime.wait(&id, &process));
                let _ = runtime.cleanup(&id);
                drop_dir(&inst);
                // The first two rounds warm the caches and are not counted.
                if n >= 2 {
                    if host_first {
                        hosted.push(took);
                    } else {
                        layered.push(took);
                    }
                }
            }
        }
        Ok(())
    })();
    host::remove_cgroup_tree(&cgroup_parent);
    result?;
    Ok((layered, hosted))
}

pub fn markdown(r: &ImagesReport) -> String {
    let row = |name: &str, s: &Summary| {
        format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {} |\n",
            s.median_ms, s.p90_ms, s.min_ms, s.max_ms, s.runs
        )
    };
    let mut out = String::new();
    out.push_str(&format!(
        "## Images\n\nPull and unpack of an image of {} layers, {:.1} MB of gzip blobs ({:.1} MB unpacked), from a local registry (docker-registry on 127.0.0.1):\n\n",
        r.layers,
        r.compressed_bytes as f64 / 1e6,
        r.uncompressed_bytes as f64 / 1e6
    ));
    out.push_str(
        "| what | median ms | p90 ms | min ms | max ms | runs |\n|---|---|---|---|---|---|\n",
    );
    out.push_str(&row("paracloud pull (unpacked, synced)", &r.paracloud_pull));
    out.push_str(&row("skopeo copy + umoci unpack", &r.skopeo_umoci));
    out.push_str(&row("  of which skopeo copy", &r.skopeo_copy));
    out.push_str(&format!(
        "\nskopeo + umoci / paracloud: **{:.2}** (goal: at least 1)\n\n",
        r.pull_ratio
    ));
    out.push_str(&format!(
        "Instance start (sandbox created to command running), from the image ({} overlay lower layers) and from `host`:\n\n",
        r.layered_lowerdirs
    ));
    out.push_str("| root filesystem | median ms | p90 ms | min ms | max ms | runs |\n|---|---|---|---|---|---|\n");
    out.push_str(&row("layered image", &r.start_layered));
    out.push_str(&row("host", &r.start_host));
    out.push_str(&format!(
        "\nlayered / host: **{:.2}** (goal: at most 1)\n",
        r.start_ratio
    ));
    out
}
