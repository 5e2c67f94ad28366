//! Data-driven tests: manifests in, the manifest or the exact diagnostics out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::*;

/// Directories and files that exist for the tests, under the manifest's directory `/srv/shop`.
struct FakeFs;

const DIRS: &[&str] = &[
    "/srv/shop",
    "/srv/target/release",
    "/srv/shop/rootfs",
    "/srv/shop/conf",
];
const FILES: &[&str] = &["/srv/shop/app.env", "/srv/shop/conf/Dockerfile.prod"];

impl FileSystem for FakeFs {
    fn exists(&self, path: &Path) -> bool {
        self.is_dir(path) || FILES.iter().any(|f| Path::new(f) == path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        DIRS.iter().any(|d| Path::new(d) == path)
    }
}

fn origin() -> Origin {
    Origin {
        file: "paracloud.toml".into(),
        base_dir: PathBuf::from("/srv/shop"),
    }
}

/// Parses `source` and compares the outcome, rendered as text, with `expected`: the diagnostics
/// as the CLI prints them, or "ok" for a valid manifest.
#[track_caller]
fn check(source: &str, expected: &str) {
    let actual = match parse(source, &origin(), &FakeFs) {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        actual.trim(),
        expected.trim(),
        "\n--- actual ---\n{actual}\n"
    );
}

#[track_caller]
fn valid(source: &str) -> Manifest {
    match parse(source, &origin(), &FakeFs) {
        Ok(manifest) => manifest,
        Err(e) => panic!("expected a valid manifest, got:\n{e}"),
    }
}

/// A manifest using every key, shared with the property tests.
const FULL: &str = include_str!("../tests/data/full.toml");

#[test]
fn full_manifest_covers_every_key() {
    let manifest = valid(FULL);
    let strings = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let local = |port| Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let kv = Service {
        name: "kv".into(),
        image: Image::Host {
            paths: vec![PathBuf::from("/srv/target/release")],
        },
        entrypoint: vec!["shop-kv".into(), "--data".into(), "/data dir".into()],
        command: vec!["--listen".into(), "0.0.0.0:7000".into()],
        env: strings(&[
            ("RUST_LOG", "info"),
            ("N", "3"),
            ("RATIO", "0.5"),
            ("DEBUG", "false"),
        ]),
        ports: vec![Port {
            port: 7000,
            protocol: Protocol::Tcp,
            publish: None,
        }],
        health: Some(HealthCheck {
            probe: Probe::Tcp { port: 7000 },
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            retries: 5,
            start_period: Duration::from_secs(2),
            restart: true,
        }),
        resources: Resources {
            cpu: Some(0.5),
            memory: Some(256 << 20),
            pids: Some(128),
            disk: None,
            memory_reservation: None,
            cpu_reservation: None,
        },
        replicas: 1,
        restart: RestartPolicy {
            condition: RestartCondition::OnFailure,
            max_retries: Some(5),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(60),
        },
        depends_on: BTreeMap::new(),
        volumes: vec![
            VolumeMount::Named {
                name: "kvdata".into(),
                target: "/data".into(),
                read_only: false,
            },
            VolumeMount::Named {
                name: "cache".into(),
                target: "/cache".into(),
                read_only: true,
            },
        ],
        labels: strings(&[("tier", "backend")]),
        user: Some("1000".into()),
        working_dir: Some("/data".into()),
        hostname: None,
        stop_signal: "SIGINT".into(),
        stop_grace_period: Duration::from_secs(5),
        cap_add: vec!["CAP_NET_BIND_SERVICE".into(), "CAP_CHOWN".into()],
        scale_to_zero: None,
        migrate: MigrateMethod::Restart,
        capsules: [
            ("archive".to_string(), paracloud_capsule::Access::Read),
            ("logrotate".to_string(), paracloud_capsule::Access::Write),
        ]
        .into(),
        revision_of: None,
        sandbox: Default::default(),
        networks: Default::default(),
        catalog: None,
    };
    assert_eq!(manifest.services["kv"], kv);
    assert_eq!(
        manifest.autoscale,
        Some(Autoscale {
            policy: PolicyKind::Hpa,
            entry: "api".into(),
            slo: LatencySlo {
                percentile: 0.99,
                latency: Duration::from_millis(150)
            },
            services: BTreeMap::from([
                (
                    "api".into(),
                    ServiceScaling {
                        min: 1,
                        max: 10,
                        cpu: 1.0,
                        cpu_min: 0.25,
                        cpu_max: 2.0
                    }
                ),
                (
                    "kv".into(),
                    ServiceScaling {
                        min: 1,
                        max: 4,
                        cpu: 0.5,
                        cpu_min: 0.25,
                        cpu_max: 1.0
                    }
                ),
                (
                    "web".into(),
                    ServiceScaling {
                        min: 1,
                        max: 10,
                        cpu: 1.0,
                        cpu_min: 0.25,
                        cpu_max: 2.0
                    }
                ),
            ])
        })
    );

    let api = &manifest.services["api"];
    assert_eq!(
        api.image,
        Image::Dir {
            path: PathBuf::from("/srv/shop/rootfs")
        }
    );
    assert!(
        api.argv().is_empty(),
        "a dir: image may use its own entrypoint"
    );
    assert_eq!(
        api.ports,
        vec![
            Port {
                port: 8080,
                protocol: Protocol::Http,
                publish: local(9000)
            },
            Port {
                port: 8081,
                protocol: Protocol::Tcp,
                publish: local(9001)
            },
            Port {
                port: 8082,
                protocol: Protocol::Http,
                publish: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 8082))),
            },
        ]
    );
    assert_eq!(
        api.health.as_ref().map(|h| &h.probe),
        Some(&Probe::Http {
            port: 8080,
            path: "/healthz".into()
        }),
        "the port defaults to the first port"
    );
    assert_eq!(
        api.health
            .as_ref()
            .map(|h| (h.interval, h.timeout, h.retries, h.start_period)),
        Some((
            Duration::from_secs(2),
            Duration::from_secs(1),
            3,
            Duration::ZERO
        ))
    );
    assert_eq!(
        api.depends_on,
        BTreeMap::from([("kv".into(), DependsCondition::Healthy)])
    );
    assert_eq!(api.restart.condition, RestartCondition::No);
    assert_eq!(
        api.volumes,
        vec![
            VolumeMount::Bind {
                source: "/srv/shop/conf".into(),
                target: "/etc/app".into(),
                read_only: true
            },
            VolumeMount::Bind {
                source: "/srv/shop/app.env".into(),
                target: "/etc/app.env".into(),
                read_only: false
            },
        ]
    );
    assert_eq!(api.user.as_deref(), Some("1000:1000"));

    let web = &manifest.services["web"];
    assert_eq!(web.argv(), vec!["shop-web"]);
    assert_eq!(web.replicas, 0);
    assert_eq!(web.ports[0].publish, local(8080));
    assert_eq!(
        web.depends_on,
        BTreeMap::from([("api".into(), DependsCondition::Started)])
    );
    assert_eq!(
        web.health.as_ref().map(|h| &h.probe),
        Some(&Probe::Exec {
            command: vec!["true".into()]
        })
    );

    assert_eq!(manifest.app, "shop");
    assert_eq!(
        manifest.volumes,
        BTreeMap::from([
            ("cache".into(), Volume::default()),
            (
                "kvdata".into(),
                Volume {
                    labels: strings(&[("backup", "daily")]),
                    external: None,
                    size: Some(1 << 30),
                }
            ),
        ]),
        "used volumes are implicit, declared ones keep their labels"
    );
}

