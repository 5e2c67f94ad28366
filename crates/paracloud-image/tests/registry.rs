//! Pull and push against a real registry server (the distribution's `docker-registry`, one per
//! test), cross-checked with skopeo: round trips, chunked uploads, basic auth, a multi-arch
//! index, corrupt blobs and interrupted downloads.

#[path = "common/registry.rs"]
mod registry_server;

use std::fs;
use std::io::Write;
use std::process::Command;
use std::sync::Arc;

use paracloud_image::assemble::{commit_image, write_layer};
use paracloud_image::digest::Digest;
use paracloud_image::registries::Registries;
use paracloud_image::registry::{
    find, pull, pull_via, push, Auths, Credentials, Progress, ProgressFn, RegistryError,
};
use paracloud_image::{layout, ImageDefaults, Reference, Store, StoreError};
use registry_server::RegistryServer;

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("images")).unwrap();
    (dir, store)
}

fn file(tar: &mut tar::Builder<impl Write>, path: &str, content: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(content.len() as u64);
    tar.append_data(&mut h, path, content).unwrap();
}

/// An image of `layers` layers, each holding one file of `bytes` pseudo-random bytes.
fn image(store: &Store, name: &str, layers: usize, bytes: usize) -> Digest {
    let mut blobs = Vec::new();
    let mut seed = name.len() as u64 + 1;
    for i in 0..layers {
        let mut content = vec![0u8; bytes];
        for b in content.iter_mut() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (seed >> 56) as u8;
        }
        blobs.push(
            write_layer(store, |tar| {
                file(tar, &format!("layer{i}"), &content);
                Ok(())
            })
            .unwrap(),
        );
    }
    let defaults = ImageDefaults {
        cmd: vec!["/layer0".into()],
        ..Default::default()
    };
    let digest = commit_image(store, &blobs, &defaults, &[], None).unwrap();
    store.tag(&name.parse().unwrap(), &digest).unwrap();
    digest
}

fn quiet() -> ProgressFn {
    Arc::new(|_| {})
}

fn reference(s: &str) -> Reference {
    s.parse().unwrap()
}

fn skopeo_inspect(target: &str, creds: Option<&str>) -> serde_json::Value {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--creds", c]);
    }
    let out = cmd.arg(target).output().expect("skopeo is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn push_and_pull_round_trip_and_skopeo_sees_what_we_pushed() {
    let registry = RegistryServer::start(None);
    let (_a, source) = new_store();
    // One layer above the chunk size: sent in PATCH chunks; the others in one PUT.
    let digest = image(&source, "app:1", 3, 300_000);
    let big = image(&source, "big:1", 1, 9 << 20);
    let target = reference(&format!("{}/team/app:1", registry.host()));
    let rt = rt();
    let started = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = started.clone();
    let progress: ProgressFn = Arc::new(move |p| {
        if let Progress::Started { digest, .. } = p {
            seen.lock().unwrap().push(digest);
        }
    });
    assert_eq!(
        rt.block_on(push(&source, "app:1", &target, None, progress.clone()))
            .unwrap(),
        digest
    );
    assert_eq!(
        started.lock().unwrap().len(),
        4,
        "three layers and the config"
    );
    // Pushed again: the registry has every blob, none is sent.
    started.lock().unwrap().clear();
    rt.block_on(push(&source, "app:1", &target, None, progress))
        .unwrap();
    assert!(started.lock().unwrap().is_empty());
    let big_target = reference(&format!("{}/team/big:1", registry.host()));
    rt.block_on(push(&source, "big:1", &big_target, None, quiet()))
        .unwrap();

    let inspected = skopeo_inspect(&format!("docker://{target}"), None);
    assert_eq!(inspected["Digest"], digest.to_string());
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3);
    let inspected = skopeo_inspect(&format!("docker://{big_target}"), None);
    assert_eq!(inspected["Digest"], big.to_string());

    let (_b, dest) = new_store();
    let pulled = rt.block_on(pull(&dest, &target, None, quiet())).unwrap();
    assert_eq!(pulled, digest);
    let image = dest.image(&target.to_string()).unwrap();
    assert_eq!(image.layers.len(), 3);
    assert_eq!(
        fs::read(image.layers[2].join("layer2")).unwrap().len(),
        300_000
    );
    let pulled = rt
        .block_on(pull(&dest, &big_target, None, quiet()))
        .unwrap();
    assert_eq!(pulled, big);
    // Pull by digest too.
    let by_digest = reference(&format!("{}/team/app@{digest}", registry.host()));
    assert_eq!(
        rt.block_on(pull(&dest, &by_digest, None, quiet())).unwrap(),
        digest
    );
}

