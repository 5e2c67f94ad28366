//! The catalogue: services the platform runs and manages itself (`catalog = "postgres"`), each
//! with a small, documented set of keys, made into the ordinary services that run it (the same
//! checks, the same reconcile loop, the same data plane).
//!
//! A PostgreSQL service `db` becomes two services:
//!
//! - `db`, the primary: one instance, its data on the volume `db-data` (of `storage` bytes), the
//!   write address `db:5432`; replaced stop first, never two at once;
//! - `db-read`, `replicas` streaming replicas (each seeded with a base backup of the primary when
//!   it starts, its data in its own writable layer), the read address `db-read:5432`, which
//!   balances connections over the replicas and the primary.
//!
//! A MariaDB service is made the same way, on port 3306, and a Redis service on port 6379.
//! Their image is a micro-image of the machine's own server (the Debian package), built by the
//! daemon at `up` from [`CatalogEntry::image`]. A static site, a PHP web tier and a task farm are
//! one service each.

use sha2::{Digest as _, Sha256};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::draft::Draft;
use crate::model::{CatalogKind, CatalogRole, Catalogued, TaskFarm};
use crate::reader::{child, Checker, Span, Value};
use crate::service::CATALOG_STORAGE;

/// One service of the catalogue, as `paracloud catalog ls` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub kind: CatalogKind,
    pub summary: &'static str,
    /// The server versions it runs (what `version` takes), the default first.
    pub versions: &'static [&'static str],
    /// Its keys, with what each means.
    pub keys: &'static [(&'static str, &'static str)],
    /// The addresses the application reaches it at (`NAME` is the service's name).
    pub addresses: &'static [(&'static str, &'static str)],
    /// The Debian package that holds the server, which the machine needs (empty: it runs the
    /// application's own image).
    pub package: &'static str,
    /// The variable of `env` that holds the password every connection gives (required; empty:
    /// it takes no connections).
    pub password_env: &'static str,
    /// The port its addresses serve (0: it has none).
    pub port: u16,
}

pub use crate::model::MAX_REPLICAS;

/// How far behind its primary a PostgreSQL replica may be and still serve reads, unless the
/// service says.
pub const DEFAULT_MAX_LAG: std::time::Duration = std::time::Duration::from_secs(10);

/// The storage a catalogue service gets when it does not say.
pub const DEFAULT_STORAGE: &str = "1G";

/// Every service of the catalogue, by name.
pub const CATALOG: &[CatalogEntry] = &[CatalogEntry {
    name: "postgres",
    kind: CatalogKind::Postgres,
    summary: "PostgreSQL: a primary and streaming read replicas, with a write and a read address, and failover to the most advanced replica",
    versions: &["15"],
    keys: &[
        ("catalog", "\"postgres\""),
        ("version", "the server's major version: \"15\" (the default)"),
        (
            "replicas",
            "read replicas beside the primary: 0 (the default) to 8; `paracloud scale NAME-read=N` changes it",
        ),
        (
            "storage",
            "the size of the primary's data volume, NAME-data: \"1G\" (the default), at least \"256M\"; a quarter of it for the write-ahead log, of which half is kept for replicas that fall behind",
        ),
        (
            "env",
            "POSTGRES_PASSWORD (required: the superuser's password, which the replicas use too), POSTGRES_USER (\"postgres\"), POSTGRES_DB (the user's name), and any other variable",
        ),
        (
            "synchronous",
            "true: each commit waits until a replica has applied it, so that a committed transaction is on two servers and at once readable on a replica (false, the default); needs replicas = 1 or more, and commits wait while no replica is connected",
        ),
        (
            "max_lag",
            "how far behind the primary a replica may be and still serve reads: \"10s\" (the default); one further behind, or not streaming, leaves the read address until it has caught up (it is not restarted for it)",
        ),
        (
            "restore",
            "a dump the pg-dump capsule made (a path on the daemon's machine, relative to the manifest's directory), restored into POSTGRES_DB when the primary makes its cluster, on a new volume",
        ),
        ("resources", "each instance's cpu, memory, pids and disk, as a service's"),
        ("labels", "as a service's"),
        ("capsules", "which capsules may attach to its instances, as a service's"),
    ],
    addresses: &[
        ("NAME:5432", "writes and reads: the primary"),
        ("NAME-read:5432", "reads: the replicas and the primary"),
    ],
    package: "postgresql-15",
    password_env: "POSTGRES_PASSWORD",
    port: 5432,
}, CatalogEntry {
    name: "mariadb",
    kind: CatalogKind::Mariadb,
    summary: "MariaDB: a primary and replicas (GTID replication), with a write and a read address, and failover to the most advanced replica",
    versions: &["10.11"],
    keys: &[
        ("catalog", "\"mariadb\""),
        ("version", "the server's version: \"10.11\" (the default)"),
        (
            "replicas",
            "read replicas beside the primary: 0 (the default) to 8; `paracloud scale NAME-read=N` changes it",
        ),
        (
            "storage",
            "the size of the primary's data volume, NAME-data: \"1G\" (the default), at least \"256M\"",
        ),
        (
            "env",
            "MARIADB_ROOT_PASSWORD (required: root's password over the network, which the replicas use too), MARIADB_DATABASE (a database made with the server), MARIADB_USER and MARIADB_PASSWORD (a user with every right on it), and any other variable",
        ),
        (
            "synchronous",
            "true: each commit waits until a replica has it (semi-synchronous replication, after the primary's binary log is written), so that a committed transaction is on two servers (false, the default); needs replicas = 1 or more",
        ),
        (
            "max_lag",
            "how far behind the primary a replica may be and still serve reads: \"10s\" (the default, counted in whole seconds); one further behind, or not replicating, leaves the read address until it has caught up",
        ),
        (
            "restore",
            "a dump of one database that the mariadb-dump capsule made (a path on the daemon's machine, relative to the manifest's directory), loaded into MARIADB_DATABASE (then required) when the primary makes its database, on a new volume",
        ),
        ("resources", "each instance's cpu, memory, pids and disk, as a service's"),
        ("labels", "as a service's"),
        ("capsules", "which capsules may attach to its instances, as a service's"),
    ],
    addresses: &[
        ("NAME:3306", "writes and reads: the primary"),
        ("NAME-read:3306", "reads: the replicas and the primary"),
    ],
    package: "mariadb-server",
    password_env: "MARIADB_ROOT_PASSWORD",
    port: 3306,
}, CatalogEntry {
    name: "redis",
    kind: CatalogKind::Redis,
    summary: "Redis: a primary and replicas, with a write and a read address, failover to the most advanced replica, and the persistence to choose",
    versions: &["7"],
    keys: &[
        ("catalog", "\"redis\""),
        ("version", "the server's major version: \"7\" (the default)"),
        (
            "replicas",
            "read replicas beside the primary: 0 (the default) to 8; `paracloud scale NAME-read=N` changes it",
        ),
        (
            "storage",
            "the size of the primary's data volume, NAME-data: \"1G\" (the default), at least \"256M\"",
        ),
        (
            "persistence",
            "what the primary keeps on its volume: \"rdb\" (the default: snapshots, after 1 change in an hour, 100 in 5 minutes or 10000 in a minute), \"aof\" (every write appended, flushed each second) or \"none\"",
        ),
        (
            "env",
            "REDIS_PASSWORD (required: what every client and the replicas authenticate with), and any other variable",
        ),
        ("resources", "each instance's cpu, memory, pids and disk, as a service's"),
        ("labels", "as a service's"),
        ("capsules", "which capsules may attach to its instances, as a service's"),
    ],
    addresses: &[
        ("NAME:6379", "writes and reads: the primary"),
        ("NAME-read:6379", "reads: the replicas and the primary"),
    ],
    package: "redis-server",
    password_env: "REDIS_PASSWORD",
    port: 6379,
}, CatalogEntry {
    name: "static",
    kind: CatalogKind::Static,
    summary: "A static site: nginx serving a directory of the daemon's machine, read-only, on as many instances as asked, behind one address",
    versions: &["1.22"],
    keys: &[
        ("catalog", "\"static\""),
        ("root", "the directory served (required): a path on the daemon's machine, relative to the manifest's directory, mounted read-only; changes to its files are served at once"),
        ("replicas", "instances, as a service's (1 by default); `paracloud scale NAME=N` changes it"),
        ("ports", "as a service's, for port 80 (where nginx listens): `[\"8080:80/http\"]` publishes it on the host; `[\"80/http\"]` by default"),
        ("autoscale", "the autoscaler's bounds for its instances, as a service's"),
        ("resources", "each instance's cpu, memory, pids and disk, as a service's"),
        ("labels", "as a service's"),
        ("capsules", "which capsules may attach to its instances, as a service's"),
    ],
    addresses: &[("NAME:80", "its files, over HTTP: every instance")],
    package: "nginx",
    password_env: "",
    port: 80,
}, CatalogEntry {
    name: "php",
    kind: CatalogKind::Php,
    summary: "A PHP web tier: nginx in front of php-fpm serving an application's directory on as many instances as asked, with its sessions kept where every instance finds them",
    versions: &["8.2"],
    keys: &[
        ("catalog", "\"php\""),
        ("version", "PHP's version: \"8.2\" (the default)"),
        ("root", "the application's directory (required): a path on the daemon's machine, relative to the manifest's directory, mounted read-only at /srv/app; a path that is no file goes to its index.php"),
        ("sessions", "the catalogue Redis service of this manifest that keeps the PHP sessions (its write address, with its password); without it, sessions are files on the volume NAME-sessions, which every instance shares"),
        ("replicas", "instances, as a service's (1 by default); `paracloud scale NAME=N` changes it"),
        ("ports", "as a service's, for port 80 (where nginx listens): `[\"8080:80/http\"]` publishes it on the host; `[\"80/http\"]` by default"),
        ("env", "the scripts' environment (getenv), as a service's"),
        ("volumes", "where the application writes (uploads, caches), as a service's; a named volume's top directory is given to the scripts' user"),
        ("depends_on", "as a service's: the instances start once these services are started or healthy (the application's database)"),
        ("autoscale", "the autoscaler's bounds for its instances, as a service's"),
        ("resources", "each instance's cpu, memory, pids and disk, as a service's"),
        ("labels", "as a service's"),
        ("capsules", "which capsules may attach to its instances, as a service's"),
    ],
    addresses: &[("NAME:80", "the application, over HTTP: every instance")],
    package: "php8.2-fpm php8.2-mysql php-redis nginx",
    password_env: "",
    port: 80,
}, CatalogEntry {
    name: "taskfarm",
    kind: CatalogKind::TaskFarm,
    summary: "A task farm: runs a bag of independent tasks (`paracloud tasks submit`) on as few workers as meet a deadline, or as many as a budget pays for, learning the tasks' run times as they complete",
    versions: &[],
    keys: &[
        ("catalog", "\"taskfarm\""),
        ("image", "the image the tasks run in, as a service's (it needs /bin/sh and sleep: each task is a `sh -c` command line)"),
        ("build", "or the image built from a directory, as a service's"),
        ("max_workers", "the most workers at once: 1 to 64, 8 by default"),
        ("retries", "how many times a failed task (an exit code other than 0, a timeout, a worker that died) is run again: 0 to 10, 2 by default"),
        ("task_timeout", "how long one run of a task may take before it is stopped and counts as failed: \"1h\" by default"),
        ("env", "the tasks' environment, as a service's"),
        ("volumes", "where the tasks read and write their data, as a service's"),
        ("resources", "each worker's cpu, memory, pids and disk, as a service's"),
        ("labels", "as a service's"),
        ("capsules", "which capsules may attach to its workers, as a service's"),
    ],
    addresses: &[],
    package: "",
    password_env: "",
    port: 0,
}];

