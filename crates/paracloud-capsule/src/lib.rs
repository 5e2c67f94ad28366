//! Capsules as plain data: the catalog of built-in capsules, selectors of target instances, and
//! the policy that says which capsule may attach to which service. No I/O, no clock.
//!
//! # What a capsule's function sees
//!
//! The runtime attaches a capsule to an instance (see `paracloud_runtime::capsule`) and gives
//! every built-in script the same world:
//!
//! - its own root filesystem: static busybox with its applets (`/bin/sh`, and all of them in
//!   `/capsule/bin`, last on `PATH`), the capsule's [`CapsuleSpec::programs`] and
//!   [`CapsuleSpec::trees`] at their host paths with their shared libraries, and the script at
//!   `/capsule/run`, run as `/bin/sh /capsule/run ARGS...`;
//! - `TARGET=/target`: the instance's whole filesystem, read-only unless the capsule needs
//!   [`Access::Write`] and the policy grants it;
//! - `OUT=/out`: an empty directory whose files are returned to the caller (archives, pcaps);
//! - a private `/tmp`; `/proc` of the instance's pid namespace (its first process is pid 1;
//!   the capsule's own processes are there too, in a mount namespace of their own, which is how
//!   the scripts leave them out); the instance's network, ipc and uts namespaces;
//! - root, with the default capabilities plus [`CapsuleSpec::capabilities`], under its own
//!   cgroup limits ([`Limits`]), stopped at its deadline ([`CapsuleSpec::timeout`]).
//!
//! Paths given as arguments are paths inside the instance (`/srv/www`); `..` is refused. Exit
//! codes: 0 success, 1 when `scan` found something, 2 for a usage error (the usage goes to
//! stderr).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod schedule;
pub use schedule::{Schedule, ScheduleError};

/// The access to the target's filesystem a capsule needs, or a policy grants. Write includes
/// read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    Write,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }

    pub fn parse(text: &str) -> Option<Access> {
        match text {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            _ => None,
        }
    }
}

/// Resource limits of one attached capsule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Cores.
    pub cpu: f64,
    /// Bytes.
    pub memory: u64,
    pub pids: u64,
}

/// The limits of a capsule that sets none.
pub const DEFAULT_LIMITS: Limits = Limits {
    cpu: 1.0,
    memory: 256 << 20,
    pids: 256,
};

/// A capsule: what it does, what it needs, and what it is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct CapsuleSpec {
    pub name: String,
    pub description: String,
    /// Its arguments, e.g. `PATH...`.
    pub usage: String,
    pub access: Access,
    /// Capabilities beyond the default set, e.g. `CAP_SYS_PTRACE`.
    pub capabilities: Vec<String>,
    pub limits: Limits,
    /// Its default deadline.
    pub timeout: Duration,
    /// Host programs its image is made of (looked up on PATH), with their libraries.
    pub programs: Vec<String>,
    /// Host directories its image also holds (with the libraries of what they contain).
    pub trees: Vec<String>,
    /// The entry script, run by busybox sh with the arguments.
    pub script: &'static str,
    /// Given arguments, the capsule runs them as its command (found on its PATH) instead of its
    /// script, with no shell in between.
    pub runs_arguments: bool,
    /// The command of a capsule an application defines (`[capsules.NAME]`, made of an image),
    /// run with the arguments appended; empty for the built-in ones, which run their script.
    pub entry: Vec<String>,
}

impl CapsuleSpec {
    /// The command line of a run with `args`, inside the capsule's root (where the script is
    /// `/capsule/run`).
    pub fn command(&self, args: &[String]) -> Vec<String> {
        if !self.entry.is_empty() {
            return self.entry.iter().chain(args).cloned().collect();
        }
        if self.runs_arguments && !args.is_empty() {
            return args.to_vec();
        }
        ["/bin/sh", "/capsule/run"]
            .iter()
            .map(|s| s.to_string())
            .chain(args.iter().cloned())
            .collect()
    }
}