#[test]
fn basic_auth_is_answered_and_bad_credentials_are_named() {
    let registry = RegistryServer::start(Some(("alice", "s3cret")));
    let (_a, source) = new_store();
    image(&source, "app:1", 1, 1000);
    let target = reference(&format!("{}/app:1", registry.host()));
    let rt = rt();
    let e = rt
        .block_on(push(&source, "app:1", &target, None, quiet()))
        .unwrap_err();
    assert!(
        e.to_string().contains("asks for a user name and password"),
        "{e}"
    );
    let wrong = Credentials {
        username: "alice".into(),
        password: "nope".into(),
    };
    let e = rt
        .block_on(push(&source, "app:1", &target, Some(wrong), quiet()))
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    let right = Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    rt.block_on(push(
        &source,
        "app:1",
        &target,
        Some(right.clone()),
        quiet(),
    ))
    .unwrap();
    skopeo_inspect(&format!("docker://{target}"), Some("alice:s3cret"));
    let (_b, dest) = new_store();
    rt.block_on(pull(&dest, &target, Some(right), quiet()))
        .unwrap();
}

#[test]
fn a_multi_architecture_index_pulled_gives_this_machines_image() {
    let registry = RegistryServer::start(None);
    let (_a, source) = new_store();
    let ours = image(&source, "multi:1", 2, 10_000);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    layout::export(&source, &["multi:1".into()], &dir).unwrap();
    fs::remove_file(dir.join("manifest.json")).unwrap();
    // The same layers described for another architecture.
    let manifest: serde_json::Value =
        serde_json::from_slice(&source.read_blob(&ours).unwrap()).unwrap();
    let config_digest: Digest = manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&source.read_blob(&config_digest).unwrap()).unwrap();
    let this_arch = paracloud_image::assemble::this_architecture();
    let foreign = if this_arch == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    config["architecture"] = foreign.into();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        d
    };
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let foreign_config = put(&config_bytes);
    let mut foreign_manifest = manifest.clone();
    foreign_manifest["config"]["digest"] = foreign_config.to_string().into();
    foreign_manifest["config"]["size"] = config_bytes.len().into();
    let foreign_bytes = serde_json::to_vec(&foreign_manifest).unwrap();
    let foreign_digest = put(&foreign_bytes);
    let ours_len = source.read_blob(&ours).unwrap().len();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": foreign_digest.to_string(),
              "size": foreign_bytes.len(), "platform": { "os": "linux", "architecture": foreign } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": ours.to_string(),
              "size": ours_len, "platform": { "os": "linux", "architecture": this_arch } },
        ],
        "annotations": {},
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let index_digest = put(&index_bytes);
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{ "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": index_digest.to_string(), "size": index_bytes.len(),
                "annotations": { "org.opencontainers.image.ref.name": "multi" } }],
        }))
        .unwrap(),
    )
    .unwrap();
    let target = format!("{}/multi:1", registry.host());
    let out = Command::new("skopeo")
        .args(["copy", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", dir.display()))
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        raw["manifests"].as_array().unwrap().len(),
        2,
        "the registry serves an index"
    );

    // skopeo compresses the layers on the way, so the registry's manifests are its own: ours is
    // the one the index lists for this machine.
    let listed: Vec<(String, String)> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].as_str().unwrap().to_owned(),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = &listed.iter().find(|(arch, _)| arch == this_arch).unwrap().1;
    let (_b, dest) = new_store();
    let pulled = rt()
        .block_on(pull(&dest, &reference(&target), None, quiet()))
        .unwrap();
    assert_eq!(&pulled.to_string(), expected, "{listed:?}");
    let image = dest.image_by_digest(&pulled).unwrap();
    assert_eq!(image.config.architecture().to_string(), this_arch);
    assert_eq!(image.layers.len(), 2);
    assert!(
        !dest.has_blob(&foreign_config),
        "the other platform's config is not fetched"
    );
}