/// The most workers a task farm runs at once.
pub const MAX_WORKERS: u64 = 64;

/// How many workers a task farm runs at most, unless it says.
pub const DEFAULT_MAX_WORKERS: u64 = 8;

/// How many times a failed task is run again, unless the farm says.
pub const DEFAULT_RETRIES: u64 = 2;

/// How long one run of a task may take, unless the farm says.
pub const DEFAULT_TASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a task farm's worker runs while it waits for tasks: nothing, until it is stopped.
const WORKER_COMMAND: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// What a Redis primary keeps on its volume.
const PERSISTENCE: &[&str] = &["rdb", "aof", "none"];

/// The catalogue service called `name`.
pub fn entry(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// The catalogue service of `kind`.
pub fn entry_of(kind: CatalogKind) -> &'static CatalogEntry {
    CATALOG
        .iter()
        .find(|e| e.kind == kind)
        .expect("every kind is in the catalogue")
}

/// The name of the read service of the catalogue service `name`.
pub fn read_service_name(name: &str) -> String {
    format!("{name}-read")
}

/// The name of the primary's data volume of the catalogue service `name`.
pub fn data_volume_name(name: &str) -> String {
    format!("{name}-data")
}

/// The file of a primary's data volume that tells it to fail over: it holds the address of the
/// replica whose copy it starts from (see [`position_command`]).
pub const FAILOVER_FILE: &str = "promote-from";

/// The file of a primary's data volume that tells a new instance of the primary to follow the
/// running one as its successor (a switchover): it holds the running primary's address.
pub const SWITCHOVER_FILE: &str = "switchover-from";

/// The command that fences the primary a switchover moves, before it is stopped: its clients'
/// writes stop reaching its data, and it prints how far its log goes (nothing where the
/// stopped server's own files say it).
pub fn fence_command() -> Vec<String> {
    vec![ENTRY.to_owned(), "fence".to_owned()]
}

/// The command that, in the successor of a switchover, waits until it has received all the
/// fenced old primary logged, up to the `position` its fence printed, and then stops receiving
/// (while the old primary still runs, so that nothing waits on a server that is gone).
pub fn receive_command(position: &str) -> Vec<String> {
    let mut command = vec![ENTRY.to_owned(), "receive".to_owned()];
    if !position.is_empty() {
        command.push(position.to_owned());
    }
    command
}