#[test]
fn defaults() {
    let manifest = valid("app = \"a\"\n[services.s]\nimage = \"host\"\ncommand = \"sleep 1\"\n");
    let s = &manifest.services["s"];
    assert_eq!(s.replicas, 1);
    assert_eq!(s.restart, crate::service::default_restart());
    assert_eq!(s.stop_signal, "SIGTERM");
    assert_eq!(s.stop_grace_period, Duration::from_secs(10));
    assert_eq!(s.resources, Resources::default());
    assert_eq!(s.health, None);
    assert!(manifest.volumes.is_empty());
}

#[test]
fn errors_serialize_to_json_and_back() {
    let Err(error) = parse("app = 3", &origin(), &FakeFs) else {
        panic!("app = 3 is not a valid manifest");
    };
    let json = serde_json::to_string(&error).expect("diagnostics serialize");
    let back: ManifestError = serde_json::from_str(&json).expect("diagnostics deserialize");
    assert_eq!(back, error);
}

#[test]
fn diagnostics_carry_position_field_and_hint() {
    let source = format!("{HEAD}replics = 2\n");
    let Err(error) = parse(&source, &origin(), &FakeFs) else {
        panic!("a typo in a key is an error");
    };
    assert_eq!(
        error.diagnostics,
        vec![Diagnostic {
            file: "paracloud.toml".into(),
            line: 5,
            column: 1,
            field: "services.kv.replics".into(),
            message: "unknown key `replics`".into(),
            hint: Some("did you mean `replicas`?".into()),
        }]
    );
}

#[test]
fn every_problem_is_reported_in_source_order() {
    let source = "app = \"shop\"\n\
        [services.web]\nimage = \"host\"\ncommand = \"web\"\nreplicas = \"2\"\n\
        [services.api]\nimage = \"host\"\ncommand = \"api\"\nstop_signal = \"HUP2\"\n";
    let Err(error) = parse(source, &origin(), &FakeFs) else {
        panic!("two broken services");
    };
    let fields: Vec<(usize, &str)> = error
        .diagnostics
        .iter()
        .map(|d| (d.line, d.field.as_str()))
        .collect();
    assert_eq!(
        fields,
        vec![
            (5, "services.web.replicas"),
            (9, "services.api.stop_signal")
        ]
    );
}

/// A minimal valid service to build broken manifests around.
const HEAD: &str = "app = \"shop\"\n[services.kv]\nimage = \"host\"\ncommand = \"kv\"\n";

// One test per broken manifest, named after the mistake it makes.

#[test]
fn syntax_error() {
    check(
        "app = \"shop\"\n[services.kv\nimage = \"host\"\n",
        r#"
paracloud.toml:2:13: invalid TOML: unclosed table, expected `]`
"#,
    );
}

#[test]
fn duplicate_key() {
    check(
        &format!("{HEAD}image = \"host\"\n"),
        r#"
paracloud.toml:5:1: invalid TOML: duplicate key
  hint: a key may be set only once in a table
"#,
    );
}

#[test]
fn unknown_key() {
    check(
        &format!("{HEAD}replics = 2\n"),
        r#"
paracloud.toml:5:1: services.kv.replics: unknown key `replics`
  hint: did you mean `replicas`?
"#,
    );
}

#[test]
fn unknown_key_far() {
    check(
        &format!("{HEAD}colour = \"red\"\n"),
        r#"
paracloud.toml:5:1: services.kv.colour: unknown key `colour`
  hint: allowed keys here: image, build, paths, entrypoint, command, env, ports, health, resources, replicas, restart, depends_on, volumes, labels, user, working_dir, hostname, stop_signal, stop_grace_period, cap_add, init, read_only, tmpfs, shm_size, ulimits, sysctls, userns, networks, scale_to_zero, migrate, capsules, autoscale, revisions
"#,
    );
}

#[test]
fn unknown_top_key() {
    check(
        "ap = \"x\"\n[services.kv]\nimage = \"host\"\ncommand = \"kv\"\n",
        r#"
paracloud.toml:1:1: ap: unknown key `ap`
  hint: did you mean `app`?
paracloud.toml:1:1: app: missing required key `app`
  hint: add `app = "NAME"` at the top of the file, with a lower-case name such as "shop"
"#,
    );
}

#[test]
fn volume_sizes_are_bounded_and_not_for_external_volumes() {
    let base = "app = \"a\"\n[services.s]\nimage = \"host\"\ncommand = \"sleep 1\"\nvolumes = [\"v:/v\"]\n";
    let manifest = valid(&format!("{base}[volumes.v]\nsize = \"64M\"\n"));
    assert_eq!(manifest.volumes["v"].size, Some(64 << 20));
    check(
        &format!("{base}[volumes.v]\nsize = \"1M\"\n"),
        r#"
paracloud.toml:7:8: volumes.v.size: 1048576 bytes is below the minimum of 16M
  hint: give at least "16M"; did you forget the unit?
"#,
    );
    check(
        &format!("{base}[volumes.v]\nexternal = true\nsize = \"1G\"\n"),
        r#"
paracloud.toml:8:8: volumes.v.size: an external volume's size is its administrator's
  hint: remove `size`: the platform does not make or limit external volumes
"#,
    );
}

#[test]
fn wrong_type() {
    check(
        &format!("{HEAD}replicas = \"three\"\n"),
        r#"
paracloud.toml:5:12: services.kv.replicas: expected a whole number, found string "three"
  hint: for example `replicas = 2`
"#,
    );
}

#[test]
fn negative() {
    check(
        &format!("{HEAD}replicas = -1\n"),
        r#"
paracloud.toml:5:12: services.kv.replicas: must be at least 0, found -1
  hint: for example `replicas = 2`
"#,
    );
}

#[test]
fn missing_app() {
    check(
        "[services.kv]\nimage = \"host\"\ncommand = \"kv\"\n",
        r#"
paracloud.toml:1:1: app: missing required key `app`
  hint: add `app = "NAME"` at the top of the file, with a lower-case name such as "shop"
"#,
    );
}

#[test]
fn missing_image() {
    check(
        "app = \"shop\"\n[services.kv]\ncommand = \"kv\"\n",
        r#"
paracloud.toml:2:1: services.kv.image: missing required key `image`
  hint: add `image = "host"` to run host programs, `image = "NAME:TAG"` for an image of the store, `image = "oci:PATH"` for an OCI image layout, or `image = "dir:PATH"` to use a directory as the root filesystem
"#,
    );
}

#[test]
fn bad_names() {
    check(
        "app = \"Shop\"\n[services.k_v]\nimage = \"host\"\ncommand = \"kv\"\n",
        r#"
paracloud.toml:1:7: app: invalid application name "Shop": must start with a lower-case letter, found 'S'
  hint: use lower-case letters, digits and '-', starting with a letter, at most 32 characters, such as "web-2"
paracloud.toml:2:11: services.k_v: invalid service name "k_v": may contain only lower-case letters, digits and '-', found '_'
  hint: use lower-case letters, digits and '-', starting with a letter, at most 32 characters, such as "web-2"
"#,
    );
}

#[test]
fn cycle() {
    check(
        "app = \"shop\"\n[services.api]\nimage = \"host\"\ncommand = \"api\"\ndepends_on = [\"kv\"]\n[services.kv]\nimage = \"host\"\ncommand = \"kv\"\ndepends_on = [\"api\"]\n",
        r#"
paracloud.toml:9:15: services.kv.depends_on[0]: dependency cycle: api -> kv -> api
  hint: remove one of these dependencies: services in a cycle can never start
"#,
    );
}

#[test]
fn self_dep() {
    check(
        &format!("{HEAD}depends_on = [\"kv\"]\n"),
        r#"
paracloud.toml:5:15: services.kv.depends_on[0]: service `kv` depends on itself
  hint: remove `kv` from its `depends_on`
"#,
    );
}

