//! Services of the catalogue: what a `catalog = "postgres"` table is made into, and the errors
//! of every key it takes or refuses.

use super::{check, valid};
use crate::catalog::{entry, CATALOG};
use crate::*;

const DB: &str = "app = \"a\"\n[services.db]\ncatalog = \"postgres\"\n";
const PASSWORD: &str = "env = { POSTGRES_PASSWORD = \"secret\" }\n";

#[test]
fn a_postgres_service_is_a_primary_on_its_volume_and_replicas_behind_a_read_address() {
    let manifest = valid(&format!(
        "{DB}replicas = 2\nstorage = \"512M\"\n{PASSWORD}resources = {{ cpu = 1 }}\nlabels = {{ tier = \"data\" }}\n"
    ));
    assert_eq!(
        manifest.services.keys().collect::<Vec<_>>(),
        ["db", "db-read"]
    );
    let primary = &manifest.services["db"];
    let replicas = &manifest.services["db-read"];
    assert!(primary.is_catalog_primary());
    assert!(!replicas.is_catalog_primary());
    assert_eq!(replicas.reads_also_from(), Some("db"));
    assert_eq!(primary.replicas, 1);
    assert_eq!(replicas.replicas, 2);
    assert_eq!(
        manifest.volumes["db-data"].size,
        Some(512 << 20),
        "the primary's volume is `storage` bytes"
    );
    assert!(matches!(
        &primary.volumes[..],
        [VolumeMount::Named { name, target, .. }] if name == "db-data" && target == "/var/lib/postgresql"
    ));
    assert!(replicas.volumes.is_empty(), "a replica's data is its own");
    assert_eq!(
        replicas.depends_on.get("db"),
        Some(&DependsCondition::Healthy)
    );
    for service in [primary, replicas] {
        assert_eq!(service.ports.len(), 1);
        assert_eq!(service.ports[0].port, 5432);
        assert_eq!(service.env["POSTGRES_PASSWORD"], "secret");
        assert_eq!(service.resources.cpu, Some(1.0));
        assert_eq!(service.labels["tier"], "data");
        assert!(service.health.is_some());
        let catalog = service.catalog.as_ref().expect("catalogued");
        assert_eq!(catalog.kind, CatalogKind::Postgres);
        assert_eq!(catalog.version, "15");
    }
    assert_eq!(
        primary.image, replicas.image,
        "both run the catalogue's one image"
    );
    let Image::Stored { reference, .. } = &primary.image else {
        panic!("a store image, built by the daemon: {:?}", primary.image);
    };
    assert_eq!(
        reference,
        &entry("postgres").unwrap().image("15").unwrap().tag
    );
    assert!(reference.starts_with("paracloud-catalog/postgres:15-"));
    // A primary that fails its check is restarted; a replica behind only leaves the reads.
    assert!(primary.health.as_ref().unwrap().restart);
    let replica_health = replicas.health.as_ref().unwrap();
    assert!(!replica_health.restart);
    assert!(
        matches!(&replica_health.probe, Probe::Exec { command } if command.last().map(String::as_str) == Some("10000")),
        "{replica_health:?}"
    );
    // 512M: a quarter for the WAL, half of which is kept for replicas.
    assert_eq!(primary.entrypoint[1..], ["primary", "128", "64", "local"]);
    assert_eq!(replicas.entrypoint[1..], ["replica", "db", "128", "64"]);
}

#[test]
fn a_postgres_service_has_no_replicas_and_a_gigabyte_unless_it_says() {
    let manifest = valid(&format!("{DB}{PASSWORD}"));
    assert_eq!(manifest.services["db-read"].replicas, 0);
    assert_eq!(manifest.volumes["db-data"].size, Some(1 << 30));
}