/// The command that ends a switchover in the successor, once the old primary has stopped: it
/// takes in all the old primary wrote, up to the `position` its fence printed, and becomes the
/// primary (see [`SWITCHOVER_FILE`]).
pub fn take_over_command(position: &str) -> Vec<String> {
    let mut command = vec![ENTRY.to_owned(), "take-over".to_owned()];
    if !position.is_empty() {
        command.push(position.to_owned());
    }
    command
}

/// The command that prints, in a replica of a kind that promotes replicas, how much of the
/// primary's log it has received (a number; the larger, the more advanced).
pub fn position_command() -> Vec<String> {
    vec![ENTRY.to_owned(), "position".to_owned()]
}

/// A database server's figures, as its health check prints them on a line of their own
/// (`load queries=N [lag_ms=M]`) each time it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLoad {
    /// Queries the server ran since it started (PostgreSQL: transactions ended; MariaDB:
    /// statements from clients; Redis: commands processed).
    pub queries: u64,
    /// How far a replica's replay is behind the primary, in milliseconds.
    pub lag_ms: Option<u64>,
}

/// The figures a passing health check of a database server printed, from its last `load`
/// line; `None` when it printed none, or one that does not read.
pub fn server_load(output: &str) -> Option<ServerLoad> {
    let line = output
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("load "))?;
    let mut queries = None;
    let mut lag_ms = None;
    for figure in line.split_whitespace() {
        match figure.split_once('=')? {
            ("queries", n) => queries = Some(n.parse().ok()?),
            ("lag_ms", n) => lag_ms = Some(n.parse().ok()?),
            _ => return None,
        }
    }
    Some(ServerLoad {
        queries: queries?,
        lag_ms,
    })
}

/// The entry script of PostgreSQL's instances (`primary`, `replica PRIMARY`, `ready`).
const POSTGRES_SCRIPT: &str = include_str!("catalog/postgres.sh");

/// The entry script of MariaDB's instances (`primary`, `replica PRIMARY`, `ready`).
const MARIADB_SCRIPT: &str = include_str!("catalog/mariadb.sh");

/// The entry script of Redis's instances (`primary`, `replica PRIMARY`, `ready`).
const REDIS_SCRIPT: &str = include_str!("catalog/redis.sh");

/// What the entry scripts share, written where they say `@COMMON@`.
const COMMON_SCRIPT: &str = include_str!("catalog/common.sh");

/// An entry script with what they share in it.
fn entry_script(script: &str) -> String {
    script.replace("@COMMON@\n", COMMON_SCRIPT)
}

/// The shell and the few tools the entry scripts run.
const SCRIPT_TOOLS: &[&str] = &[
    "/bin/sh",
    "/bin/mkdir",
    "/bin/chown",
    "/bin/chmod",
    "/bin/rm",
    "/bin/rmdir",
    "/bin/mv",
    "/bin/cat",
    "/bin/sleep",
    "/bin/mktemp",
    "/usr/bin/setpriv",
    "/usr/bin/flock",
];

/// Where the entry script is in the image.
const ENTRY: &str = "/usr/local/lib/paracloud/catalog";

/// Where the primary finds the dump its `restore` names.
const RESTORE: &str = "/restore.dump";

/// Where a MariaDB primary finds the dump its `restore` names.
const MARIADB_RESTORE: &str = "/restore.sql";

/// The image's users and groups: root, the user `user` the server runs as (uid 999), nobody.
fn passwd_and_group(user: &str, home: &str) -> [(String, String, u32); 2] {
    [
        (
            "/etc/passwd".into(),
            format!("root:x:0:0:root:/root:/sbin/nologin\n{user}:x:999:999:{user}:{home}:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"),
            0o644,
        ),
        (
            "/etc/group".into(),
            format!("root:x:0:\n{user}:x:999:\nnogroup:x:65534:\n"),
            0o644,
        ),
    ]
}

/// What the image of a catalogue service is made of, from the machine's own programs: the
/// daemon builds it as a micro-image tagged `tag` when its store lacks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogImage {
    /// `paracloud-catalog/KIND:VERSION-KEY`, KEY a digest of everything below, so that a
    /// changed script or list of programs makes a new image.
    pub tag: String,
    /// Host programs, each with its libraries; the first is the image's entrypoint.
    pub programs: Vec<String>,
    /// Host directories, each whole but for the entries named in `leave_out`.
    pub trees: Vec<String>,
    /// File names left out of `trees` (what would pull in a compiler's worth of libraries).
    pub leave_out: Vec<String>,
    /// Files written into the image: path, content, mode.
    pub files: Vec<(String, String, u32)>,
    /// The Debian package that holds the programs, for the error when the machine lacks it.
    pub package: String,
}