#[test]
fn a_blob_corrupted_in_the_registry_is_refused_and_never_stored() {
    let registry = RegistryServer::start(None);
    let (_a, source) = new_store();
    let digest = image(&source, "app:1", 2, 50_000);
    let target = reference(&format!("{}/app:1", registry.host()));
    let rt = rt();
    rt.block_on(push(&source, "app:1", &target, None, quiet()))
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&source.read_blob(&digest).unwrap()).unwrap();
    let layer: Digest = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let path = registry.blob_file(layer.hex());
    let mut bytes = fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let (_b, dest) = new_store();
    let e = rt
        .block_on(pull(&dest, &target, None, quiet()))
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::Store(StoreError::DigestMismatch { .. })),
        "{e}"
    );
    assert!(!dest.has_blob(&layer));
    assert!(
        dest.image(&target.to_string()).is_err(),
        "no image half pulled"
    );
    // Its download is gone (another layer's, cut short by the failure, may stay to be resumed).
    assert!(!dest.root().join("partial").join(layer.hex()).exists());
}

#[test]
fn an_interrupted_download_resumes_and_a_wrong_partial_is_thrown_away() {
    let registry = RegistryServer::start(None);
    let (_a, source) = new_store();
    let digest = image(&source, "app:1", 1, 2_000_000);
    let target = reference(&format!("{}/app:1", registry.host()));
    let rt = rt();
    rt.block_on(push(&source, "app:1", &target, None, quiet()))
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&source.read_blob(&digest).unwrap()).unwrap();
    let layer: Digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let whole = source.read_blob(&layer).unwrap();

    // What an interrupted pull leaves: the first part of the layer.
    let (_b, dest) = new_store();
    fs::create_dir_all(dest.root().join("partial")).unwrap();
    let partial = dest.root().join("partial").join(layer.hex());
    fs::write(&partial, &whole[..700_000]).unwrap();
    let moved = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = moved.clone();
    let the_layer = layer.clone();
    let progress: ProgressFn = Arc::new(move |p| {
        if let Progress::Bytes { done, digest } = p {
            if digest == the_layer {
                seen.lock().unwrap().push(done);
            }
        }
    });
    assert_eq!(
        rt.block_on(pull(&dest, &target, None, progress)).unwrap(),
        digest
    );
    let first = moved.lock().unwrap()[0];
    assert!(
        first > 700_000,
        "resumed after the part it had, not from 0: {first}"
    );
    assert!(!partial.exists());

    // A partial that is not the blob's beginning: the result fails its check and goes.
    let (_c, dest) = new_store();
    fs::create_dir_all(dest.root().join("partial")).unwrap();
    let partial = dest.root().join("partial").join(layer.hex());
    fs::write(&partial, vec![0u8; 700_000]).unwrap();
    let e = rt
        .block_on(pull(&dest, &target, None, quiet()))
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::Store(StoreError::DigestMismatch { .. })),
        "{e}"
    );
    assert!(!partial.exists() && !dest.has_blob(&layer));
    // The next pull starts afresh and succeeds.
    assert_eq!(
        rt.block_on(pull(&dest, &target, None, quiet())).unwrap(),
        digest
    );
}

/// base64url without padding, as JWTs are written.
fn b64url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