#[test]
fn an_unknown_catalogue_name_says_what_the_catalogue_has() {
    check(
        "app = \"a\"\n[services.db]\ncatalog = \"postgre\"\n",
        r#"
paracloud.toml:3:11: services.db.catalog: no service "postgre" in the catalogue
  hint: did you mean "postgres"? `paracloud catalog ls` lists the catalogue
"#,
    );
    check(
        "app = \"a\"\n[services.db]\ncatalog = \"oracle\"\n",
        r#"
paracloud.toml:3:11: services.db.catalog: no service "oracle" in the catalogue
  hint: the catalogue has postgres, mariadb, redis, static, php, taskfarm; `paracloud catalog ls` says what each offers
"#,
    );
}

#[test]
fn a_key_the_catalogue_service_does_not_take_is_refused_where_it_is() {
    check(
        &format!("{DB}{PASSWORD}command = \"postgres -D /x\"\nreplicaz = 1\n"),
        r#"
paracloud.toml:5:1: services.db.command: `catalog = "postgres"` does not take `command`
  hint: the catalogue runs `postgres` itself; its keys are catalog, version, replicas, storage, env, synchronous, max_lag, restore, resources, labels, capsules
paracloud.toml:6:1: services.db.replicaz: `catalog = "postgres"` does not take `replicaz`
  hint: did you mean `replicas`?
"#,
    );
}

#[test]
fn replicas_version_storage_and_the_password_are_checked() {
    check(
        &format!("{DB}{PASSWORD}replicas = 9\n"),
        r#"
paracloud.toml:5:12: services.db.replicas: 9 read replicas is more than the 8 a catalogue service takes
  hint: use at most 8: each replica streams every write of the primary
"#,
    );
    check(
        &format!("{DB}{PASSWORD}version = \"16\"\n"),
        r#"
paracloud.toml:5:11: services.db.version: the catalogue's postgres runs version 15, not "16"
  hint: write `version = "15"`, or leave it out
"#,
    );
    check(
        &format!("{DB}{PASSWORD}storage = \"100M\"\n"),
        r#"
paracloud.toml:5:11: services.db.storage: 104857600 bytes is below the minimum of 256M
  hint: give at least "256M"; did you forget the unit?
"#,
    );
    check(
        DB,
        r#"
paracloud.toml:2:1: services.db.env.POSTGRES_PASSWORD: a catalogue postgres service needs `env.POSTGRES_PASSWORD`
  hint: add `env = { POSTGRES_PASSWORD = "..." }`: the password every connection gives, its replicas' included
"#,
    );
    check(
        &format!("{DB}env = {{ POSTGRES_PASSWORD = \"\" }}\n"),
        r#"
paracloud.toml:4:29: services.db.env.POSTGRES_PASSWORD: the password is empty
  hint: give it a password: connections from the other instances need one
"#,
    );
}

#[test]
fn what_is_passed_on_is_checked_where_it_is_written() {
    check(
        &format!("{DB}{PASSWORD}resources = {{ cpu = -1 }}\n"),
        &match crate::parse(
            "app = \"a\"\n[services.db]\nimage = \"host\"\ncommand = \"x\"\nresources = { cpu = -1 }\n",
            &super::origin(),
            &super::FakeFs,
        ) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a negative cpu is refused"),
        },
    );
}

#[test]
fn the_services_and_volume_a_catalogue_service_makes_are_its_own() {
    check(
        &format!("{DB}{PASSWORD}[services.db-read]\nimage = \"host\"\ncommand = \"x\"\n"),
        r#"
paracloud.toml:3:11: services.db.catalog: the catalogue service `db` makes a service `db-read` (its read replicas), and the manifest has a service of that name
  hint: rename one of `db` and `db-read`
"#,
    );
    check(
        &format!("{DB}{PASSWORD}[volumes.db-data]\nsize = \"2G\"\n"),
        r#"
paracloud.toml:3:11: services.db.catalog: the catalogue service `db` keeps its data on the volume `db-data`, which `[volumes.db-data]` declares too
  hint: remove `[volumes.db-data]`: its size is the service's `storage`
"#,
    );
}