impl CatalogEntry {
    /// The image of this service at `version` (none for a task farm, which runs the
    /// application's own image).
    pub fn image(&self, version: &str) -> Option<CatalogImage> {
        Some(match self.kind {
            CatalogKind::TaskFarm => return None,
            CatalogKind::Static => CatalogImage {
                tag: format!("paracloud-catalog/static:{version}"),
                programs: vec!["/usr/sbin/nginx".into()],
                trees: vec!["/etc/nginx/mime.types".into()],
                leave_out: Vec::new(),
                files: [
                    (NGINX_CONF.into(), STATIC_NGINX_CONF.to_owned(), 0o644),
                    // Where nginx keeps its pid and request bodies: a directory of the
                    // writable layer.
                    ("/var/lib/nginx/.keep".into(), String::new(), 0o644),
                ]
                .into_iter()
                .chain(passwd_and_group("nginx", "/nonexistent"))
                .collect(),
                package: "nginx".into(),
            }
            .keyed(),
            CatalogKind::Php => {
                let extensions = PHP_EXTENSIONS
                    .iter()
                    .map(|e| format!("{PHP_EXTENSION_DIR}/{e}.so"));
                CatalogImage {
                    tag: format!("paracloud-catalog/php:{version}"),
                    programs: [
                        format!("/usr/sbin/php-fpm{version}"),
                        "/usr/sbin/nginx".into(),
                    ]
                    .into_iter()
                    .chain(SCRIPT_TOOLS.iter().map(|p| (*p).to_owned()))
                    .collect(),
                    trees: [
                        "/etc/nginx/mime.types",
                        "/usr/share/zoneinfo/UTC",
                        "/usr/share/zoneinfo/Etc/UTC",
                    ]
                    .map(String::from)
                    .into_iter()
                    .chain(extensions)
                    .collect(),
                    leave_out: Vec::new(),
                    files: [
                        (
                            ENTRY.into(),
                            PHP_SCRIPT.replace("@VERSION@", version),
                            0o755,
                        ),
                        (NGINX_CONF.into(), PHP_NGINX_CONF.to_owned(), 0o644),
                        (
                            "/etc/paracloud/php-fpm.conf".into(),
                            PHP_FPM_CONF.to_owned(),
                            0o644,
                        ),
                        ("/etc/paracloud/php.ini".into(), PHP_INI.to_owned(), 0o644),
                        (
                            "/etc/paracloud/fastcgi_params".into(),
                            PHP_FASTCGI_PARAMS.to_owned(),
                            0o644,
                        ),
                        ("/var/lib/nginx/.keep".into(), String::new(), 0o644),
                    ]
                    .into_iter()
                    .chain(passwd_and_group("www-data", "/var/www"))
                    .collect(),
                    package: entry_of(CatalogKind::Php).package.into(),
                }
                .keyed()
            }
            CatalogKind::Postgres => {
                let script = entry_script(POSTGRES_SCRIPT).replace("@VERSION@", version);
                let bin = format!("/usr/lib/postgresql/{version}/bin");
                let mut programs: Vec<String> = [
                    "postgres",
                    "initdb",
                    "pg_ctl",
                    "pg_basebackup",
                    "pg_isready",
                    "psql",
                    "pg_dump",
                    "pg_dumpall",
                    "pg_restore",
                    "pg_controldata",
                    "pg_rewind",
                ]
                .iter()
                .map(|p| format!("{bin}/{p}"))
                .collect();
                programs.extend(SCRIPT_TOOLS.iter().map(|p| (*p).to_owned()));
                CatalogImage {
                    tag: format!("paracloud-catalog/postgres:{version}"),
                    programs,
                    trees: vec![
                        format!("/usr/lib/postgresql/{version}/lib"),
                        format!("/usr/share/postgresql/{version}"),
                        "/usr/share/zoneinfo/UTC".into(),
                        "/usr/share/zoneinfo/Etc/UTC".into(),
                        "/usr/share/zoneinfo/GMT".into(),
                    ],
                    leave_out: ["llvmjit.so", "llvmjit_types.bc", "bitcode", "pgxs"]
                        .map(String::from)
                        .to_vec(),
                    files: [(ENTRY.into(), script, 0o755)]
                        .into_iter()
                        .chain(passwd_and_group("postgres", "/var/lib/postgresql"))
                        .collect(),
                    package: format!("postgresql-{version}"),
                }
                .keyed()
            }
            CatalogKind::Mariadb => server_image(
                ("mariadb", version),
                &[
                    "/usr/sbin/mariadbd",
                    "/usr/bin/mariadb",
                    "/usr/bin/mariadb-admin",
                    "/usr/bin/mariadb-dump",
                ],
                [
                    "charsets",
                    "mysql_system_tables.sql",
                    "mysql_performance_tables.sql",
                    "mysql_system_tables_data.sql",
                    "maria_add_gis_sp_bootstrap.sql",
                    "mysql_sys_schema.sql",
                ]
                .iter()
                .map(|f| format!("/usr/share/mysql/{f}"))
                .chain(["/usr/share/zoneinfo/UTC".to_owned()])
                .collect(),
                (MARIADB_SCRIPT, ("mysql", "/var/lib/mysql")),
                "mariadb-server",
            ),
            CatalogKind::Redis => server_image(
                ("redis", version),
                &["/usr/bin/redis-server", "/usr/bin/redis-cli"],
                Vec::new(),
                (REDIS_SCRIPT, ("redis", "/data")),
                "redis-server",
            ),
        })
    }
}

/// The image of a server of the catalogue: its `programs` with the entry script's tools, its
/// `trees`, the entry `script` and the user it runs the server as.
fn server_image(
    (name, version): (&str, &str),
    programs: &[&str],
    trees: Vec<String>,
    (script, (user, home)): (&str, (&str, &str)),
    package: &str,
) -> CatalogImage {
    CatalogImage {
        tag: format!("paracloud-catalog/{name}:{version}"),
        programs: programs
            .iter()
            .chain(SCRIPT_TOOLS)
            .map(|p| (*p).to_owned())
            .collect(),
        trees,
        leave_out: Vec::new(),
        files: [(ENTRY.into(), entry_script(script), 0o755)]
            .into_iter()
            .chain(passwd_and_group(user, home))
            .collect(),
        package: package.into(),
    }
    .keyed()
}

