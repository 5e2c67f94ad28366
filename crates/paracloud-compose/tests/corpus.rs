//! The golden corpus: each `tests/corpus/NAME/compose.yaml` reads as the manifest its
//! `expected.toml` describes, and Docker's own `docker-compose config` reads it the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use paracloud_compose::{parse, Converted, Host};
use paracloud_manifest::{FileSystem, Image, Manifest, Origin, VolumeMount};

/// The real filesystem: these tests read the corpus from disk.
struct Disk;

impl FileSystem for Disk {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
}

impl Host for Disk {
    fn read_to_string(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

/// The environment every case is read with (never the test process's own).
fn env() -> BTreeMap<String, String> {
    BTreeMap::from([("HOME".to_owned(), "/home/corpus".to_owned())])
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("compose.yaml").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no cases under {}", root.display());
    dirs
}

fn convert(dir: &Path) -> Converted {
    let source = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    let origin = Origin {
        file: "compose.yaml".into(),
        base_dir: dir.to_path_buf(),
    };
    parse(&source, &origin, &env(), &Disk).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn expected(dir: &Path) -> Manifest {
    let source = std::fs::read_to_string(dir.join("expected.toml")).unwrap();
    let origin = Origin {
        file: "expected.toml".into(),
        base_dir: dir.to_path_buf(),
    };
    paracloud_manifest::parse(&source, &origin, &Disk)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

#[test]
fn each_compose_file_reads_as_its_expected_manifest() {
    for dir in cases() {
        let converted = convert(&dir);
        assert_eq!(converted.manifest, expected(&dir), "{}", dir.display());
        // The TOML the reader wrote says the same.
        let origin = Origin {
            file: "converted.toml".into(),
            base_dir: dir.clone(),
        };
        let again = paracloud_manifest::parse(&converted.toml, &origin, &Disk).unwrap();
        assert_eq!(again, converted.manifest, "{}", dir.display());
    }
}

/// What both readings must agree on, for one service.
#[derive(Debug, PartialEq)]
struct Seen {
    image: String,
    entrypoint: Vec<String>,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    /// Container ports, published or not.
    ports: BTreeSet<u16>,
    /// (host port, container port) of the published ones.
    published: BTreeSet<(u16, u16)>,
    /// (named volume or absolute host path, target, read-only).
    volumes: BTreeSet<(String, String, bool)>,
    /// Dependency and condition (`service_started`, `service_healthy`,
    /// `service_completed_successfully`).
    depends_on: BTreeMap<String, String>,
    /// Networks and the service's aliases on each (`default` when it names none).
    networks: BTreeMap<String, Vec<String>>,
    /// Where tmpfs mounts are.
    tmpfs: BTreeSet<String>,
}

fn ours(manifest: &Manifest) -> BTreeMap<String, Seen> {
    let condition = |c: &paracloud_manifest::DependsCondition| match c {
        paracloud_manifest::DependsCondition::Started => "service_started".to_owned(),
        paracloud_manifest::DependsCondition::Completed => {
            "service_completed_successfully".to_owned()
        }
        paracloud_manifest::DependsCondition::Healthy => "service_healthy".to_owned(),
    };
    manifest
        .services
        .iter()
        .map(|(name, s)| {
            let image = match &s.image {
                Image::Stored { reference, .. } => reference.clone(),
                Image::Build { context, .. } => format!("build:{}", context.display()),
                other => panic!("unexpected image {other:?}"),
            };
            let volumes = s
                .volumes
                .iter()
                .map(|v| match v {
                    VolumeMount::Named {
                        name,
                        target,
                        read_only,
                    } => (name.clone(), target.clone(), *read_only),
                    VolumeMount::Bind {
                        source,
                        target,
                        read_only,
                    } => (source.display().to_string(), target.clone(), *read_only),
                })
                .collect();
            let seen = Seen {
                image,
                entrypoint: s.entrypoint.clone(),
                command: s.command.clone(),
                env: s.env.clone(),
                ports: s.ports.iter().map(|p| p.port).collect(),
                published: s
                    .ports
                    .iter()
                    .filter_map(|p| p.publish.map(|a| (a.port(), p.port)))
                    .collect(),
                volumes,
                depends_on: s
                    .depends_on
                    .iter()
                    .map(|(k, c)| (k.clone(), condition(c)))
                    .collect(),
                networks: manifest
                    .networks_of(name)
                    .into_iter()
                    .map(|n| {
                        let aliases = s.networks.get(n).map(|m| m.aliases.clone());
                        (n.to_owned(), aliases.unwrap_or_default())
                    })
                    .collect(),
                tmpfs: s.sandbox.tmpfs.iter().map(|t| t.target.clone()).collect(),
            };
            (name.clone(), seen)
        })
        .collect()
}

/// `docker-compose config`'s normalised file, read the same way.
fn docker(dir: &Path, config: &str) -> BTreeMap<String, Seen> {
    use serde_yaml_ng::Value;
    let root: Value = serde_yaml_ng::from_str(config).unwrap();
    // docker-compose writes `$` escaped again, as `$$`.
    let text = |v: &Value| -> String {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => panic!("not a scalar: {other:?}"),
        };
        s.replace("$$", "$")
    };
    let words = |v: Option<&Value>| -> Vec<String> {
        match v {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items.iter().map(text).collect(),
            Some(v) => shell_words::split(&text(v)).unwrap(),
        }
    };
    let mut out = BTreeMap::new();
    for (name, s) in root["services"].as_mapping().unwrap() {
        let get = |k: &str| s.get(k);
        let image = match get("build") {
            Some(build) => format!("build:{}", text(&build["context"])),
            None => text(&s["image"]),
        };
        let env = match get("environment") {
            Some(Value::Mapping(m)) => m.iter().map(|(k, v)| (text(k), text(v))).collect(),
            None => BTreeMap::new(),
            other => panic!("environment {other:?}"),
        };
        let mut ports = BTreeSet::new();
        let mut published = BTreeSet::new();
        for port in get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            match port {
                Value::Mapping(_) => {
                    let target: u16 = text(&port["target"]).parse().unwrap();
                    ports.insert(target);
                    if let Some(p) = port.get("published") {
                        published.insert((text(p).parse().unwrap(), target));
                    }
                }
                _ => {
                    let spec = text(port);
                    let spec = spec.trim_end_matches("/tcp").trim_end_matches("/udp");
                    let parts: Vec<&str> = spec.split(':').collect();
                    let target: u16 = parts[parts.len() - 1].parse().unwrap();
                    ports.insert(target);
                    if parts.len() >= 2 && !parts[parts.len() - 2].is_empty() {
                        published.insert((parts[parts.len() - 2].parse().unwrap(), target));
                    }
                }
            }
        }
        for port in get("expose")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            ports.insert(text(port).trim_end_matches("/tcp").parse().unwrap());
        }
        let mut volumes = BTreeSet::new();
        let mut tmpfs = BTreeSet::new();
        for v in get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if v.get("type").map(text).as_deref() == Some("tmpfs") {
                tmpfs.insert(text(&v["target"]));
                continue;
            }
            let (source, target, read_only) = match v {
                Value::Mapping(_) => (
                    text(&v["source"]),
                    text(&v["target"]),
                    v.get("read_only")
                        .is_some_and(|r| r.as_bool() == Some(true)),
                ),
                _ => {
                    let spec = text(v);
                    let parts: Vec<&str> = spec.split(':').collect();
                    (
                        parts[0].to_owned(),
                        parts[1].to_owned(),
                        parts.get(2) == Some(&"ro"),
                    )
                }
            };
            // A manifest's volume names are DNS labels (docs/compose.md).
            let source = if source.starts_with('/') {
                source
            } else {
                source.replace('_', "-")
            };
            volumes.insert((source, target, read_only));
        }
        match get("tmpfs") {
            Some(Value::Sequence(items)) => {
                for t in items {
                    tmpfs.insert(text(t).split(':').next().unwrap().to_owned());
                }
            }
            Some(t) => {
                tmpfs.insert(text(t).split(':').next().unwrap().to_owned());
            }
            None => {}
        }
        // Secrets and configs are the files, bound read-only.
        for (key, dir) in [("secrets", "/run/secrets/"), ("configs", "/")] {
            for item in get(key).and_then(Value::as_sequence).into_iter().flatten() {
                let (source, target) = match item {
                    Value::Mapping(_) => (text(&item["source"]), item.get("target").map(text)),
                    _ => (text(item), None),
                };
                let target = target.unwrap_or_else(|| source.clone());
                let target = match target.starts_with('/') {
                    true => target,
                    false => format!("{dir}{target}"),
                };
                volumes.insert((text(&root[key][source.as_str()]["file"]), target, true));
            }
        }
        let networks = match get("networks") {
            Some(Value::Mapping(m)) => m
                .iter()
                .map(|(k, v)| {
                    let aliases = v
                        .get("aliases")
                        .and_then(Value::as_sequence)
                        .map(|a| a.iter().map(text).collect())
                        .unwrap_or_default();
                    (text(k), aliases)
                })
                .collect(),
            Some(Value::Sequence(items)) => items.iter().map(|n| (text(n), Vec::new())).collect(),
            None => BTreeMap::from([("default".to_owned(), Vec::new())]),
            other => panic!("networks {other:?} in {}", dir.display()),
        };
        let depends_on = match get("depends_on") {
            Some(Value::Mapping(m)) => m
                .iter()
                .map(|(k, v)| (text(k), text(&v["condition"])))
                .collect(),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|k| (text(k), "service_started".to_owned()))
                .collect(),
            None => BTreeMap::new(),
            other => panic!("depends_on {other:?} in {}", dir.display()),
        };
        let seen = Seen {
            image,
            entrypoint: words(get("entrypoint")),
            command: words(get("command")),
            env,
            ports,
            published,
            volumes,
            depends_on,
            networks,
            tmpfs,
        };
        out.insert(text(name), seen);
    }
    out
}

#[test]
fn docker_compose_reads_each_case_as_paracloud_does() {
    let Ok(version) = Command::new("docker-compose").arg("version").output() else {
        eprintln!("skipped: docker-compose is not installed (scripts/deps.sh installs it)");
        return;
    };
    assert!(version.status.success(), "docker-compose version failed");
    for dir in cases() {
        // Forms newer than the docker-compose Debian ships: the case says which.
        if dir.join("NOT-DOCKER-COMPOSE-1.29").exists() {
            continue;
        }
        let output = Command::new("docker-compose")
            .args(["--file", "compose.yaml", "config"])
            .current_dir(&dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env())
            .output()
            .unwrap();
        let config = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}: docker-compose config failed: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        // Image references as the manifest normalises them.
        let mut theirs = docker(&dir, &config);
        for seen in theirs.values_mut() {
            if !seen.image.starts_with("build:") && !seen.image.contains(':') {
                seen.image.push_str(":latest");
            }
        }
        assert_eq!(ours(&convert(&dir).manifest), theirs, "{}", dir.display());
    }
}