#[test]
fn every_catalogue_image_is_named_by_what_it_is_made_of() {
    let mut tags = Vec::new();
    for entry in CATALOG {
        for version in entry.versions {
            let image = entry.image(version).expect("a server's image");
            assert!(image.tag.parse::<paracloud_image_spec::Reference>().is_ok());
            assert!(
                image
                    .tag
                    .starts_with(&format!("paracloud-catalog/{}:{version}-", entry.name)),
                "{}",
                image.tag
            );
            // The servers and PHP run an entry script; a static site runs nginx itself. The
            // servers hold a lock on their data.
            let scripted = entry.kind != CatalogKind::Static;
            let server = entry
                .addresses
                .iter()
                .any(|(a, _)| a.starts_with("NAME-read:"));
            assert_eq!(
                scripted,
                image.files.iter().any(|(path, script, mode)| path
                    == "/usr/local/lib/paracloud/catalog"
                    && script.starts_with("#!/bin/sh")
                    && (script.contains("lock_or_follow() {") == server)
                    && !script.contains("@COMMON@")
                    && !script.contains("@VERSION@")
                    && *mode == 0o755),
                "{}",
                entry.name
            );
            assert_eq!(
                scripted,
                image.programs.iter().any(|p| p == "/usr/bin/setpriv")
            );
            assert_eq!(
                Some(&image),
                entry.image(version).as_ref(),
                "the same recipe every time"
            );
            tags.push(image.tag);
        }
    }
    let before = tags.len();
    tags.dedup();
    assert_eq!(tags.len(), before, "{tags:?}");
}

#[test]
fn a_restore_names_a_dump_file_that_exists() {
    let manifest = valid(&format!("{DB}{PASSWORD}restore = \"app.env\"\n"));
    let primary = &manifest.services["db"];
    assert!(primary.volumes.iter().any(|v| matches!(
        v,
        VolumeMount::Bind { source, target, read_only: true }
            if source == std::path::Path::new("/srv/shop/app.env") && target == "/restore.dump"
    )));
    assert!(
        manifest.services["db-read"].volumes.is_empty(),
        "replicas copy the primary"
    );
    for missing in ["nope.dump", "conf"] {
        let error = crate::parse(
            &format!("{DB}{PASSWORD}restore = \"{missing}\"\n"),
            &super::origin(),
            &super::FakeFs,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with(&format!(
                "paracloud.toml:5:11: services.db.restore: no dump to restore at /srv/shop/{missing}"
            )),
            "{error}"
        );
    }
}

#[test]
fn a_redis_service_is_a_primary_with_the_persistence_asked_and_replicas() {
    let manifest = valid(
        "app = \"a\"\n[services.cache]\ncatalog = \"redis\"\nreplicas = 1\npersistence = \"aof\"\nenv = { REDIS_PASSWORD = \"pw\" }\n",
    );
    let primary = &manifest.services["cache"];
    let replicas = &manifest.services["cache-read"];
    assert!(primary.is_catalog_primary());
    assert_eq!(replicas.reads_also_from(), Some("cache"));
    assert_eq!(primary.entrypoint[1..], ["primary", "aof"]);
    assert_eq!(replicas.entrypoint[1..], ["replica", "cache"]);
    assert_eq!(primary.ports[0].port, 6379);
    assert_eq!(manifest.volumes["cache-data"].size, Some(1 << 30));
    assert!(matches!(
        &primary.volumes[..],
        [VolumeMount::Named { name, target, .. }] if name == "cache-data" && target == "/data"
    ));
    let Image::Stored { reference, .. } = &primary.image else {
        panic!("a store image: {:?}", primary.image);
    };
    assert!(
        reference.starts_with("paracloud-catalog/redis:7-"),
        "{reference}"
    );
    let rdb = valid(
        "app = \"a\"\n[services.cache]\ncatalog = \"redis\"\nenv = { REDIS_PASSWORD = \"pw\" }\n",
    );
    assert_eq!(rdb.services["cache"].entrypoint[1..], ["primary", "rdb"]);
}