impl CatalogImage {
    /// The image with a digest of everything it is made of appended to its tag, so that a
    /// changed script or list of programs makes a new image.
    fn keyed(mut self) -> Self {
        let mut hasher = Sha256::new();
        for part in self
            .programs
            .iter()
            .chain(&self.trees)
            .chain(&self.leave_out)
            .chain(
                self.files
                    .iter()
                    .flat_map(|(path, content, _)| [path, content]),
            )
        {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        let key: String = hasher
            .finalize()
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        self.tag = format!("{}-{key}", self.tag);
        self
    }
}

/// The keys of a catalogue service table that go on to its services as they are written.
const PASSED_ON: &[&str] = &["env", "resources", "labels", "capsules"];

/// The keys of a static site passed on to its instances as they are written.
const STATIC_PASSED_ON: &[&str] = &[
    "replicas",
    "ports",
    "autoscale",
    "resources",
    "labels",
    "capsules",
];

/// Where a static site's nginx finds its configuration.
const NGINX_CONF: &str = "/etc/paracloud/nginx.conf";

/// A static site's nginx: in the foreground, logging errors to stderr (`paracloud logs`),
/// workers as the image's unprivileged user, the files of `/srv/www` (the site's `root`,
/// read-only) on port 80.
const STATIC_NGINX_CONF: &str = include_str!("catalog/static-nginx.conf");

/// The keys of a PHP web tier passed on to its instances as they are written (`volumes` after
/// the catalogue's own).
const PHP_PASSED_ON: &[&str] = &[
    "replicas",
    "ports",
    "env",
    "volumes",
    "depends_on",
    "autoscale",
    "resources",
    "labels",
    "capsules",
];

/// The entry script of a PHP web tier's instances (`serve`).
const PHP_SCRIPT: &str = include_str!("catalog/php.sh");

/// A PHP web tier's nginx: as a static site's, with PHP scripts (and every path that is no
/// file, through index.php) passed to php-fpm.
const PHP_NGINX_CONF: &str = include_str!("catalog/php-nginx.conf");

/// A PHP web tier's php-fpm: in the foreground, its workers as the image's unprivileged user.
const PHP_FPM_CONF: &str = include_str!("catalog/php-fpm.conf");

/// What a PHP web tier's nginx tells php-fpm of each request.
const PHP_FASTCGI_PARAMS: &str = include_str!("catalog/php-fastcgi-params");

/// A PHP web tier's php.ini: the extensions it loads and the settings of a web application.
const PHP_INI: &str = include_str!("catalog/php.ini");

/// Where Debian's PHP 8.2 keeps its extensions.
const PHP_EXTENSION_DIR: &str = "/usr/lib/php/20220829";

/// The extensions a PHP web tier loads (php.ini names the same): MySQL and MariaDB clients,
/// Redis (sessions), and what WordPress and most frameworks use.
const PHP_EXTENSIONS: &[&str] = &[
    "opcache",
    "mysqlnd",
    "mysqli",
    "pdo",
    "pdo_mysql",
    "igbinary",
    "redis",
    "calendar",
    "ctype",
    "exif",
    "fileinfo",
    "iconv",
    "posix",
    "sockets",
    "tokenizer",
];

/// Where a PHP web tier keeps its sessions when no Redis does: a volume its instances share.
const PHP_SESSIONS: &str = "/var/lib/php/sessions";

/// The size of a PHP web tier's sessions volume.
const PHP_SESSIONS_SIZE: u64 = 256 << 20;

/// The name of the sessions volume of the PHP web tier `name`.
pub fn sessions_volume_name(name: &str) -> String {
    format!("{name}-sessions")
}

/// The keys of a task farm passed on to its workers as they are written.
const FARM_PASSED_ON: &[&str] = &[
    "image",
    "build",
    "env",
    "volumes",
    "resources",
    "labels",
    "capsules",
];

/// What a checked catalogue service table declares beside its services.
pub(crate) struct CatalogDrafts {
    pub(crate) drafts: Vec<Draft>,
    /// The volume it keeps its data on (a server's primary's, a PHP tier's sessions) and its
    /// size.
    pub(crate) volume: Option<(String, u64)>,
    /// Whether it makes a read service, `NAME-read`.
    pub(crate) read_service: bool,
    /// The catalogue Redis service a PHP web tier keeps its sessions in, and where it is
    /// named.
    pub(crate) sessions: Option<(String, Span)>,
    /// Where the `catalog` key is written, for what is reported about the whole service.
    pub(crate) span: Span,
}

impl Checker<'_> {
    /// The services a `[services.NAME]` table with a `catalog` key stands for, checked (`None`
    /// when something is wrong, which has been reported).
    pub(crate) fn catalog_service(
        &mut self,
        name: &str,
        table: &DeTable<'_>,
        value: &Value<'_>,
    ) -> Option<CatalogDrafts> {
        let path = child("services", name);
        let field = |key: &str| child(&path, key);
        let catalog = table.get("catalog")?;
        let entry = self.catalog_entry(catalog, &field("catalog"))?;
        let before = self.problems();
        self.catalog_keys(entry, table, &path);
        match entry.kind {
            CatalogKind::TaskFarm => return self.task_farm(name, table, value, catalog, before),
            CatalogKind::Static | CatalogKind::Php => {
                return self.site(name, entry, (table, value, catalog), before)
            }
            CatalogKind::Postgres | CatalogKind::Mariadb | CatalogKind::Redis => {}
        }
        let version = self.catalog_version(entry, table, &path)?;
        let replicas = match table.get("replicas") {
            None => 0,
            Some(v) => {
                let n = self.whole(v, &field("replicas"), 0, u64::MAX)?;
                if n > MAX_REPLICAS {
                    self.error(
                        v.span(),
                        &field("replicas"),
                        format!(
                            "{n} read replicas is more than the {MAX_REPLICAS} a catalogue service takes"
                        ),
                        Some(format!(
                            "use at most {MAX_REPLICAS}: each replica streams every write of the primary"
                        )),
                    );
                    return None;
                }
                n
            }
        };
        let storage = match table.get("storage") {
            None => crate::units::parse_memory(DEFAULT_STORAGE).expect("a size"),
            Some(v) => self.size(v, &field("storage"), &CATALOG_STORAGE)?,
        };
        let persistence = match table.get("persistence") {
            None => "rdb",
            Some(v) => {
                let written = self.string(v, &field("persistence"))?;
                let Some(known) = PERSISTENCE.iter().find(|p| **p == written) else {
                    self.error(
                        v.span(),
                        &field("persistence"),
                        format!("unknown persistence {written:?}"),
                        Some(format!("write one of {}", PERSISTENCE.join(", "))),
                    );
                    return None;
                };
                known
            }
        };
        let synchronous = match table.get("synchronous") {
            None => false,
            Some(v) => {
                let synchronous = self.boolean(v, &field("synchronous"))?;
                if synchronous && replicas == 0 {
                    self.error(
                        v.span(),
                        &field("synchronous"),
                        "synchronous replication needs a replica: each commit waits for one",
                        Some("add `replicas = 1` (or more: with two, a commit waits for the first of them)".into()),
                    );
                    return None;
                }
                synchronous
            }
        };
        let max_lag = match table.get("max_lag") {
            None => DEFAULT_MAX_LAG,
            Some(v) => self.positive_duration(v, &field("max_lag"))?,
        };
        let restore = match table.get("restore") {
            None => None,
            Some(v) => {
                let written = self.string(v, &field("restore"))?;
                let path = crate::units::resolve(self.base_dir(), written);
                if !self.fs.exists(&path) || self.fs.is_dir(&path) {
                    self.error(
                        v.span(),
                        &field("restore"),
                        format!("no dump to restore at {}", path.display()),
                        Some(format!(
                            "take one with {}; relative paths are resolved against {}",
                            match entry.kind {
                                CatalogKind::Mariadb => "`paracloud capsule run mariadb-dump -l service=SERVICE --out DIR -- DATABASE` and name the file it wrote, DIR/INSTANCE/DATABASE.sql",
                                _ => "`paracloud capsule run pg-dump -l service=SERVICE --out DIR -- DATABASE` and name the file it wrote, DIR/INSTANCE/DATABASE.dump",
                            },
                            self.base_dir().display()
                        )),
                    );
                    return None;
                }
                Some(path)
            }
        };
        self.catalog_password(entry, table, value, &path);
        if entry.kind == CatalogKind::Mariadb {
            self.mariadb_env(table, value, &path, restore.is_some());
        }
        if self.problems() > before {
            return None;
        }

        let image = entry
            .image(&version)
            .expect("a server of the catalogue has an image");
        let volume = data_volume_name(name);
        let read = read_service_name(name);
        let (primary_text, replica_text) = match entry.kind {
            CatalogKind::Postgres => postgres_texts(
                name,
                &image.tag,
                storage,
                replicas,
                (synchronous, max_lag),
                restore,
            ),
            CatalogKind::Mariadb => {
                mariadb_texts(name, &image.tag, replicas, (synchronous, max_lag), restore)
            }
            CatalogKind::Redis => redis_texts(name, &image.tag, replicas, persistence),
            CatalogKind::TaskFarm | CatalogKind::Static | CatalogKind::Php => {
                unreachable!("made by task_farm and site")
            }
        };
        let mut drafts = Vec::new();
        for (service, text, role) in [
            (name.to_owned(), primary_text, CatalogRole::Primary),
            (
                read.clone(),
                replica_text,
                CatalogRole::ReadReplicas {
                    primary: name.to_owned(),
                },
            ),
        ] {
            let mut draft =
                self.made_service(&service, &path, &text, (catalog, table, value), PASSED_ON)?;
            draft.service.catalog = Some(Catalogued {
                kind: entry.kind,
                version: version.clone(),
                role,
                synchronous,
            });
            drafts.push(draft);
        }
        Some(CatalogDrafts {
            drafts,
            volume: Some((volume, storage)),
            read_service: true,
            sessions: None,
            span: catalog.span(),
        })
    }