fn openssl(args: &[&str], dir: &std::path::Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A token service as registries use them: basic credentials in, a JWT signed with the key whose
/// certificate the registry trusts out, granting the scope asked for.
fn token_service(dir: std::path::PathBuf) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut authorized = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                // "alice:s3cret"
                if line
                    .to_ascii_lowercase()
                    .starts_with("authorization: basic ywxpy2u6cznjcmv0")
                {
                    authorized = true;
                }
            }
            if !authorized {
                let _ = stream.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                continue;
            }
            let target = request_line.split_whitespace().nth(1).unwrap_or("");
            let scope = target
                .split(['?', '&'])
                .find_map(|p| p.strip_prefix("scope="))
                .unwrap_or("")
                .replace("%3A", ":")
                .replace("%2C", ",")
                .replace("%2F", "/");
            let parts: Vec<&str> = scope.split(':').collect();
            let (name, actions) = (parts[1], parts[2].split(',').collect::<Vec<_>>());
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let der = openssl(&["x509", "-in", "cert.pem", "-outform", "DER"], &dir);
            let x5c = {
                // Standard base64 for x5c.
                b64url(&der).replace('-', "+").replace('_', "/") + ["", "==", "="][der.len() % 3]
            };
            let header = serde_json::json!({ "typ": "JWT", "alg": "RS256", "x5c": [x5c] });
            let claims = serde_json::json!({
                "iss": "test-issuer", "sub": "alice", "aud": "test-registry",
                "exp": now + 300, "nbf": now - 10, "iat": now - 10, "jti": format!("t{now}"),
                "access": [{ "type": "repository", "name": name, "actions": actions }],
            });
            let signing_input = format!(
                "{}.{}",
                b64url(&serde_json::to_vec(&header).unwrap()),
                b64url(&serde_json::to_vec(&claims).unwrap())
            );
            std::fs::write(dir.join("input"), &signing_input).unwrap();
            let signature = openssl(&["dgst", "-sha256", "-sign", "key.pem", "input"], &dir);
            let token = format!("{signing_input}.{}", b64url(&signature));
            let body = serde_json::json!({ "token": token }).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (port, served)
}

#[test]
fn bearer_tokens_are_fetched_from_the_token_service_and_used() {
    let dir = tempfile::Builder::new()
        .prefix("paracloud-test-registry-")
        .tempdir()
        .unwrap();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-subj",
            "/CN=token-issuer",
        ],
        dir.path(),
    );
    let (token_port, served) = token_service(dir.path().to_owned());
    let auth = format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
        dir.path().join("cert.pem").display()
    );
    let registry = RegistryServer::start_in(dir, auth);
    let (_a, source) = new_store();
    let digest = image(&source, "app:1", 2, 20_000);
    let target = reference(&format!("{}/app:1", registry.host()));
    let rt = rt();
    let e = rt
        .block_on(push(&source, "app:1", &target, None, quiet()))
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    let alice = Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    rt.block_on(push(
        &source,
        "app:1",
        &target,
        Some(alice.clone()),
        quiet(),
    ))
    .unwrap();
    let (_b, dest) = new_store();
    assert_eq!(
        rt.block_on(pull(&dest, &target, Some(alice), quiet()))
            .unwrap(),
        digest
    );
    assert!(
        served.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "tokens for push and pull"
    );
}

