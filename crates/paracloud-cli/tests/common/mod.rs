//! A platform of its own for each test: state root, cgroup parent, subnet pool and host ports,
//! driven through the real `paracloud` binary against a real daemon.
//!
//! Tests run in parallel (one process each under nextest): a test claims a numbered slot by
//! holding an exclusive lock on a file, and derives everything it uses from that number.

#![allow(dead_code, reason = "each test file uses its own part of the harness")]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

pub const SLOTS: u32 = 100;

pub struct Platform {
    pub root: tempfile::TempDir,
    pub slot: u32,
    _lock: Flock<File>,
    /// Relays into instances ([`Platform::paci_socket`]), ended and reaped at the end.
    relays: std::sync::Mutex<Vec<std::process::Child>>,
    /// The state root is a small filesystem of its own, unmounted at the end.
    small_root: std::sync::atomic::AtomicBool,
}

/// The directory of the workspace's built binaries (paracloud, shop-web, shop-api, shop-kv).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_paracloud"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A kubeconfig whose current context `standin` reaches the API server at `url` (a stand-in's),
/// beside a context `elsewhere` whose cluster it does not define.
pub fn kubeconfig(url: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {url}\n\
             contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: tester\n\
             - name: elsewhere\n  context:\n    cluster: nowhere\n    user: tester\n\
             current-context: standin\nusers:\n- name: tester\n  user: {{}}\n"
        ),
    )
    .unwrap();
    file
}

/// A program of the Python virtual environment scripts/deps.sh makes:
/// `$XDG_CACHE_HOME/paracloud/venv` (`~/.cache/paracloud/venv`).
pub fn python_tool(name: &str) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    cache.join("paracloud/venv/bin").join(name)
}