    /// A task farm: one service of workers, none until a batch runs (see [`WORKER_COMMAND`]).
    fn task_farm(
        &mut self,
        name: &str,
        table: &DeTable<'_>,
        value: &Value<'_>,
        catalog: &Value<'_>,
        before: usize,
    ) -> Option<CatalogDrafts> {
        let path = child("services", name);
        let field = |key: &str| child(&path, key);
        let max_workers = match table.get("max_workers") {
            None => DEFAULT_MAX_WORKERS,
            Some(v) => self.whole(v, &field("max_workers"), 1, MAX_WORKERS)?,
        };
        let retries = match table.get("retries") {
            None => DEFAULT_RETRIES,
            Some(v) => self.whole(v, &field("retries"), 0, 10)?,
        };
        let task_timeout = match table.get("task_timeout") {
            None => DEFAULT_TASK_TIMEOUT,
            Some(v) => self.positive_duration(v, &field("task_timeout"))?,
        };
        if !table.contains_key("image") && !table.contains_key("build") {
            self.error(
                catalog.span(),
                &field("image"),
                "a task farm needs the image its tasks run in",
                Some(
                    "add `image = \"...\"` (with /bin/sh and sleep in it), or `build = \"DIR\"`"
                        .into(),
                ),
            );
        }
        if self.problems() > before {
            return None;
        }
        let command = toml::Value::String(WORKER_COMMAND.into());
        let text = format!(
            "command = [\"/bin/sh\", \"-c\", {command}]\ninit = true\nreplicas = 0\nstop_grace_period = \"5s\"\n"
        );
        let mut draft =
            self.made_service(name, &path, &text, (catalog, table, value), FARM_PASSED_ON)?;
        draft.service.catalog = Some(Catalogued {
            kind: CatalogKind::TaskFarm,
            version: String::new(),
            role: CatalogRole::Workers(TaskFarm {
                max_workers: max_workers as u32,
                retries: retries as u32,
                task_timeout_ms: task_timeout.as_millis() as u64,
            }),
            synchronous: false,
        });
        Some(CatalogDrafts {
            drafts: vec![draft],
            volume: None,
            read_service: false,
            sessions: None,
            span: catalog.span(),
        })
    }

