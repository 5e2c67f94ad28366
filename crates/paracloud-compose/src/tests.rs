//! Tests of the Compose reader: each key and syntax, through the manifest it becomes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paracloud_manifest::{
    DependsCondition, FileSystem, Image, Origin, Probe, RestartCondition, Service, Ulimit,
    VolumeMount,
};

use super::*;

/// A project directory in memory.
#[derive(Default)]
struct Files(BTreeMap<PathBuf, String>);

impl FileSystem for Files {
    fn exists(&self, path: &Path) -> bool {
        path.starts_with("/project") || path.starts_with("/home/me") || self.0.contains_key(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        !self.0.contains_key(path)
    }
}

impl Host for Files {
    fn read_to_string(&self, path: &Path) -> Option<String> {
        self.0.get(path).cloned()
    }
}

fn origin() -> Origin {
    Origin {
        file: "compose.yaml".into(),
        base_dir: PathBuf::from("/project"),
    }
}

fn env() -> BTreeMap<String, String> {
    [("HOME", "/home/me"), ("TAG", "1.25"), ("EMPTY", "")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn read_with(src: &str, files: &Files) -> Result<Converted, ManifestError> {
    parse(src, &origin(), &env(), files)
}

fn read(src: &str) -> Converted {
    match read_with(src, &Files::default()) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn web(src: &str) -> Service {
    read(src).manifest.services["web"].clone()
}

/// The one diagnostic of a refused file, as shown.
fn error(src: &str) -> String {
    let e = read_with(src, &Files::default()).unwrap_err();
    e.to_string()
}

#[test]
fn a_small_file_becomes_a_manifest() {
    let c =
        read("name: shop\nservices:\n  web:\n    image: nginx:${TAG}\n    ports: [\"8080:80\"]\n");
    assert_eq!(c.manifest.app, "shop");
    let web = &c.manifest.services["web"];
    assert_eq!(
        web.image,
        Image::Stored {
            reference: "nginx:1.25".into(),
            digest: None
        }
    );
    assert_eq!(web.ports[0].port, 80);
    assert_eq!(web.ports[0].publish.unwrap().to_string(), "127.0.0.1:8080");
    assert_eq!(web.restart.condition, RestartCondition::No);
    assert!(web.cap_add.contains(&"CAP_CHOWN".to_owned()));
    // The TOML text parses to the same manifest.
    let again = paracloud_manifest::parse(&c.toml, &origin(), &Files::default()).unwrap();
    assert_eq!(again, c.manifest);
}

#[test]
fn the_app_name_comes_from_the_directory_without_name() {
    let c = read("services:\n  web:\n    image: nginx\n");
    assert_eq!(c.manifest.app, "project");
    assert_eq!(project_name("My_App.v2"), "my-app-v2");
}

#[test]
fn build_short_and_long() {
    assert_eq!(
        web("services:\n  web:\n    build: ./app\n").image,
        Image::Build {
            context: "/project/app".into(),
            dockerfile: None,
            target: None,
            args: Default::default(),
            digest: None
        }
    );
    let s = web("services:\n  web:\n    image: mine\n    build:\n      context: app\n      dockerfile: Dockerfile\n");
    assert_eq!(
        s.image,
        Image::Build {
            context: "/project/app".into(),
            dockerfile: None,
            target: None,
            args: Default::default(),
            digest: None
        }
    );
    // The long form's target, args and Dockerfile go into the manifest's build table.
    let s = web("services:\n  web:\n    build:\n      context: app\n      dockerfile: Dockerfile.prod\n      target: prod\n      args:\n        VERSION: \"2\"\n");
    assert_eq!(
        s.image,
        Image::Build {
            context: "/project/app".into(),
            dockerfile: Some("/project/app/Dockerfile.prod".into()),
            target: Some("prod".into()),
            args: BTreeMap::from([("VERSION".into(), "2".into())]),
            digest: None
        }
    );
    let s = web(
        "services:\n  web:\n    build:\n      context: .\n      args: [\"A=1\", \"B=two words\"]\n",
    );
    let Image::Build { args, .. } = s.image else {
        panic!("{:?}", s.image)
    };
    assert_eq!(args["B"], "two words");
    let e = error("services:\n  web:\n    build:\n      context: .\n      args: [A]\n");
    assert!(e.contains("services.web.build.args"), "{e}");
    let e = error("services:\n  web:\n    build:\n      context: .\n      ssh: [default]\n");
    assert!(e.contains("services.web.build.ssh"), "{e}");
}

#[test]
fn commands_split_like_a_shell_or_come_as_lists() {
    let s = web("services:\n  web:\n    image: a\n    entrypoint: /bin/sh -c\n    command: [\"echo 'hi'\", x]\n");
    assert_eq!(s.entrypoint, vec!["/bin/sh", "-c"]);
    assert_eq!(s.command, vec!["echo 'hi'", "x"]);
    assert_eq!(
        web("services:\n  web:\n    image: a\n    command: echo \"a b\" $$HOME\n").command,
        vec!["echo", "a b", "$HOME"]
    );
}

#[test]
fn environment_map_list_env_file_and_dotenv() {
    let mut files = Files::default();
    files.0.insert(
        "/project/.env".into(),
        "FROM_DOTENV=dot\nTAG=ignored\n".into(),
    );
    files
        .0
        .insert("/project/web.env".into(), "A=file\nB=file\n".into());
    let src = "services:\n  web:\n    image: a:${TAG}\n    env_file: web.env\n    environment:\n      B: over\n      C: ${FROM_DOTENV}\n      HOME:\n      UNSET:\n";
    let c = read_with(src, &files).unwrap();
    let s = &c.manifest.services["web"];
    assert_eq!(
        s.image,
        Image::Stored {
            reference: "a:1.25".into(),
            digest: None
        }
    );
    let env: Vec<_> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(env, vec!["A=file", "B=over", "C=dot", "HOME=/home/me"]);
    let s = web("services:\n  web:\n    image: a\n    environment: [\"X=1\", \"Y=a=b\", TAG]\n");
    assert_eq!(s.env.get("Y").map(String::as_str), Some("a=b"));
    assert_eq!(s.env.get("TAG").map(String::as_str), Some("1.25"));
    let e = error("services:\n  web:\n    image: a\n    env_file: missing.env\n");
    assert!(e.contains("compose.yaml:4:15: services.web.env_file: env file /project/missing.env does not exist"), "{e}");
    let ok = read_with("services:\n  web:\n    image: a\n    env_file:\n      - path: missing.env\n        required: false\n", &Files::default());
    assert!(ok.is_ok());
}

#[test]
fn interpolation_errors_are_located() {
    let e = error("services:\n  web:\n    image: \"${NOPE:?set the image}\"\n");
    assert!(
        e.starts_with(
            "compose.yaml:3:12: required variable NOPE is not set or empty: set the image"
        ),
        "{e}"
    );
    assert!(error("services:\n  web:\n    image: a$\n").contains("invalid interpolation"));
    assert_eq!(
        web("services:\n  web:\n    image: \"${EMPTY:-b}${EMPTY-c}\"\n").image,
        Image::Stored {
            reference: "b:latest".into(),
            digest: None
        }
    );
}

#[test]
fn ports_short_long_ranges_and_expose() {
    let s = web("services:\n  web:\n    image: a\n    ports:\n      - \"127.0.0.1:8080:80\"\n      - 81\n      - \"9000-9001:90-91/tcp\"\n      - target: 7000\n        published: \"7001\"\n        host_ip: 0.0.0.0\n        app_protocol: http\n    expose: [\"81\", \"3000-3001\"]\n");
    let shown: Vec<String> = s
        .ports
        .iter()
        .map(|p| {
            format!(
                "{}/{:?}/{:?}",
                p.port,
                p.protocol,
                p.publish.map(|a| a.to_string())
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            "80/Tcp/Some(\"127.0.0.1:8080\")",
            "81/Tcp/None",
            "90/Tcp/Some(\"127.0.0.1:9000\")",
            "91/Tcp/Some(\"127.0.0.1:9001\")",
            "7000/Http/Some(\"0.0.0.0:7001\")",
            "3000/Tcp/None",
            "3001/Tcp/None",
        ]
    );
    let e = error("services:\n  web:\n    image: a\n    ports: [\"53:53/sctp\"]\n");
    assert!(
        e.starts_with("compose.yaml:4:13: services.web.ports[0]: sctp ports are not supported"),
        "{e}"
    );
    assert!(
        error("services:\n  web:\n    image: a\n    ports: [\"8000-8001:80\"]\n")
            .contains("same length")
    );
}

#[test]
fn udp_ports_short_long_and_expose() {
    let s = web("services:\n  web:\n    image: a\n    ports:\n      - \"5353:53/udp\"\n      - \"5353:53\"\n      - \"54/udp\"\n      - target: 55\n        published: \"5355\"\n        protocol: udp\n    expose: [\"53/udp\", \"56/udp\", \"56\"]\n");
    let shown: Vec<String> = s
        .ports
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{:?}",
                p.port,
                p.protocol.name(),
                p.publish.map(|a| a.to_string())
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            "53/udp/Some(\"127.0.0.1:5353\")",
            "53/tcp/Some(\"127.0.0.1:5353\")",
            "54/udp/None",
            "55/udp/Some(\"127.0.0.1:5355\")",
            "56/udp/None",
            "56/tcp/None",
        ]
    );
    let e = error("services:\n  web:\n    image: a\n    ports:\n      - target: 80\n        protocol: udp\n        app_protocol: http\n");
    assert!(
        e.starts_with("compose.yaml:6:19: services.web.ports[0].protocol: app_protocol http needs protocol tcp, found udp"),
        "{e}"
    );
}

#[test]
fn volumes_named_bind_and_long() {
    let s = web("services:\n  web:\n    image: a\n    volumes:\n      - data:/data\n      - ./conf:/etc/conf:ro\n      - type: bind\n        source: static\n        target: /srv\n        read_only: true\n      - ~/x:/x\nvolumes:\n  data:\n    labels: {backup: daily}\n");
    assert_eq!(
        s.volumes,
        vec![
            VolumeMount::Named {
                name: "data".into(),
                target: "/data".into(),
                read_only: false
            },
            VolumeMount::Bind {
                source: "/project/conf".into(),
                target: "/etc/conf".into(),
                read_only: true
            },
            VolumeMount::Bind {
                source: "/project/static".into(),
                target: "/srv".into(),
                read_only: true
            },
            VolumeMount::Bind {
                source: "/home/me/x".into(),
                target: "/x".into(),
                read_only: false
            },
        ]
    );
    let m = read("services:\n  web:\n    image: a\n    volumes: [data:/d]\nvolumes:\n  data:\n    labels: {backup: daily}\n").manifest;
    assert_eq!(m.volumes["data"].labels["backup"], "daily");
    assert!(
        error("services:\n  web:\n    image: a\n    volumes: [data:/d]\n").contains("not declared")
    );
    assert!(error("services:\n  web:\n    image: a\n    volumes: [/data]\n").contains("anonymous"));
    assert!(error("services:\n  web:\n    image: a\n    volumes: [/var/run/docker.sock:/var/run/docker.sock]\n").contains("Docker socket"));
    assert!(
        error("services:\n  web:\n    image: a\nvolumes:\n  d:\n    driver: nfs\n")
            .contains("volumes.d.driver")
    );
}

#[test]
fn depends_on_list_and_conditions() {
    let src = "services:\n  db:\n    image: pg\n    healthcheck:\n      test: [\"CMD\", \"pg_isready\"]\n  cache:\n    image: r\n  web:\n    image: a\n    depends_on:\n      db: {condition: service_healthy}\n      cache: {condition: service_started}\n";
    let s = web(src);
    assert_eq!(s.depends_on["db"], DependsCondition::Healthy);
    assert_eq!(s.depends_on["cache"], DependsCondition::Started);
    let s = web("services:\n  db:\n    image: pg\n  web:\n    image: a\n    depends_on: [db]\n");
    assert_eq!(s.depends_on["db"], DependsCondition::Started);
    let job = "services:\n  db:\n    image: pg\n    restart: \"no\"\n  web:\n    image: a\n    depends_on:\n      db:\n        condition: service_completed_successfully\n";
    assert_eq!(web(job).depends_on["db"], DependsCondition::Completed);
    let e = error(&job.replace("\"no\"", "always"));
    assert!(
        e.starts_with("compose.yaml:8:7: services.web.depends_on.db:")
            && e.contains("`db` restarts always, so it never stays completed"),
        "{e}"
    );
    let e = error(&job.replace("service_completed_successfully", "done"));
    assert!(
        e.starts_with("compose.yaml:9:20: services.web.depends_on.db.condition: unknown condition"),
        "{e}"
    );
    // A rule of the manifest, located in the Compose file.
    let e = error("services:\n  web:\n    image: a\n    depends_on: [nope]\n");
    assert!(
        e.starts_with("compose.yaml:4:18: services.web.depends_on.nope:"),
        "{e}"
    );
}

#[test]
fn healthchecks() {
    let s = web("services:\n  web:\n    image: a\n    healthcheck:\n      test: [\"CMD-SHELL\", \"curl -f localhost\"]\n      interval: 1m30s\n      timeout: 500ms\n      retries: 5\n      start_period: 2s\n");
    let h = s.health.unwrap();
    assert_eq!(
        h.probe,
        Probe::Exec {
            command: vec!["/bin/sh".into(), "-c".into(), "curl -f localhost".into()]
        }
    );
    assert_eq!(
        (h.interval, h.timeout, h.retries, h.start_period),
        (
            Duration::from_secs(90),
            Duration::from_millis(500),
            5,
            Duration::from_secs(2)
        )
    );
    let h =
        web("services:\n  web:\n    image: a\n    healthcheck:\n      test: wget -q localhost\n")
            .health
            .unwrap();
    assert_eq!(h.interval, Duration::from_secs(30));
    assert_eq!(
        web("services:\n  web:\n    image: a\n    healthcheck:\n      test: [\"NONE\"]\n").health,
        None
    );
    assert_eq!(web("services:\n  web:\n    image: a\n    healthcheck:\n      test: [\"CMD\", \"x\"]\n      disable: true\n").health, None);
    assert!(
        error("services:\n  web:\n    image: a\n    healthcheck:\n      interval: 1x\n")
            .contains("invalid duration")
    );
}

#[test]
fn restart_policies() {
    let policy = |p: &str| {
        web(&format!(
            "services:\n  web:\n    image: a\n    restart: \"{p}\"\n"
        ))
        .restart
    };
    assert_eq!(policy("no").condition, RestartCondition::No);
    assert_eq!(policy("always").condition, RestartCondition::Always);
    assert_eq!(policy("unless-stopped").condition, RestartCondition::Always);
    let r = policy("on-failure:3");
    assert_eq!(
        (r.condition, r.max_retries),
        (RestartCondition::OnFailure, Some(3))
    );
    assert!(
        error("services:\n  web:\n    image: a\n    restart: sometimes\n")
            .contains("unknown restart policy")
    );
}

#[test]
fn storage_opt_size_is_the_writable_layers_size() {
    let s = web("services:\n  web:\n    image: a\n    storage_opt:\n      size: 2g\n");
    assert_eq!(s.resources.disk, Some(2 << 30));
}

#[test]
fn deploy_replicas_and_limits() {
    let s = web("services:\n  web:\n    image: a\n    deploy:\n      replicas: 3\n      resources:\n        limits: {cpus: '0.5', memory: 512m, pids: 100}\n");
    assert_eq!(s.replicas, 3);
    assert_eq!(
        (s.resources.cpu, s.resources.memory, s.resources.pids),
        (Some(0.5), Some(512 << 20), Some(100))
    );
    let s = web("services:\n  web:\n    image: a\n    cpus: 2\n    mem_limit: 1g\n    scale: 2\n");
    assert_eq!(
        (s.resources.cpu, s.resources.memory, s.replicas),
        (Some(2.0), Some(1 << 30), 2)
    );
    assert!(error("services:\n  web:\n    image: a\n    deploy:\n      resources:\n        reservations: {cpus: 'x'}\n").contains("reservations.cpus"));
}

#[test]
fn the_remaining_service_keys() {
    let s = web("services:\n  web:\n    image: a\n    user: \"1000:1000\"\n    working_dir: /srv\n    labels: [\"tier=front\"]\n    container_name: w\n    hostname: w\n    stop_signal: SIGINT\n    stop_grace_period: 1m\n    cap_add: [SYS_PTRACE]\n    x-note: ignored\nx-common: {a: 1}\nversion: \"3.8\"\n");
    assert_eq!(s.user.as_deref(), Some("1000:1000"));
    assert_eq!(s.working_dir.as_deref(), Some("/srv"));
    assert_eq!(s.labels["tier"], "front");
    assert_eq!(s.stop_signal, "SIGINT");
    assert_eq!(s.stop_grace_period, Duration::from_secs(60));
    assert!(s.cap_add.contains(&"CAP_SYS_PTRACE".to_owned()));
}

#[test]
fn anchors_and_merge_keys_work_as_in_compose() {
    let s = web("x-base: &base\n  image: a\n  environment: {A: \"1\"}\nservices:\n  web:\n    <<: *base\n    command: run\n");
    assert_eq!(s.env["A"], "1");
    assert_eq!(s.command, vec!["run"]);
}

#[test]
fn sandbox_keys_carry_over() {
    let s = web("services:\n  web:\n    image: a\n    init: true\n    read_only: true\n    shm_size: 128m\n    tmpfs: [/run, \"/cache:size=64m,mode=1770\"]\n    volumes:\n      - type: tmpfs\n        target: /scratch\n        tmpfs: {size: 1048576, mode: \"700\"}\n    ulimits:\n      nproc: 512\n      nofile: {soft: 1024, hard: 4096}\n    sysctls: [net.core.somaxconn=1024]\n    cap_drop: [ALL]\n    cap_add: [NET_BIND_SERVICE]\n");
    let b = &s.sandbox;
    assert!(b.init && b.read_only);
    assert_eq!(b.shm_size, Some(128 << 20));
    let tmpfs: Vec<_> = b
        .tmpfs
        .iter()
        .map(|t| (t.target.as_str(), t.size, t.mode))
        .collect();
    assert_eq!(
        tmpfs,
        [
            ("/scratch", Some(1 << 20), Some(0o700)),
            ("/run", None, None),
            ("/cache", Some(64 << 20), Some(0o1770)),
        ]
    );
    assert_eq!(
        b.ulimits["nproc"],
        Ulimit {
            soft: 512,
            hard: 512
        }
    );
    assert_eq!(
        b.ulimits["nofile"],
        Ulimit {
            soft: 1024,
            hard: 4096
        }
    );
    assert_eq!(b.sysctls["net.core.somaxconn"], "1024");
    assert!(
        !b.host_ids,
        "a user namespace of its own unless `userns_mode: host`"
    );
    assert!(
        web("services:\n  web:\n    image: a\n    userns_mode: host\n")
            .sandbox
            .host_ids
    );
    assert_eq!(s.cap_add, ["CAP_NET_BIND_SERVICE"]);
    let kept = web("services:\n  web:\n    image: a\n    cap_drop: [chown, CAP_KILL]\n").cap_add;
    assert!(!kept.contains(&"CAP_CHOWN".to_owned()) && !kept.contains(&"CAP_KILL".to_owned()));
    assert!(kept.contains(&"CAP_SETUID".to_owned()));
    for (key, wanted) in [
        ("sysctls: {kernel.panic: 1}", "would change the host"),
        ("ulimits: {files: 1}", "unknown ulimit `files`"),
        (
            "ulimits: {nofile: {soft: 9, hard: 1}}",
            "above the hard limit",
        ),
        ("tmpfs: \"/run:ro\"", "tmpfs option `ro` is not supported"),
        ("tmpfs: run", "must be an absolute path"),
        ("cap_add: [ALL]", "`cap_add: ALL` is not supported"),
        ("shm_size: lots", "invalid memory size"),
        (
            "userns_mode: \"keep-id\"",
            "\"keep-id\" is not a user namespace mode",
        ),
        ("userns_mode: [host]", "expected \"host\""),
    ] {
        let e = error(&format!("services:\n  web:\n    image: a\n    {key}\n"));
        assert!(
            e.starts_with("compose.yaml:4:") && e.contains(wanted),
            "{key}: {e}"
        );
    }
}

#[test]
fn secrets_and_configs_are_files_bound_read_only() {
    let c = read("secrets:\n  db_password: {file: ./pw.txt}\n  token: {file: ~/token}\nconfigs:\n  app: {file: app.conf}\nservices:\n  web:\n    image: a\n    secrets: [db_password, {source: token, target: api-token}]\n    configs: [app, {source: app, target: /etc/app.conf}]\n");
    let mounts: Vec<(String, String, bool)> = c.manifest.services["web"]
        .volumes
        .iter()
        .map(|v| match v {
            VolumeMount::Bind {
                source,
                target,
                read_only,
            } => (source.display().to_string(), target.clone(), *read_only),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        mounts,
        [
            (
                "/project/pw.txt".into(),
                "/run/secrets/db_password".into(),
                true
            ),
            (
                "/home/me/token".into(),
                "/run/secrets/api-token".into(),
                true
            ),
            ("/project/app.conf".into(), "/app".into(), true),
            ("/project/app.conf".into(), "/etc/app.conf".into(), true),
        ]
    );
    for (src, wanted) in [
        ("secrets: {s: {environment: TOKEN}}\nservices:\n  web: {image: a}\n", "compose.yaml:1:15: secrets.s.environment: `environment` is not supported"),
        ("secrets: {s: {}}\nservices:\n  web: {image: a}\n", "compose.yaml:1:11: secrets.s: missing required key `file`"),
        ("services:\n  web: {image: a, secrets: [nope]}\n", "compose.yaml:2:29: services.web.secrets[0]: secret `nope` is not declared in the top-level `secrets`"),
        ("secrets: {s: {file: x}}\nservices:\n  web: {image: a, secrets: [{source: s, mode: 0400}]}\n", "services.web.secrets[0].mode: `mode` is not supported"),
    ] {
        let e = error(src);
        assert!(e.starts_with(wanted) || e.contains(wanted), "{src}: {e}");
    }
}

#[test]
fn profiles_choose_the_services_that_run() {
    let src = "services:\n  web: {image: a}\n  debug: {image: b, profiles: [tools]}\n";
    let c = read(src);
    assert_eq!(c.manifest.services.keys().collect::<Vec<_>>(), ["web"]);
    let mut vars = env();
    vars.insert("COMPOSE_PROFILES".into(), "other,tools".into());
    let c = parse(src, &origin(), &vars, &Files::default()).unwrap();
    assert_eq!(
        c.manifest.services.keys().collect::<Vec<_>>(),
        ["debug", "web"]
    );
    let e = error("services:\n  web: {image: a, depends_on: [debug]}\n  debug: {image: b, profiles: [tools]}\n");
    assert!(
        e.contains("`web` depends on `debug`, which runs only with the profile tools")
            && e.contains("--profile tools"),
        "{e}"
    );
    let e = error("services:\n  web: {image: a, profiles: [\"-x\"]}\n");
    assert!(e.contains("invalid profile name"), "{e}");
}

#[test]
fn extends_merges_the_base_service_under_its_own_keys() {
    let s = web("services:\n  base:\n    image: a\n    environment: [A=1, B=2]\n    command: [sleep, '1']\n    labels: {tier: x}\n  web:\n    extends: base\n    environment: {B: '3'}\n    command: [sleep, '2']\n  other:\n    extends: {service: web}\n");
    assert_eq!(s.env["A"], "1");
    assert_eq!(s.env["B"], "3");
    assert_eq!(s.command, ["sleep", "2"]);
    assert_eq!(s.labels["tier"], "x");
    let c = read("services:\n  base: {image: a, environment: [A=1]}\n  web: {extends: base}\n  other: {extends: {service: web}}\n");
    assert_eq!(c.manifest.services["other"].env["A"], "1");
    for (src, wanted) in [
        (
            "services:\n  a: {extends: b}\n  b: {extends: a}\n",
            "`extends` loops: a -> b -> a",
        ),
        (
            "services:\n  a: {image: x, extends: nope}\n",
            "`nope` is not a service of this file",
        ),
        (
            "services:\n  a: {image: x}\n  b: {extends: {service: a, file: other.yaml}}\n",
            "services.b.extends.file: `file` is not supported",
        ),
    ] {
        let e = error(src);
        assert!(e.contains(wanted), "{src}: {e}");
    }
}

#[test]
fn networks_split_the_services_and_aliases_name_them() {
    let c = read("networks:\n  front_end: {driver: bridge, labels: [tier=web]}\n  back: {internal: true}\nservices:\n  web: {image: a, networks: [front_end]}\n  api:\n    image: a\n    networks:\n      front_end: {aliases: [backend]}\n      back:\n  db: {image: a, networks: [back]}\n  tool: {image: a}\n");
    let m = &c.manifest;
    assert_eq!(m.networks.keys().collect::<Vec<_>>(), ["back", "front-end"]);
    assert_eq!(m.networks["front-end"].labels["tier"], "web");
    assert!(m.reaches("web", "api") && m.reaches("api", "db") && !m.reaches("web", "db"));
    assert!(!m.reaches("tool", "web"), "tool is on default alone");
    assert_eq!(m.names_of("web", "api"), ["api", "backend"]);
    assert_eq!(m.names_of("db", "api"), ["api"]);
    assert!(m.is_split());
    let c = read("networks:\n  back: {ipam: {config: [{subnet: 172.28.0.0/16}]}}\nservices:\n  db: {image: a, networks: {back: {ipv4_address: 172.28.5.4}}}\n");
    assert_eq!(
        c.manifest.fixed_address("db"),
        Some("172.28.5.4".parse().unwrap())
    );
    assert_eq!(
        c.manifest.networks["back"].subnet,
        Some("172.28.0.0/16".parse().unwrap())
    );
    for (src, wanted) in [
        ("services:\n  web: {image: a, networks: [nope]}\n", "compose.yaml:2:30: services.web.networks[0]: network `nope` is not declared in the top-level `networks`"),
        ("networks: {n: {ipam: {config: [{subnet: 172.28.0.0/16}]}}}\nservices:\n  web: {image: a, networks: {n: {ipv4_address: 10.0.0.2}}}\n", "10.0.0.2 is not a host address of network `n`'s subnet 172.28.0.0/16"),
        ("networks: {n: {}}\nservices:\n  web: {image: a, networks: {n: {ipv4_address: 10.0.0.2}}}\n  db: {image: a, networks: {n: {ipv4_address: 10.0.0.2}}}\n", "10.0.0.2 is the address of `db` too"),
        ("networks: {n: {ipam: {config: [{subnet: 172.28.0.0/16, gateway: 172.28.0.1}]}}}\nservices:\n  web: {image: a}\n", "`gateway` is not supported"),
        ("networks: {n: {}}\nservices:\n  web: {image: a, networks: {n: {ipv6_address: \"::1\"}}}\n", "`ipv6_address` is not supported"),
        ("networks: {n: {driver: overlay}}\nservices:\n  web: {image: a}\n", "networks.n.driver: `driver` is not supported"),
        ("networks: {n: {external: true}}\nservices:\n  web: {image: a}\n", "networks.n.external: `external` is not supported"),
        ("networks: {n: {}}\nservices:\n  web: {image: a, networks: {n: {aliases: [web2]}}}\n  web2: {image: a}\n", "alias `web2` is the name of another service"),
    ] {
        let e = error(src);
        assert!(e.contains(wanted), "{src}: {e}");
    }
}

#[test]
fn keys_paracloud_cannot_honour_are_refused_with_a_way_out() {
    let e = error("services:\n  web:\n    image: a\n    privileged: true\n");
    assert_eq!(e, "compose.yaml:4:5: services.web.privileged: `privileged` is not supported: instances never run privileged\n  hint: remove `privileged`, and add only the capabilities the service needs to `cap_add`");
    for key in [
        "network_mode: host",
        "devices: [/dev/fuse]",
        "runtime: runc",
    ] {
        let e = error(&format!("services:\n  web:\n    image: a\n    {key}\n"));
        let name = key.split(':').next().unwrap();
        assert!(
            e.starts_with(&format!(
                "compose.yaml:4:5: services.web.{name}: `{name}` is not supported"
            )),
            "{e}"
        );
    }
    assert!(
        error("include: [a.yaml]\nservices:\n  web:\n    image: a\n")
            .starts_with("compose.yaml:1:1:")
    );
    let e = error("services:\n  web:\n    imgae: a\n");
    assert!(
        e.contains("unknown key `imgae`") && e.contains("did you mean `image`?"),
        "{e}"
    );
}

#[test]
fn yaml_errors_are_located() {
    let e = error("services:\n  web:\n    image: [a\n");
    assert!(e.starts_with("compose.yaml:"), "{e}");
    assert!(e.contains("invalid YAML"), "{e}");
}

#[test]
fn the_format_is_told_by_extension_then_content() {
    assert!(is_compose(Path::new("x/compose.yaml"), ""));
    assert!(!is_compose(Path::new("paracloud.toml"), "services:\n"));
    assert!(is_compose(
        Path::new("manifest"),
        "services:\n  web:\n    image: a\n"
    ));
    assert!(!is_compose(Path::new("manifest"), "app = \"a\"\n"));
}

mod never_panics {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn on_any_text(src in "\\PC{0,200}") {
            let _ = read_with(&src, &Files::default());
        }

        #[test]
        fn on_compose_like_text(src in "(services:\n  [a-z]{1,3}:\n    (image: [a-z$]{1,4}\n|ports: \\[\"[0-9:/a-z-]{0,12}\"\\]\n|volumes: \\[[a-z./:~]{0,10}\\]\n|command: [\"' a-z$]{0,10}\n|healthcheck: \\{test: [a-zA-Z-]{0,5}\\}\n|restart: [a-z:0-9-]{0,12}\n|depends_on: \\[[a-z]{1,3}\\]\n|[a-z_]{1,10}: [a-z0-9{}]{0,5}\n){0,6}){0,2}") {
            // What is accepted reads back the same from its TOML.
            if let Ok(c) = read_with(&src, &Files::default()) {
                let again = paracloud_manifest::parse(&c.toml, &origin(), &Files::default());
                prop_assert_eq!(again.ok(), Some(c.manifest));
            }
        }

        #[test]
        fn interpolation_on_any_text(text in "[${}:?+a-zA-Z_-]{0,40}") {
            let _ = interpolate(&text, &|name| (name == "A").then(|| "x".to_owned()));
        }
    }
}

#[test]
fn volume_names_become_dns_labels() {
    let s =
        web("services:\n  web:\n    image: a\n    volumes: [db_data:/d]\nvolumes:\n  db_data:\n");
    assert_eq!(
        s.volumes,
        vec![VolumeMount::Named {
            name: "db-data".into(),
            target: "/d".into(),
            read_only: false
        }]
    );
    let e = error("services:\n  web:\n    image: a\nvolumes:\n  a_b:\n  a-b:\n");
    assert!(
        e.starts_with(
            "compose.yaml:6:3: volumes.a-b: volume `a-b` is named `a-b` like another one"
        ),
        "{e}"
    );
}

#[test]
fn override_files_merge_over_the_first_and_errors_name_their_file() {
    let files = [
        ("compose.yaml".to_owned(), "name: shop\nservices:\n  web:\n    image: a\n    environment: [A=1]\n    ports: ['8080:80']\n".to_owned()),
        ("compose.override.yaml".to_owned(), "services:\n  web:\n    image: b\n    environment: {B: '2'}\n  debug:\n    image: c\n".to_owned()),
    ];
    let c = parse_files(&files, &origin(), &env(), &Files::default()).unwrap();
    let web = &c.manifest.services["web"];
    assert_eq!(c.manifest.app, "shop");
    assert_eq!(web.env["A"], "1");
    assert_eq!(web.env["B"], "2");
    assert_eq!(web.ports.len(), 1);
    assert!(matches!(&web.image, Image::Stored { reference, .. } if reference == "b:latest"));
    assert!(c.manifest.services.contains_key("debug"));

    let bad = [
        files[0].clone(),
        (
            "more.yaml".to_owned(),
            "services:\n  web:\n    privileged: true\n".to_owned(),
        ),
    ];
    let e = parse_files(&bad, &origin(), &env(), &Files::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("more.yaml:3:5: services.web.privileged:"),
        "{e}"
    );
    let broken = [
        files[0].clone(),
        ("more.yaml".to_owned(), "services: [\n".to_owned()),
    ];
    let e = parse_files(&broken, &origin(), &env(), &Files::default())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("more.yaml:"), "{e}");
}

#[test]
fn deploy_restart_policy_is_the_restart_policy() {
    let s = web("services:\n  web:\n    image: a\n    deploy:\n      restart_policy:\n        condition: on-failure\n        max_attempts: 3\n        delay: 5s\n");
    assert_eq!(s.restart.condition, RestartCondition::OnFailure);
    assert_eq!(s.restart.max_retries, Some(3));
    assert_eq!(s.restart.backoff_initial, Duration::from_secs(5));
    let s = web("services:\n  web:\n    image: a\n    deploy: {restart_policy: {}}\n");
    assert_eq!(s.restart.condition, RestartCondition::Always);
    for (src, wanted) in [
        ("services:\n  web:\n    image: a\n    restart: always\n    deploy: {restart_policy: {condition: any}}\n", "compose.yaml:5:14: services.web.deploy.restart_policy: a service has either `restart` or `deploy.restart_policy`, not both"),
        ("services:\n  web:\n    image: a\n    deploy: {restart_policy: {window: 10s}}\n", "services.web.deploy.restart_policy.window: `window` is not supported"),
        ("services:\n  web:\n    image: a\n    deploy: {restart_policy: {condition: sometimes}}\n", "unknown condition \"sometimes\""),
    ] {
        let e = error(src);
        assert!(e.contains(wanted), "{src}: {e}");
    }
}

#[test]
fn deploy_reservations_are_the_resources_reserved() {
    let s = web("services:\n  web:\n    image: a\n    deploy:\n      resources:\n        limits: {memory: 512m}\n        reservations: {cpus: '0.25', memory: 128m}\n");
    assert_eq!(s.resources.memory_reservation, Some(128 << 20));
    assert_eq!(s.resources.cpu_reservation, Some(0.25));
    let e = error("services:\n  web:\n    image: a\n    deploy:\n      resources:\n        limits: {memory: 64m}\n        reservations: {memory: 128m}\n");
    assert!(
        e.contains("the reservation, 134217728 bytes, is above the limit, 67108864 bytes"),
        "{e}"
    );
    let e = error("services:\n  web:\n    image: a\n    deploy: {resources: {reservations: {devices: [{capabilities: [gpu]}]}}}\n");
    assert!(e.contains("`devices` is not supported"), "{e}");
}

#[test]
fn external_volumes_name_the_machines_volumes() {
    let c = read("volumes:\n  data: {external: true}\n  cache: {external: true, name: shared_cache}\n  own: {}\nservices:\n  web: {image: a, volumes: [data:/data, cache:/cache, own:/own]}\n");
    let v = &c.manifest.volumes;
    assert_eq!(v["data"].external.as_deref(), Some("data"));
    assert_eq!(v["cache"].external.as_deref(), Some("shared-cache"));
    assert_eq!(v["own"].external, None);
    let e = error("volumes:\n  data: {name: other}\nservices:\n  web: {image: a}\n");
    assert!(
        e.contains("volumes.data.name: `name` names an external volume"),
        "{e}"
    );
}