#[test]
fn unknown_dep() {
    check(
        &format!("{HEAD}depends_on = {{ kb = \"started\", web = \"healthy\" }}\n"),
        r#"
paracloud.toml:5:16: services.kv.depends_on.kb: `kb` is not a service of this application
  hint: the services are: kv
paracloud.toml:5:32: services.kv.depends_on.web: `web` is not a service of this application
  hint: the services are: kv
"#,
    );
}

#[test]
fn port_clash() {
    check(
        &format!("{HEAD}ports = [\"8080:80\"]\n[services.web]\nimage = \"host\"\ncommand = \"web\"\nports = [{{ port = 81, publish = \"0.0.0.0:8080\" }}]\n"),
        r#"
paracloud.toml:9:33: services.web.ports[0].publish: port clash: 0.0.0.0:8080 is already published by service `kv` as 127.0.0.1:8080
  hint: publish on another host port, or remove the entry on line 5
"#,
    );
}

#[test]
fn same_port() {
    check(
        &format!("{HEAD}ports = [80, \"9000:80/http\"]\n"),
        r#"
paracloud.toml:5:14: services.kv.ports[1]: port 80 is listed twice
  hint: remove this entry or the one on line 5
"#,
    );
}

#[test]
fn same_port_twice_over_udp() {
    check(
        &format!("{HEAD}ports = [\"53/udp\", {{ port = 53, protocol = \"udp\" }}]\n"),
        r#"
paracloud.toml:5:20: services.kv.ports[1]: port 53/udp is listed twice
  hint: remove this entry or the one on line 5
"#,
    );
}

#[test]
fn udp_and_tcp_on_one_port_are_two_ports() {
    let manifest = valid(&format!(
        "{HEAD}ports = [\"5353:53/udp\", {{ port = 53, publish = 5353 }}, {{ port = 54, protocol = \"udp\", publish = \"0.0.0.0:5354\" }}]\n"
    ));
    let ports: Vec<_> = manifest.services["kv"]
        .ports
        .iter()
        .map(|p| (p.port, p.protocol, p.publish))
        .collect();
    assert_eq!(
        ports,
        [
            (53, Protocol::Udp, Some("127.0.0.1:5353".parse().unwrap())),
            (53, Protocol::Tcp, Some("127.0.0.1:5353".parse().unwrap())),
            (54, Protocol::Udp, Some("0.0.0.0:5354".parse().unwrap())),
        ]
    );
}

#[test]
fn udp_port_clash() {
    check(
        &format!("{HEAD}ports = [\"5353:53/udp\"]\n[services.web]\nimage = \"host\"\ncommand = \"web\"\nports = [\"5353:80\", {{ port = 53, protocol = \"udp\", publish = \"0.0.0.0:5353\" }}]\n"),
        r#"
paracloud.toml:9:62: services.web.ports[1].publish: port clash: 0.0.0.0:5353/udp is already published by service `kv` as 127.0.0.1:5353
  hint: publish on another host port, or remove the entry on line 5
"#,
    );
}

#[test]
fn an_http_check_skips_udp_ports() {
    let manifest = valid(&format!(
        "{HEAD}ports = [\"53/udp\", 8080]\nhealth = {{ http = \"/healthz\" }}\n"
    ));
    assert!(matches!(
        manifest.services["kv"].health.as_ref().unwrap().probe,
        Probe::Http { port: 8080, .. }
    ));
}

#[test]
fn missing_image_dir() {
    check(
        "app = \"shop\"\n[services.kv]\nimage = \"dir:./nope\"\n",
        r#"
paracloud.toml:3:9: services.kv.image: image directory /srv/shop/nope does not exist
  hint: create it or fix the path; relative paths are resolved against /srv/shop
"#,
    );
}

#[test]
fn image_not_dir() {
    check(
        "app = \"shop\"\n[services.kv]\nimage = \"dir:app.env\"\n",
        r#"
paracloud.toml:3:9: services.kv.image: image path /srv/shop/app.env is not a directory
  hint: a "dir:" image is a directory holding a root filesystem
"#,
    );
}

#[test]
fn missing_paths_entry() {
    check(
        &format!("{HEAD}paths = [\"../target/release\", \"../target/debug\"]\n"),
        r#"
paracloud.toml:5:31: services.kv.paths[1]: host path /srv/target/debug does not exist
  hint: create it or fix the path; relative paths are resolved against /srv/shop
"#,
    );
}

#[test]
fn paths_with_dir() {
    check(
        "app = \"shop\"\n[services.kv]\nimage = \"dir:rootfs\"\npaths = [\"/\"]\n",
        r#"
paracloud.toml:4:9: services.kv.paths: `paths` is only allowed with `image = "host"`
  hint: remove `paths`: the image already holds its programs
"#,
    );
}

#[test]
fn stored_images_are_references_normalised_and_need_no_command() {
    let manifest = valid("app = \"shop\"\n[services.kv]\nimage = \"shop-kv\"\n");
    assert_eq!(
        manifest.services["kv"].image,
        Image::Stored {
            reference: "shop-kv:latest".into(),
            digest: None
        }
    );
    let manifest = valid(
        "app = \"shop\"\n[services.kv]\nimage = \"127.0.0.1:5000/team/kv:2\"\ncommand = [\"--port\", \"7000\"]\n",
    );
    assert_eq!(
        manifest.services["kv"].image,
        Image::Stored {
            reference: "127.0.0.1:5000/team/kv:2".into(),
            digest: None
        }
    );
}

#[test]
fn build_needs_a_containerfile_and_excludes_image() {
    check(
        "app = \"shop\"\n[services.kv]\nbuild = \"conf\"\n",
        r#"
paracloud.toml:3:9: services.kv.build: /srv/shop/conf has no Containerfile or Dockerfile
  hint: write one there (FROM, COPY, RUN, CMD, ...), or name it with `dockerfile`: see docs/images.md
"#,
    );
    let manifest = valid(
        "app = \"shop\"\n[services.kv]\nbuild = { context = \"conf\", dockerfile = \"Dockerfile.prod\", target = \"prod\", args = { VERSION = \"2\" } }\n",
    );
    assert_eq!(
        manifest.services["kv"].image,
        Image::Build {
            context: "/srv/shop/conf".into(),
            dockerfile: Some("/srv/shop/conf/Dockerfile.prod".into()),
            target: Some("prod".into()),
            args: BTreeMap::from([("VERSION".into(), "2".into())]),
            digest: None
        }
    );
    check(
        "app = \"shop\"\n[services.kv]\nbuild = { context = \"conf\", dockerfile = \"Nope\", tagret = \"x\" }\n",
        r#"
paracloud.toml:3:42: services.kv.build.dockerfile: the Containerfile /srv/shop/conf/Nope does not exist
  hint: name a file relative to the build context, such as `dockerfile = "Dockerfile.prod"`
paracloud.toml:3:50: services.kv.build.tagret: unknown key `tagret`
  hint: did you mean `target`?
"#,
    );
    check(
        "app = \"shop\"\n[services.kv]\nimage = \"kv\"\nbuild = \"conf\"\n",
        r#"
paracloud.toml:4:9: services.kv.build: a service has either `image` or `build`, not both
  hint: remove one: `build` makes the service's image from a Containerfile
"#,
    );
}

#[test]
fn bad_image_reference() {
    check(
        "app = \"shop\"\n[services.kv]\nimage = \"Shop/KV:1\"\n",
        r#"
paracloud.toml:3:9: services.kv.image: image "Shop/KV:1" is not a valid image reference: "Shop/KV:1": name component "Shop" must start with a lower-case letter or a digit
  hint: write an image as `name[:tag]` with lower-case letters, digits and `._-/` in the name, such as `shop-api:1.0` or `127.0.0.1:5000/team/web:latest`; or use `image = "host"`, `image = "oci:PATH"` or `image = "dir:PATH"`
"#,
    );
}

