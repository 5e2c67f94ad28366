//! Property tests: `parse` never panics, and valid manifests survive a JSON round trip.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use paracloud_manifest::{parse, FileSystem, Manifest, Origin};
use proptest::prelude::*;

/// Every path exists and is a directory, so only the manifest's own rules can fail.
struct Everything;

impl FileSystem for Everything {
    fn exists(&self, _: &Path) -> bool {
        true
    }
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
}

const FULL: &str = include_str!("data/full.toml");

fn origin() -> Origin {
    Origin {
        file: "paracloud.toml".into(),
        base_dir: PathBuf::from("/srv/shop"),
    }
}

fn parse_all(source: &str) -> Result<Manifest, paracloud_manifest::ManifestError> {
    parse(source, &origin(), &Everything)
}

/// An edit of a text: at a character position, delete some characters and insert a string.
#[derive(Debug, Clone)]
struct Edit {
    at: prop::sample::Index,
    delete: usize,
    insert: String,
}

fn edit() -> impl Strategy<Value = Edit> {
    let insert = prop_oneof![
        Just(String::new()),
        "[\\[\\]{}=,\"'.:#\n -]{1,3}",
        "[a-z_0-9]{1,8}",
        Just("\"".to_owned()),
        Just("[services.x]\n".to_owned()),
        Just("= []".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        any::<String>(),
    ];
    (any::<prop::sample::Index>(), 0usize..12, insert).prop_map(|(at, delete, insert)| Edit {
        at,
        delete,
        insert,
    })
}

fn apply(source: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = source.chars().collect();
    for edit in edits {
        let at = edit.at.index(chars.len() + 1);
        let end = (at + edit.delete).min(chars.len());
        chars.splice(at..end, edit.insert.chars());
    }
    chars.into_iter().collect()
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_text(source in any::<String>()) {
        let _ = parse_all(&source);
    }

    #[test]
    fn parse_never_panics_on_toml_like_text(source in "([a-z_.\\[\\]{}=,\"0-9 :/-]{0,12}\n){0,12}") {
        let _ = parse_all(&source);
    }

    #[test]
    fn parse_never_panics_on_mutated_manifests(edits in prop::collection::vec(edit(), 1..6)) {
        let source = apply(FULL, &edits);
        if let Err(error) = parse_all(&source) {
            prop_assert!(!error.diagnostics.is_empty());
            for d in &error.diagnostics {
                prop_assert!(d.line >= 1 && d.column >= 1);
                prop_assert!(d.line <= source.lines().count().max(1) + 1);
            }
        }
    }

    #[test]
    fn valid_manifests_round_trip_through_json(spec in app_spec()) {
        let source = spec.render();
        let manifest = match parse_all(&source) {
            Ok(manifest) => manifest,
            Err(e) => return Err(TestCaseError::fail(format!("{source}\n---\n{e}"))),
        };
        prop_assert_eq!(manifest.services.len(), spec.services.len());
        let json = serde_json::to_string(&manifest).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Manifest = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, manifest);
    }
}

/// A generated application, rendered to TOML; valid by construction.
#[derive(Debug, Clone)]
struct AppSpec {
    app: String,
    services: BTreeMap<String, ServiceSpec>,
}

#[derive(Debug, Clone)]
struct ServiceSpec {
    dir_image: bool,
    command: Vec<String>,
    command_as_string: bool,
    env: BTreeMap<String, i64>,
    ports: Vec<(u16, bool, bool)>,
    health: u8,
    cpu_eighths: Option<u32>,
    memory_mib: Option<u64>,
    replicas: u32,
    restart: u8,
    depends: u8,
    volume: Option<String>,
    stop_signal: &'static str,
    cap: Option<&'static str>,
}