#[test]
fn a_redis_service_checks_its_own_keys() {
    let head = "app = \"a\"\n[services.cache]\ncatalog = \"redis\"\n";
    check(
        &format!("{head}env = {{ REDIS_PASSWORD = \"pw\" }}\npersistence = \"always\"\nrestore = \"app.env\"\n"),
        r#"
paracloud.toml:5:15: services.cache.persistence: unknown persistence "always"
  hint: write one of rdb, aof, none
paracloud.toml:6:1: services.cache.restore: `catalog = "redis"` does not take `restore`
  hint: `restore` is a key of `catalog = "postgres"`; this one's keys are catalog, version, replicas, storage, persistence, env, resources, labels, capsules
"#,
    );
    check(
        head,
        r#"
paracloud.toml:2:1: services.cache.env.REDIS_PASSWORD: a catalogue redis service needs `env.REDIS_PASSWORD`
  hint: add `env = { REDIS_PASSWORD = "..." }`: the password every connection gives, its replicas' included
"#,
    );
}

#[test]
fn synchronous_commits_need_a_replica() {
    let manifest = valid(&format!("{DB}{PASSWORD}replicas = 1\nsynchronous = true\n"));
    let primary = &manifest.services["db"];
    assert_eq!(
        primary.entrypoint.last().map(String::as_str),
        Some("synchronous")
    );
    for service in manifest.services.values() {
        assert!(
            service.catalog.as_ref().unwrap().synchronous,
            "{}",
            service.name
        );
    }
    check(
        &format!("{DB}{PASSWORD}synchronous = true\n"),
        r#"
paracloud.toml:5:15: services.db.synchronous: synchronous replication needs a replica: each commit waits for one
  hint: add `replicas = 1` (or more: with two, a commit waits for the first of them)
"#,
    );
}

const FARM: &str = "app = \"a\"\n[services.render]\ncatalog = \"taskfarm\"\nimage = \"tools:1\"\n";

#[test]
fn a_task_farm_is_one_service_of_idle_workers_none_until_a_batch_runs() {
    let manifest = valid(&format!(
        "{FARM}max_workers = 12\nretries = 1\ntask_timeout = \"90s\"\nenv = {{ SCALE = \"2\" }}\nvolumes = [\"frames:/frames\"]\nresources = {{ cpu = 1 }}\n"
    ));
    assert_eq!(manifest.services.keys().collect::<Vec<_>>(), ["render"]);
    let workers = &manifest.services["render"];
    assert_eq!(workers.replicas, 0, "no worker before a batch");
    assert_eq!(
        workers.task_farm(),
        Some(&TaskFarm {
            max_workers: 12,
            retries: 1,
            task_timeout_ms: 90_000,
        })
    );
    assert!(workers.sandbox.init, "pid 1 reaps what tasks leave behind");
    assert_eq!(workers.argv()[..2], ["/bin/sh".to_owned(), "-c".to_owned()]);
    assert_eq!(workers.env["SCALE"], "2");
    assert_eq!(workers.resources.cpu, Some(1.0));
    assert!(matches!(&workers.volumes[..], [VolumeMount::Named { name, .. }] if name == "frames"));
    assert!(workers.ports.is_empty() && workers.health.is_none());
    assert!(!workers.is_catalog_primary());
    assert!(
        entry("taskfarm").unwrap().image("").is_none(),
        "it runs the application's image"
    );

    let defaults = valid(FARM);
    assert_eq!(
        defaults.services["render"].task_farm(),
        Some(&TaskFarm {
            max_workers: 8,
            retries: 2,
            task_timeout_ms: 3_600_000,
        })
    );
}

