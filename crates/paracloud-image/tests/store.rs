//! The store on real files: blobs checked on every write, layers with whiteouts stacked by the
//! kernel's overlayfs, corruption detected, garbage collected, and images made by other tools
//! (umoci, skopeo) and by our own writer imported with every blob checked.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::write::GzEncoder;
use paracloud_image::assemble::{commit_image, write_layer, LayerBlob, LAYER_TAR_GZIP};
use paracloud_image::build::BuildState;
use paracloud_image::digest::Digest;
use paracloud_image::layout;
use paracloud_image::{ImageDefaults, Reference, Store, StoreError};

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("images")).unwrap();
    (dir, store)
}

fn reference(s: &str) -> Reference {
    s.parse().unwrap()
}

fn file(tar: &mut tar::Builder<impl Write>, path: &str, content: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(content.len() as u64);
    tar.append_data(&mut h, path, content.as_bytes()).unwrap();
}

fn dir(tar: &mut tar::Builder<impl Write>, path: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    tar.append_data(&mut h, path, std::io::empty()).unwrap();
}

/// A gzip layer written straight as a blob (as registries serve them).
fn gzip_layer(store: &Store, fill: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> LayerBlob {
    let mut tar = tar::Builder::new(Vec::new());
    fill(&mut tar);
    let raw = tar.into_inner().unwrap();
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let compressed = gz.finish().unwrap();
    let (blob, size) = store.put_blob(&compressed[..], None).unwrap();
    LayerBlob {
        blob,
        size,
        diff_id: Digest::of(&raw),
        media_type: LAYER_TAR_GZIP.into(),
    }
}

/// Two layers: the second deletes /a/x (whiteout) and replaces /b's content (opaque directory).
fn two_layer_image(store: &Store) -> Digest {
    let base = write_layer(store, |tar| {
        for d in ["a", "b"] {
            dir(tar, d);
        }
        file(tar, "a/x", "x\n");
        file(tar, "a/y", "y\n");
        file(tar, "b/old", "old\n");
        file(tar, "keep", "keep\n");
        Ok(())
    })
    .unwrap();
    let top = gzip_layer(store, |tar| {
        dir(tar, "a");
        file(tar, "a/.wh.x", "");
        dir(tar, "b");
        file(tar, "b/.wh..wh..opq", "");
        file(tar, "b/new", "new\n");
    });
    let defaults = ImageDefaults {
        cmd: vec!["/bin/true".into()],
        ..Default::default()
    };
    let digest = commit_image(
        store,
        &[base, top],
        &defaults,
        &["base".into(), "top".into()],
        None,
    )
    .unwrap();
    store.tag(&reference("layered:1"), &digest).unwrap();
    digest
}

fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_never_kept() {
    let (_dir, store) = new_store();
    let wrong = Digest::of(b"something else");
    let e = store.put_blob(&b"content"[..], Some(&wrong)).unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    assert!(!store.has_blob(&wrong));
    assert!(!store.has_blob(&Digest::of(b"content")));
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    let (d, size) = store.put_blob(&b"content"[..], None).unwrap();
    assert_eq!((d.clone(), size), (Digest::of(b"content"), 7));
    assert_eq!(store.read_blob(&d).unwrap(), b"content");
}

#[test]
fn whiteouts_and_opaque_directories_become_overlay_ones_and_the_kernel_honours_them() {
    let (tmp, store) = new_store();
    two_layer_image(&store);
    let image = store.image("layered:1").unwrap();
    assert_eq!(image.layers.len(), 2);
    let top = &image.layers[1];
    let whiteout = fs::symlink_metadata(top.join("a/x")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert_eq!(
        xattr::get(top.join("b"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    // Stacked by overlayfs as instances get them: lower layers shared, a private upper one.
    let merged = tmp.path().join("merged");
    let upper = tmp.path().join("upper");
    let work = tmp.path().join("work");
    for d in [&merged, &upper, &work] {
        fs::create_dir(d).unwrap();
    }
    let data = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        image.layers[1].display(),
        image.layers[0].display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .unwrap();
    let seen = listing(&merged);
    nix::mount::umount(&merged).unwrap();
    assert_eq!(seen, ["a", "a/y", "b", "b/new", "keep"]);
}

#[test]
fn a_corrupt_layer_blob_is_detected_and_never_unpacked() {
    let (_dir, store) = new_store();
    let digest = two_layer_image(&store);
    let image = store.image_by_digest(&digest).unwrap();
    let layer_blob: Digest = image.manifest.layers()[0]
        .digest()
        .to_string()
        .parse()
        .unwrap();
    // Pruning nothing keeps everything; then the unpacked layer goes and its blob is damaged.
    assert_eq!(store.prune(&[]).unwrap().blobs, 0);
    fs::remove_dir_all(&image.layers[0]).unwrap();
    let path = store.blob_path(&layer_blob);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x55;
    fs::write(&path, bytes).unwrap();
    let e = store.image("layered:1").unwrap_err();
    assert!(matches!(e, StoreError::Unpack { .. }), "{e}");
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert!(
        !image.layers[0].exists(),
        "a layer that failed its check is never under its name"
    );
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn prune_keeps_what_references_and_pins_need_and_removes_the_rest() {
    let (_dir, store) = new_store();
    let digest = two_layer_image(&store);
    let blobs = || {
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count()
    };
    let stray = store.put_blob_bytes(b"nobody needs me").unwrap();
    assert_eq!(blobs(), 5);
    // A download cut short is garbage too once the user asks for space.
    fs::create_dir_all(store.root().join("partial")).unwrap();
    fs::write(store.root().join("partial").join(stray.hex()), b"half").unwrap();
    let report = store.prune(&[]).unwrap();
    assert_eq!((report.blobs, report.layers), (1, 0));
    assert!(!store.has_blob(&stray));
    assert_eq!(
        fs::read_dir(store.root().join("partial")).unwrap().count(),
        0
    );
    assert_eq!(store.remove("layered:1").unwrap(), ["layered:1"]);
    // Pinned by a service: kept though no name points at it.
    assert_eq!(store.prune(std::slice::from_ref(&digest)).unwrap().blobs, 0);
    let report = store.prune(&[]).unwrap();
    assert_eq!((report.blobs, report.layers), (4, 2));
    assert!(matches!(
        store.image_by_digest(&digest),
        Err(StoreError::MissingBlob(_))
    ));
    assert!(matches!(
        store.image("layered:1"),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn prune_drops_the_build_cache_entries_whose_layers_it_removed_and_keeps_the_others() {
    let (_dir, store) = new_store();
    two_layer_image(&store);
    let from = BuildState::from_image(&store, "layered:1").unwrap();
    let step = BuildState {
        key: from.next_key("RUN true", None),
        ..from
    };
    store.build_cache_put(&step).unwrap();
    store.prune(&[]).unwrap();
    assert!(store.build_cache_get(&step.key).is_some());
    store.remove("layered:1").unwrap();
    store.prune(&[]).unwrap();
    assert!(store.build_cache_get(&step.key).is_none());
    assert_eq!(
        fs::read_dir(store.root().join("build-cache"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn what_a_crash_leaves_in_tmp_is_gone_when_the_store_opens() {
    let (dir, store) = new_store();
    fs::write(store.root().join("tmp/blob-half-written"), b"half").unwrap();
    fs::create_dir(store.root().join("tmp/layer-half-unpacked")).unwrap();
    let store = Store::open(dir.path().join("images")).unwrap();
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Checks every blob of an OCI layout against its name.
fn check_layout_digests(layout: &Path) -> usize {
    let mut n = 0;
    for entry in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let bytes = fs::read(entry.path()).unwrap();
        assert_eq!(
            Digest::of(&bytes).hex(),
            entry.file_name().to_str().unwrap()
        );
        n += 1;
    }
    n
}

#[test]
fn an_umoci_layout_with_a_whiteout_imports_with_every_blob_checked() {
    assert!(have("umoci"), "umoci is installed (.ci/run installs it)");
    let tmp = tempfile::tempdir().unwrap();
    let layout_dir = tmp.path().join("layout");
    let bundle = tmp.path().join("bundle");
    let l = layout_dir.display().to_string();
    run(Command::new("umoci").args(["init", "--layout", &l]));
    run(Command::new("umoci").args(["new", "--image", &format!("{l}:v1")]));
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &format!("{l}:v1")])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(rootfs.join("etc/one"), "1\n").unwrap();
    fs::write(rootfs.join("etc/two"), "2\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--refresh-bundle", "--image", &format!("{l}:v1")])
        .arg(&bundle));
    fs::remove_file(rootfs.join("etc/one")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &format!("{l}:v1")])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{l}:v1"),
        "--config.cmd",
        "/bin/serve",
        "--config.workingdir",
        "/srv",
    ]));
    assert!(check_layout_digests(&layout_dir) >= 5);

    let (_dir, store) = new_store();
    // umoci names the image by its tag alone: a name is asked for.
    let e = layout::import(&store, &layout_dir, None).unwrap_err();
    assert!(e.to_string().contains("-t web:v1"), "{e}");
    let imported = layout::import(&store, &layout_dir, Some(&reference("umoci-made:v1"))).unwrap();
    assert_eq!(imported[0].reference.as_deref(), Some("umoci-made:v1"));
    let image = store.image("umoci-made:v1").unwrap();
    let top = image.layers.last().unwrap();
    let wh = fs::symlink_metadata(top.join("etc/one")).unwrap();
    assert!(
        wh.file_type().is_char_device(),
        "the deletion of etc/one is a whiteout"
    );
    let defaults = ImageDefaults::from_config(&image.config);
    assert_eq!(defaults.cmd, ["/bin/serve"]);
    assert_eq!(defaults.working_dir.as_deref(), Some("/srv"));
    for layer in image.manifest.layers() {
        let d: Digest = layer.digest().to_string().parse().unwrap();
        assert_eq!(Digest::of(&store.read_blob(&d).unwrap()), d);
    }
}

#[test]
fn a_multi_architecture_index_yields_this_machines_image() {
    let (_dir, source) = new_store();
    let digest = two_layer_image(&source);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("single");
    layout::export(&source, &["layered:1".into()], &out).unwrap();
    // An index listing another platform first, then ours, as registries serve multi-arch images.
    let other = source
        .put_blob_bytes(br#"{"schemaVersion":2,"layers":[]}"#)
        .unwrap();
    let ours = source.read_blob(&digest).unwrap();
    let this_arch = paracloud_image::assemble::this_architecture();
    let foreign = if this_arch == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other.to_string(), "size": 31,
              "platform": { "os": "linux", "architecture": foreign } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest.to_string(), "size": ours.len(),
              "platform": { "os": "linux", "architecture": this_arch } },
        ],
    });
    let nested_bytes = serde_json::to_vec(&nested).unwrap();
    let nested_digest = Digest::of(&nested_bytes);
    fs::write(
        out.join("blobs/sha256").join(nested_digest.hex()),
        &nested_bytes,
    )
    .unwrap();
    fs::write(
        out.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{ "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": nested_digest.to_string(), "size": nested_bytes.len(),
                "annotations": { "org.opencontainers.image.ref.name": "multi.example/app:2" } }],
        }))
        .unwrap(),
    )
    .unwrap();
    // No manifest.json: this is a pure OCI layout.
    fs::remove_file(out.join("manifest.json")).unwrap();
    let (_d2, store) = new_store();
    let imported = layout::import(&store, &out, None).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(
        imported[0].reference.as_deref(),
        Some("multi.example/app:2")
    );
    assert_eq!(imported[0].digest, digest);
    assert!(
        !store.has_blob(&other),
        "the other platform's manifest is not fetched"
    );
}