#[test]
fn a_registry_over_tls_is_trusted_through_the_stores_certs_d_and_never_downgraded() {
    let dir = tempfile::Builder::new()
        .prefix("paracloud-test-registry-")
        .tempdir()
        .unwrap();
    let p = dir.path();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=paracloud-test-ca",
        ],
        p,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        p,
    );
    fs::write(
        p.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
        p,
    );
    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        p.join("cert.pem").display(),
        p.join("key.pem").display()
    );
    let ca = p.join("ca.crt");
    let registry = RegistryServer::start_with(dir, &tls, String::new());
    let (_a, source) = new_store();
    let digest = image(&source, "app:1", 2, 30_000);
    let target = reference(&format!("{}/secure/app:1", registry.host()));
    let rt = rt();
    // Not trusted yet: an error, not a fall back to plain HTTP.
    let e = rt
        .block_on(push(&source, "app:1", &target, None, quiet()))
        .unwrap_err();
    assert!(
        matches!(
            e,
            RegistryError::Tls {
                certificate: true,
                ..
            }
        ),
        "{e}"
    );
    let trust = |store: &Store| {
        let certs = store.root().join("certs.d").join(registry.host());
        fs::create_dir_all(&certs).unwrap();
        fs::copy(&ca, certs.join("ca.crt")).unwrap();
    };
    trust(&source);
    rt.block_on(push(&source, "app:1", &target, None, quiet()))
        .unwrap();
    let inspected = skopeo_inspect(&format!("docker://{target}"), None);
    assert_eq!(inspected["Digest"], digest.to_string());
    let (_b, dest) = new_store();
    trust(&dest);
    assert_eq!(
        rt.block_on(pull(&dest, &target, None, quiet())).unwrap(),
        digest
    );
}

#[test]
fn docker_hub_names_are_pulled_through_mirrors_in_order_and_rewritten() {
    let mirror = RegistryServer::start(None);
    let (_a, source) = new_store();
    let web = image(&source, "web:1", 2, 1000);
    let tool = image(&source, "tool:2", 1, 1000);
    let rt = rt();
    let host = mirror.host();
    rt.block_on(push(
        &source,
        "web:1",
        &reference(&format!("{host}/library/web:1")),
        None,
        quiet(),
    ))
    .unwrap();
    rt.block_on(push(
        &source,
        "tool:2",
        &reference(&format!("{host}/hub/tool:2")),
        None,
        quiet(),
    ))
    .unwrap();
    // A port nothing listens on: the first mirror cannot be reached, the second is tried.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let registries = Registries::parse(&format!(
        r#"
[registry."docker.io"]
mirrors = ["127.0.0.1:{dead}", {{ location = "{host}", insecure = true }}]
mirrors_only = true
[registry."docker.io/library/tool"]
mirrors = ["{host}/hub/tool"]
mirrors_only = true
"#
    ))
    .unwrap();
    let (dest_dir, dest) = new_store();
    let auths = Auths::new();
    // `web:1` is docker.io/library/web:1, found at the second mirror, named as Docker shows it.
    let (found, digest) = rt
        .block_on(find(&dest, &reference("web:1"), &registries, &auths))
        .unwrap();
    assert_eq!(
        (found.host.as_str(), digest.clone()),
        (host.as_str(), web.clone())
    );
    assert!(!dest.has_blob(&web), "finding an image stores nothing");
    let pulled = rt
        .block_on(pull_via(
            &dest,
            &reference("docker.io/library/web:1"),
            &registries,
            &auths,
            quiet(),
        ))
        .unwrap();
    assert_eq!(pulled, web);
    assert_eq!(dest.lookup("web:1").unwrap(), web);
    assert_eq!(dest.lookup("docker.io/library/web:1").unwrap(), web);
    // A prefix rewritten: library/tool lives under hub/tool on the mirror.
    let pulled = rt
        .block_on(pull_via(
            &dest,
            &reference("tool:2"),
            &registries,
            &auths,
            quiet(),
        ))
        .unwrap();
    assert_eq!(pulled, tool);
    // Nowhere: each source's failure is told, in order.
    let e = rt
        .block_on(pull_via(
            &dest,
            &reference("bitnami/redis"),
            &registries,
            &auths,
            quiet(),
        ))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("docker.io/bitnami/redis:latest cannot be pulled from any of its sources"),
        "{e}"
    );
    let unreachable = e
        .find(&format!("127.0.0.1:{dead}/bitnami/redis: cannot reach"))
        .expect(&e);
    let missing = e
        .find(&format!(
            "{host}/bitnami/redis: registry {host} has no manifest"
        ))
        .expect(&e);
    assert!(unreachable < missing, "{e}");
    drop(dest_dir);
}