#[test]
fn a_task_farm_checks_its_own_keys() {
    check(
        "app = \"a\"\n[services.render]\ncatalog = \"taskfarm\"\n",
        r#"
paracloud.toml:3:11: services.render.image: a task farm needs the image its tasks run in
  hint: add `image = "..."` (with /bin/sh and sleep in it), or `build = "DIR"`
"#,
    );
    check(
        &format!("{FARM}max_workers = 65\nretries = 11\ntask_timeout = \"0s\"\n"),
        r#"
paracloud.toml:5:15: services.render.max_workers: must be between 1 and 64, found 65
"#,
    );
    check(
        &format!("{FARM}replicas = 3\nstorage = \"1G\"\nmax_worker = 2\n"),
        r#"
paracloud.toml:5:1: services.render.replicas: `catalog = "taskfarm"` does not take `replicas`
  hint: the catalogue runs `taskfarm` itself; its keys are catalog, image, build, max_workers, retries, task_timeout, env, volumes, resources, labels, capsules
paracloud.toml:6:1: services.render.storage: `catalog = "taskfarm"` does not take `storage`
  hint: `storage` is a key of `catalog = "postgres"`; this one's keys are catalog, image, build, max_workers, retries, task_timeout, env, volumes, resources, labels, capsules
paracloud.toml:7:1: services.render.max_worker: `catalog = "taskfarm"` does not take `max_worker`
  hint: did you mean `max_workers`?
"#,
    );
}

#[test]
fn a_static_site_is_nginx_instances_serving_its_root_read_only_on_port_80() {
    let manifest = valid(
        "app = \"a\"\n[services.site]\ncatalog = \"static\"\nroot = \"/srv/shop/conf\"\nreplicas = 3\nports = [\"8080:80/http\"]\nlabels = { tier = \"front\" }\n",
    );
    let site = &manifest.services["site"];
    assert_eq!(site.replicas, 3);
    assert_eq!(site.ports.len(), 1);
    assert_eq!(
        (site.ports[0].port, site.ports[0].protocol),
        (80, Protocol::Http)
    );
    assert!(site.ports[0].publish.is_some());
    assert!(matches!(
        &site.volumes[..],
        [VolumeMount::Bind { source, target, read_only: true }]
            if source == std::path::Path::new("/srv/shop/conf") && target == "/srv/www"
    ));
    assert_eq!(site.labels["tier"], "front");
    assert!(site.health.is_some());
    let catalog = site.catalog.as_ref().unwrap();
    assert_eq!(
        (catalog.kind, &catalog.role),
        (CatalogKind::Static, &CatalogRole::Site)
    );
    let Image::Stored { reference, .. } = &site.image else {
        panic!("{:?}", site.image);
    };
    assert!(
        reference.starts_with("paracloud-catalog/static:1.22-"),
        "{reference}"
    );
    let recipe = entry("static").unwrap().image("1.22").unwrap();
    assert!(recipe
        .files
        .iter()
        .any(|(path, conf, _)| path == "/etc/paracloud/nginx.conf"
            && conf.contains("root /srv/www;")));

    let defaults = valid("app = \"a\"\n[services.site]\ncatalog = \"static\"\nroot = \"conf\"\n");
    let site = &defaults.services["site"];
    assert_eq!(site.replicas, 1);
    assert_eq!(
        (site.ports[0].port, site.ports[0].publish.is_none()),
        (80, true)
    );
}

#[test]
fn a_static_site_checks_its_root_and_its_port() {
    check(
        "app = \"a\"\n[services.site]\ncatalog = \"static\"\n",
        r#"
paracloud.toml:3:11: services.site.root: a static site needs the directory it serves
  hint: add `root = "public"` (a directory beside the manifest, or an absolute path): the site's files
"#,
    );
    check(
        "app = \"a\"\n[services.site]\ncatalog = \"static\"\nroot = \"app.env\"\n",
        r#"
paracloud.toml:4:8: services.site.root: /srv/shop/app.env is not a directory: a static site serves a directory
  hint: name the directory of the site's files; relative paths are resolved against /srv/shop
"#,
    );
    check(
        "app = \"a\"\n[services.site]\ncatalog = \"static\"\nroot = \"conf\"\nports = [\"8080:8000/http\"]\n",
        r#"
paracloud.toml:5:9: services.site.ports: a static site serves HTTP on port 80, not 8000/http
  hint: publish port 80: `ports = ["8080:80/http"]`
"#,
    );
    check(
        "app = \"a\"\n[services.site]\ncatalog = \"static\"\nroot = \"conf\"\ncommand = \"httpd\"\n",
        r#"
paracloud.toml:5:1: services.site.command: `catalog = "static"` does not take `command`
  hint: the catalogue runs `static` itself; its keys are catalog, root, replicas, ports, autoscale, resources, labels, capsules
"#,
    );
}