#[test]
fn docker_save_archives_old_and_new_and_oci_archives_round_trip() {
    let (_dir, source) = new_store();
    let digest = two_layer_image(&source);
    let tmp = tempfile::tempdir().unwrap();
    // Ours: an OCI layout that is also a `docker save` archive (the newer layout).
    let archive = tmp.path().join("image.tar");
    layout::export(&source, &["layered:1".into()], &archive).unwrap();
    let (_d2, store) = new_store();
    let imported = layout::import(&store, &archive, None).unwrap();
    assert_eq!(
        (imported[0].reference.as_deref(), &imported[0].digest),
        (Some("layered:1"), &digest)
    );
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);

    // skopeo's docker-archive: the legacy layout (manifest.json, a tar per layer, config by id).
    assert!(have("skopeo"), "skopeo is installed (.ci/run installs it)");
    let oci_dir = tmp.path().join("oci");
    layout::export(&source, &["layered:1".into()], &oci_dir).unwrap();
    let legacy = tmp.path().join("legacy.tar");
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:1", oci_dir.display()),
        &format!("docker-archive:{}:legacy/app:3", legacy.display()),
    ]));
    let listed = run(Command::new("tar").arg("tf").arg(&legacy));
    assert!(listed.lines().any(|l| l == "manifest.json"), "{listed}");
    let (_d3, store) = new_store();
    let imported = layout::import(&store, &legacy, None).unwrap();
    assert_eq!(imported[0].reference.as_deref(), Some("legacy/app:3"));
    let image = store.image("legacy/app:3").unwrap();
    assert_eq!(
        listing_of_layers(&image.layers),
        listing_of_layers(&source.image("layered:1").unwrap().layers)
    );
    // And skopeo reads what we export.
    let inspected =
        run(Command::new("skopeo").args(["inspect", &format!("oci:{}:1", oci_dir.display())]));
    let v: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
}

fn listing_of_layers(layers: &[PathBuf]) -> Vec<Vec<String>> {
    layers.iter().map(|l| listing(l)).collect()
}

#[test]
fn zstd_layers_made_by_skopeo_import_and_unpack() {
    assert!(have("skopeo"), "skopeo is installed (.ci/run installs it)");
    let (_dir, source) = new_store();
    two_layer_image(&source);
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    layout::export(&source, &["layered:1".into()], &plain).unwrap();
    let zstd = tmp.path().join("zstd");
    run(Command::new("skopeo").args([
        "copy",
        "--dest-compress-format",
        "zstd",
        &format!("oci:{}:1", plain.display()),
        &format!("oci:{}:1", zstd.display()),
    ]));
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        &format!("oci:{}:1", zstd.display()),
    ]));
    assert!(raw.contains("tar+zstd"), "{raw}");
    check_layout_digests(&zstd);
    let (_d2, store) = new_store();
    layout::import(&store, &zstd, Some(&reference("zstd:1"))).unwrap();
    let image = store.image("zstd:1").unwrap();
    assert_eq!(
        listing_of_layers(&image.layers),
        listing_of_layers(&source.image("layered:1").unwrap().layers)
    );
}