fn service_spec() -> impl Strategy<Value = ServiceSpec> {
    (
        (
            any::<bool>(),
            prop::collection::vec("[a-z][a-z0-9-]{0,7}", 1..4),
            any::<bool>(),
            prop::collection::btree_map("[A-Z][A-Z0-9_]{0,6}", any::<i64>(), 0..3),
            prop::collection::btree_map(1u16..=65535, (any::<bool>(), any::<bool>()), 0..3),
        ),
        (
            0u8..4,
            prop::option::of(1u32..64),
            prop::option::of(4u64..4096),
            0u32..10,
            0u8..3,
            any::<u8>(),
            prop::option::of("[a-z][a-z0-9]{0,5}"),
            prop::sample::select(vec!["TERM", "SIGINT", "quit", "SIGUSR1"]),
            prop::option::of(prop::sample::select(vec!["NET_BIND_SERVICE", "cap_chown"])),
        ),
    )
        .prop_map(
            |(
                (dir_image, command, command_as_string, env, ports),
                (
                    health,
                    cpu_eighths,
                    memory_mib,
                    replicas,
                    restart,
                    depends,
                    volume,
                    stop_signal,
                    cap,
                ),
            )| ServiceSpec {
                dir_image,
                command,
                command_as_string,
                env,
                ports: ports
                    .into_iter()
                    .map(|(p, (publish, http))| (p, publish, http))
                    .collect(),
                health,
                cpu_eighths,
                memory_mib,
                replicas,
                restart,
                depends,
                volume,
                stop_signal,
                cap,
            },
        )
}

fn app_spec() -> impl Strategy<Value = AppSpec> {
    (
        "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        prop::collection::btree_map("[a-z][a-z0-9]{0,8}", service_spec(), 1..5),
    )
        .prop_map(|(app, services)| AppSpec { app, services })
}

impl AppSpec {
    fn render(&self) -> String {
        let mut out = format!("app = {:?}\n", self.app);
        let names: Vec<&String> = self.services.keys().collect();
        // Host ports are unique across the application, so no publish ever clashes.
        let mut next_host_port = 20000u32;
        for (i, (name, s)) in self.services.iter().enumerate() {
            let _ = writeln!(out, "\n[services.{name}]");
            if s.dir_image {
                out.push_str("image = \"dir:rootfs\"\n");
            } else {
                out.push_str("image = \"host\"\npaths = [\"../bin\"]\n");
            }
            if s.command_as_string {
                let _ = writeln!(out, "command = {:?}", s.command.join(" "));
            } else {
                let _ = writeln!(out, "command = {:?}", s.command);
            }
            if !s.env.is_empty() {
                let env: Vec<String> = s.env.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                let _ = writeln!(out, "env = {{ {} }}", env.join(", "));
            }
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|&(port, publish, http)| {
                    let proto = if http { "/http" } else { "" };
                    if publish {
                        next_host_port += 1;
                        format!("\"{next_host_port}:{port}{proto}\"")
                    } else {
                        format!("\"{port}{proto}\"")
                    }
                })
                .collect();
            let _ = writeln!(out, "ports = [{}]", ports.join(", "));
            match (s.health, s.ports.first()) {
                (1, _) => out.push_str("health = { exec = \"true\", retries = 2 }\n"),
                (2, Some(&(port, _, _))) => {
                    let _ = writeln!(out, "health = {{ tcp = {port}, interval = \"250ms\" }}");
                }
                (3, Some(_)) => {
                    out.push_str("health = { http = \"/healthz\", start_period = \"1m\" }\n")
                }
                _ => {}
            }
            let mut resources = Vec::new();
            if let Some(eighths) = s.cpu_eighths {
                resources.push(format!("cpu = {}", f64::from(eighths) / 8.0));
            }
            if let Some(mib) = s.memory_mib {
                resources.push(format!("memory = \"{mib}Mi\""));
            }
            let _ = writeln!(out, "resources = {{ {} }}", resources.join(", "));
            let _ = writeln!(out, "replicas = {}", s.replicas);
            out.push_str(match s.restart {
                0 => "restart = \"always\"\n",
                1 => {
                    "restart = { condition = \"on-failure\", max_retries = 3, backoff = \"1s\" }\n"
                }
                _ => "restart = \"no\"\n",
            });
            // Depend only on services earlier in name order: no cycles.
            if i > 0 && s.depends % 2 == 1 {
                let _ = writeln!(
                    out,
                    "depends_on = [{:?}]",
                    names[usize::from(s.depends) % i]
                );
            }
            if let Some(volume) = &s.volume {
                let _ = writeln!(
                    out,
                    "volumes = [\"{volume}:/data\", \"./conf:/etc/conf:ro\"]"
                );
            }
            let _ = writeln!(out, "stop_signal = {:?}", s.stop_signal);
            if let Some(cap) = s.cap {
                let _ = writeln!(out, "cap_add = [{cap:?}]");
            }
        }
        out
    }
}