const PHP: &str = "app = \"a\"\n[services.web]\ncatalog = \"php\"\nroot = \"conf\"\n";

#[test]
fn a_php_tier_is_nginx_and_php_fpm_serving_its_root_with_sessions_on_a_shared_volume() {
    let manifest = valid(&format!(
        "{PHP}replicas = 2\nvolumes = [\"uploads:/srv/uploads\"]\nenv = {{ DB_HOST = \"db\" }}\n[volumes.uploads]\n"
    ));
    let web = &manifest.services["web"];
    assert_eq!(web.replicas, 2);
    assert_eq!(web.env["DB_HOST"], "db");
    assert!(!web.env.contains_key("PARACLOUD_SESSIONS"));
    // The application read-only, the sessions volume every instance shares, then the
    // application's own volumes.
    let targets: Vec<(&str, bool)> = web
        .volumes
        .iter()
        .map(|v| match v {
            VolumeMount::Bind {
                target, read_only, ..
            } => (target.as_str(), *read_only),
            VolumeMount::Named {
                target, read_only, ..
            } => (target.as_str(), *read_only),
        })
        .collect();
    assert_eq!(
        targets,
        [
            ("/srv/app", true),
            ("/var/lib/php/sessions", false),
            ("/srv/uploads", false)
        ]
    );
    // The application's own volume is given to the scripts' user when an instance starts.
    assert_eq!(
        web.entrypoint,
        ["/usr/local/lib/paracloud/catalog", "serve", "/srv/uploads"]
    );
    assert_eq!(
        manifest.volumes["web-sessions"].size,
        Some(256 << 20),
        "{:?}",
        manifest.volumes
    );
    let catalog = web.catalog.as_ref().unwrap();
    assert_eq!(
        (catalog.kind, &catalog.role, catalog.version.as_str()),
        (CatalogKind::Php, &CatalogRole::Site, "8.2")
    );
    let recipe = entry("php").unwrap().image("8.2").unwrap();
    assert!(recipe.programs.iter().any(|p| p == "/usr/sbin/php-fpm8.2"));
    assert!(recipe.trees.iter().any(|t| t.ends_with("/redis.so")));
}

#[test]
fn a_php_tier_keeps_its_sessions_in_the_redis_it_names_with_its_password() {
    let manifest = valid(&format!(
        "{PHP}sessions = \"cache\"\n[services.cache]\ncatalog = \"redis\"\nenv = {{ REDIS_PASSWORD = \"p&ss w=rd\" }}\n"
    ));
    let web = &manifest.services["web"];
    assert_eq!(
        web.env["PARACLOUD_SESSIONS"],
        "tcp://cache:6379?auth=p%26ss%20w%3Drd"
    );
    assert_eq!(web.depends_on["cache"], DependsCondition::Healthy);
    assert!(!manifest.volumes.contains_key("web-sessions"));
    assert_eq!(web.volumes.len(), 1, "{:?}", web.volumes);
}