    /// The service `name` made of the catalogue's `text` and the keys of the written `table`
    /// in `passed_on`, checked as any service is (see [`made_table`]).
    fn made_service(
        &mut self,
        name: &str,
        path: &str,
        text: &str,
        (catalog, table, value): (&Value<'_>, &DeTable<'_>, &Value<'_>),
        passed_on: &[&str],
    ) -> Option<Draft> {
        let generated = made_table(text, catalog.span(), table, passed_on);
        let generated = Value::new(value.span(), DeValue::Table(generated));
        let DeValue::Table(generated_table) = generated.get_ref() else {
            return None;
        };
        self.service_fields(name, path, generated_table, &generated)
    }

    /// A static site (nginx instances serving `root`, read-only, on port 80) or a PHP web tier
    /// (the same, with php-fpm behind nginx and its sessions kept where every instance finds
    /// them).
    fn site(
        &mut self,
        name: &str,
        entry: &CatalogEntry,
        (table, value, catalog): (&DeTable<'_>, &Value<'_>, &Value<'_>),
        before: usize,
    ) -> Option<CatalogDrafts> {
        let path = child("services", name);
        let field = |key: &str| child(&path, key);
        let php = entry.kind == CatalogKind::Php;
        let version = self.catalog_version(entry, table, &path)?;
        let whose = if php { "application" } else { "site" };
        let root = match table.get("root") {
            None => {
                self.error(
                    catalog.span(),
                    &field("root"),
                    format!("a {} needs the directory it serves", entry_noun(entry.kind)),
                    Some(format!("add `root = \"{}\"` (a directory beside the manifest, or an absolute path): the {whose}'s files", if php { "app" } else { "public" })),
                );
                return None;
            }
            Some(v) => {
                let written = self.string(v, &field("root"))?;
                let root = crate::units::resolve(self.base_dir(), written);
                if !self.fs.is_dir(&root) {
                    let what = if self.fs.exists(&root) {
                        "is not a directory"
                    } else {
                        "does not exist"
                    };
                    self.error(
                        v.span(),
                        &field("root"),
                        format!("{} {what}: a {} serves a directory", root.display(), entry_noun(entry.kind)),
                        Some(format!(
                            "name the directory of the {whose}'s files; relative paths are resolved against {}",
                            self.base_dir().display()
                        )),
                    );
                    return None;
                }
                root
            }
        };
        let sessions = match table.get("sessions") {
            Some(v) => Some((self.string(v, &field("sessions"))?.to_owned(), v.span())),
            None => None,
        };
        if self.problems() > before {
            return None;
        }
        let image = entry.image(&version).expect("a site has an image");
        let source = toml::Value::String(root.display().to_string());
        let (target, sessions_mount) = if php {
            let mount = match sessions {
                Some(_) => String::new(),
                None => format!(", \"{}:{PHP_SESSIONS}\"", sessions_volume_name(name)),
            };
            ("/srv/app", mount)
        } else {
            ("/srv/www", String::new())
        };
        let mut text = format!(
            r#"image = "{tag}"
volumes = [{{ source = {source}, target = "{target}", read_only = true }}{sessions_mount}]
"#,
            tag = image.tag
        );
        // What nginx and php-fpm need to drop to their user and bind port 80; the PHP tier's
        // script gives its directories to that user, and php-fpm's master signals its workers
        // (which run as that user) to stop.
        text.push_str(if php {
            "cap_add = [\"SETUID\", \"SETGID\", \"NET_BIND_SERVICE\", \"CHOWN\", \"DAC_OVERRIDE\", \"FOWNER\", \"KILL\"]\n"
        } else {
            "cap_add = [\"SETUID\", \"SETGID\", \"NET_BIND_SERVICE\", \"CHOWN\", \"DAC_OVERRIDE\"]\n"
        });
        text.push_str(if php {
            // The check goes through nginx to php-fpm's own answer: both must run.
            "entrypoint = [\"/usr/local/lib/paracloud/catalog\", \"serve\"]\nhealth = { http = \"/.paracloud/ping\", port = 80, interval = \"1s\", timeout = \"2s\", retries = 3 }\nstop_grace_period = \"30s\"\n"
        } else {
            "entrypoint = [\"/usr/sbin/nginx\", \"-c\", \"/etc/paracloud/nginx.conf\"]\nhealth = { tcp = 80, interval = \"1s\", timeout = \"2s\", retries = 3 }\nstop_signal = \"QUIT\"\nstop_grace_period = \"10s\"\n"
        });
        if !table.contains_key("ports") {
            text.push_str("ports = [\"80/http\"]\n");
        }
        let passed_on = if php { PHP_PASSED_ON } else { STATIC_PASSED_ON };
        let mut draft =
            self.made_service(name, &path, &text, (catalog, table, value), passed_on)?;
        if let Some(ports) = table.get("ports") {
            if let Some(other) = draft
                .service
                .ports
                .iter()
                .find(|p| p.port != 80 || p.protocol == crate::Protocol::Udp)
            {
                self.error(
                    ports.span(),
                    &field("ports"),
                    format!(
                        "a {} serves HTTP on port 80, not {}/{}",
                        entry_noun(entry.kind),
                        other.port,
                        other.protocol.name()
                    ),
                    Some("publish port 80: `ports = [\"8080:80/http\"]`".into()),
                );
                return None;
            }
        }
        if php {
            // The application's own named volumes, writable, are given to the user its scripts
            // run as (their top directory: what they write there is theirs).
            let writable = draft.service.volumes.iter().filter_map(|v| match v {
                crate::VolumeMount::Named {
                    target,
                    read_only: false,
                    ..
                } if target != PHP_SESSIONS => Some(target.clone()),
                _ => None,
            });
            let writable: Vec<String> = writable.collect();
            draft.service.entrypoint.extend(writable);
        }
        draft.service.catalog = Some(Catalogued {
            kind: entry.kind,
            version,
            role: CatalogRole::Site,
            synchronous: false,
        });
        let volume =
            (php && sessions.is_none()).then(|| (sessions_volume_name(name), PHP_SESSIONS_SIZE));
        Some(CatalogDrafts {
            drafts: vec![draft],
            volume,
            read_service: false,
            sessions,
            span: catalog.span(),
        })
    }

    /// The version a catalogue service's `version` names, or its default; `None` when it names
    /// one the catalogue does not run, which is reported.
    fn catalog_version(
        &mut self,
        entry: &CatalogEntry,
        table: &DeTable<'_>,
        path: &str,
    ) -> Option<String> {
        let field = child(path, "version");
        let Some(v) = table.get("version") else {
            return Some(entry.versions[0].to_owned());
        };
        let version = self.string(v, &field)?;
        if !entry.versions.contains(&version) {
            self.error(
                v.span(),
                &field,
                format!(
                    "the catalogue's {} runs version {}, not {version:?}",
                    entry.name,
                    entry.versions.join(", ")
                ),
                Some(format!(
                    "write `version = \"{}\"`, or leave it out",
                    entry.versions[0]
                )),
            );
            return None;
        }
        Some(version.to_owned())
    }

    /// The catalogue service `catalog` names; `None` when it names none, which is reported.
    fn catalog_entry(&mut self, catalog: &Value<'_>, field: &str) -> Option<&'static CatalogEntry> {
        let wanted = self.string(catalog, field)?;
        let Some(entry) = entry(wanted) else {
            let names: Vec<&str> = CATALOG.iter().map(|e| e.name).collect();
            let hint = match crate::units::suggest(wanted, names.iter().copied()) {
                Some(close) => {
                    format!("did you mean \"{close}\"? `paracloud catalog ls` lists the catalogue")
                }
                None => format!(
                    "the catalogue has {}; `paracloud catalog ls` says what each offers",
                    names.join(", ")
                ),
            };
            self.error(
                catalog.span(),
                field,
                format!("no service {wanted:?} in the catalogue"),
                Some(hint),
            );
            return None;
        };
        Some(entry)
    }

    /// Reports every key of `table` that `entry` does not take, with the keys it does.
    fn catalog_keys(&mut self, entry: &CatalogEntry, table: &DeTable<'_>, path: &str) {
        let field = |key: &str| child(path, key);
        let allowed: Vec<&str> = entry.keys.iter().map(|(k, _)| *k).collect();
        for key in table.keys() {
            let key_name: &str = key.get_ref();
            if allowed.contains(&key_name) {
                continue;
            }
            let elsewhere = CATALOG
                .iter()
                .find(|other| other.keys.iter().any(|(k, _)| *k == key_name));
            let hint = if crate::service::SERVICE_KEYS.contains(&key_name) {
                format!(
                    "the catalogue runs `{}` itself; its keys are {}",
                    entry.name,
                    allowed.join(", ")
                )
            } else if let Some(other) = elsewhere {
                format!(
                    "`{key_name}` is a key of `catalog = \"{}\"`; this one's keys are {}",
                    other.name,
                    allowed.join(", ")
                )
            } else {
                match crate::units::suggest(key_name, allowed.iter().copied()) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("its keys are {}", allowed.join(", ")),
                }
            };
            self.error(
                key.span(),
                &field(key_name),
                format!("`catalog = \"{}\"` does not take `{key_name}`", entry.name),
                Some(hint),
            );
        }
    }

    /// Reports what a MariaDB server could not make of its `env`: a MARIADB_USER without its
    /// password and database, or named root; a `restore` without the database it goes into.
    fn mariadb_env(&mut self, table: &DeTable<'_>, value: &Value<'_>, path: &str, restore: bool) {
        let env_field = child(path, "env");
        let span = table.get("env").map_or(value.span(), |v| v.span());
        let get = |name: &str| {
            env_value(table, name).and_then(|v| match v.get_ref() {
                DeValue::String(s) if !s.is_empty() => Some((s.to_string(), v.span())),
                _ => None,
            })
        };
        let database = get("MARIADB_DATABASE");
        if let Some((user, at)) = get("MARIADB_USER") {
            if user == "root" {
                self.error(
                    at,
                    &child(&env_field, "MARIADB_USER"),
                    "MARIADB_USER names root, which MARIADB_ROOT_PASSWORD is for",
                    Some("name the application's own user, such as \"app\"".into()),
                );
            } else if get("MARIADB_PASSWORD").is_none() || database.is_none() {
                self.error(
                    at,
                    &child(&env_field, "MARIADB_USER"),
                    "MARIADB_USER needs MARIADB_PASSWORD (its password) and MARIADB_DATABASE (the database it gets every right on)",
                    Some("add both to `env`, or leave MARIADB_USER out and connect as root".into()),
                );
            }
        }
        if restore && database.is_none() {
            self.error(
                table.get("restore").map_or(span, |v| v.span()),
                &child(path, "restore"),
                "a restored dump goes into MARIADB_DATABASE, which `env` does not set",
                Some("add `MARIADB_DATABASE = \"...\"` to `env`: the database the dump was taken of, or a new name".into()),
            );
        }
    }

    /// Reports a missing or empty password of `entry`'s service.
    fn catalog_password(
        &mut self,
        entry: &CatalogEntry,
        table: &DeTable<'_>,
        value: &Value<'_>,
        path: &str,
    ) {
        let field = |key: &str| child(path, key);
        let variable = entry.password_env;
        let password = env_value(table, variable);
        match password.map(|v| v.get_ref()) {
            None => self.error(
                table.get("env").map_or(value.span(), |v| v.span()),
                &child(&field("env"), variable),
                format!("a catalogue {} service needs `env.{variable}`", entry.name),
                Some(format!("add `env = {{ {variable} = \"...\" }}`: the password every connection gives, its replicas' included")),
            ),
            Some(DeValue::String(p)) if p.is_empty() => self.error(
                password.map_or(value.span(), |v| v.span()),
                &child(&field("env"), variable),
                "the password is empty",
                Some("give it a password: connections from the other instances need one".into()),
            ),
            _ => {}
        }
    }
}

/// The variable `name` of a catalogue service table's `env`, as written.
fn env_value<'t, 'i>(table: &'t DeTable<'i>, name: &str) -> Option<&'t Value<'i>> {
    match table.get("env")?.get_ref() {
        DeValue::Table(env) => env.get(name),
        _ => None,
    }
}

/// What a site of `kind` is called in messages.
fn entry_noun(kind: CatalogKind) -> &'static str {
    match kind {
        CatalogKind::Php => "PHP web tier",
        _ => "static site",
    }
}

/// The dump to restore as one more item of a primary's `volumes`, mounted read-only at
/// `target`, where the entry script looks for it (nothing without one).
fn restore_mount(restore: Option<std::path::PathBuf>, target: &str) -> String {
    restore
        .map(|path| {
            let source = toml::Value::String(path.display().to_string());
            format!(", {{ source = {source}, target = \"{target}\", read_only = true }}")
        })
        .unwrap_or_default()
}

/// The generated tables of a PostgreSQL service's primary and replicas.
fn postgres_texts(
    name: &str,
    tag: &str,
    storage: u64,
    replicas: u64,
    (synchronous, max_lag): (bool, std::time::Duration),
    restore: Option<std::path::PathBuf>,
) -> (String, String) {
    let max_lag_ms = max_lag.as_millis();
    let commits = if synchronous { "synchronous" } else { "local" };
    let volume = data_volume_name(name);
    // A quarter of the storage for the write-ahead log, half of that kept for replicas.
    let wal_mb = (storage >> 20) / 4;
    let keep_mb = wal_mb / 2;
    let restore_mount = restore_mount(restore, RESTORE);
    let primary = format!(
        r#"image = "{tag}"
entrypoint = ["{ENTRY}", "primary", "{wal_mb}", "{keep_mb}", "{commits}"]
ports = [5432]
volumes = ["{volume}:/var/lib/postgresql"{restore_mount}]
health = {{ exec = ["{ENTRY}", "ready"], interval = "1s", timeout = "5s", retries = 5, start_period = "5m" }}
cap_add = ["CHOWN", "SETUID", "SETGID", "FOWNER", "DAC_OVERRIDE"]
stop_signal = "INT"
stop_grace_period = "60s"
replicas = 1
"#
    );
    let replica = format!(
        r#"image = "{tag}"
entrypoint = ["{ENTRY}", "replica", "{name}", "{wal_mb}", "{keep_mb}"]
ports = [5432]
health = {{ exec = ["{ENTRY}", "ready", "{max_lag_ms}"], interval = "1s", timeout = "5s", retries = 2, start_period = "30m", restart = false }}
cap_add = ["CHOWN", "SETUID", "SETGID", "FOWNER", "DAC_OVERRIDE"]
stop_signal = "INT"
stop_grace_period = "60s"
replicas = {replicas}
depends_on = {{ {name} = "healthy" }}
"#
    );
    (primary, replica)
}

/// The generated tables of a MariaDB service's primary and replicas. Their script signals the
/// servers it runs for itself as the mysql user (KILL).
fn mariadb_texts(
    name: &str,
    tag: &str,
    replicas: u64,
    (synchronous, max_lag): (bool, std::time::Duration),
    restore: Option<std::path::PathBuf>,
) -> (String, String) {
    let max_lag_ms = max_lag.as_millis();
    let commits = if synchronous { "synchronous" } else { "local" };
    let volume = data_volume_name(name);
    let restore_mount = restore_mount(restore, MARIADB_RESTORE);
    let primary = format!(
        r#"image = "{tag}"
entrypoint = ["{ENTRY}", "primary", "{commits}"]
ports = [3306]
volumes = ["{volume}:/var/lib/mysql"{restore_mount}]
health = {{ exec = ["{ENTRY}", "ready"], interval = "1s", timeout = "5s", retries = 5, start_period = "5m" }}
cap_add = ["CHOWN", "SETUID", "SETGID", "FOWNER", "DAC_OVERRIDE", "KILL"]
stop_grace_period = "60s"
replicas = 1
"#
    );
    let replica = format!(
        r#"image = "{tag}"
entrypoint = ["{ENTRY}", "replica", "{name}"]
ports = [3306]
health = {{ exec = ["{ENTRY}", "ready", "{max_lag_ms}"], interval = "1s", timeout = "5s", retries = 2, start_period = "30m", restart = false }}
cap_add = ["CHOWN", "SETUID", "SETGID", "FOWNER", "DAC_OVERRIDE", "KILL"]
stop_grace_period = "60s"
replicas = {replicas}
depends_on = {{ {name} = "healthy" }}
"#
    );
    (primary, replica)
}

/// The generated tables of a Redis service's primary and replicas.
fn redis_texts(name: &str, tag: &str, replicas: u64, persistence: &str) -> (String, String) {
    let volume = data_volume_name(name);
    let primary = format!(
        r#"image = "{tag}"
entrypoint = ["{ENTRY}", "primary", "{persistence}"]
ports = [6379]
volumes = ["{volume}:/data"]
health = {{ exec = ["{ENTRY}", "ready"], interval = "1s", timeout = "5s", retries = 5, start_period = "5m" }}
cap_add = ["CHOWN", "SETUID", "SETGID", "FOWNER", "DAC_OVERRIDE"]
stop_grace_period = "60s"
replicas = 1
"#
    );
    let replica = format!(
        r#"image = "{tag}"
entrypoint = ["{ENTRY}", "replica", "{name}"]
ports = [6379]
health = {{ exec = ["{ENTRY}", "ready"], interval = "1s", timeout = "5s", retries = 5, start_period = "30m" }}
cap_add = ["CHOWN", "SETUID", "SETGID", "FOWNER", "DAC_OVERRIDE"]
stop_grace_period = "60s"
replicas = {replicas}
depends_on = {{ {name} = "healthy" }}
"#
    );
    (primary, replica)
}

/// A service table made of `text` (the catalogue's own keys, every span moved to `at`, where
/// `catalog` is written) and of the keys of `written` passed on as they are written (their
/// spans kept, so that what is wrong in them is reported where it is).
fn made_table<'i>(
    text: &'i str,
    at: Span,
    written: &DeTable<'i>,
    passed_on: &[&str],
) -> DeTable<'i> {
    let made = DeTable::parse(text).expect("the catalogue writes valid TOML");
    let mut table: DeTable<'i> = made
        .into_inner()
        .into_iter()
        .map(|(k, v)| (Spanned::new(at.clone(), k.into_inner()), respan(v, &at)))
        .collect();
    for (k, v) in written {
        if !passed_on.contains(&k.get_ref().as_ref()) {
            continue;
        }
        // A list the catalogue writes too (a PHP tier's `volumes`) keeps the catalogue's items
        // first.
        let merged = match (
            table.get(k.get_ref().as_ref()).map(|m| m.get_ref()),
            v.get_ref(),
        ) {
            (Some(DeValue::Array(made)), DeValue::Array(items)) => Spanned::new(
                v.span(),
                DeValue::Array(made.iter().chain(items).cloned().collect()),
            ),
            _ => v.clone(),
        };
        table.insert(k.clone(), merged);
    }
    table
}

/// `value` with every span in it moved to `at`.
fn respan<'i>(value: Value<'i>, at: &Span) -> Value<'i> {
    let inner = match value.into_inner() {
        DeValue::Array(items) => DeValue::Array(items.into_iter().map(|v| respan(v, at)).collect()),
        DeValue::Table(table) => DeValue::Table(
            table
                .into_iter()
                .map(|(k, v)| (Spanned::new(at.clone(), k.into_inner()), respan(v, at)))
                .collect(),
        ),
        other => other,
    };
    Spanned::new(at.clone(), inner)
}