#[test]
fn oci_layout_image_must_be_a_layout() {
    check(
        "app = \"shop\"\n[services.kv]\nimage = \"oci:conf\"\n",
        r#"
paracloud.toml:3:9: services.kv.image: /srv/shop/conf has no index.json, so it is not an OCI image layout
  hint: export one with `paracloud image export NAME DIR` or `skopeo copy ... oci:DIR`
"#,
    );
    check(
        "app = \"shop\"\n[services.kv]\nimage = \"oci:./nope\"\n",
        r#"
paracloud.toml:3:9: services.kv.image: OCI image layout /srv/shop/nope is not a directory
  hint: create it or fix the path; relative paths are resolved against /srv/shop
"#,
    );
}

#[test]
fn bad_duration() {
    check(
        &format!("{HEAD}stop_grace_period = \"10 parsecs\"\n"),
        r#"
paracloud.toml:5:21: services.kv.stop_grace_period: invalid duration "10 parsecs": unknown time unit "parsecs", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)
  hint: write a number and a unit, such as "500ms", "2s" or "1m"
"#,
    );
}

#[test]
fn int_duration() {
    check(
        &format!("{HEAD}stop_grace_period = 10\n"),
        r#"
paracloud.toml:5:21: services.kv.stop_grace_period: expected a duration string such as "2s", found integer 10
  hint: for example `stop_grace_period = "10s"`
"#,
    );
}

#[test]
fn bad_memory() {
    check(
        &format!("{HEAD}resources = {{ memory = \"256Q\" }}\n"),
        r#"
paracloud.toml:5:24: services.kv.resources.memory: invalid memory size "256Q": unknown unit "Q"
  hint: write bytes, or a number with K, M, G or T (powers of 1024) or KB, MB, GB (powers of 1000), such as "256M"
"#,
    );
}

#[test]
fn small_memory() {
    check(
        &format!("{HEAD}resources = {{ memory = 256, cpu = 0 }}\n"),
        r#"
paracloud.toml:5:24: services.kv.resources.memory: 256 bytes is below the minimum of 4M
  hint: give at least "4M"; did you forget the unit?
paracloud.toml:5:35: services.kv.resources.cpu: must be between 0.01 and 1024 cores, found 0
  hint: for example `cpu = 0.5`
"#,
    );
}

#[test]
fn disk_sizes_are_bounded() {
    check(
        &format!("{HEAD}resources = {{ disk = \"1M\" }}\n"),
        r#"
paracloud.toml:5:22: services.kv.resources.disk: 1048576 bytes is below the minimum of 16M
  hint: give at least "16M"; did you forget the unit?
"#,
    );
    check(
        &format!("{HEAD}resources = {{ disk = \"65T\" }}\n"),
        r#"
paracloud.toml:5:22: services.kv.resources.disk: 71468255805440 bytes is more than the maximum of 64T
  hint: give the disk space an instance writes, such as "1G"
"#,
    );
}

#[test]
fn regression_resources_beyond_any_machine_are_refused() {
    // `cpu = 1e300` removed the CPU limit (quota -1), and `pids = 9223372036854775807` passed
    // and made the instance restart in a loop.
    check(
        &format!(
            "{HEAD}resources = {{ cpu = 1e300, pids = 9223372036854775807, memory = \"100T\" }}\n"
        ),
        r#"
paracloud.toml:5:21: services.kv.resources.cpu: must be between 0.01 and 1024 cores, found 1e300
  hint: for example `cpu = 0.5`
paracloud.toml:5:35: services.kv.resources.pids: must be between 1 and 4194304, found 9223372036854775807
  hint: for example `pids = 128`
paracloud.toml:5:65: services.kv.resources.memory: 109951162777600 bytes is more than the maximum of 64T
  hint: give the memory an instance needs, such as "512M" or "4G"
"#,
    );
}

#[test]
fn unknown_signal() {
    check(
        &format!("{HEAD}stop_signal = \"SIGTREM\"\n"),
        r#"
paracloud.toml:5:15: services.kv.stop_signal: unknown signal "SIGTREM"
  hint: did you mean "SIGTERM"?
"#,
    );
}

#[test]
fn unknown_capability() {
    check(
        &format!("{HEAD}cap_add = [\"NET_BIND_SERVICES\", \"FLY\"]\n"),
        r#"
paracloud.toml:5:12: services.kv.cap_add[0]: unknown capability "NET_BIND_SERVICES"
  hint: did you mean "CAP_NET_BIND_SERVICE"?
paracloud.toml:5:33: services.kv.cap_add[1]: unknown capability "FLY"
  hint: use a Linux capability name such as "NET_BIND_SERVICE" (see capabilities(7))
"#,
    );
}

#[test]
fn nothing_to_run() {
    check(
        "app = \"shop\"\n[services.kv]\nimage = \"host\"\n",
        r#"
paracloud.toml:2:1: services.kv.command: nothing to run: `image = "host"` needs a `command` or an `entrypoint`
  hint: add the program to run, such as `command = ["my-server", "--port", "8080"]`
"#,
    );
}

#[test]
fn empty_command() {
    check(
        "app = \"shop\"\n[services.kv]\nimage = \"host\"\ncommand = []\n",
        r#"
paracloud.toml:4:11: services.kv.command: nothing to run: `image = "host"` needs a `command` or an `entrypoint`
  hint: add the program to run, such as `command = ["my-server", "--port", "8080"]`
"#,
    );
}

#[test]
fn health_no_port() {
    check(
        &format!("{HEAD}health = {{ http = \"/healthz\" }}\n"),
        r#"
paracloud.toml:5:19: services.kv.health.port: an http health check needs a port, and the service has no TCP or HTTP ports
  hint: add `port = PORT` to the health check, or declare the service's `ports`
"#,
    );
}

#[test]
fn health_two_probes() {
    check(
        &format!("{HEAD}health = {{ tcp = 80, http = \"/\" }}\n"),
        r#"
paracloud.toml:5:29: services.kv.health.http: a health check has one probe, found `tcp` and `http`
  hint: keep only one: use one of `exec = ["COMMAND", "ARG"]`, `tcp = PORT` or `http = "/PATH"`
"#,
    );
}

#[test]
fn health_no_probe() {
    check(
        &format!("{HEAD}health = {{ interval = \"1s\" }}\n"),
        r#"
paracloud.toml:5:10: services.kv.health: a health check needs a probe
  hint: use one of `exec = ["COMMAND", "ARG"]`, `tcp = PORT` or `http = "/PATH"`
"#,
    );
}

#[test]
fn restart() {
    check(
        &format!("{HEAD}restart = {{ condition = \"always\", max_retries = 3 }}\n"),
        r#"
paracloud.toml:5:49: services.kv.restart.max_retries: `max_retries` is only allowed with `condition = "on-failure"`
  hint: set `condition = "on-failure"` or remove `max_retries`
"#,
    );
}

#[test]
fn restart_cond() {
    check(
        &format!("{HEAD}restart = \"on_failure\"\n"),
        r#"
paracloud.toml:5:11: services.kv.restart: unknown restart condition "on_failure"
  hint: did you mean "on-failure"?
"#,
    );
}

#[test]
fn migrate_method() {
    check(
        &format!("{HEAD}migrate = \"pacy\"\n"),
        r#"
paracloud.toml:5:11: services.kv.migrate: unknown migration method "pacy"
  hint: did you mean "paci"?
"#,
    );
    check(
        &format!("{HEAD}migrate = 3\n"),
        r#"
paracloud.toml:5:11: services.kv.migrate: expected a string, found integer 3
  hint: for example `migrate = "paci"`
"#,
    );
}