#[test]
fn a_php_tier_checks_its_sessions_root_and_port() {
    check(
        &format!("{PHP}sessions = \"db\"\n[services.db]\ncatalog = \"postgres\"\nenv = {{ POSTGRES_PASSWORD = \"x\" }}\n"),
        r#"
paracloud.toml:5:12: services.web.sessions: `db` is not a catalogue Redis service of this application
  hint: add a Redis service, `[services.cache]` with `catalog = "redis"`, and name it here; or remove `sessions` to keep them as files on the tier's own volume
"#,
    );
    check(
        &format!("{PHP}sessions = \"kv\"\n[services.cache]\ncatalog = \"redis\"\nenv = {{ REDIS_PASSWORD = \"x\" }}\n"),
        r#"
paracloud.toml:5:12: services.web.sessions: `kv` is not a catalogue Redis service of this application
  hint: the manifest's catalogue Redis services: cache
"#,
    );
    check(
        &format!("{PHP}ports = [\"9000\"]\n"),
        r#"
paracloud.toml:5:9: services.web.ports: a PHP web tier serves HTTP on port 80, not 9000/tcp
  hint: publish port 80: `ports = ["8080:80/http"]`
"#,
    );
    check(
        "app = \"a\"\n[services.web]\ncatalog = \"php\"\n",
        r#"
paracloud.toml:3:11: services.web.root: a PHP web tier needs the directory it serves
  hint: add `root = "app"` (a directory beside the manifest, or an absolute path): the application's files
"#,
    );
    check(
        &format!("{PHP}[volumes.web-sessions]\n"),
        r#"
paracloud.toml:3:11: services.web.catalog: the catalogue service `web` keeps its data on the volume `web-sessions`, which `[volumes.web-sessions]` declares too
  hint: remove `[volumes.web-sessions]`, or rename the service
"#,
    );
}

const MARIADB: &str =
    "app = \"a\"\n[services.db]\ncatalog = \"mariadb\"\nenv = { MARIADB_ROOT_PASSWORD = \"r\" }\n";

#[test]
fn a_mariadb_service_is_a_primary_on_its_volume_and_replicas_at_the_read_address() {
    let manifest = valid(&format!(
        "{MARIADB}replicas = 2\nsynchronous = true\nmax_lag = \"3s\"\n"
    ));
    let primary = &manifest.services["db"];
    assert!(primary.is_catalog_primary());
    assert_eq!(primary.ports[0].port, 3306);
    assert_eq!(
        primary.entrypoint[1..],
        ["primary".to_owned(), "synchronous".to_owned()]
    );
    let replicas = &manifest.services["db-read"];
    assert_eq!(replicas.replicas, 2);
    assert_eq!(replicas.depends_on["db"], DependsCondition::Healthy);
    let Some(Probe::Exec { command }) = replicas.health.as_ref().map(|h| &h.probe) else {
        panic!("{:?}", replicas.health);
    };
    assert_eq!(command[1..], ["ready".to_owned(), "3000".to_owned()]);
    assert!(manifest.volumes.contains_key("db-data"));
    let catalog = primary.catalog.as_ref().unwrap();
    assert_eq!(
        (catalog.kind, catalog.version.as_str(), catalog.synchronous),
        (CatalogKind::Mariadb, "10.11", true)
    );
}