/// A read-only capsule of busybox alone, with the default limits and a five-minute deadline.
fn spec(name: &str, description: &str, usage: &str, script: &'static str) -> CapsuleSpec {
    CapsuleSpec {
        name: name.into(),
        description: description.into(),
        usage: usage.into(),
        access: Access::Read,
        capabilities: Vec::new(),
        limits: DEFAULT_LIMITS,
        timeout: DEFAULT_TIMEOUT,
        programs: Vec::new(),
        trees: Vec::new(),
        script,
        runs_arguments: false,
        entry: Vec::new(),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const MINUTE: Duration = Duration::from_secs(60);

/// The pg_dump of the catalogue's PostgreSQL (Debian's own `pg_dump` is a wrapper script that
/// picks a version: the program itself, of the version the catalogue runs).
pub const PG_DUMP: &str = "/usr/lib/postgresql/15/bin/pg_dump";

/// The deadline of a capsule that sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The built-in capsules, by name.
pub fn builtins() -> Vec<CapsuleSpec> {
    vec![
        CapsuleSpec {
            timeout: 10 * MINUTE,
            programs: strings(&["zstd"]),
            ..spec(
                "archive",
                "a tar archive of a target path, compressed with zstd, returned as archive.tar.zst",
                "PATH",
                scripts::ARCHIVE,
            )
        },
        spec(
            "checksum",
            "sha256 and md5 of every file under target paths",
            "PATH...",
            scripts::CHECKSUM,
        ),
        CapsuleSpec {
            capabilities: strings(&["CAP_SYS_PTRACE", "CAP_NET_RAW", "CAP_NET_ADMIN"]),
            timeout: 60 * MINUTE,
            programs: strings(&["strace", "tcpdump"]),
            runs_arguments: true,
            ..spec(
                "debug",
                "a shell with busybox, strace and tcpdump in the target's namespaces (or ARGS as a command)",
                "[COMMAND ARGS...]",
                scripts::DEBUG,
            )
        },
        CapsuleSpec {
            capabilities: strings(&["CAP_SYS_PTRACE"]),
            limits: Limits {
                memory: 512 << 20,
                ..DEFAULT_LIMITS
            },
            timeout: 2 * MINUTE,
            programs: strings(&["gdb"]),
            // gdb starts its embedded Python, which needs its standard library.
            trees: strings(&["/usr/lib/python3.11", "/usr/share/gdb"]),
            ..spec(
                "gdb",
                "backtraces of every thread of the target's processes (gdb in batch mode)",
                "[PID...]",
                scripts::GDB,
            )
        },
        CapsuleSpec {
            access: Access::Write,
            timeout: 2 * MINUTE,
            ..spec(
                "logrotate",
                "rotate the *.log files of a target directory: copy to NAME.1.gz (older ones shift), truncate in place",
                "DIR [KEEP]",
                scripts::LOGROTATE,
            )
        },
        CapsuleSpec {
            timeout: 60 * MINUTE,
            programs: strings(&["/usr/bin/mariadb-dump", "/usr/bin/mariadb"]),
            ..spec(
                "mariadb-dump",
                "a dump of a database of a catalogue MariaDB instance (the one it holds, or the one named; one consistent transaction, over the server's own socket), returned as DATABASE.sql: what a new service's `restore` takes",
                "[DATABASE]",
                scripts::MARIADB_DUMP,
            )
        },
        CapsuleSpec {
            timeout: Duration::from_secs(30),
            ..spec(
                "metrics",
                "processes, CPU, memory and open connections of the target, as JSON",
                "",
                scripts::METRICS,
            )
        },
        CapsuleSpec {
            timeout: 60 * MINUTE,
            programs: strings(&[PG_DUMP]),
            ..spec(
                "pg-dump",
                "a dump of a database of a catalogue PostgreSQL instance (pg_dump's custom format, over the server's own socket), returned as DATABASE.dump: what a new service's `restore` takes",
                "[DATABASE] [USER]",
                scripts::PG_DUMP,
            )
        },
        CapsuleSpec {
            timeout: 30 * MINUTE,
            programs: strings(&["yara"]),
            ..spec(
                "scan",
                "malware scan of target paths with YARA rules (the EICAR test file among them); exits 1 when something is found",
                "PATH...",
                scripts::SCAN,
            )
        },
        CapsuleSpec {
            capabilities: strings(&["CAP_SYS_PTRACE"]),
            timeout: 6 * MINUTE,
            programs: strings(&["strace"]),
            ..spec(
                "strace",
                "system calls of a target process and its threads for SECONDS (default 5, at most 300)",
                "[SECONDS] [PID]",
                scripts::STRACE,
            )
        },
        CapsuleSpec {
            capabilities: strings(&["CAP_NET_RAW", "CAP_NET_ADMIN"]),
            timeout: 6 * MINUTE,
            programs: strings(&["tcpdump"]),
            ..spec(
                "tcpdump",
                "a capture of the target's network for SECONDS (default 10) or COUNT packets, returned as capture.pcap",
                "[SECONDS] [COUNT] [FILTER...]",
                scripts::TCPDUMP,
            )
        },
    ]
}

/// The built-in capsule `name`.
pub fn builtin(name: &str) -> Option<CapsuleSpec> {
    builtins().into_iter().find(|c| c.name == name)
}

/// The names of the built-in capsules.
pub fn builtin_names() -> Vec<String> {
    builtins().into_iter().map(|c| c.name).collect()
}

/// What a selector is matched against: one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub app: String,
    pub service: String,
    /// Such as `api.1`.
    pub instance: String,
    pub labels: BTreeMap<String, String>,
}

/// `KEY=VALUE[,KEY=VALUE...]`: app, service, instance, or any other key for a label. An
/// instance matches when every pair does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub app: Option<String>,
    pub service: Option<String>,
    pub instance: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at column {column}); write KEY=VALUE[,KEY=VALUE...], such as service=web or instance=api.1,tier=backend")]