#[test]
fn schedules() {
    let policy = "[services.kv.capsules]\nmetrics = \"read\"\n";
    let manifest = valid(&format!(
        "{HEAD}{policy}[schedules.snap]\ncapsule = \"metrics\"\ncron = \"@hourly\"\nselector = \"service=kv\"\ntimeout = \"10s\"\n"
    ));
    let snap = &manifest.schedules["snap"];
    assert_eq!(
        (
            snap.capsule.as_str(),
            snap.cron.as_str(),
            snap.selector.as_str()
        ),
        ("metrics", "@hourly", "service=kv")
    );
    assert_eq!(snap.timeout, Some(Duration::from_secs(10)));
    assert_eq!(snap.keep, None);
    let kept = valid(&format!(
        "{HEAD}{policy}[schedules.snap]\ncapsule = \"metrics\"\ncron = \"@daily\"\nselector = \"service=kv\"\nkeep = 7\n"
    ));
    assert_eq!(kept.schedules["snap"].keep, Some(7));
    check(
        &format!("{HEAD}{policy}[schedules.snap]\ncapsule = \"metrics\"\ncron = \"@daily\"\nselector = \"service=kv\"\nkeep = 0\n"),
        r#"
paracloud.toml:11:8: schedules.snap.keep: keep must be between 1 and 1000 runs, found 0
  hint: write how many of the last successful runs keep their files, such as `keep = 7` for a week of daily dumps; leave `keep` out to let them go with the daemon's last 50 runs
"#,
    );
    check(
        &format!("{HEAD}{policy}[schedules.snap]\ncapsule = \"metric\"\ncron = \"* * * * *\"\nselector = \"app=other\"\n"),
        r#"
paracloud.toml:8:11: schedules.snap.capsule: unknown capsule "metric"
  hint: did you mean "metrics"?
"#,
    );
    check(
        &format!("{HEAD}{policy}[schedules.snap]\ncapsule = \"metrics\"\ncron = \"* * * * *\"\nselector = \"app=other\"\n"),
        r#"
paracloud.toml:10:12: schedules.snap.selector: the selector names application "other", not this one
  hint: a schedule runs on its own application's instances: write app=shop or leave app= out
"#,
    );
}

#[test]
fn an_applications_own_capsules() {
    let manifest = valid(&format!(
        "{HEAD}[services.kv.capsules]\ndump = \"write\"\n\
         [capsules.dump]\nimage = \"tools:1\"\ncommand = \"/bin/dump --all\"\n\
         description = \"dump the store\"\nusage = \"[TABLE...]\"\naccess = \"write\"\n\
         capabilities = [\"SYS_PTRACE\"]\nresources = {{ memory = \"64M\" }}\ntimeout = \"30s\"\n\
         env = {{ LEVEL = \"3\" }}\n\
         [capsules.report]\nimage = \"registry.local:5000/report\"\n\
         [schedules.nightly]\ncapsule = \"dump\"\ncron = \"@daily\"\nselector = \"service=kv\"\n"
    ));
    let dump = &manifest.capsules["dump"];
    assert_eq!(
        dump.image,
        Image::Stored {
            reference: "tools:1".into(),
            digest: None
        }
    );
    assert_eq!(dump.command, ["/bin/dump", "--all"]);
    assert_eq!(dump.env["LEVEL"], "3");
    assert_eq!(dump.access, paracloud_capsule::Access::Write);
    assert_eq!(dump.capabilities, ["CAP_SYS_PTRACE"]);
    assert_eq!(dump.limits.memory, 64 << 20);
    assert_eq!(dump.limits.pids, paracloud_capsule::DEFAULT_LIMITS.pids);
    assert_eq!(dump.timeout, Duration::from_secs(30));
    assert_eq!(
        dump.spec().command(&["users".into()]),
        ["/bin/dump", "--all", "users"]
    );
    let report = &manifest.capsules["report"];
    assert!(
        report.command.is_empty(),
        "the image's entrypoint, filled in at up"
    );
    assert_eq!(report.access, paracloud_capsule::Access::Read);
    assert_eq!(report.timeout, paracloud_capsule::DEFAULT_TIMEOUT);
    assert_eq!(manifest.schedules["nightly"].capsule, "dump");
}