#[test]
fn a_mariadb_service_checks_its_users_and_what_it_restores() {
    check(
        &format!("{MARIADB}replicas = 9\n"),
        r#"
paracloud.toml:5:12: services.db.replicas: 9 read replicas is more than the 8 a catalogue service takes
  hint: use at most 8: each replica streams every write of the primary
"#,
    );
    check(
        "app = \"a\"\n[services.db]\ncatalog = \"mariadb\"\nenv = { MARIADB_ROOT_PASSWORD = \"r\", MARIADB_USER = \"app\" }\n",
        r#"
paracloud.toml:4:53: services.db.env.MARIADB_USER: MARIADB_USER needs MARIADB_PASSWORD (its password) and MARIADB_DATABASE (the database it gets every right on)
  hint: add both to `env`, or leave MARIADB_USER out and connect as root
"#,
    );
    check(
        "app = \"a\"\n[services.db]\ncatalog = \"mariadb\"\nenv = { MARIADB_ROOT_PASSWORD = \"r\", MARIADB_USER = \"root\" }\n",
        r#"
paracloud.toml:4:53: services.db.env.MARIADB_USER: MARIADB_USER names root, which MARIADB_ROOT_PASSWORD is for
  hint: name the application's own user, such as "app"
"#,
    );
    check(
        &format!("{MARIADB}restore = \"app.env\"\n"),
        r#"
paracloud.toml:5:11: services.db.restore: a restored dump goes into MARIADB_DATABASE, which `env` does not set
  hint: add `MARIADB_DATABASE = "..."` to `env`: the database the dump was taken of, or a new name
"#,
    );
    check(
        &format!("{MARIADB}restore = \"nowhere.sql\"\n"),
        r#"
paracloud.toml:5:11: services.db.restore: no dump to restore at /srv/shop/nowhere.sql
  hint: take one with `paracloud capsule run mariadb-dump -l service=SERVICE --out DIR -- DATABASE` and name the file it wrote, DIR/INSTANCE/DATABASE.sql; relative paths are resolved against /srv/shop
"#,
    );
    check(
        &format!("{MARIADB}persistence = \"aof\"\n"),
        r#"
paracloud.toml:5:1: services.db.persistence: `catalog = "mariadb"` does not take `persistence`
  hint: `persistence` is a key of `catalog = "redis"`; this one's keys are catalog, version, replicas, storage, env, synchronous, max_lag, restore, resources, labels, capsules
"#,
    );
    check(
        "app = \"a\"\n[services.db]\ncatalog = \"mariadb\"\n",
        r#"
paracloud.toml:2:1: services.db.env.MARIADB_ROOT_PASSWORD: a catalogue mariadb service needs `env.MARIADB_ROOT_PASSWORD`
  hint: add `env = { MARIADB_ROOT_PASSWORD = "..." }`: the password every connection gives, its replicas' included
"#,
    );
}

#[test]
fn the_autoscaler_keeps_one_primary_scales_read_replicas_and_leaves_a_task_farm_alone() {
    let manifest = valid(&format!(
        "app = \"a\"\n[autoscale]\nentry = \"db\"\n[services.db]\ncatalog = \"postgres\"\nreplicas = 2\n{PASSWORD}[services.render]\ncatalog = \"taskfarm\"\nimage = \"tools:1\"\n"
    ));
    let config = scaling_config(&manifest).unwrap();
    let bounds = |name: &str| {
        let b = &config.services[name];
        (b.min_instances, b.max_instances)
    };
    assert_eq!(bounds("db"), (1, 1), "one primary, its CPU alone scaled");
    assert_eq!(
        bounds("db-read"),
        (2, 8),
        "from the replicas asked to the bound"
    );
    assert!(
        !config.services.contains_key("render"),
        "the farm sets its own workers"
    );
    assert_eq!(manifest.services["render"].replicas, 0);
    let no_replicas = valid(
        "app = \"a\"\n[autoscale]\nentry = \"db\"\n[services.db]\ncatalog = \"mariadb\"\nreplicas = 0\nenv = { MARIADB_ROOT_PASSWORD = \"r\" }\n",
    );
    assert_eq!(
        scaling_config(&no_replicas).unwrap().services["db-read"].min_instances,
        0
    );
}

#[test]
fn a_servers_figures_are_read_from_its_health_checks_last_load_line() {
    use crate::catalog::{server_load, ServerLoad};
    assert_eq!(
        server_load("load queries=12\n"),
        Some(ServerLoad {
            queries: 12,
            lag_ms: None
        })
    );
    assert_eq!(
        server_load("checking\nload queries=7 lag_ms=0\nload queries=9 lag_ms=40\n"),
        Some(ServerLoad {
            queries: 9,
            lag_ms: Some(40)
        })
    );
    // What does not read is no figure at all, rather than a wrong one.
    for output in [
        "",
        "PONG\n",
        "load\n",
        "load lag_ms=3\n",
        "load queries=-1\n",
        "load queries=1x\n",
        "load queries=1 lag=3\n",
        "load queries 1\n",
    ] {
        assert_eq!(server_load(output), None, "{output:?}");
    }
}