pub struct SelectorError {
    pub message: String,
    /// 1-based column of the selector text where the problem is.
    pub column: usize,
}

fn key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '@' | ':')
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let error = |message: String, offset: usize| SelectorError {
            message,
            column: offset + 1,
        };
        if text.trim().is_empty() {
            return Err(error("the selector is empty".into(), 0));
        }
        let mut selector = Selector::default();
        let mut offset = 0;
        for pair in text.split(',') {
            let start = offset;
            offset += pair.len() + 1;
            let Some((key, value)) = pair.split_once('=') else {
                return Err(error(format!("{pair:?} has no '='"), start));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(error(format!("{pair:?} has no key before '='"), start));
            }
            if value.is_empty() {
                return Err(error(
                    format!("{key} has no value after '='"),
                    start + pair.find('=').unwrap_or(0) + 1,
                ));
            }
            if let Some(bad) = key.chars().find(|c| !key_char(*c)) {
                return Err(error(
                    format!("key {key:?} has the character {bad:?}; keys are letters, digits, '-', '_', '.' and '/'"),
                    start,
                ));
            }
            if let Some(bad) = value.chars().find(|c| !value_char(*c)) {
                return Err(error(
                    format!("value {value:?} of {key} has the character {bad:?}"),
                    start + pair.find('=').unwrap_or(0) + 1,
                ));
            }
            let slot = match key {
                "app" => &mut selector.app,
                "service" => &mut selector.service,
                "instance" => &mut selector.instance,
                label => {
                    if selector.labels.insert(label.into(), value.into()).is_some() {
                        return Err(error(format!("{label} is given twice"), start));
                    }
                    continue;
                }
            };
            if slot.replace(value.into()).is_some() {
                return Err(error(format!("{key} is given twice"), start));
            }
        }
        if let (Some(instance), Some(service)) = (&selector.instance, &selector.service) {
            if instance.split('.').next() != Some(service.as_str()) {
                return Err(error(
                    format!("instance {instance} is not an instance of service {service}"),
                    0,
                ));
            }
        }
        Ok(selector)
    }

    pub fn matches(&self, target: &Target) -> bool {
        self.app.as_ref().is_none_or(|a| *a == target.app)
            && self.service.as_ref().is_none_or(|s| *s == target.service)
            && self.instance.as_ref().is_none_or(|i| *i == target.instance)
            && self
                .labels
                .iter()
                .all(|(k, v)| target.labels.get(k) == Some(v))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut pairs = Vec::new();
        for (key, value) in [
            ("app", &self.app),
            ("service", &self.service),
            ("instance", &self.instance),
        ] {
            if let Some(value) = value {
                pairs.push(format!("{key}={value}"));
            }
        }
        pairs.extend(self.labels.iter().map(|(k, v)| format!("{k}={v}")));
        f.write_str(&pairs.join(","))
    }
}