#[test]
fn broken_own_capsules() {
    check(
        &format!(
            "{HEAD}[services.kv.capsules]\nchecksum = \"read\"\ndump = \"read\"\nreprot = \"read\"\n\
             [capsules.checksum]\nimage = \"tools:1\"\n\
             [capsules.dump]\nimage = \"host\"\naccess = \"all\"\ncommand = []\n\
             [capsules.report]\nimages = \"tools:1\"\n"
        ),
        r#"
paracloud.toml:8:1: services.kv.capsules.reprot: unknown capsule "reprot"
  hint: did you mean "report"?
paracloud.toml:9:11: capsules.checksum: capsule "checksum" is built in
  hint: give the application's own capsule another name, such as "checksum-app"
paracloud.toml:12:9: capsules.dump.image: a capsule brings its own image, not the host's programs
  hint: name an image of the store, such as `image = "tools:1"` (`paracloud build -t tools:1 DIR` makes one), or `image = "dir:PATH"`
paracloud.toml:13:10: capsules.dump.access: unknown access "all"
  hint: use "read" (the instance's files read-only, the default) or "write"
paracloud.toml:14:11: capsules.dump.command: the command is empty
  hint: name the program to run, such as `command = ["/bin/report"]`, or leave `command` out to run the image's entrypoint
paracloud.toml:15:1: capsules.report.image: missing required key `image`
  hint: add `image = "NAME:TAG"` for an image of the store (`paracloud build -t NAME:TAG DIR` makes one), `image = "oci:PATH"` or `image = "dir:PATH"`
paracloud.toml:16:1: capsules.report.images: unknown key `images`
  hint: did you mean `image`?
"#,
    );
}

#[test]
fn capsule_policy() {
    check(
        &format!("{HEAD}[services.kv.capsules]\nchecksun = \"read\"\n"),
        r#"
paracloud.toml:6:1: services.kv.capsules.checksun: unknown capsule "checksun"
  hint: did you mean "checksum"?
"#,
    );
    check(
        &format!("{HEAD}[services.kv.capsules]\nstrace = \"all\"\n"),
        r#"
paracloud.toml:6:10: services.kv.capsules.strace: unknown access "all"
  hint: use "read" (the instance's files read-only) or "write"
"#,
    );
}

#[test]
fn a_relative_bind_mount_stays_in_the_manifests_directory() {
    check(
        &format!("{HEAD}volumes = [\"../../etc:/host-etc\"]\n"),
        r#"
paracloud.toml:5:12: services.kv.volumes[0]: bind mount source "../../etc" leaves the manifest's directory (it is /etc)
  hint: a relative source stays inside /srv/shop; write a host path outside it as an absolute path, "/etc", if it is meant
"#,
    );
}

#[test]
fn volumes() {
    check(
        &format!("{HEAD}volumes = [\"data\", \"Data:/x\", \"./missing:/y\", \"data:rel\", {{ source = \"d\" }}]\n"),
        r#"
paracloud.toml:5:12: services.kv.volumes[0]: invalid volume "data": expected SOURCE:TARGET[:ro|:rw]
  hint: write "NAME:/TARGET" for a named volume or "./HOST_PATH:/TARGET" for a bind mount, optionally ending in ":ro"
paracloud.toml:5:20: services.kv.volumes[1]: invalid volume name "Data": must start with a lower-case letter, found 'D'
  hint: a named volume is a lower-case name such as "data"; start a host path with "/" or "./" to bind-mount it
paracloud.toml:5:31: services.kv.volumes[2]: bind mount source /srv/shop/missing does not exist
  hint: create it or fix the path; relative paths are resolved against /srv/shop
paracloud.toml:5:47: services.kv.volumes[3]: the mount target must be an absolute path, found "rel"
  hint: write it from the root, such as "/rel"
paracloud.toml:5:59: services.kv.volumes[4].target: missing required key `target`
  hint: add the absolute path inside the instance, such as `target = "/data"`
"#,
    );
}

#[test]
fn bad_port() {
    check(
        &format!("{HEAD}ports = [70000, \"80/sctp\", {{ port = 1, protocol = \"sctp\" }}, true]\n"),
        r#"
paracloud.toml:5:10: services.kv.ports[0]: must be between 1 and 65535, found 70000
  hint: for example `ports = [8080, "9000:8080/http"]`
paracloud.toml:5:17: services.kv.ports[1]: unknown protocol "sctp"
  hint: write a port as PORT, "HOST_PORT:PORT" or "HOST_IP:HOST_PORT:PORT", optionally ending in "/tcp", "/http" or "/udp"
paracloud.toml:5:51: services.kv.ports[2].protocol: unknown protocol "sctp"
  hint: use "tcp", "http" or "udp"
paracloud.toml:5:61: services.kv.ports[3]: expected a port number, a port string or a table, found boolean true
  hint: for example `ports = [8080, "9000:8080/http"]`
"#,
    );
}

#[test]
fn bad_shell() {
    check(
        &format!("{HEAD}entrypoint = \"kv 'oops\"\n"),
        r#"
paracloud.toml:5:14: services.kv.entrypoint: cannot split "kv 'oops" into words: missing closing quote
  hint: close the quote, or write the command as an array of strings
"#,
    );
}

#[test]
fn env() {
    check(
        &format!("{HEAD}env = {{ A = [1], B = 1979-05-27 }}\n"),
        r#"
paracloud.toml:5:13: services.kv.env.A: expected a string, number or boolean, found an array
  hint: write it as a string: `A = "..."`
paracloud.toml:5:22: services.kv.env.B: expected a string, number or boolean, found datetime 1979-05-27
  hint: write it as a string: `B = "..."`
"#,
    );
}

#[test]
fn services_not_a_table() {
    check(
        "app = \"shop\"\nservices = 3\n",
        r#"
paracloud.toml:2:12: services: expected a table, found integer 3
  hint: for example `[services.web]`
"#,
    );
}

#[test]
fn no_services() {
    check(
        "app = \"shop\"\n",
        r#"
paracloud.toml:1:1: services: the application has no services
  hint: add a service, such as `[services.web]` with `image = "host"` and a `command`
"#,
    );
}

#[test]
fn array_of_tables() {
    check(
        "app = \"shop\"\n[[services.kv]]\nimage = \"host\"\n",
        r#"
paracloud.toml:2:1: services.kv: expected a table, found an array of tables
  hint: write the header with single brackets, `[...]`: double brackets `[[...]]` make an array
"#,
    );
}

#[test]
fn working_dir() {
    check(
        &format!("{HEAD}working_dir = \"srv\"\n"),
        r#"
paracloud.toml:5:15: services.kv.working_dir: must be an absolute path, found "srv"
  hint: write it from the root, such as "/srv"
"#,
    );
}

#[test]
fn empty() {
    check(
        "",
        r#"
paracloud.toml:1:1: app: missing required key `app`
  hint: add `app = "NAME"` at the top of the file, with a lower-case name such as "shop"
paracloud.toml:1:1: services: the application has no services
  hint: add a service, such as `[services.web]` with `image = "host"` and a `command`
"#,
    );
}

/// The user reference's full example stays valid: the documentation cannot drift from the code.
#[test]
fn documented_example_is_valid() {
    struct Everything;
    impl FileSystem for Everything {
        fn exists(&self, _: &Path) -> bool {
            true
        }
        fn is_dir(&self, _: &Path) -> bool {
            true
        }
    }
    let doc = include_str!("../../../docs/manifest.md");
    let example = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_default();
    let manifest = match parse(example, &origin(), &Everything) {
        Ok(manifest) => manifest,
        Err(e) => panic!("docs/manifest.md's example is broken:\n{e}"),
    };
    assert_eq!(manifest.services.len(), 3);
}

const API: &str = r#"app = "shop"
[services.api]
image = "host"
command = "api --greeting v1"
env = { MODE = "prod" }
ports = [{ port = 8000, protocol = "http", publish = 8000 }]
replicas = 3
scale_to_zero = "5m"
"#;

#[test]
fn a_revision_is_its_service_with_its_own_keys_over_it() {
    let manifest = valid(&format!(
        "{API}[services.api.revisions.canary]\ncommand = \"api --greeting v2\"\nweight = 10\n\
         [services.api.revisions.test]\nreplicas = 2\n"
    ));
    let api = &manifest.services["api"];
    assert_eq!(api.revision_of, None);
    assert_eq!(api.scale_to_zero, Some(Duration::from_secs(300)));
    let canary = &manifest.services["api@canary"];
    assert_eq!(canary.name, "api@canary");
    assert_eq!(canary.command, ["api", "--greeting", "v2"]);
    assert_eq!(canary.env, api.env, "inherited");
    assert_eq!(canary.replicas, 1, "a revision starts with one instance");
    assert_eq!(canary.ports.len(), 1);
    assert_eq!(canary.ports[0].port, 8000);
    assert_eq!(
        canary.ports[0].publish, None,
        "the service's listeners serve it"
    );
    assert_eq!(
        canary.revision_of,
        Some(RevisionOf {
            service: "api".into(),
            revision: "canary".into(),
            weight: 10
        })
    );
    let test = &manifest.services["api@test"];
    assert_eq!(test.command, api.command);
    assert_eq!(test.replicas, 2);
    assert_eq!(test.revision_of.as_ref().map(|r| r.weight), Some(0));
}

#[test]
fn revision_mistakes_are_located() {
    check(
        &format!(
            "{API}[services.api.revisions.canary]\nweight = 70\nports = []\n\
             [services.api.revisions.Blue]\n[services.api.revisions.green]\nweight = 40\n"
        ),
        r#"
paracloud.toml:11:1: services.api.revisions.canary.ports: unknown key `ports`
  hint: allowed keys here: weight, image, build, paths, entrypoint, command, env, health, resources, replicas, restart, depends_on, volumes, labels, user, working_dir, hostname, stop_signal, stop_grace_period, cap_add, init, read_only, tmpfs, shm_size, ulimits, sysctls, userns, scale_to_zero, migrate, capsules
paracloud.toml:12:25: services.api.revisions.Blue: invalid revision name "Blue": must start with a lower-case letter, found 'B'
  hint: use lower-case letters, digits and '-', starting with a letter, such as "canary"
paracloud.toml:14:10: services.api.revisions.green.weight: the revisions of `api` get 110% of its traffic together, more than 100%
  hint: lower the weights so that they add up to 100 or less; the service keeps the rest
"#,
    );
}

#[test]
fn a_problem_a_revision_inherits_is_reported_once() {
    check(
        &format!("{API}stop_signal = \"SIGNOPE\"\n[services.api.revisions.canary]\nweight = 5\n"),
        r#"
paracloud.toml:9:15: services.api.stop_signal: unknown signal "SIGNOPE"
  hint: use a Linux signal name such as "SIGTERM", "SIGINT" or "SIGQUIT"
"#,
    );
}

#[test]
fn scale_to_zero_is_a_positive_duration() {
    check(
        &format!("{HEAD}scale_to_zero = \"0s\"\n"),
        r#"
paracloud.toml:5:17: services.kv.scale_to_zero: must be more than 0
  hint: for example `scale_to_zero = "5m"`
"#,
    );
}

/// Two services, `web` publishing a port: the entry the autoscaler guesses.
const SCALED: &str = r#"app = "shop"
[services.api]
image = "host"
command = "api"
ports = [8000]
resources = { cpu = 0.5 }
replicas = 2
[services.web]
image = "host"
command = "web"
ports = [{ port = 8080, protocol = "http", publish = 8080 }]
scale_to_zero = "5m"
"#;

#[test]
fn an_autoscale_table_fills_in_every_bound() {
    let manifest = valid(&format!("{SCALED}[autoscale]\n"));
    let autoscale = manifest.autoscale.clone().unwrap();
    assert_eq!(autoscale.policy, PolicyKind::Model, "the platform's own");
    assert_eq!(
        autoscale.entry, "web",
        "the only service with a published port"
    );
    assert_eq!(
        autoscale.slo,
        LatencySlo {
            percentile: 0.95,
            latency: Duration::from_millis(200)
        }
    );
    assert_eq!(
        autoscale.services["api"],
        ServiceScaling {
            min: 1,
            max: 10,
            cpu: 0.5,
            cpu_min: 0.25,
            cpu_max: 2.0
        }
    );
    assert_eq!(
        autoscale.services["web"],
        ServiceScaling {
            min: 0,
            max: 10,
            cpu: 1.0,
            cpu_min: 0.25,
            cpu_max: 2.0
        },
        "scale_to_zero lets it go to 0; no resources.cpu counts as one core"
    );
    assert_eq!(valid(SCALED).autoscale, None, "no table, no autoscaler");
}

#[test]
fn written_bounds_are_kept_and_replicas_left_out_start_within_them() {
    let manifest = valid(&format!(
        "{SCALED}[services.db]\nimage = \"host\"\ncommand = \"db\"\nresources = {{ cpu = 4 }}\n\
         autoscale = {{ min = 3, max = 5, cpu_min = 1 }}\n\
         [autoscale]\npolicy = \"hpa\"\nentry = \"web\"\nslo = {{ p99 = \"1s\" }}\n"
    ));
    let autoscale = manifest.autoscale.unwrap();
    assert_eq!(autoscale.policy, PolicyKind::Hpa);
    assert_eq!(autoscale.slo.percentile, 0.99);
    assert_eq!(autoscale.slo.latency, Duration::from_secs(1));
    assert_eq!(
        autoscale.services["db"],
        ServiceScaling {
            min: 3,
            max: 5,
            cpu: 4.0,
            cpu_min: 1.0,
            cpu_max: 4.0
        },
        "the CPU range holds resources.cpu"
    );
    assert_eq!(manifest.services["db"].replicas, 3, "starts at min");
    assert_eq!(manifest.services["api"].replicas, 2, "written: kept");
}

#[test]
fn revisions_are_not_autoscaled() {
    let manifest = valid(&format!(
        "{SCALED}autoscale = {{ max = 4 }}\n[services.web.revisions.canary]\nweight = 10\n[autoscale]\n"
    ));
    let autoscale = manifest.autoscale.unwrap();
    assert_eq!(
        autoscale.services.keys().collect::<Vec<_>>(),
        ["api", "web"]
    );
    assert_eq!(autoscale.services["web"].max, 4);
    assert_eq!(manifest.services["web@canary"].replicas, 1);
}

#[test]
fn the_scaling_config_is_what_the_manifest_says() {
    let manifest = valid(&format!(
        "{SCALED}[autoscale]\npolicy = \"kpa\"\nslo = {{ p90 = \"50ms\" }}\n"
    ));
    let config = scaling_config(&manifest).unwrap();
    assert_eq!(config.entry, "web");
    assert_eq!(config.slo.latency_ms, 50.0);
    assert_eq!(config.slo.percentile, 0.9);
    let web = &config.services["web"];
    assert_eq!((web.min_instances, web.max_instances), (0, 10));
    assert_eq!(web.idle_ms, 300_000, "scale_to_zero is the idle time");
    let api = &config.services["api"];
    assert_eq!((api.min_instances, api.max_instances), (1, 10));
    assert_eq!((api.cpu, api.cpu_min, api.cpu_max), (0.5, 0.25, 2.0));
    assert_eq!(
        api.idle_ms,
        paracloud_autoscale::Bounds::default().idle_ms,
        "never idles: min is 1"
    );
    assert_eq!(scaling_config(&valid(SCALED)), None);
}

#[test]
fn autoscale_mistakes_are_located() {
    check(
        &format!("{SCALED}[autoscale]\npolicy = \"hpas\"\nentry = \"webb\"\nslo = {{ p95 = \"fast\" }}\n"),
        r#"
paracloud.toml:14:10: autoscale.policy: unknown policy "hpas"
  hint: did you mean "hpa"?
paracloud.toml:15:9: autoscale.entry: `webb` is not a service of this application
  hint: did you mean `web`?
paracloud.toml:16:15: autoscale.slo.p95: invalid duration "fast": expected number at 0
  hint: write a number and a unit, such as "500ms", "2s" or "1m"
"#,
    );
    check(
        &format!("{SCALED}[autoscale]\npolicy = \"magic\"\nentry = \"db\"\nslo = {{ p95 = \"1s\", p99 = \"2s\" }}\n"),
        r#"
paracloud.toml:14:10: autoscale.policy: unknown policy "magic"
  hint: use "model" (the platform's model of the whole application), "hpa" (Kubernetes' HorizontalPodAutoscaler) or "kpa" (Knative's autoscaler)
paracloud.toml:15:9: autoscale.entry: `db` is not a service of this application
  hint: the services are: api, web
paracloud.toml:16:27: autoscale.slo.p99: an SLO has one percentile, found `p95` and `p99`
  hint: keep only one: write one percentile and its latency, such as `slo = { p95 = "200ms" }` (p50, p90, p95 or p99)
"#,
    );
}

#[test]
fn the_entry_must_be_a_service_with_a_port() {
    check(
        &format!("{SCALED}[services.worker]\nimage = \"host\"\ncommand = \"w\"\n[autoscale]\nentry = \"worker\"\n"),
        r#"
paracloud.toml:17:9: autoscale.entry: `worker` has no port, so no request to it can be measured
  hint: name the service clients call, the one with a published port
"#,
    );
    let two = SCALED.replace(
        "ports = [8000]",
        "ports = [{ port = 8000, publish = 8000 }]",
    );
    check(
        &format!("{two}[autoscale]\n"),
        r#"
paracloud.toml:13:1: autoscale.entry: missing required key `entry`
  hint: several services publish a port (api, web): name the one clients call, such as `entry = "api"`
"#,
    );
}

#[test]
fn bounds_that_contradict_each_other_are_located() {
    check(
        &(SCALED
            .replace(
                "replicas = 2\n",
                "replicas = 2\nautoscale = { min = 4, max = 3, cpu_min = 2, cpu_max = 1 }\n",
            )
            .replace(
                "[services.web]",
                "[services.web]\nautoscale = { min = 1, max = 300 }",
            )
            + "[autoscale]\n"),
        r#"
paracloud.toml:8:21: services.api.autoscale.min: `min` (4) is more than `max` (3)
  hint: lower `min` or raise `max`
paracloud.toml:8:43: services.api.autoscale.cpu_min: `cpu_min` (2) is more than `cpu_max` (1)
  hint: lower `cpu_min` or raise `cpu_max`
paracloud.toml:10:30: services.web.autoscale.max: must be between 1 and 200, found 300
  hint: for example `max = 10`
"#,
    );
    check(
        &(SCALED.replace(
            "replicas = 2\n",
            "replicas = 2\nautoscale = { min = 3, cpu_min = 1 }\n",
        ) + "[services.db]\nimage = \"host\"\ncommand = \"db\"\nreplicas = 5\nresources = { cpu = 4 }\nautoscale = { max = 4, cpu_max = 2 }\n[autoscale]\n"),
        r#"
paracloud.toml:8:21: services.api.autoscale.min: `min` (3) is more than the service's `replicas` (2)
  hint: `replicas` is how many instances start: keep it between `min` and `max`, or leave it out to start with `min`
paracloud.toml:8:34: services.api.autoscale.cpu_min: `cpu_min` (1) is more than the service's `resources.cpu` (0.5)
  hint: instances start with `resources.cpu`: keep it between `cpu_min` and `cpu_max`
paracloud.toml:19:21: services.db.autoscale.max: `max` (4) is less than the service's `replicas` (5)
  hint: `replicas` is how many instances start: keep it between `min` and `max`, or leave it out to start with `min`
paracloud.toml:19:34: services.db.autoscale.cpu_max: `cpu_max` (2) is less than the service's `resources.cpu` (4)
  hint: instances start with `resources.cpu`: keep it between `cpu_min` and `cpu_max`
"#,
    );
}

#[test]
fn autoscale_bounds_need_the_table_and_a_service() {
    check(
        &format!("{SCALED}autoscale = {{ max = 4 }}\n"),
        r#"
paracloud.toml:13:13: services.web.autoscale: `autoscale` bounds need the application's `[autoscale]` table
  hint: add `[autoscale]` with `policy = "model"` (or "hpa", "kpa") at the top level, or remove this key
"#,
    );
    check(
        &(SCALED.replace("replicas = 2\n", "autoscale = { min = 0 }\n")
            + "autoscale = { min = 1 }\n[autoscale]\n"),
        r#"
paracloud.toml:7:21: services.api.autoscale.min: `min` is 0, but the service has no `scale_to_zero`
  hint: add `scale_to_zero = "5m"` (how long idle before it may go to zero; the next request starts it again), or set `min = 1`
paracloud.toml:13:21: services.web.autoscale.min: `min` is 1, but the service has `scale_to_zero`
  hint: set `min = 0` to let it go to zero when idle, or remove `scale_to_zero`
"#,
    );
    check(
        &format!(
            "{SCALED}[services.web.revisions.canary]\nautoscale = {{ max = 2 }}\n[autoscale]\n"
        ),
        r#"
paracloud.toml:14:1: services.web.revisions.canary.autoscale: a revision is not autoscaled: `autoscale` applies to services
  hint: remove it; the revision keeps its `replicas` (1 unless it says otherwise; `paracloud scale web@canary=N` changes it)
"#,
    );
}

#[test]
fn regression_scaling_in_the_manifest_is_no_new_revision() {
    // `up` with only `replicas` changed replaced every instance of the service one by one.
    let base = "app = \"shop\"\n[services.web]\nimage = \"host\"\ncommand = [\"web\"]\nresources = { cpu = 1, memory = \"64M\" }\n";
    let web = |extra: &str| {
        let source = base.replace(
            "command = [\"web\"]\n",
            &format!("command = [\"web\"]\n{extra}"),
        );
        let manifest = parse(&source, &origin(), &FakeFs).unwrap();
        manifest.services["web"].clone()
    };
    let plain = web("");
    for same in [
        web("replicas = 5\n"),
        web("scale_to_zero = \"5m\"\n"),
        web("migrate = \"paci\"\n"),
    ] {
        assert!(same.runs_as(&plain) && plain.runs_as(&same), "{same:?}");
    }
    let mut cpu = plain.clone();
    cpu.resources.cpu = Some(2.0);
    assert!(cpu.runs_as(&plain), "CPU changes in place");
    let mut memory = plain.clone();
    memory.resources.memory = Some(1 << 27);
    assert!(!memory.runs_as(&plain), "a memory limit is set at creation");
    assert!(!web("user = \"nobody\"\n").runs_as(&plain));
}

#[test]
fn sandbox_keys_are_read_and_checked() {
    let m = valid(&format!(
        "{HEAD}init = true\nread_only = true\ntmpfs = [\"/run\", {{ target = \"/cache\", size = \"8M\", mode = \"700\" }}]\nshm_size = \"32M\"\nulimits = {{ nofile = {{ soft = 10, hard = 20 }}, nproc = 5 }}\nsysctls = {{ \"net.core.somaxconn\" = 1024 }}\n"
    ));
    let s = &m.services["kv"].sandbox;
    assert!(s.init && s.read_only);
    assert_eq!(s.tmpfs[1].size, Some(8 << 20));
    assert_eq!(s.tmpfs[1].mode, Some(0o700));
    assert_eq!(s.shm_size, Some(32 << 20));
    assert_eq!(s.ulimits["nproc"].hard, 5);
    assert_eq!(s.sysctls["net.core.somaxconn"], "1024");
    assert!(!s.host_ids, "a user namespace of its own by default");
    let m = valid(&format!("{HEAD}userns = false\n"));
    assert!(m.services["kv"].sandbox.host_ids);
    check(
        &format!("{HEAD}userns = \"host\"\n"),
        r#"
paracloud.toml:5:10: services.kv.userns: expected true or false, found string "host"
  hint: for example `userns = false`
"#,
    );
    check(
        &format!("{HEAD}sysctls = {{ \"vm.swappiness\" = 1 }}\n"),
        r#"
paracloud.toml:5:13: services.kv.sysctls."vm.swappiness": sysctl `vm.swappiness` is not a parameter of the instance's own namespaces: setting it would change the host
  hint: only parameters starting with net., kernel.shm, kernel.msg, kernel.sem, fs.mqueue. can be set
"#,
    );
    check(
        &format!("{HEAD}tmpfs = [\"/a\", \"/a\"]\n"),
        r#"
paracloud.toml:5:16: services.kv.tmpfs[1]: /a is mounted twice
  hint: for example `tmpfs = ["/run", { target = "/cache", size = "64M", mode = "1777" }]`
"#,
    );
}

#[test]
fn a_completed_dependency_is_a_job_that_does_not_restart_always() {
    let m = valid("app = \"a\"\n[services.job]\nimage = \"host\"\ncommand = \"true\"\nrestart = \"no\"\n[services.web]\nimage = \"host\"\ncommand = \"x\"\ndepends_on = { job = \"completed\" }\n");
    assert_eq!(
        m.services["web"].depends_on["job"],
        DependsCondition::Completed
    );
    check(
        "app = \"a\"\n[services.job]\nimage = \"host\"\ncommand = \"true\"\n[services.web]\nimage = \"host\"\ncommand = \"x\"\ndepends_on = { job = \"completed\" }\n",
        r#"
paracloud.toml:8:16: services.web.depends_on.job: `job` restarts always, so it never stays completed
  hint: give `job` `restart = "no"` (or "on-failure"), as a one-off job has
"#,
    );
}

#[test]
fn a_manifest_directory_written_with_dots_keeps_its_relative_bind_mounts() {
    let origin = Origin {
        file: "../shop/paracloud.toml".into(),
        base_dir: PathBuf::from("/srv/tools/../shop"),
    };
    let source = format!("{HEAD}volumes = [\"./conf:/etc/app\"]\n");
    let manifest = parse(&source, &origin, &FakeFs).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        &manifest.services["kv"].volumes[0],
        VolumeMount::Bind { source, .. } if source == Path::new("/srv/shop/conf")
    ));
}

#[test]
fn a_health_check_that_does_not_restart_is_a_readiness_check() {
    let head = "app = \"a\"\n[services.web]\nimage = \"host\"\ncommand = \"web\"\nports = [80]\n";
    let manifest = valid(&format!("{head}health = {{ tcp = 80, restart = false }}\n"));
    assert!(!manifest.services["web"].health.as_ref().unwrap().restart);
    let manifest = valid(&format!("{head}health = {{ tcp = 80 }}\n"));
    assert!(manifest.services["web"].health.as_ref().unwrap().restart);
    check(
        &format!("{head}health = {{ tcp = 80, restart = \"no\" }}\n"),
        r#"
paracloud.toml:6:32: services.web.health.restart: expected true or false, found string "no"
  hint: for example `restart = false`
"#,
    );
}

mod catalog;