impl Platform {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join("paracloud-test-slots");
        std::fs::create_dir_all(&dir).unwrap();
        let start = std::process::id() % SLOTS;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(slot.to_string()))
                .unwrap();
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                let root = tempfile::Builder::new()
                    .prefix("paracloud-test-")
                    .tempdir()
                    .unwrap();
                return Self {
                    root,
                    slot,
                    _lock: lock,
                    relays: Default::default(),
                    small_root: Default::default(),
                };
            }
        }
        panic!("all {SLOTS} test slots are taken");
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A /16 address pool of its own: 10.(100+slot).0.0/16.
    pub fn subnet(&self) -> String {
        format!("10.{}.0.0/16", 100 + self.slot)
    }

    /// A host port of its own (`n` < 20).
    pub fn port(&self, n: u16) -> u16 {
        21000 + self.slot as u16 * 20 + n
    }

    pub fn cgroup_parent(&self) -> String {
        format!("paracloud-test-{}", self.slot)
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paracloud"));
        cmd.env("PARACLOUD_ROOT", self.root())
            .env("PARACLOUD_CGROUP_PARENT", self.cgroup_parent())
            .env("PARACLOUD_SUBNET", self.subnet())
            .env_remove("PARACLOUD_APP")
            .env("RUST_LOG", "info");
        cmd
    }

    /// Runs `paracloud ARGS` and returns its output, whatever its status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs `paracloud ARGS`, fails the test unless it succeeds, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "paracloud {} failed ({}):\nstdout: {}\nstderr: {}\n--- daemon log ---\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `paracloud ARGS`, expects it to fail, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "paracloud {} should have failed but printed {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn daemon_log(&self) -> String {
        self.log_tail("daemon.log", 60)
    }

    /// The last lines of the data plane's log, where every failed backend exchange is told.
    pub fn dataplane_log(&self) -> String {
        self.log_tail("dataplane.log", 60)
    }

    fn log_tail(&self, name: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.root().join(name)).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Writes a manifest into the test's root and returns its path.
    pub fn manifest(&self, name: &str, text: &str) -> PathBuf {
        let dir = self.root().join("manifests").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("paracloud.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The shop example's manifest, pointed at this build's binaries and this test's web port.
    pub fn shop(&self) -> PathBuf {
        let text =
            std::fs::read_to_string(workspace().join("examples/shop/paracloud.toml")).unwrap();
        let text = text
            .replace(
                "\"../../target/release\"",
                &format!("{:?}", bin_dir().display().to_string()),
            )
            .replace("publish = 8080", &format!("publish = {}", self.port(0)));
        assert!(
            text.contains(&bin_dir().display().to_string()),
            "the example manifest changed shape"
        );
        self.manifest("shop", &text)
    }

    /// Builds `busybox:1` in this platform's store, a micro-image of the host's static busybox
    /// (its `/bin` links to `usr/bin`, as on the host), for Containerfiles to start FROM.
    pub fn busybox_image(&self) {
        self.ok(&[
            "image",
            "build",
            "--from-binary",
            "/bin/busybox",
            "-t",
            "busybox:1",
        ]);
    }

    /// Writes the manifest of application `farm`: a task farm `render` (busybox with its
    /// applets, built from a Containerfile beside the manifest; the volume `work` at /work; up to
    /// 8 workers, 2 retries) with `extra` keys of its own, and a service `web` that sleeps. The
    /// store gets `busybox:1` first. Returns the manifest's path.
    pub fn task_farm_manifest(&self, extra: &str) -> PathBuf {
        self.busybox_image();
        let path = self.manifest(
            "farm",
            &format!(
                r#"app = "farm"

[services.render]
catalog = "taskfarm"
build = "tools"
volumes = ["work:/work"]
max_workers = 8
retries = 2
task_timeout = "20s"
env = {{ GREETING = "hello" }}
{extra}
[services.web]
image = "busybox:1"
command = ["sleep", "100000"]
stop_signal = "KILL"
"#
            ),
        );
        let tools = path.parent().unwrap().join("tools");
        std::fs::create_dir_all(&tools).unwrap();
        std::fs::write(
            tools.join("Containerfile"),
            "FROM busybox:1\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
        )
        .unwrap();
        path
    }

    /// `ps -o json` as parsed JSON objects.
    pub fn ps(&self, app: &str) -> Vec<Value> {
        let out = self.ok(&["ps", "-a", app, "-o", "json"]);
        serde_json::from_str::<Vec<Value>>(&out)
            .unwrap_or_else(|e| panic!("ps -o json is not JSON ({e}): {out}"))
    }

    /// Waits until `check` holds for `ps`, or fails the test after `timeout`.
    pub fn wait_ps(
        &self,
        app: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let ps = self.ps(app);
            if check(&ps) {
                return ps;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; ps: {ps:#?}\n--- daemon log ---\n{}",
                    self.daemon_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid_file(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.root().join(name))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        self.pid_file("daemon.pid")
    }

    pub fn dataplane_pid(&self) -> Option<i32> {
        self.pid_file("dataplane.pid")
    }

    /// Has the daemon serve its remote API (HTTPS, self-signed) on 127.0.0.1:port(19), through
    /// the root's daemon.toml: call it before any command starts the daemon. The port.
    pub fn listen_remotely(&self) -> u16 {
        let port = self.port(19);
        std::fs::write(
            self.root().join("daemon.toml"),
            format!("listen = \"127.0.0.1:{port}\"\n"),
        )
        .unwrap();
        port
    }

    /// `paracloud token create NAME --role ROLE [ARGS]` on the daemon's machine: the token, alone
    /// on the last line.
    pub fn token(&self, name: &str, role: &str, args: &[&str]) -> String {
        let mut all = vec!["token", "create", name, "--role", role];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        let token = out.lines().last().unwrap_or_default().to_string();
        assert!(token.starts_with("pct_"), "{out}");
        token
    }

    /// Puts the state root on a tmpfs of `size` (as `mount -o size=` reads it), before any
    /// command: a small disk a test can fill.
    pub fn on_small_filesystem(&self, size: &str) {
        nix::mount::mount(
            Some("tmpfs"),
            self.root(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=700").as_str()),
        )
        .expect("cannot mount a tmpfs on the state root");
        self.small_root
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Platform {
    /// Removes what `down` could not: the bridges (with their veth pairs) and firewall tables of
    /// this test's address pool, left by an application without instances that `ps` does not
    /// list, or by a daemon the test killed. Their names carry the subnet (`pc0a67…` for
    /// 10.103.x.x), and the pool is this test's alone while it holds its slot.
    fn remove_leftover_networks(&self) {
        let prefix = format!("pc0a{:02x}", 100 + self.slot);
        let output = |program: &str, args: &[&str]| {
            std::process::Command::new(program)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let links = output("ip", &["-br", "link"]);
        for name in links
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|n| n.split('@').next().unwrap_or(n))
            .filter(|n| n.starts_with(&prefix))
        {
            let _ = output("ip", &["link", "del", name]);
        }
        let tables = output("nft", &["list", "tables"]);
        for table in tables
            .lines()
            .filter_map(|l| l.strip_prefix("table inet "))
            .filter(|t| t.starts_with(&format!("paracloud-{prefix}")))
        {
            let _ = output("nft", &["delete", "table", "inet", table]);
        }
    }
}

impl Drop for Platform {
    /// Takes every application down, then ends the daemon and the data plane this test started.
    fn drop(&mut self) {
        if let Some(pid) = self.daemon_pid() {
            if alive(pid) {
                let out = self.run(&["ps", "-A", "-o", "json"]);
                let apps: Vec<String> = serde_json::from_slice::<Vec<Value>>(&out.stdout)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|i| i["app"].as_str().map(str::to_string))
                    .collect();
                let mut apps = apps;
                apps.sort();
                apps.dedup();
                for app in apps {
                    let _ = self.run(&["down", "-a", &app, "--volumes"]);
                }
                terminate(pid);
            }
        }
        if let Some(pid) = self.dataplane_pid() {
            terminate(pid);
        }
        for mut relay in self.relays.lock().unwrap().drain(..) {
            let _ = relay.kill();
            let _ = relay.wait();
        }
        self.remove_leftover_networks();
        // The instances' cgroups are gone with them; their parent is this test's to remove.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for hierarchy in hierarchies.flatten() {
                let _ = std::fs::remove_dir(hierarchy.path().join(self.cgroup_parent()));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(self.cgroup_parent()));
        if self.small_root.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = nix::mount::umount2(self.root(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Every process id in /proc now.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

pub fn terminate(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    for _ in 0..50 {
        if kill(pid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

pub fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// A plain HTTP/1.0 GET on 127.0.0.1:port; returns (status, body), or an error text.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    http_get_with(port, path, &[])
}

/// `http_get` with extra request headers.
pub fn http_get_with(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\n{extra}\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn field<'a>(instance: &'a Value, name: &str) -> &'a str {
    instance[name]
        .as_str()
        .unwrap_or_else(|| panic!("no string field {name} in {instance}"))
}

pub fn pids(ps: &[Value]) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = ps
        .iter()
        .map(|i| {
            (
                field(i, "instance").to_string(),
                i["pid"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    v.sort();
    v
}

/// Relays a Unix socket (argv[1]) to another (argv[2]), one connection for each accepted one.
const RELAY: &str = r#"
import socket, sys, threading
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen(64)
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
while True:
    client, _ = listener.accept()
    upstream = socket.socket(socket.AF_UNIX)
    try:
        upstream.connect(sys.argv[2])
    except OSError:
        client.close()
        continue
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
"#;

impl Platform {
    /// The host side of an instance's PaCI socket (`app`, `instance` such as `one.2`): the very
    /// socket the instance sees at /run/paracloud/paci.sock, which answers its own processes
    /// alone.
    pub fn paci_socket_of(&self, app: &str, instance: &str) -> PathBuf {
        self.root()
            .join("paci")
            .join(self.instance_id(app, instance))
            .join("paci.sock")
    }

    /// The instance's id, which names its cgroup and PaCI directory.
    pub fn instance_id(&self, app: &str, instance: &str) -> String {
        format!("{app}-{}", instance.replace('.', "-"))
    }

    /// A socket through which the test speaks as the instance: a relay to its PaCI socket run
    /// in the instance's cgroup (as a process the instance started would be), started again
    /// once the instance's restart took the last one with it.
    pub fn paci_socket(&self, app: &str, instance: &str) -> PathBuf {
        let id = self.instance_id(app, instance);
        let relay = self.root().join(format!("relay-{id}.sock"));
        if std::os::unix::net::UnixStream::connect(&relay).is_ok() {
            return relay;
        }
        let _ = std::fs::remove_file(&relay);
        let parent = self.cgroup_parent();
        let join = format!(
            "for f in /sys/fs/cgroup/{parent}/{id}/cgroup.procs /sys/fs/cgroup/*/{parent}/{id}/cgroup.procs; do \
             if [ -f \"$f\" ]; then echo $$ > \"$f\" || exit 1; fi; done; exec /usr/bin/python3 -c \"$0\" \"$1\" \"$2\""
        );
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(join)
            .arg(RELAY)
            .arg(&relay)
            .arg(self.paci_socket_of(app, instance))
            .spawn()
            .expect("cannot start a relay into the instance");
        self.relays.lock().unwrap().push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&relay).is_err() {
            assert!(
                Instant::now() < deadline,
                "the relay into {instance} of {app} did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        relay
    }

    /// The event log of an application, one `subject: message` line per event.
    pub fn events(&self, app: &str) -> String {
        self.ok(&["events", "-a", app])
    }

    /// The instances of `service` as `describe` shows them.
    pub fn described_instances(&self, app: &str, service: &str) -> Vec<Value> {
        let v: Value =
            serde_json::from_str(&self.ok(&["describe", "-a", app, service, "-o", "json"]))
                .unwrap();
        v["instances"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `describe` shows instance `instance` of `service` with every one of
    /// `figures` (such as `queries_per_second`, `lag_ms`), or fails the test.
    pub fn wait_figures(&self, app: &str, service: &str, instance: &str, figures: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let instances = self.described_instances(app, service);
            let shown = instances
                .iter()
                .find(|i| i["instance"] == instance)
                .is_some_and(|i| figures.iter().all(|f| i[*f].is_number()));
            if shown {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{instance} shows no {figures:?}: {instances:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Two switchovers of the primary `primary` of application `app` (`.1` to `.2` to `.3`) under
    /// one-row writes through `insert`, which go on throughout: each migration returns, none of the
    /// writes is lost (`present` after each), the volume holds the data directory each names
    /// (`generations`) alone, and the read service is renewed from the new primary, each replica
    /// having the last write (`replica_has`). Then the volume holds the last data directory
    /// alone, and the primary, restarted, comes back on it with every write.
    pub fn switch_over_twice(
        &self,
        (app, primary): (&str, &str),
        generations: [&str; 2],
        insert: impl Fn(u64) -> bool + Copy + Sync,
        present: impl Fn() -> std::collections::BTreeSet<u64>,
        replica_has: impl Fn(&str, u64) -> bool,
    ) -> Commits {
        let volume = self.root().join(format!("volumes/{app}/{primary}-data"));
        let read = format!("{primary}-read");
        let context = || self.events(app);
        let mut commits = Commits::new();
        commits.until(20, Duration::from_secs(60), context, &mut { insert });
        for (n, generation) in (1..).zip(generations) {
            let (from, to) = (format!("{primary}.{n}"), format!("{primary}.{}", n + 1));
            let replicas_before = self.pids(app, &read);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let migrated = std::thread::scope(|scope| {
                let writer = scope.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        commits.next(insert);
                    }
                });
                let migrated = self.run(&["migrate", "-a", app, &from]);
                // Writes go on after the switch, through the same address.
                std::thread::sleep(Duration::from_secs(2));
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                writer.join().unwrap();
                migrated
            });
            let said = String::from_utf8_lossy(&migrated.stderr).into_owned();
            assert!(
                migrated.status.success()
                    && said.contains(&format!("migrated {from} to {to} via switchover")),
                "{said}\n{}\nLOGS {}",
                self.events(app),
                self.ok(&["logs", "-a", app, primary])
            );
            commits.until(10, Duration::from_secs(30), context, &mut { insert });
            let lost = commits.lost(&present());
            eprintln!(
                "switchover {from} to {to}: {} writes acknowledged, {lost} lost, {} failed, the longest time without one {} ms",
                commits.committed.len(),
                commits.failed,
                commits.longest_gap.as_millis()
            );
            assert_eq!(lost, 0, "acknowledged writes lost");
            let events = self.events(app);
            assert!(
                events.contains(&format!(
                    "switched: {to} takes the writes of {from}, after a pause of"
                )),
                "{events}"
            );
            let primaries: Vec<String> = self
                .ps(app)
                .iter()
                .filter(|i| field(i, "service") == primary)
                .map(|i| format!("{} {}", field(i, "instance"), field(i, "state")))
                .collect();
            assert_eq!(primaries, [format!("{to} running")]);
            assert_eq!(
                std::fs::read_to_string(volume.join("current"))
                    .unwrap()
                    .trim(),
                generation
            );
            assert!(!volume.join("switchover-from").exists());
            assert!(volume.join(generation).is_dir());
            // The replica is renewed from the new primary, and follows it.
            self.wait_renewed(app, &read, &replicas_before, 1);
            let last = *commits.committed.last().unwrap();
            let replicas: Vec<String> = self
                .ps(app)
                .iter()
                .filter(|i| field(i, "service") == read)
                .map(|i| field(i, "address").split('/').next().unwrap().to_owned())
                .collect();
            for replica in replicas {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !replica_has(&replica, last) {
                    assert!(Instant::now() < deadline, "{replica} does not follow {to}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let data = format!("{primary}-data");
        assert_eq!(
            self.volume_entries(app, &data, "data"),
            [generations[1]],
            "the volume keeps the data in use alone"
        );
        self.ok(&["restart", "-a", app, primary]);
        assert_eq!(
            commits.lost(&present()),
            0,
            "acknowledged writes lost by the restart"
        );
        commits
    }

    /// The entries of a data volume whose names start with `prefix`, sorted.
    pub fn volume_entries(&self, app: &str, volume: &str, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(self.root().join("volumes").join(app).join(volume))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(prefix))
                .collect();
        names.sort();
        names
    }

    /// The pids of `service`'s instances, as `ps` shows them.
    pub fn pids(&self, app: &str, service: &str) -> Vec<Value> {
        self.ps(app)
            .into_iter()
            .filter(|i| field(i, "service") == service)
            .map(|i| i["pid"].clone())
            .collect()
    }

    /// Kills the instance of `service` that `ps` lists first with SIGKILL.
    pub fn kill_first(&self, app: &str, service: &str) {
        let pid = self.pids(app, service)[0].as_i64().unwrap();
        kill9(pid as i32);
    }

    /// Waits until `service` has `count` running instances, none of them among `before` (pids):
    /// all replaced.
    pub fn wait_renewed(&self, app: &str, service: &str, before: &[Value], count: usize) {
        self.wait_ps(
            app,
            Duration::from_secs(120),
            "every instance renewed",
            |ps| {
                let of_service: Vec<&Value> = ps
                    .iter()
                    .filter(|i| field(i, "service") == service)
                    .collect();
                of_service.len() == count
                    && of_service
                        .iter()
                        .all(|i| field(i, "state") == "running" && !before.contains(&i["pid"]))
            },
        );
    }

    /// A catalogue primary `primary` of `app` that cannot come back, under one-row commits
    /// through `insert`: 100 commits, then `destroy` makes its data volume unstartable and the
    /// primary is killed with SIGKILL, then 50 commits more, which come once it has failed over.
    /// Every committed row must be in `present()` afterwards (the figures are printed). Returns
    /// the commits and the pids its read service had before.
    pub fn fail_over_under_commits(
        &self,
        (app, primary): (&str, &str),
        destroy: impl FnOnce(&Path),
        mut insert: impl FnMut(u64) -> bool,
        present: impl FnOnce() -> std::collections::BTreeSet<u64>,
    ) -> (Commits, Vec<Value>) {
        let context = || {
            let logs = self.ok(&["logs", "-a", app, primary]);
            format!("{}\n{logs}", self.events(app))
        };
        let mut commits = Commits::new();
        commits.until(100, Duration::from_secs(60), context, &mut insert);
        assert_eq!(commits.failed, 0, "all commits succeed before the kill");
        let replicas_before = self.pids(app, &format!("{primary}-read"));
        destroy(
            &self
                .root()
                .join("volumes")
                .join(app)
                .join(format!("{primary}-data")),
        );
        self.kill_first(app, primary);
        commits.until(50, Duration::from_secs(180), context, &mut insert);
        let lost = commits.lost(&present());
        eprintln!(
            "failover: {} rows committed, {lost} lost, {} inserts failed, the longest time without a commit {} ms",
            commits.committed.len(),
            commits.failed,
            commits.longest_gap.as_millis()
        );
        assert_eq!(lost, 0, "committed rows lost");
        (commits, replicas_before)
    }

    /// Waits until the event log of `app` has a line containing `needle`.
    pub fn wait_event(&self, app: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events(app);
            if events.contains(needle) {
                return events;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for the event {needle:?}; events:\n{events}\n--- daemon log ---\n{}",
                    self.daemon_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One HTTP/1.1 request over a Unix socket, written by hand (so that it can be malformed);
/// returns the status and the body.
pub fn unix_http(socket: &Path, method: &str, target: &str, body: &str) -> (u16, String) {
    use std::os::unix::net::UnixStream;
    let mut stream = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // One write: a server that answers before reading the body (a refusal) may close at once.
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: paci\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A plain HTTP/1.0 request with a body on 127.0.0.1:port; returns (status, body).
pub fn http_send(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The uid process `pid` has inside its instance: its host uid seen through its user
/// namespace's map (the same id when it runs with host ids).
pub fn uid_inside(pid: i64) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let host: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no Uid in {status}"));
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    map.lines()
        .find_map(|line| {
            let [inside, outside, count] = line
                .split_whitespace()
                .map(|n| n.parse::<u64>().ok())
                .collect::<Option<Vec<_>>>()?[..]
            else {
                return None;
            };
            let host = u64::from(host);
            (outside..outside + count)
                .contains(&host)
                .then(|| (inside + host - outside) as u32)
        })
        .unwrap_or_else(|| panic!("uid {host} is not in the map {map}"))
}

/// One-row commits through a write address, one at a time, each counted once its client heard
/// it committed; and the longest time between two of them (while the address took none).
pub struct Commits {
    pub committed: Vec<u64>,
    pub failed: u64,
    pub longest_gap: Duration,
    last: Instant,
}

impl Commits {
    pub fn new() -> Self {
        Self {
            committed: Vec::new(),
            failed: 0,
            longest_gap: Duration::ZERO,
            last: Instant::now(),
        }
    }

    /// Tries the next row with `insert` (which says whether it committed); a failure waits a
    /// little before the next try.
    pub fn next(&mut self, insert: impl FnOnce(u64) -> bool) {
        let n = self.committed.len() as u64 + self.failed + 1;
        if insert(n) {
            self.committed.push(n);
            self.longest_gap = self.longest_gap.max(self.last.elapsed());
            self.last = Instant::now();
        } else {
            self.failed += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Commits `more` rows, or fails the test after `timeout` with `context`.
    pub fn until(
        &mut self,
        more: usize,
        timeout: Duration,
        context: impl Fn() -> String,
        insert: &mut impl FnMut(u64) -> bool,
    ) {
        let wanted = self.committed.len() + more;
        let deadline = Instant::now() + timeout;
        while self.committed.len() < wanted {
            assert!(
                Instant::now() < deadline,
                "{more} commits did not come within {timeout:?}\n{}",
                context()
            );
            self.next(&mut *insert);
        }
    }

    /// The committed rows missing from `present`.
    pub fn lost(&self, present: &std::collections::BTreeSet<u64>) -> usize {
        self.committed
            .iter()
            .filter(|n| !present.contains(n))
            .count()
    }
}