/// Why a capsule may not attach to a service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Whether `capsule` may attach to instances of `service` whose manifest allows `allowed`
/// (`[services.NAME.capsules]`); the access it gets.
pub fn check(
    capsule: &CapsuleSpec,
    service: &str,
    allowed: &BTreeMap<String, Access>,
) -> Result<Access, Refusal> {
    let name = &capsule.name;
    let needed = capsule.access.name();
    match allowed.get(name) {
        None => Err(Refusal(format!(
            "capsule {name:?} may not attach to service {service:?}: the manifest does not allow it; add {name} = \"{needed}\" under [services.{service}.capsules]"
        ))),
        Some(granted) if *granted < capsule.access => Err(Refusal(format!(
            "capsule {name:?} needs {needed} access to {service}'s filesystem; the manifest allows {}: set {name} = \"{needed}\" under [services.{service}.capsules]",
            granted.name()
        ))),
        Some(_) => Ok(capsule.access),
    }
}

/// The entry scripts of the built-in capsules (busybox sh).
pub mod scripts {
    pub const CHECKSUM: &str = r#"set -eu
usage() { echo "usage: checksum PATH..." >&2; exit 2; }
[ $# -gt 0 ] || usage
for arg in "$@"; do
  case "/$arg/" in */../*) echo "checksum: $arg: '..' is not allowed" >&2; exit 2;; esac
  base="$TARGET/${arg#/}"
  [ -e "$base" ] || { echo "checksum: $arg: no such file or directory in the target" >&2; exit 2; }
  find "$base" -type f | sort | while IFS= read -r f; do
    sha=$(sha256sum "$f" | cut -d' ' -f1)
    md5=$(md5sum "$f" | cut -d' ' -f1)
    echo "$sha  $md5  ${f#"$TARGET"}"
  done
done
"#;

    pub const ARCHIVE: &str = r#"set -eu
set -o pipefail
usage() { echo "usage: archive PATH" >&2; exit 2; }
[ $# -eq 1 ] || usage
case "/$1/" in */../*) echo "archive: $1: '..' is not allowed" >&2; exit 2;; esac
path="$TARGET/${1#/}"
[ -e "$path" ] || { echo "archive: $1: no such file or directory in the target" >&2; exit 2; }
cd "$path"
tar -cf - . | zstd -q -T0 -o "$OUT/archive.tar.zst"
echo "archive.tar.zst: $(wc -c < "$OUT/archive.tar.zst") bytes of $1"
"#;

    pub const PG_DUMP: &str = r#"set -eu
usage() { echo "usage: pg-dump [DATABASE] [USER]" >&2; exit 2; }
[ $# -le 2 ] || usage
database=${1:-postgres}
user=${2:-postgres}
case "$database$user" in */*|-*) usage;; esac
# The catalogue's servers listen on a socket in their /tmp, where they trust their own processes.
socket="$TARGET/tmp"
[ -S "$socket/.s.PGSQL.5432" ] || { echo "pg-dump: no PostgreSQL socket in the target's /tmp: attach to an instance of a catalogue postgres service" >&2; exit 2; }
/usr/lib/postgresql/15/bin/pg_dump --format=custom --host="$socket" --username="$user" --dbname="$database" --file="$OUT/$database.dump"
echo "$database.dump: $(wc -c < "$OUT/$database.dump") bytes of database $database"
"#;

    pub const MARIADB_DUMP: &str = r#"set -eu
usage() { echo "usage: mariadb-dump [DATABASE]" >&2; exit 2; }
[ $# -le 1 ] || usage
case "${1:-}" in -*|*/*|*' '*) usage;; esac
# The catalogue's servers listen on a socket in their /tmp, where root gives no password.
socket="$TARGET/tmp/mysqld.sock"
[ -S "$socket" ] || { echo "mariadb-dump: no MariaDB socket in the target's /tmp: attach to an instance of a catalogue mariadb service" >&2; exit 2; }
client() { /usr/bin/mariadb --no-defaults --socket="$socket" --user=root --batch --skip-column-names "$@"; }
database=${1:-}
if [ -z "$database" ]; then
  databases=$(client -e "SELECT schema_name FROM information_schema.schemata WHERE schema_name NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')")
  set -- $databases
  case $# in
    1) database=$1;;
    0) echo "mariadb-dump: the server holds no database of its users" >&2; exit 1;;
    *) echo "mariadb-dump: the server holds $*: name the one to dump" >&2; exit 2;;
  esac
fi
# One database, without CREATE DATABASE or USE: what a new service's `restore` loads into its
# MARIADB_DATABASE.
/usr/bin/mariadb-dump --no-defaults --socket="$socket" --user=root --single-transaction \
  --routines --events --triggers --default-character-set=utf8mb4 "$database" \
  --result-file="$OUT/$database.sql"
echo "$database.sql: $(wc -c < "$OUT/$database.sql") bytes of database $database"
"#;

    pub const LOGROTATE: &str = r#"set -eu
usage() { echo "usage: logrotate DIR [KEEP]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
keep=${2:-5}
case $keep in ''|*[!0-9]*) usage;; esac
[ "$keep" -ge 1 ] || usage
case "/$1/" in */../*) echo "logrotate: $1: '..' is not allowed" >&2; exit 2;; esac
dir="$TARGET/${1#/}"
[ -d "$dir" ] || { echo "logrotate: $1 is not a directory in the target" >&2; exit 2; }
rotated=0
for log in "$dir"/*.log; do
  [ -f "$log" ] || continue
  rm -f "$log.$keep.gz"
  i=$keep
  while [ "$i" -gt 1 ]; do
    p=$((i - 1))
    if [ -f "$log.$p.gz" ]; then mv "$log.$p.gz" "$log.$i.gz"; fi
    i=$p
  done
  # Copy, then truncate in place: the application keeps writing to the file it has open.
  cp -p "$log" "$log.1"
  : > "$log"
  gzip -f "$log.1"
  echo "rotated ${log#"$TARGET"} ($(wc -c < "$log.1.gz") bytes compressed)"
  rotated=$((rotated + 1))
done
echo "$rotated log file(s) rotated"
"#;

    /// YARA rules as hex strings, so that no file of the project carries a signature verbatim.
    pub const SCAN: &str = r#"set -eu
usage() { echo "usage: scan PATH..." >&2; exit 2; }
[ $# -gt 0 ] || usage
cat > /tmp/rules.yar <<'RULES'
rule EICAR_test_file
{
  strings:
    $eicar = { 58 35 4F 21 50 25 40 41 50 5B 34 5C 50 5A 58 35 34 28 50 5E 29 37 43 43 29 37 7D 24 45 49 43 41 52 2D 53 54 41 4E 44 41 52 44 2D 41 4E 54 49 56 49 52 55 53 2D 54 45 53 54 2D 46 49 4C 45 21 24 48 2B 48 2A }
  condition:
    $eicar at 0
}
rule PHP_eval_base64_webshell
{
  strings:
    $a = { 65 76 61 6C 28 62 61 73 65 36 34 5F 64 65 63 6F 64 65 28 }
  condition:
    $a
}
RULES
: > /tmp/files
for arg in "$@"; do
  case "/$arg/" in */../*) echo "scan: $arg: '..' is not allowed" >&2; exit 2;; esac
  base="$TARGET/${arg#/}"
  [ -e "$base" ] || { echo "scan: $arg: no such file or directory in the target" >&2; exit 2; }
  # The target's /proc, /sys and /dev are not files to scan.
  find "$base" \( -path "$TARGET/proc" -o -path "$TARGET/sys" -o -path "$TARGET/dev" \) -prune \
    -o -type f -print >> /tmp/files
done
files=$(wc -l < /tmp/files)
yara -w --scan-list /tmp/rules.yar /tmp/files > /tmp/found
found=$(wc -l < /tmp/found)
sed "s| $TARGET| |" /tmp/found
echo "scanned $files file(s): $found match(es)"
[ "$found" -eq 0 ] || exit 1
"#;

    pub const METRICS: &str = r#"set -eu
[ $# -eq 0 ] || { echo "usage: metrics" >&2; exit 2; }
self_ns=$(readlink /proc/self/ns/mnt)
ticks=100
first=1
count=0
cpu_total=0
rss_total=0
printf '{"instance":"%s","processes":[' "${PARACLOUD_INSTANCE:-}"
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  ns=$(readlink "$d/ns/mnt" 2>/dev/null) || continue
  [ "$ns" != "$self_ns" ] || continue
  stat=$(cat "$d/stat" 2>/dev/null) || continue
  name=$(tr -d '"\\' < "$d/comm" 2>/dev/null) || continue
  rest=${stat##*) }
  set -- $rest
  state=$1; utime=${12}; stime=${13}; threads=${18}
  rss=$(awk '/^VmRSS:/ { print $2 * 1024 }' "$d/status" 2>/dev/null)
  rss=${rss:-0}
  cpu=$(awk -v u="$utime" -v s="$stime" -v t="$ticks" 'BEGIN { printf "%.2f", (u + s) / t }')
  [ $first -eq 1 ] || printf ','
  first=0
  printf '{"pid":%s,"name":"%s","state":"%s","cpu_seconds":%s,"memory_bytes":%s,"threads":%s}' \
    "$pid" "$name" "$state" "$cpu" "$rss" "$threads"
  count=$((count + 1))
  cpu_total=$(awk -v a="$cpu_total" -v b="$cpu" 'BEGIN { printf "%.2f", a + b }')
  rss_total=$((rss_total + rss))
done
established=$(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk 'NR > 1 && $4 == "01"' | wc -l)
listening=$(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk 'NR > 1 && $4 == "0A"' | wc -l)
printf '],"totals":{"processes":%s,"cpu_seconds":%s,"memory_bytes":%s},' "$count" "$cpu_total" "$rss_total"
printf '"connections":{"established":%s,"listening":%s}}\n' "$established" "$listening"
"#;

    pub const STRACE: &str = r#"set -eu
usage() { echo "usage: strace [SECONDS] [PID]  (SECONDS 1 to 300, default 5; PID default 1)" >&2; exit 2; }
[ $# -le 2 ] || usage
secs=${1:-5}
pid=${2:-1}
case $secs in ''|*[!0-9]*) usage;; esac
case $pid in ''|*[!0-9]*) usage;; esac
[ "$secs" -ge 1 ] && [ "$secs" -le 300 ] || usage
[ -d "/proc/$pid" ] || { echo "strace: no process $pid in the target" >&2; exit 2; }
timeout -s INT "$secs" strace -f -qq -tt -p "$pid" -o "$OUT/strace.txt" || true
cat "$OUT/strace.txt"
"#;

    pub const GDB: &str = r#"set -eu
self_ns=$(readlink /proc/self/ns/mnt)
pids="$*"
if [ -z "$pids" ]; then
  for d in /proc/[0-9]*; do
    ns=$(readlink "$d/ns/mnt" 2>/dev/null) || continue
    [ "$ns" != "$self_ns" ] && pids="$pids ${d#/proc/}"
  done
fi
for pid in $pids; do
  case $pid in *[!0-9]*) echo "usage: gdb [PID...]" >&2; exit 2;; esac
  echo "=== process $pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo gone))"
  gdb -nx -batch -p "$pid" -ex "info threads" -ex "thread apply all bt" 2>&1 \
    | grep -v -e '^\[New LWP' -e '^warning: ' || true
done
"#;

    pub const TCPDUMP: &str = r#"set -eu
usage() { echo "usage: tcpdump [SECONDS] [COUNT] [FILTER...]  (SECONDS 1 to 300, default 10; COUNT default 1000)" >&2; exit 2; }
secs=${1:-10}
count=${2:-1000}
case $secs in ''|*[!0-9]*) usage;; esac
case $count in ''|*[!0-9]*) usage;; esac
[ "$secs" -ge 1 ] && [ "$secs" -le 300 ] && [ "$count" -ge 1 ] || usage
[ $# -gt 2 ] && shift 2 || set --
timeout -s INT "$secs" tcpdump -i any -n -U -Z root -c "$count" -w "$OUT/capture.pcap" "$@" 2> /tmp/err || true
grep -v '^tcpdump: listening' /tmp/err >&2 || true
echo "capture.pcap: $(wc -c < "$OUT/capture.pcap") bytes"
"#;

    pub const DEBUG: &str = r#"if [ $# -eq 0 ]; then
  export PS1="debug $PARACLOUD_INSTANCE:\w# "
  echo "debug capsule on $PARACLOUD_INSTANCE: the instance's files are in /target, its processes in /proc; exit to detach" >&2
  exec /bin/sh -i
fi
exec "$@"
"#;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn debug_runs_its_arguments_and_the_others_their_script() {
        let args = strings(&["cat", "/proc/1/comm"]);
        let debug = builtin("debug").unwrap();
        assert_eq!(debug.command(&args), args);
        assert_eq!(debug.command(&[]), strings(&["/bin/sh", "/capsule/run"]));
        assert_eq!(
            builtin("checksum").unwrap().command(&strings(&["/etc"])),
            strings(&["/bin/sh", "/capsule/run", "/etc"])
        );
        let own = CapsuleSpec {
            entry: strings(&["/bin/dump", "--all"]),
            ..builtin("checksum").unwrap()
        };
        assert_eq!(
            own.command(&strings(&["users"])),
            strings(&["/bin/dump", "--all", "users"]),
            "an application's capsule runs its command with the arguments appended"
        );
        let runs_arguments: Vec<String> = builtins()
            .into_iter()
            .filter(|c| c.runs_arguments)
            .map(|c| c.name)
            .collect();
        assert_eq!(runs_arguments, ["debug"]);
    }

    fn target(service: &str, index: u32, labels: &[(&str, &str)]) -> Target {
        Target {
            app: "shop".into(),
            service: service.into(),
            instance: format!("{service}.{index}"),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn selectors_match_app_service_instance_and_labels() {
        let s = Selector::parse("service=web,tier=front").unwrap();
        assert!(s.matches(&target("web", 1, &[("tier", "front")])));
        assert!(!s.matches(&target("web", 1, &[])));
        assert!(!s.matches(&target("api", 1, &[("tier", "front")])));
        let s = Selector::parse("instance=api.2").unwrap();
        assert!(s.matches(&target("api", 2, &[])));
        assert!(!s.matches(&target("api", 1, &[])));
        let s = Selector::parse("app=other").unwrap();
        assert!(!s.matches(&target("api", 1, &[])));
    }

    #[test]
    fn bad_selectors_say_what_and_where() {
        let cases = [
            ("", "empty", 1),
            ("service", "has no '='", 1),
            ("service=web,=x", "no key", 13),
            ("service=", "no value", 9),
            ("service=web,service=api", "given twice", 13),
            ("ser vice=web", "character ' '", 1),
            (
                "service=web,instance=api.1",
                "not an instance of service web",
                1,
            ),
            ("tier=a,tier=b", "given twice", 8),
        ];
        for (text, expected, column) in cases {
            let e = Selector::parse(text).unwrap_err();
            assert!(e.message.contains(expected), "{text:?}: {e}");
            assert_eq!(e.column, column, "{text:?}: {e}");
            assert!(e.to_string().contains("KEY=VALUE"), "{e}");
        }
    }

    proptest! {
        #[test]
        fn display_parses_back(
            app in proptest::option::of("[a-z][a-z0-9-]{0,8}"),
            service in proptest::option::of("[a-z][a-z0-9-]{0,8}"),
            labels in proptest::collection::btree_map("[a-z][a-z0-9_./-]{0,8}", "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,8}", 0..4),
        ) {
            let labels: BTreeMap<String, String> = labels
                .into_iter()
                .filter(|(k, _)| !matches!(k.as_str(), "app" | "service" | "instance"))
                .collect();
            let selector = Selector { app, service, instance: None, labels };
            let text = selector.to_string();
            prop_assume!(!text.is_empty());
            prop_assert_eq!(Selector::parse(&text).unwrap(), selector);
        }

        #[test]
        fn parse_never_panics(text in ".{0,40}") {
            let _ = Selector::parse(&text);
        }
    }

    #[test]
    fn policy_allows_refuses_and_says_how_to_fix() {
        let strace = builtin("strace").unwrap();
        let logrotate = builtin("logrotate").unwrap();
        let mut allowed = BTreeMap::new();
        let e = check(&strace, "api", &allowed).unwrap_err();
        assert!(
            e.0.contains("add strace = \"read\" under [services.api.capsules]"),
            "{e}"
        );
        allowed.insert("strace".to_string(), Access::Read);
        allowed.insert("logrotate".to_string(), Access::Read);
        assert_eq!(check(&strace, "api", &allowed), Ok(Access::Read));
        let e = check(&logrotate, "api", &allowed).unwrap_err();
        assert!(e.0.contains("needs write access"), "{e}");
        assert!(e.0.contains("set logrotate = \"write\""), "{e}");
        allowed.insert("logrotate".to_string(), Access::Write);
        assert_eq!(check(&logrotate, "api", &allowed), Ok(Access::Write));
        // A write grant does not widen a read-only capsule.
        allowed.insert("strace".to_string(), Access::Write);
        assert_eq!(check(&strace, "api", &allowed), Ok(Access::Read));
    }

    #[test]
    fn catalog_names_are_unique_and_sorted() {
        let names = builtin_names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
        assert_eq!(names.len(), 11);
    }
}
