//! The Kubernetes node agent against containers started as a node's CRI runtime starts them:
//! an OCI runtime (crun, or runc where crun cannot run: a hybrid cgroup layout with controllers
//! on cgroup2) with containerd's pod annotations, a cgroupsPath under a kubepods-like parent,
//! their own pid, mount, uts and ipc namespaces, and the pod's PaCI directory bound at
//! /run/paracloud (what a hostPath volume with `subPathExpr: $(POD_UID)` becomes). Each test has
//! its own root, cgroup parents and container ids, and removes them even when it fails.

mod common;
#[path = "../../paracloud-image/tests/common/registry.rs"]
mod registry_server;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paracloud_kube_standin::{Gvr, ObjectRef, Options, StandIn};
use serde_json::{json, Value};

use common::{kubeconfig, unix_http};
use registry_server::RegistryServer;

/// The OCI runtime the tests start containers with.
fn oci_runtime() -> &'static str {
    // crun refuses a hybrid layout whose cgroup2 hierarchy holds controllers; runc takes it.
    let hybrid_with_controllers =
        std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
            .is_ok_and(|c| !c.trim().is_empty());
    if hybrid_with_controllers {
        "runc"
    } else {
        "crun"
    }
}

/// One pod of the fake node: its sandbox and one container.
struct Pod {
    uid: String,
    name: String,
    namespace: String,
    container: String,
    /// The runtime's ids: the sandbox's, then the container's.
    sandbox_id: String,
    container_id: String,
}

/// A node of its own: a root, the OCI runtime's state, pods and the agent.
struct Node {
    dir: tempfile::TempDir,
    tag: String,
    runtime: &'static str,
    agent: Option<Child>,
    started: Vec<String>,
}

impl Node {
    fn new(test: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("paracloud-node-")
            .tempdir()
            .unwrap();
        Node {
            dir,
            tag: format!("pcn{}-{test}", std::process::id()),
            runtime: oci_runtime(),
            agent: None,
            started: Vec::new(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("oci-state")
    }

    /// The pods' cgroup parent, as a kubelet's `kubepods`.
    fn kubepods(&self) -> String {
        format!("{}-kubepods", self.tag)
    }

    /// Where the agent makes capsules' cgroups.
    fn agent_cgroups(&self) -> String {
        format!("{}-agent", self.tag)
    }

    fn api(&self) -> PathBuf {
        self.root().join("agent.sock")
    }

    fn paci_dir(&self, pod: &Pod) -> PathBuf {
        self.root().join("paci").join(&pod.uid)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn oci(&self) -> Command {
        let mut command = Command::new(self.runtime);
        command.arg("--root").arg(self.state());
        command
    }

    /// A busybox root filesystem with the host's /usr (bound read-only at start) for curl.
    fn rootfs(&self, name: &str, identity: &str) -> PathBuf {
        let rootfs = self.dir.path().join("rootfs").join(name);
        for dir in ["bin", "usr", "proc", "dev", "sys", "tmp", "run", "etc"] {
            std::fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib64", rootfs.join("lib64")).unwrap();
        std::fs::write(rootfs.join("etc/identity"), identity).unwrap();
        rootfs
    }

    /// Starts one container as a CRI runtime would; `paci`: it asks for its pod's socket.
    fn start(&mut self, pod: &Pod, id: &str, sandbox: bool, user: u32, paci: bool) {
        let rootfs = self.rootfs(id, &format!("I am {} of pod {}\n", id, pod.name));
        let bundle = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        let mut annotations = json!({
            "io.kubernetes.cri.container-type": if sandbox { "sandbox" } else { "container" },
            "io.kubernetes.cri.sandbox-id": pod.sandbox_id,
            "io.kubernetes.cri.sandbox-uid": pod.uid,
            "io.kubernetes.cri.sandbox-name": pod.name,
            "io.kubernetes.cri.sandbox-namespace": pod.namespace,
            "paracloud.dev/app": "shop",
            "paracloud.dev/service": pod.container,
        });
        if !sandbox {
            annotations["io.kubernetes.cri.container-name"] = json!(pod.container);
        }
        if paci {
            annotations["paracloud.dev/paci"] = json!("true");
        }
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=1777"]}),
            json!({"destination": "/usr", "type": "bind", "source": "/usr",
                   "options": ["rbind", "ro", "nosuid", "nodev"]}),
        ];
        if !sandbox {
            // The hostPath volume's subPath: the kubelet makes the directory before the container.
            let paci_dir = self.paci_dir(pod);
            std::fs::create_dir_all(&paci_dir).unwrap();
            mounts.push(json!({"destination": "/run/paracloud", "type": "bind",
                               "source": paci_dir, "options": ["rbind", "rw"]}));
        }
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": user, "gid": user},
                "args": ["/bin/busybox", "sleep", "3600"],
                "env": ["PATH=/bin:/usr/bin"],
                "cwd": "/",
                "noNewPrivileges": true
            },
            "root": {"path": rootfs, "readonly": true},
            "hostname": format!("{}-{}", pod.name, if sandbox { "sandbox" } else { &pod.container }),
            "mounts": mounts,
            "annotations": annotations,
            "linux": {
                "cgroupsPath": format!("/{}/pod{}/{id}", self.kubepods(), pod.uid),
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
                "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
            }
        });
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        self.started.push(id.to_string());
        // Into a file, not a pipe: the detached container keeps the runtime's stdio open.
        let log_path = self.dir.path().join(format!("{id}.oci.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let status = self
            .oci()
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "{} run {id}: {}",
            self.runtime,
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    /// A pod with its sandbox and one container (of user `user`) asking for PaCI.
    fn pod(&mut self, letter: &str, user: u32) -> Pod {
        let uid = format!("{}-uid-{letter}", self.tag);
        self.pod_with_uid(letter, user, &uid)
    }

    /// A pod as [`Node::pod`] makes it, with the uid the API server gave it.
    fn pod_with_uid(&mut self, letter: &str, user: u32, uid: &str) -> Pod {
        self.pod_in(&format!("ns-{letter}"), letter, user, uid)
    }

    /// Pod `web-LETTER` of `namespace`, as [`Node::pod_with_uid`] makes it.
    fn pod_in(&mut self, namespace: &str, letter: &str, user: u32, uid: &str) -> Pod {
        let pod = Pod {
            uid: uid.to_owned(),
            name: format!("web-{letter}"),
            namespace: namespace.to_owned(),
            container: "web".into(),
            sandbox_id: format!("{}-{letter}-sandbox", self.tag),
            container_id: format!("{}-{letter}-web", self.tag),
        };
        let (sandbox, container) = (pod.sandbox_id.clone(), pod.container_id.clone());
        self.start(&pod, &sandbox, true, 0, false);
        self.start(&pod, &container, false, user, true);
        pod
    }

    /// Starts the agent, without an API server, and waits until it serves every pod's socket.
    fn agent(&mut self, pods: &[&Pod]) {
        self.agent_with_kubeconfig(pods, &self.dir.path().join("no-kubeconfig"));
    }

    /// Starts the agent with the API server of `kubeconfig` (none when the file is missing).
    fn agent_with_kubeconfig(&mut self, pods: &[&Pod], kubeconfig: &Path) {
        let log = std::fs::File::create(self.dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_paracloud"))
            .arg("node-agent")
            .arg("--root")
            .arg(self.root())
            .args(["--runtime", self.runtime, "--runtime-root"])
            .arg(self.state())
            .args(["--cgroup-parent", &self.agent_cgroups()])
            .env_remove("PARACLOUD_ROOT")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("KUBECONFIG", kubeconfig)
            .env("NODE_NAME", "node-1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let sockets: Vec<PathBuf> = pods
            .iter()
            .map(|p| self.paci_dir(p).join("paci.sock"))
            .collect();
        wait_until(
            Duration::from_secs(20),
            "the agent serving every pod",
            || self.api().exists() && sockets.iter().all(|s| s.exists()),
            || self.log(),
        );
    }

    /// `curl` inside the pod's container, as its user: (status, body).
    fn curl_in(&self, pod: &Pod, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut command = self.oci();
        command.arg("exec").arg(&pod.container_id).args([
            "/usr/bin/curl",
            "-s",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]);
        if let Some(body) = body {
            command.args(["-H", "content-type: application/json", "-d", body]);
        }
        let out = command
            .args(["--unix-socket", "/run/paracloud/paci.sock"])
            .arg(format!("http://paci{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            status.trim().parse().unwrap_or_else(|_| {
                panic!(
                    "curl in {}: {text} {}",
                    pod.name,
                    String::from_utf8_lossy(&out.stderr)
                )
            }),
            body.to_string(),
        )
    }

    /// The JSON lines a streamed answer gives inside the pod's container within `seconds`.
    fn watch_in(&self, pod: &Pod, path: &str, seconds: u32) -> Vec<Value> {
        let out = self
            .oci()
            .arg("exec")
            .arg(&pod.container_id)
            .args([
                "/usr/bin/curl",
                "-s",
                "-N",
                "--max-time",
                &seconds.to_string(),
            ])
            .args(["--unix-socket", "/run/paracloud/paci.sock"])
            .arg(format!("http://paci{path}"))
            .output()
            .unwrap();
        events(&String::from_utf8_lossy(&out.stdout))
    }

    /// The container's first process on the host.
    /// Removes the pod's containers as its runtime would once the pod is deleted, and has the
    /// agent look at the node at once; the pods it then knows, as its API lists them.
    fn remove(&self, pod: &Pod) -> String {
        for id in [&pod.container_id, &pod.sandbox_id] {
            assert!(self
                .oci()
                .args(["delete", "-f", id])
                .status()
                .unwrap()
                .success());
        }
        let (status, pods) = unix_http(&self.api(), "POST", "/v1/refresh", "");
        assert_eq!(status, 200, "{pods}");
        pods
    }

    fn pid(&self, pod: &Pod) -> i32 {
        let out = self
            .oci()
            .arg("state")
            .arg(&pod.container_id)
            .output()
            .unwrap();
        let state: Value = serde_json::from_slice(&out.stdout).unwrap();
        state["pid"].as_i64().unwrap() as i32
    }

    /// The processes of the container's cgroup (cgroup2's view on a hybrid node, else pids').
    fn processes(&self, pod: &Pod) -> Vec<String> {
        let path = format!("{}/pod{}/{}", self.kubepods(), pod.uid, pod.container_id);
        let procs = ["unified", "pids", ""]
            .iter()
            .map(|h| {
                Path::new("/sys/fs/cgroup")
                    .join(h)
                    .join(&path)
                    .join("cgroup.procs")
            })
            .find(|p| p.exists())
            .expect("the container's cgroup");
        let mut pids: Vec<String> = std::fs::read_to_string(procs)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        pids.sort();
        pids
    }

    /// Runs a capsule through the agent's API: (status, the events or the error).
    fn capsule(&self, request: Value) -> (u16, String) {
        unix_http(&self.api(), "POST", "/v1/capsules", &request.to_string())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(agent.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while agent.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = agent.kill();
            let _ = agent.wait();
        }
        for id in self.started.iter().rev() {
            let _ = self.oci().args(["delete", "-f", id]).output();
        }
        for parent in [self.kubepods(), self.agent_cgroups()] {
            for hierarchy in cgroup_hierarchies() {
                remove_cgroup_tree(&hierarchy.join(&parent));
            }
        }
    }
}

/// The cgroup root and every hierarchy under it.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut all = vec![root.to_path_buf()];
    all.extend(
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("cgroup.procs").exists()),
    );
    all
}

/// Removes a cgroup and those below it, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if !dir.join("cgroup.procs").exists() {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The cgroups (directories) under `parent` in every hierarchy.
fn cgroups_under(parent: &str) -> Vec<PathBuf> {
    cgroup_hierarchies()
        .iter()
        .map(|h| h.join(parent))
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

fn wait_until(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- agent log ---\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The JSON lines of a capsule run.
fn events(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(json)
        .collect()
}

#[test]
fn a_pod_asks_its_own_socket_who_it_is_and_reports_its_load() {
    let mut node = Node::new("whoami");
    let a = node.pod("a", 1000);
    let b = node.pod("b", 2000);
    node.agent(&[&a, &b]);

    // The directory and socket belong to the container's user, closed to others.
    let meta = std::fs::metadata(node.paci_dir(&a)).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o777),
        (1000, 0o700)
    );
    let sock = std::fs::metadata(node.paci_dir(&a).join("paci.sock")).unwrap();
    assert_eq!(
        (sock.uid(), sock.permissions().mode() & 0o777),
        (1000, 0o600)
    );

    let (status, body) = node.curl_in(&a, "GET", "/v1/whoami", None);
    assert_eq!(status, 200, "{body}");
    let me: paracloud_paci_sdk::Whoami = serde_json::from_str(&body).unwrap();
    let pod = me.pod.expect("the pod's identity");
    assert_eq!(
        (
            pod.namespace.as_str(),
            pod.name.as_str(),
            pod.uid.as_str(),
            pod.container.as_str()
        ),
        ("ns-a", "web-a", a.uid.as_str(), "web")
    );
    assert_eq!((me.app.as_str(), me.service.as_str()), ("shop", "web"));
    assert_eq!(me.instance, "web-a");

    // Pod B sees its own socket at the same path, which speaks for B; A's is not there.
    let (status, body) = node.curl_in(&b, "GET", "/v1/whoami", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["pod"]["name"], "web-b");
    let listed = node
        .oci()
        .arg("exec")
        .arg(&b.container_id)
        .args(["/bin/busybox", "ls", "-a", "/run/paracloud"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        [".", "..", "paci.sock"]
    );
    let a_from_b = node
        .oci()
        .arg("exec")
        .arg(&b.container_id)
        .args(["/bin/busybox", "ls"])
        .arg(node.paci_dir(&a))
        .output()
        .unwrap();
    assert!(
        !a_from_b.status.success(),
        "pod B reached pod A's directory"
    );

    // A load report is kept for the pod, and read on the agent's API.
    let (status, body) = node.curl_in(
        &a,
        "PUT",
        "/v1/load",
        Some(r#"{"in_flight": 3, "capacity": 120.5}"#),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = node.curl_in(&a, "PUT", "/v1/load", Some(r#"{"inflight": 3}"#));
    assert_eq!(status, 400, "{body}");
    let (status, pods) = unix_http(&node.api(), "GET", "/v1/pods", "");
    assert_eq!(status, 200);
    let pods = json(&pods);
    let of = |uid: &str| {
        pods.as_array()
            .unwrap()
            .iter()
            .find(|p| p["uid"] == uid)
            .cloned()
            .unwrap()
    };
    assert_eq!(of(&a.uid)["load"]["report"]["capacity"], 120.5);
    assert!(of(&b.uid)["load"].is_null());

    // Without the API server, what needs it says so.
    let (status, body) = node.curl_in(&a, "GET", "/v1/peers", None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("runs without the API server"), "{body}");
    let (status, body) = node.curl_in(&a, "PUT", "/v1/weight", Some(r#"{"weight": 50}"#));
    assert_eq!(status, 503, "{body}");
}

#[test]
fn a_pod_resized_in_place_is_told_on_its_event_stream_and_answers() {
    let mut node = Node::new("resize");
    let a = node.pod("a", 1000);
    node.agent(&[&a]);
    assert_eq!(node.curl_in(&a, "GET", "/v1/whoami", None).0, 200);

    // The pod follows its events; meanwhile the node's runtime changes its container's CPU in
    // place, as the kubelet's in-place resize has it do.
    let streamed = std::thread::scope(|scope| {
        let stream = scope.spawn(|| node.watch_in(&a, "/v1/events", 5));
        std::thread::sleep(Duration::from_millis(1500));
        let (status, body) = node.curl_in(&a, "GET", "/v1/events", None);
        assert_eq!(status, 409, "a second stream while one is open: {body}");
        assert!(body.contains("already open"), "{body}");
        let updated = node
            .oci()
            .args(["update", "--cpu-quota", "50000", "--cpu-period", "100000"])
            .arg(&a.container_id)
            .output()
            .unwrap();
        assert!(
            updated.status.success(),
            "{}",
            String::from_utf8_lossy(&updated.stderr)
        );
        stream.join().unwrap()
    });
    assert_eq!(streamed.len(), 1, "{streamed:?}\n{}", node.log());
    let event = &streamed[0];
    assert_eq!(event["kind"], "resize");
    assert_eq!(event["cpu"], 0.5);
    assert!(node.log().contains("resized in place"), "{}", node.log());

    // Its answer is taken once, by the deadline; a bad id says what to use.
    let id = event["id"].as_u64().unwrap();
    let (status, body) = node.curl_in(&a, "POST", &format!("/v1/events/{id}/ack"), Some("{}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["id"], id);
    assert!(json(&body)["before_deadline_ms"].as_u64().unwrap() <= 5_000);
    let (status, body) = node.curl_in(&a, "POST", &format!("/v1/events/{id}/ack"), Some("{}"));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("answered already"), "{body}");
    let (status, body) = node.curl_in(&a, "POST", "/v1/events/seven/ack", Some("{}"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("is not a number"), "{body}");
}

#[test]
fn strangers_are_refused_by_permissions_and_by_the_peer_check() {
    let mut node = Node::new("refused");
    let a = node.pod("a", 1000);
    node.agent(&[&a]);
    let socket = node.paci_dir(&a).join("paci.sock");

    // Another user of the node cannot even connect.
    let nobody = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&socket)
        .arg("http://paci/v1/whoami")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(
        nobody.status.code(),
        Some(7),
        "uid 65534 connected: {:?}",
        nobody
    );

    // Root on the host connects, and is refused: it is in none of the pod's cgroups.
    let (status, body) = unix_http(&socket, "GET", "/v1/whoami", "");
    assert_eq!(status, 403, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("pod ns-a/web-a's alone"),
        "{body}"
    );
    wait_until(
        Duration::from_secs(5),
        "the refusal in the log",
        || node.log().contains("PaCI of pod ns-a/web-a: refused pid"),
        || node.log(),
    );
}

#[test]
fn a_capsule_sees_the_pod_returns_its_output_and_exit_and_leaves_nothing() {
    let mut node = Node::new("capsule");
    let a = node.pod("a", 1000);
    let b = node.pod("b", 1000);
    node.agent(&[&a, &b]);
    let pid = node.pid(&a);
    let mounts_before = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let processes_before = node.processes(&a);

    let (status, body) = node.capsule(json!({
        "pod": "ns-a/web-a",
        "container": "web",
        "capsule": "debug",
        "args": ["sh", "-c", "ps -o pid,user,args; cat /target/etc/identity; hostname; sleep 600 & exit 3"],
    }));
    assert_eq!(status, 200, "{body}");
    let events = events(&body);
    let stdout: String = events
        .iter()
        .filter(|e| e["kind"] == "output" && e["stream"] == "stdout")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(
        stdout.contains("/bin/busybox sleep 3600"),
        "the pod's process: {stdout}"
    );
    assert!(
        stdout.contains(&format!("I am {} of pod web-a", a.container_id)),
        "{stdout}"
    );
    assert!(stdout.contains("web-a-web"), "its hostname: {stdout}");
    let exited = events
        .iter()
        .find(|e| e["kind"] == "exited")
        .expect("an exit");
    assert_eq!(exited["exit_code"], 3, "{body}");
    assert_eq!(events.last().unwrap()["kind"], "finished");

    // The pod by uid works as well, and B's capsule sees B's files.
    let (status, body) = node.capsule(json!({
        "pod": b.uid, "container": "web", "capsule": "debug", "args": ["cat", "/target/etc/identity"],
    }));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("of pod web-b"), "{body}");

    // Nothing stays: the pod's processes and mounts are as before, no capsule cgroup is left
    // (the `sleep 600` it left behind included).
    assert_eq!(node.processes(&a), processes_before);
    let mounts_after = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert_eq!(mounts_after, mounts_before);
    assert_eq!(cgroups_under(&node.agent_cgroups()), Vec::<PathBuf>::new());

    // Both runs are in the audit log.
    let audit = std::fs::read_to_string(node.root().join("audit.log")).unwrap();
    let lines: Vec<Value> = audit.lines().map(json).collect();
    assert_eq!(lines.len(), 2, "{audit}");
    assert_eq!(lines[0]["pod"]["name"], "web-a");
    assert_eq!(lines[0]["container"], "web");
    assert_eq!(lines[0]["capsule"], "debug");
    assert_eq!(lines[0]["caller_uid"], 0);
    assert_eq!(lines[0]["exit"], 3);
    assert_eq!(lines[0]["args"][0], "sh");
    assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[1]["pod"]["name"], "web-b");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(node.root().join("audit.log"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn bad_capsule_and_event_requests_get_an_error_naming_what_is_wrong() {
    let mut node = Node::new("bad");
    let a = node.pod("a", 1000);
    node.agent(&[&a]);
    let refused = |request: Value, status: u16, needle: &str| {
        let (got, body) = node.capsule(request);
        assert_eq!(got, status, "{body}");
        let error = json(&body)["error"].as_str().unwrap().to_string();
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
    };
    refused(
        json!({"pod": "ns-a/nope", "container": "web", "capsule": "debug"}),
        404,
        "no pod \"ns-a/nope\" on this node",
    );
    refused(
        json!({"pod": "ns-a/web-a", "container": "db", "capsule": "debug"}),
        404,
        "has no running container \"db\"; its containers: web",
    );
    refused(
        json!({"pod": "ns-a/web-a", "container": "web", "capsule": "nope"}),
        404,
        "no capsule \"nope\"",
    );
    refused(
        json!({"pod": "ns-a/web-a", "container": "web", "capsule": "debug", "arg": []}),
        400,
        "unknown field `arg`",
    );
    refused(
        json!({"pod": "ns-a/web-a", "container": "web", "capsule": "debug", "timeout_ms": 0}),
        400,
        "the timeout must be more than 0 ms",
    );
    // A migration's events: only migrate and restore, to a pod of the node that follows them.
    let event = |request: Value| unix_http(&node.api(), "POST", "/v1/events", &request.to_string());
    let migrate = json!({"kind": "migrate", "to": {"instance": "web-n", "address": "10.0.0.9"}});
    for (request, status, needle) in [
        (
            json!({"pod": "ns-a/nope", "event": migrate}),
            404,
            "no pod \"ns-a/nope\" on this node",
        ),
        (
            json!({"pod": "ns-a/web-a", "event": {"kind": "drain", "reason": "x"}}),
            400,
            "event drain is not one to send on request: only migrate and restore are",
        ),
        (
            json!({"pod": "ns-a/web-a", "wait_listening_ms": 61_000}),
            400,
            "wait_listening_ms 61000 is above 60000",
        ),
        (
            json!({"pod": "ns-a/web-a", "event": {"kind": "migrate"}}),
            400,
            "the request body is not valid",
        ),
        (
            json!({"pod": "ns-a/web-a", "event": migrate}),
            409,
            "migrate to pod ns-a/web-a: the instance does not follow its PaCI events",
        ),
    ] {
        let (got, body) = event(request.clone());
        assert_eq!(got, status, "{request}: {body}");
        let error = json(&body)["error"].as_str().unwrap().to_string();
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
    }
    let (got, body) = event(json!({"pod": "ns-a/web-a"}));
    assert_eq!((got, json(&body)), (200, json!({"listening": false})));
    // What a remote CLI executes in the agent's container: the event on its standard input,
    // the agent's refusal in its own words.
    let agent_event = |stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_paracloud"))
            .arg("--root")
            .arg(node.root())
            .args(["__agent-event", "--pod", "ns-a/web-a"])
            .env_remove("PARACLOUD_ROOT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, said) = agent_event("not json");
    assert_eq!(code, Some(1));
    assert!(
        said.contains("standard input is not a PaCI event (a migrate or restore as JSON)"),
        "{said}"
    );
    let (code, said) = agent_event(&migrate.to_string());
    assert_eq!(code, Some(1));
    assert!(
        said.contains("migrate to pod ns-a/web-a: the instance does not follow its PaCI events"),
        "{said}"
    );
    // The agent's socket is root's alone.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(node.api()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_pods_socket_outlives_the_agent_and_goes_with_the_pod() {
    let mut node = Node::new("restart");
    let a = node.pod("a", 1000);
    let b = node.pod("b", 1000);
    node.agent(&[&a, &b]);
    assert_eq!(node.curl_in(&a, "GET", "/v1/whoami", None).0, 200);

    // A new agent binds the socket again in the directory the pod holds.
    let mut old = node.agent.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(old.wait().unwrap().success(), "{}", node.log());
    node.agent(&[&a, &b]);
    let (status, body) = node.curl_in(&a, "GET", "/v1/whoami", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["pod"]["name"], "web-a");

    // A pod that is gone loses its socket and directory; the others keep theirs.
    let pods = node.remove(&b);
    assert_eq!(json(&pods).as_array().unwrap().len(), 1, "{pods}");
    assert!(!node.paci_dir(&b).exists());
    assert!(node.paci_dir(&a).join("paci.sock").exists());
}

const SHOP: &str = r#"
app = "shop"
[autoscale]
policy = "hpa"
entry = "web"
[services.web]
image = "registry.example/web:1"
ports = [{ port = 8000, protocol = "http" }]
autoscale = { min = 1, max = 4 }
"#;

/// Writes an object into the stand-in as the controller `manager` would; its uid.
fn make(standin: &StandIn, manager: &str, gvr: Gvr, body: Value) -> String {
    let namespace = body["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let name = body["metadata"]["name"].as_str().unwrap().to_owned();
    let made = standin
        .apply_as(manager, &ObjectRef::new(gvr, &namespace, &name), body)
        .unwrap();
    made["metadata"]["uid"].as_str().unwrap().to_owned()
}

fn owner(api_version: &str, kind: &str, name: &str, uid: &str) -> Value {
    json!([{ "apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": true }])
}

/// A pod sees its service's pods through PaCI and asks for instances of a service of its
/// application. The agent proves the pod's application by its controlling owners on the API
/// server (a stand-in here): Pod, ReplicaSet, Deployment, then the `ParacloudApp`, each by uid.
/// It answers peers from the service's pods (also as a watch), writes the pod's weight for its
/// data plane, and writes the resource's scale, which the operator carries out, with an Event. A pod whose owners lead to no `ParacloudApp`
/// is refused both, as are a number outside the manifest's bounds and an unknown service. Every
/// request the agent made is one its ClusterRole grants.
/// A stand-in API server holding the application `shop` (of `manifest`) in namespace ns-a, its
/// Deployment `web`, ReplicaSet and pods web-a (on this node) and web-z (on another), each
/// owned by the one before; and, in ns-b, a pod web-b made by hand with no owner.
struct ApiServer {
    runtime: tokio::runtime::Runtime,
    standin: Option<StandIn>,
    kubeconfig: tempfile::NamedTempFile,
    uid_a: String,
    uid_b: String,
}

impl ApiServer {
    fn start(manifest: &str) -> ApiServer {
        Self::start_with(manifest, Options::default())
    }

    fn start_with(manifest: &str, options: Options) -> ApiServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let standin = runtime.block_on(async {
            let standin = StandIn::start(options).await.unwrap();
            kube::Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(standin.client())
                .create(&Default::default(), &paracloud_kube::resource::definition())
                .await
                .unwrap();
            standin
        });
        let config = kubeconfig(&standin.url());
        for ns in ["ns-a", "ns-b"] {
            make(
                &standin,
                "kubectl",
                Gvr::new("", "v1", "namespaces"),
                json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }),
            );
        }
        // The application, its Deployment and ReplicaSet, and its pod, each owned by the one before.
        let app = make(
            &standin,
            "kubectl",
            Gvr::new("paracloud.dev", "v1alpha1", "paracloudapps"),
            json!({
                "apiVersion": "paracloud.dev/v1alpha1", "kind": "ParacloudApp",
                "metadata": { "name": "shop", "namespace": "ns-a" },
                "spec": { "manifest": manifest },
            }),
        );
        let deployment = make(
            &standin,
            "paracloud",
            Gvr::new("apps", "v1", "deployments"),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": "web", "namespace": "ns-a",
                              "ownerReferences": owner("paracloud.dev/v1alpha1", "ParacloudApp", "shop", &app) },
                "spec": { "selector": { "matchLabels": { "paracloud.dev/workload": "web" } },
                          "template": { "metadata": { "labels": { "paracloud.dev/workload": "web" } },
                                        "spec": { "containers": [{ "name": "web", "image": "registry.example/web:1" }] } } },
            }),
        );
        let replicaset = make(
            &standin,
            "deployment-controller",
            Gvr::new("apps", "v1", "replicasets"),
            json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": { "name": "web-5d8", "namespace": "ns-a",
                              "ownerReferences": owner("apps/v1", "Deployment", "web", &deployment) },
                "spec": { "selector": { "matchLabels": { "paracloud.dev/workload": "web" } } },
            }),
        );
        let labels = json!({ "paracloud.dev/app": "shop", "paracloud.dev/service": "web" });
        // Each with the drain window a rendered PaCI pod has (a preStop sleep).
        let pod = |namespace: &str, name: &str, node: &str, owners: Value| {
            make(
                &standin,
                "replicaset-controller",
                Gvr::new("", "v1", "pods"),
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": { "name": name, "namespace": namespace, "ownerReferences": owners,
                                  "labels": labels },
                    "spec": { "nodeName": node, "containers": [{
                        "name": "web", "image": "registry.example/web:1",
                        "lifecycle": { "preStop": { "sleep": { "seconds": 10 } } },
                    }] },
                }),
            )
        };
        let uid_a = pod(
            "ns-a",
            "web-a",
            "node-1",
            owner("apps/v1", "ReplicaSet", "web-5d8", &replicaset),
        );
        // Another pod of the service, on another node, running and ready.
        pod(
            "ns-a",
            "web-z",
            "node-2",
            owner("apps/v1", "ReplicaSet", "web-5d8", &replicaset),
        );
        standin.set_pod_ready("ns-a", "web-z", true).unwrap();
        // A pod that says it is the shop's, made by hand: no owner leads to the application.
        let uid_b = pod("ns-b", "web-b", "node-1", json!([]));

        ApiServer {
            runtime,
            standin: Some(standin),
            kubeconfig: config,
            uid_a,
            uid_b,
        }
    }

    fn standin(&self) -> &StandIn {
        self.standin.as_ref().unwrap()
    }

    /// The Events on ns-a's resource: (reason, message, reporting instance).
    fn events(&self) -> Vec<(String, String, String)> {
        let events = self.runtime.block_on(async {
            kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(
                self.standin().client(),
                "ns-a",
            )
            .list(&Default::default())
            .await
            .unwrap()
        });
        events
            .items
            .iter()
            .map(|e| {
                (
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default(),
                    e.reporting_instance.clone().unwrap_or_default(),
                )
            })
            .collect()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let standin = self.standin.take();
        let _guard = self.runtime.enter();
        drop(standin);
    }
}

#[test]
fn a_pod_sees_its_peers_sets_its_weight_and_asks_for_instances_once_its_owners_prove_its_application(
) {
    let server = ApiServer::start(SHOP);
    let standin = server.standin();
    let (uid_a, uid_b) = (server.uid_a.clone(), server.uid_b.clone());
    let config = &server.kubeconfig;
    standin.clear_requests();

    let mut node = Node::new("replicas");
    let a = node.pod_with_uid("a", 1000, &uid_a);
    let b = node.pod_with_uid("b", 1000, &uid_b);
    node.agent_with_kubeconfig(&[&a, &b], config.path());

    let (status, body) = node.curl_in(
        &a,
        "PUT",
        "/v1/services/web/replicas",
        Some(r#"{"replicas": 3, "reason": "the queue is long"}"#),
    );
    assert_eq!(status, 200, "{body}\n{}", node.log());
    assert_eq!(
        json(&body),
        json!({ "service": "web", "replicas": 3, "min": 1, "max": 4 })
    );
    let resource = standin
        .object("paracloud.dev", "v1alpha1", "paracloudapps", "ns-a", "shop")
        .unwrap();
    assert_eq!(resource["spec"]["scale"]["web"]["replicas"], 3);
    let said = server.events();
    assert!(
        said.contains(&(
            "ScaledByPod".into(),
            "web: scaled to 3 (asked by pod web-a through PaCI: the queue is long)".into(),
            "node-1".into()
        )),
        "{said:?}"
    );

    // Its peers: the pods of its service, by name, with their addresses and states.
    let (status, body) = node.curl_in(&a, "GET", "/v1/peers", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body),
        json!({ "service": "web", "peers": [
            { "instance": "web-a", "index": 0, "address": "0.0.0.0", "ready": false, "state": "starting", "revision": 0 },
            { "instance": "web-z", "index": 1, "address": "10.0.0.1", "ready": true, "state": "running", "revision": 0 },
        ]})
    );
    let (status, body) = node.curl_in(&a, "GET", "/v1/peers?service=nope", None);
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no service nope in application shop: it has web"),
        "{body}"
    );
    let (status, body) = node.curl_in(&a, "GET", "/v1/peers?services=web", None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown field `services`"), "{body}");
    // Watched: the list at once, then again when web-z is no longer ready.
    let watching = std::thread::scope(|scope| {
        let watch = scope.spawn(|| node.watch_in(&a, "/v1/peers?watch=true", 4));
        std::thread::sleep(Duration::from_millis(1500));
        standin.set_pod_ready("ns-a", "web-z", false).unwrap();
        watch.join().unwrap()
    });
    let states: Vec<Vec<String>> = watching
        .iter()
        .map(|answer| {
            answer["peers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    format!(
                        "{} {}",
                        p["instance"].as_str().unwrap(),
                        p["state"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .collect();
    assert_eq!(
        states,
        [
            vec!["web-a starting".to_owned(), "web-z running".to_owned()],
            vec!["web-a starting".to_owned(), "web-z unready".to_owned()],
        ]
    );

    // Its weight, for its data plane to read; a gone pod's weight is dropped on the way; null is
    // the full share again; more than 100 is refused.
    standin
        .merge_patch_as(
            "paracloud-node-agent",
            &ObjectRef::new(
                Gvr::new("paracloud.dev", "v1alpha1", "paracloudapps"),
                "ns-a",
                "shop",
            ),
            json!({ "spec": { "weights": { "web-gone": 10 } } }),
        )
        .unwrap();
    let (status, body) = node.curl_in(&a, "PUT", "/v1/weight", Some(r#"{"weight": 25}"#));
    assert_eq!(
        (status, json(&body)),
        (200, json!({ "weight": 25 })),
        "{body}"
    );
    let weights = |standin: &StandIn| {
        standin
            .object("paracloud.dev", "v1alpha1", "paracloudapps", "ns-a", "shop")
            .unwrap()["spec"]["weights"]
            .clone()
    };
    assert_eq!(weights(standin), json!({ "web-a": 25 }));
    let (status, body) = node.curl_in(&a, "PUT", "/v1/weight", Some(r#"{"weight": null}"#));
    assert_eq!(
        (status, json(&body)),
        (200, json!({ "weight": 100 })),
        "{body}"
    );
    assert!(weights(standin).as_object().is_none_or(|w| w.is_empty()));
    let (status, body) = node.curl_in(&a, "PUT", "/v1/weight", Some(r#"{"weight": 101}"#));
    assert_eq!(status, 400, "{body}");

    // Outside the bounds, an unknown service, and a pod no ParacloudApp runs: refused, and the
    // scale stays; that pod sees no peers either.
    let (status, body) = node.curl_in(
        &a,
        "PUT",
        "/v1/services/web/replicas",
        Some(r#"{"replicas": 9}"#),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("outside its bounds 1..=4"), "{body}");
    let (status, body) = node.curl_in(
        &a,
        "PUT",
        "/v1/services/nope/replicas",
        Some(r#"{"replicas": 2}"#),
    );
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no service nope in application shop: it has web"),
        "{body}"
    );
    let (status, body) = node.curl_in(
        &b,
        "PUT",
        "/v1/services/web/replicas",
        Some(r#"{"replicas": 2}"#),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("pod ns-b/web-b is not run by a ParacloudApp"),
        "{body}"
    );
    let (status, body) = node.curl_in(&b, "GET", "/v1/peers", None);
    assert_eq!(status, 403, "{body}");
    let (status, body) = node.curl_in(&b, "PUT", "/v1/weight", Some(r#"{"weight": 0}"#));
    assert_eq!(status, 403, "{body}");
    let resource = standin
        .object("paracloud.dev", "v1alpha1", "paracloudapps", "ns-a", "shop")
        .unwrap();
    assert_eq!(resource["spec"]["scale"]["web"]["replicas"], 3);

    // Its load reports reach its application's status, for the operator's autoscaler, under the
    // node's own field manager; a pod no ParacloudApp runs reports to its node alone. A newer
    // report replaces the last, and a pod that leaves the node leaves the status.
    let (status, body) = node.curl_in(
        &a,
        "PUT",
        "/v1/load",
        Some(r#"{"in_flight": 2, "capacity": 40.5, "custom": {"warm": 1}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = node.curl_in(&b, "PUT", "/v1/load", Some(r#"{"capacity": 9}"#));
    assert_eq!(status, 200, "{body}");
    let shop = || {
        standin
            .object("paracloud.dev", "v1alpha1", "paracloudapps", "ns-a", "shop")
            .unwrap()
    };
    wait_until(
        Duration::from_secs(10),
        "web-a's load report on the status",
        || shop()["status"]["load"]["web-a"]["capacity"] == 40.5,
        || node.log(),
    );
    let load = shop()["status"]["load"].clone();
    assert_eq!(load.as_object().unwrap().len(), 1, "{load}");
    assert_eq!(load["web-a"]["inFlight"], 2);
    assert!(
        load["web-a"]["custom"].is_null(),
        "the node keeps its own figures"
    );
    let sent: k8s_openapi::jiff::Timestamp = load["web-a"]["at"].as_str().unwrap().parse().unwrap();
    let age = k8s_openapi::jiff::Timestamp::now().as_millisecond() - sent.as_millisecond();
    assert!((0..10_000).contains(&age), "sent {age} ms ago");
    let managers: Vec<(String, String)> = shop()["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or_default().to_owned(),
                m["subresource"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("paracloud-node-agent/node-1".into(), "status".into())),
        "{managers:?}"
    );
    assert!(
        !standin
            .requests()
            .iter()
            .any(|r| r.resource == "paracloudapps"
                && r.subresource.as_deref() == Some("status")
                && r.namespace.as_deref() != Some("ns-a")),
        "web-b's report is written nowhere"
    );
    let (status, body) = node.curl_in(&a, "PUT", "/v1/load", Some(r#"{"capacity": 55}"#));
    assert_eq!(status, 200, "{body}");
    wait_until(
        Duration::from_secs(10),
        "web-a's newer report on the status",
        || shop()["status"]["load"]["web-a"].get("capacity") == Some(&json!(55.0)),
        || node.log(),
    );
    assert!(shop()["status"]["load"]["web-a"]["inFlight"].is_null());
    node.remove(&a);
    wait_until(
        Duration::from_secs(10),
        "the gone pod's report off the status",
        || shop()["status"]["load"].get("web-a").is_none(),
        || node.log(),
    );

    let granted: std::collections::BTreeSet<(String, String, String)> =
        paracloud_kube::access::node_agent_permissions()
            .into_iter()
            .map(|p| p.triple())
            .collect();
    let used: std::collections::BTreeSet<(String, String, String)> = standin
        .requests()
        .into_iter()
        // This test's own: the Events listed above.
        .filter(|r| !(r.resource == "events" && r.verb.as_str() == "list"))
        .map(|r| r.rbac())
        .collect();
    let ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(ungranted.is_empty(), "used but not granted: {ungranted:?}");
    drop(node);
}

#[test]
fn a_pod_being_deleted_is_asked_to_drain_and_its_answer_is_an_event() {
    let server = ApiServer::start(SHOP);
    let standin = server.standin();
    let mut node = Node::new("drain");
    let a = node.pod_with_uid("a", 1000, &server.uid_a);
    node.agent_with_kubeconfig(&[&a], server.kubeconfig.path());
    assert_eq!(node.curl_in(&a, "GET", "/v1/whoami", None).0, 200);

    // The pod follows its events, and is deleted meanwhile: a finalizer holds it, as the
    // kubelet's graceful stop holds a pod, with its deletionTimestamp set.
    let deleted = std::cell::Cell::new(Instant::now());
    let streamed = std::thread::scope(|scope| {
        let stream = scope.spawn(|| node.watch_in(&a, "/v1/events", 4));
        std::thread::sleep(Duration::from_millis(1500));
        standin
            .merge_patch_as(
                "kubectl",
                &ObjectRef::new(Gvr::new("", "v1", "pods"), "ns-a", "web-a"),
                json!({ "metadata": { "finalizers": ["example.com/hold"] } }),
            )
            .unwrap();
        deleted.set(Instant::now());
        server.runtime.block_on(async {
            kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(standin.client(), "ns-a")
                .delete("web-a", &Default::default())
                .await
                .unwrap();
        });
        stream.join().unwrap()
    });
    assert_eq!(streamed.len(), 1, "{streamed:?}\n{}", node.log());
    let event = &streamed[0];
    assert_eq!(event["kind"], "drain");
    assert_eq!(event["reason"], "the pod is being deleted");
    // Its deadline: the rest of its 10 s window, from the deletion on.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let left = event["deadline"].as_u64().unwrap().saturating_sub(now_ms);
    let since = deleted.get().elapsed().as_millis() as u64;
    assert!(
        left > 3_000 && left <= 10_000 + 1_000 - since.min(10_000),
        "{left} ms left"
    );

    // Its answer is an Event on its application, from this node.
    let id = event["id"].as_u64().unwrap();
    let (status, body) = node.curl_in(&a, "POST", &format!("/v1/events/{id}/ack"), Some("{}"));
    assert_eq!(status, 200, "{body}");
    wait_until(
        Duration::from_secs(10),
        "the Drained event",
        || {
            server.events().iter().any(|(reason, message, by)| {
                reason == "Drained"
                    && message.starts_with("drain of pod web-a: acknowledged in ")
                    && by == "node-1"
            })
        },
        || format!("{:?}\n{}", server.events(), node.log()),
    );
}

const SCHEDULED: &str = r#"
app = "shop"
[services.web]
image = "registry.example/web:1"
ports = [{ port = 8000, protocol = "http" }]
[services.web.capsules]
debug = "read"
tally = "read"
mount = "write"
[schedules.look]
capsule = "debug"
cron = "* * * * *"
selector = "service=web"
args = ["cat", "/target/etc/identity"]
[schedules.slow]
capsule = "debug"
cron = "* * * * *"
selector = "service=web"
args = ["sleep", "30"]
timeout = "1s"
[schedules.count]
capsule = "tally"
cron = "* * * * *"
selector = "service=web"
[schedules.risky]
capsule = "mount"
cron = "* * * * *"
selector = "service=web"
[capsules.tally]
image = "REGISTRY/tools/report:1"
command = ["/bin/busybox", "ls", "/target/etc/identity"]
[capsules.mount]
image = "REGISTRY/tools/report:1"
command = ["/bin/busybox", "mount", "-t", "tmpfs", "none", "/mnt"]
capabilities = ["SYS_ADMIN"]
"#;

/// The application's scheduled capsules run on a cluster: the agent of the node runs each due
/// schedule on the pods of its node that the schedule selects, once their owners prove their
/// application, with the schedule's timeout, and records the outcome as an Event on the resource
/// and the run in its audit log. A pod that only claims the application gets nothing run. The
/// application's own capsules are scheduled too, their image pulled from its registry, and one
/// that asks for more than a Baseline pod may add is refused, since whoever edits the resource
/// writes it.
#[test]
fn a_scheduled_capsule_runs_on_the_pods_of_this_node_that_it_selects() {
    let registry = registry_with_tools();
    let server = ApiServer::start(&SCHEDULED.replace("REGISTRY", &registry.host()));
    let mut node = Node::new("schedules");
    let a = node.pod_with_uid("a", 1000, &server.uid_a);
    let b = node.pod_with_uid("b", 1000, &server.uid_b);
    node.agent_with_kubeconfig(&[&a, &b], server.kubeconfig.path());
    // Every minute: the first run comes within one.
    let deadline = Instant::now() + Duration::from_secs(80);
    let ran = loop {
        let said = server.events();
        let ran: std::collections::BTreeSet<(String, String)> = said
            .iter()
            .filter(|(reason, _, _)| reason == "ScheduledCapsule")
            .map(|(_, message, node)| (message.clone(), node.clone()))
            .collect();
        // A set: a second minute may come before the last run of the first.
        let refused: std::collections::BTreeSet<&String> = said
            .iter()
            .filter(|(reason, _, _)| reason == "ScheduledCapsuleRefused")
            .map(|(_, message, _)| message)
            .collect();
        if ["look", "slow", "count"].iter().all(|s| {
            ran.iter()
                .any(|(m, _)| m.starts_with(&format!("schedule {s}")))
        }) && !refused.is_empty()
        {
            assert_eq!(
                refused.into_iter().collect::<Vec<_>>(),
                ["schedule risky: mount on pod web-a did not run: capsule mount asks for SYS_ADMIN, beyond what the Baseline Pod Security Standard lets a pod add; an application's own capsule gets no more on a cluster"],
            );
            break ran;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled run within 80 s: {said:?}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    // The slow one ran past its schedule's timeout, not the capsule's own deadline.
    let expected: std::collections::BTreeSet<(String, String)> = [
        ("schedule look: debug on pod web-a exited 0", "node-1"),
        (
            "schedule slow: debug on pod web-a stopped at its deadline of 1 s",
            "node-1",
        ),
        ("schedule count: tally on pod web-a exited 0", "node-1"),
    ]
    .into_iter()
    .map(|(m, n)| (m.to_owned(), n.to_owned()))
    .collect();
    assert_eq!(ran, expected);
    let audit = std::fs::read_to_string(node.root().join("audit.log")).unwrap();
    assert!(audit.contains("web-a"), "{audit}");
    assert!(
        !audit.contains("web-b"),
        "a pod no ParacloudApp runs: {audit}"
    );
}

/// The shop with the application's own capsules, whose image is `REGISTRY/tools/report:1`.
const REMOTE: &str = r#"
app = "shop"
[services.web]
image = "registry.example/web:1"
ports = [{ port = 8000, protocol = "http" }]
[services.web.capsules]
debug = "read"
report = "read"
echo = "read"
mount = "write"
[capsules.report]
image = "REGISTRY/tools/report:1"
command = ["/bin/busybox", "sh", "-c", "echo report $LEVEL on $PARACLOUD_POD: $(cat /target/etc/identity)"]
env = { LEVEL = "3" }
[capsules.echo]
image = "REGISTRY/tools/report:1"
description = "the image's own command"
[capsules.mount]
image = "REGISTRY/tools/report:1"
command = ["/bin/busybox", "mount", "-t", "tmpfs", "none", "/mnt"]
capabilities = ["SYS_ADMIN"]
"#;

/// A registry holding `tools/report:1`: the host's busybox as a micro-image, built and pushed
/// by a daemon of its own (as a user's machine would push it).
fn registry_with_tools() -> RegistryServer {
    let registry = RegistryServer::start(None);
    let builder = common::Platform::new();
    builder.busybox_image();
    builder.ok(&[
        "image",
        "push",
        "busybox:1",
        &format!("{}/tools/report:1", registry.host()),
    ]);
    registry
}

/// The node agent's pod on node-1, as `k8s install`'s DaemonSet makes it.
const AGENT_POD: &str = "paracloud-node-agent-n1";

/// The CLI, run by `cli` with `args`, fails with exit code 1 and says `expected`.
fn refused(cli: &dyn Fn(&[&str]) -> std::process::Output, args: &[&str], expected: &str) {
    let out = cli(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(expected), "{args:?}: {said}");
}

/// The stand-in's kubelet for `pods/exec` on node-1's agent pod: the command runs here, with the
/// agent's root where the DaemonSet mounts it.
fn exec_in_agent(agent_root: PathBuf) -> paracloud_kube_standin::ExecHandler {
    std::sync::Arc::new(move |request: &paracloud_kube_standin::ExecRequest| {
        if (
            request.namespace.as_str(),
            request.pod.as_str(),
            request.container.as_str(),
        ) != ("paracloud-system", AGENT_POD, "agent")
        {
            return Err(format!("no container {request:?} on this node"));
        }
        let argv: Vec<String> = request
            .command
            .iter()
            .map(
                |arg| match arg.strip_prefix(paracloud_kube::install::NODE_AGENT_ROOT) {
                    Some(rest) => format!("{}{rest}", agent_root.display()),
                    None => arg.clone(),
                },
            )
            .collect();
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).env_remove("PARACLOUD_ROOT");
        Ok(command)
    })
}

/// The node agent's pod on node-1, running, as `k8s install`'s DaemonSet makes it.
fn make_agent_pod(standin: &StandIn) {
    make(
        standin,
        "kubectl",
        Gvr::new("", "v1", "namespaces"),
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "paracloud-system" } }),
    );
    make(
        standin,
        "daemonset-controller",
        Gvr::new("", "v1", "pods"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": AGENT_POD, "namespace": "paracloud-system",
                          "labels": { "app.kubernetes.io/name": "paracloud-node-agent" } },
            "spec": { "nodeName": "node-1",
                      "containers": [{ "name": "agent", "image": "registry.example/paracloud:1" }] },
        }),
    );
    standin
        .set_pod_ready("paracloud-system", AGENT_POD, true)
        .unwrap();
}

/// `paracloud --kubernetes capsule run` from a remote CLI: the CLI finds the application's pods
/// that the selector matches, checks the service's policy, and executes the agent's own binary
/// in the node agent's pod of each pod's node through the API server's `pods/exec` (the
/// stand-in plays the kubelet: it runs the command here, with the agent's root where the
/// DaemonSet mounts it). The agent attaches the capsule to the pod's container; its output
/// comes back to the CLI, the run is in the node's audit log. A pod on a node with no agent
/// fails alone, with the reason; a capsule the policy does not allow, one that is not
/// built-in, and a selector matching nothing are refused before anything runs.
#[test]
fn a_remote_cli_runs_a_capsule_on_pods_through_the_agent_of_their_node() {
    let mut node = Node::new("remote");
    let registry = registry_with_tools();
    let manifest = REMOTE.replace("REGISTRY", &registry.host());
    let server = ApiServer::start_with(
        &manifest,
        Options {
            exec: Some(exec_in_agent(node.root())),
            ..Options::default()
        },
    );
    let standin = server.standin();
    make_agent_pod(standin);
    standin.set_pod_ready("ns-a", "web-a", true).unwrap();
    let a = node.pod_with_uid("a", 1000, &server.uid_a);
    node.agent_with_kubeconfig(&[&a], server.kubeconfig.path());
    assert!(
        node.root().join("paracloud").is_symlink(),
        "the agent links its own binary under its root"
    );
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_paracloud"))
            .args(["--kubernetes", "-a", "shop", "capsule", "run"])
            .args(args)
            .env("KUBECONFIG", server.kubeconfig.path())
            .env_remove("PARACLOUD_ROOT")
            .output()
            .unwrap()
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    // One pod: its own file, its exit code.
    standin.clear_requests();
    let one = cli(&[
        "debug",
        "-l",
        "instance=web-a",
        "--",
        "cat",
        "/target/etc/identity",
    ]);
    assert!(
        one.status.success(),
        "{}\n{}\n{}",
        text(&one.stdout),
        text(&one.stderr),
        node.log()
    );
    assert_eq!(
        text(&one.stdout),
        format!("I am {} of pod web-a\n", a.container_id)
    );
    let execs: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|r| r.subresource.as_deref() == Some("exec"))
        .collect();
    assert_eq!(execs.len(), 1, "{execs:?}");
    assert_eq!(
        (
            execs[0].verb,
            execs[0].namespace.as_deref(),
            execs[0].name.as_deref()
        ),
        (
            paracloud_kube_standin::Verb::Create,
            Some("paracloud-system"),
            Some(AGENT_POD)
        )
    );
    let audit = std::fs::read_to_string(node.root().join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("web-a") && l.contains("\"debug\"")),
        "{audit}"
    );

    // The whole service: web-z's node has no agent, so it fails alone; the exit code is its.
    let both = cli(&[
        "debug",
        "-l",
        "service=web",
        "--",
        "sh",
        "-c",
        "cat /target/etc/identity; exit 3",
    ]);
    assert_eq!(both.status.code(), Some(3), "{}", text(&both.stderr));
    assert_eq!(
        text(&both.stdout),
        format!("web-a | I am {} of pod web-a\n", a.container_id)
    );
    let said = text(&both.stderr);
    assert!(said.contains("web-a: exit code 3"), "{said}");
    assert!(
        said.contains("web-z: no node agent runs on node \"node-2\""),
        "{said}"
    );

    // Files a run leaves come back under --out, one directory per pod; a link the capsule made
    // to a file of the node does not.
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let copied = cli(&[
        "debug",
        "-l",
        "instance=web-a",
        "--out",
        out_dir,
        "--",
        "cp",
        "/target/etc/identity",
        "/out/identity",
    ]);
    assert!(copied.status.success(), "{}", text(&copied.stderr));
    assert_eq!(
        std::fs::read_to_string(out.path().join("web-a/identity")).unwrap(),
        format!("I am {} of pod web-a\n", a.container_id)
    );
    assert!(
        text(&copied.stderr).contains(&format!("web-a: {out_dir}/web-a/identity (")),
        "{}",
        text(&copied.stderr)
    );
    let linked = cli(&[
        "debug",
        "-l",
        "instance=web-a",
        "--out",
        out_dir,
        "--",
        "ln",
        "-s",
        "/etc/passwd",
        "/out/escape",
    ]);
    assert!(linked.status.success(), "{}", text(&linked.stderr));
    assert!(
        !out.path().join("web-a/escape").exists(),
        "a link is not a file the run left"
    );
    // What fetches a file in the agent's container takes one plain name, and no link even if
    // one came after the run listed its files.
    let runs = node.root().join("capsules/runs/7");
    std::fs::create_dir_all(&runs).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", runs.join("late")).unwrap();
    for (name, expected) in [
        (
            "../../agent.sock",
            "is not the name of a file a capsule left",
        ),
        ("late", "run 7 left no file \"late\""),
    ] {
        let fetched = Command::new(env!("CARGO_BIN_EXE_paracloud"))
            .arg("--root")
            .arg(node.root())
            .args(["__agent-capsule-file", "--run", "7", "--name", name])
            .output()
            .unwrap();
        assert_eq!(fetched.status.code(), Some(1));
        assert!(fetched.stdout.is_empty(), "nothing of {name} came out");
        assert!(
            text(&fetched.stderr).contains(expected),
            "{}",
            text(&fetched.stderr)
        );
    }

    // The deadline given reaches the agent.
    let slow = cli(&[
        "debug",
        "-l",
        "instance=web-a",
        "--timeout",
        "1s",
        "--",
        "sleep",
        "30",
    ]);
    assert_eq!(slow.status.code(), Some(124), "{}", text(&slow.stderr));

    // The application's own capsule: its image pulled from the registry by the node's agent
    // on first use, its variables the manifest's over the image's, the platform's over both.
    let report = cli(&["report", "-l", "instance=web-a"]);
    assert!(
        report.status.success(),
        "{}\n{}",
        text(&report.stderr),
        node.log()
    );
    assert_eq!(
        text(&report.stdout),
        format!("report 3 on web-a: I am {} of pod web-a\n", a.container_id)
    );
    assert!(
        node.log().contains("tools/report:1 pulled"),
        "{}",
        node.log()
    );
    // With no command in the manifest, the image's own runs with the arguments.
    let echoed = cli(&[
        "echo",
        "-l",
        "instance=web-a",
        "--",
        "echo",
        "from the image",
    ]);
    assert!(echoed.status.success(), "{}", text(&echoed.stderr));
    assert_eq!(text(&echoed.stdout), "from the image\n");
    let audit = std::fs::read_to_string(node.root().join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("web-a") && l.contains("\"report\"")),
        "{audit}"
    );
    // Its image and command are the application's: it gets no capability a pod of it could
    // not add (the Baseline Pod Security Standard), whatever its manifest asks.
    let mounted = cli(&["mount", "-l", "instance=web-a"]);
    assert_eq!(mounted.status.code(), Some(1));
    assert!(
        text(&mounted.stderr).contains("capsule mount asks for SYS_ADMIN, beyond what the Baseline Pod Security Standard lets a pod add"),
        "{}",
        text(&mounted.stderr)
    );

    // What runs there, and where the policy lets it.
    let listed = Command::new(env!("CARGO_BIN_EXE_paracloud"))
        .args(["--kubernetes", "-a", "shop", "capsule", "ls", "-o", "json"])
        .env("KUBECONFIG", server.kubeconfig.path())
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let services =
        |name: &str| listed.iter().find(|c| c["name"] == name).unwrap()["services"].clone();
    assert_eq!(services("debug"), json!(["web"]));
    assert_eq!(services("strace"), json!([]));
    assert_eq!(services("report"), json!(["web"]));
    let report = listed.iter().find(|c| c["name"] == "report").unwrap();
    assert_eq!(report["app"], "shop");

    // Refused before anything runs.
    standin.clear_requests();
    for (args, expected) in [
        (
            vec!["debug", "-l", "service=web", "--timeout", "soon"],
            "--timeout \"soon\" is not a duration",
        ),
        (
            vec!["strace", "-l", "service=web"],
            "capsule \"strace\" may not attach to service \"web\": the manifest does not allow it; add strace = ",
        ),
        (
            vec!["mine", "-l", "service=web"],
            "no capsule \"mine\": the built-in ones are archive, ",
        ),
        (
            vec!["debug", "-l", "instance=web-q"],
            "no running pod of shop matches --selector \"instance=web-q\"",
        ),
        (
            vec!["debug", "-l", "service"],
            "--selector \"service\": ",
        ),
        (
            vec!["debug", "-l", "service=web", "--agent-namespace", "elsewhere"],
            "no node agent runs in namespace elsewhere: give --agent-namespace the namespace of",
        ),
    ] {
        refused(&cli, &args, expected);
    }
    assert!(
        standin
            .requests()
            .iter()
            .all(|r| r.subresource.as_deref() != Some("exec")),
        "nothing ran"
    );
}

const MIGRATING: &str = r#"
app = "shop"
[services.web]
image = "registry.example/web:1"
ports = [{ port = 8000, protocol = "http" }]
replicas = 2
migrate = "paci"
"#;

/// An application in a pod's container that follows its PaCI events with Python's standard
/// library alone: it answers `migrate` with its state (the first argument; `refuse` as the
/// second: it refuses `restore`), takes the state a `restore` brings, prints each event it
/// answered with its state then, and leaves when its standard input closes.
const PACI_APP: &str = r#"
import http.client, json, os, socket, sys, threading

class Paci(http.client.HTTPConnection):
    def __init__(self):
        super().__init__("paci")
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect("/run/paracloud/paci.sock")

threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
state = json.loads(sys.argv[1])
refuse = sys.argv[2:] == ["refuse"]
stream = Paci()
stream.request("GET", "/v1/events")
events = stream.getresponse()
print(json.dumps({"listening": events.status}), flush=True)
while True:
    line = events.readline()
    if not line:
        break
    event = json.loads(line)
    answer = {}
    if event["kind"] == "migrate":
        answer = {"state": state}
    elif event["kind"] == "restore" and refuse:
        answer = {"error": "no room for the state"}
    elif event["kind"] == "restore":
        state = event["state"]
    ack = Paci()
    ack.request("POST", "/v1/events/%d/ack" % event["id"], json.dumps(answer),
                {"content-type": "application/json"})
    ack.getresponse().read()
    print(json.dumps({"event": event, "state": state}), flush=True)
"#;

/// [`PACI_APP`] running in a pod's container; what it printed, line by line.
struct PaciApp {
    child: Child,
    lines: std::sync::mpsc::Receiver<Value>,
}

impl PaciApp {
    fn start(node: &Node, pod: &Pod, state: &str, refuse: bool) -> PaciApp {
        use std::io::BufRead;
        let mut command = node.oci();
        command.arg("exec").arg(&pod.container_id).args([
            "/usr/bin/python3",
            "-c",
            PACI_APP,
            state,
        ]);
        if refuse {
            command.arg("refuse");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(json(&line)).is_err() {
                    break;
                }
            }
        });
        let app = PaciApp { child, lines };
        let first = app.next(Duration::from_secs(20));
        assert_eq!(first, Some(json!({ "listening": 200 })), "{}", node.log());
        app
    }

    /// The next line it printed, within `wait`.
    fn next(&self, wait: Duration) -> Option<Value> {
        self.lines.recv_timeout(wait).ok()
    }
}

impl Drop for PaciApp {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Runs `migrate` (the CLI) while [`play_replicaset`] plays the ReplicaSet and the kubelet with
/// `successor` to make: what the CLI gave, and what the ReplicaSet did.
fn while_replicaset_plays(
    server: &ApiServer,
    node: &mut Node,
    pods: &mut Vec<(Pod, Option<PaciApp>)>,
    successor: Successor,
    migrate: impl FnOnce() -> std::process::Output,
) -> (std::process::Output, Vec<String>) {
    let running = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|scope| {
        let replicaset =
            scope.spawn(|| play_replicaset(server, node, pods, &[successor], &running));
        let out = migrate();
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        (out, replicaset.join().unwrap())
    })
}

/// A pod the test's ReplicaSet makes: `web-LETTER`, whose application refuses `restore` or
/// not, and which falls unready after the switch or not.
#[derive(Clone, Copy)]
struct Successor {
    letter: &'static str,
    refuses: bool,
    falls_unready: bool,
}

impl Successor {
    const fn new(letter: &'static str) -> Successor {
        Successor {
            letter,
            refuses: false,
            falls_unready: false,
        }
    }
}

/// The annotation a ReplicaSet reads to choose which pod goes first when it shrinks.
const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Plays the ReplicaSet `web-5d8` and the kubelet of node-1 while `running`: when the
/// resource asks for more pods of `web` than live, it makes pod `web-LETTER` (the next of
/// `successors`), starts its containers on the node and its application, then marks it ready,
/// noting which pods serve then; a successor asked to fall unready does so once the resource
/// lists it as serving (after the switch). When the resource asks for fewer pods, it deletes
/// one as a ReplicaSet does: a pod that is not ready first, else the lowest deletion cost; and
/// removes its containers. What it did, in order.
fn play_replicaset(
    server: &ApiServer,
    node: &mut Node,
    pods: &mut Vec<(Pod, Option<PaciApp>)>,
    successors: &[Successor],
    running: &std::sync::atomic::AtomicBool,
) -> Vec<String> {
    let standin = server.standin();
    let replicaset = standin
        .object("apps", "v1", "replicasets", "ns-a", "web-5d8")
        .unwrap();
    let replicaset_uid = replicaset["metadata"]["uid"].as_str().unwrap().to_owned();
    let api = {
        let _runtime = server.runtime.enter();
        kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(standin.client(), "ns-a")
    };
    let mut next = successors.iter();
    let mut did = Vec::new();
    let mut to_fall: Vec<String> = Vec::new();
    while running.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        let app = standin
            .object("paracloud.dev", "v1alpha1", "paracloudapps", "ns-a", "shop")
            .unwrap();
        let serving = app["spec"]["migrating"]["web"].clone();
        if let Some(place) = to_fall
            .iter()
            .position(|name| serving.as_array().is_some_and(|s| s.contains(&json!(name))))
        {
            let name = to_fall.remove(place);
            standin.set_pod_ready("ns-a", &name, false).unwrap();
            did.push(format!("{name} fell unready after the switch"));
        }
        let Some(wanted) = app["spec"]["scale"]["web"]["replicas"].as_u64() else {
            continue;
        };
        let live: Vec<Value> = server
            .runtime
            .block_on(
                api.list(&kube::api::ListParams::default().labels("paracloud.dev/service=web")),
            )
            .unwrap()
            .items
            .into_iter()
            .map(|p| serde_json::to_value(p).unwrap())
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        if (live.len() as u64) < wanted {
            let Some(&Successor {
                letter,
                refuses,
                falls_unready,
            }) = next.next()
            else {
                continue;
            };
            let name = format!("web-{letter}");
            let uid = make(
                standin,
                "replicaset-controller",
                Gvr::new("", "v1", "pods"),
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": { "name": name, "namespace": "ns-a",
                                  "ownerReferences": owner("apps/v1", "ReplicaSet", "web-5d8", &replicaset_uid),
                                  "labels": { "paracloud.dev/app": "shop", "paracloud.dev/service": "web" } },
                    "spec": { "nodeName": "node-1", "containers": [{
                        "name": "web", "image": "registry.example/web:1" }] },
                }),
            );
            did.push(format!("made {name}"));
            let pod = node.pod_in("ns-a", letter, 1000, &uid);
            let (status, _) = unix_http(&node.api(), "POST", "/v1/refresh", "");
            assert_eq!(status, 200);
            let app = PaciApp::start(node, &pod, "{}", refuses);
            if falls_unready {
                to_fall.push(name.clone());
            }
            let serving = standin
                .object("paracloud.dev", "v1alpha1", "paracloudapps", "ns-a", "shop")
                .unwrap()["spec"]["migrating"]
                .clone();
            did.push(format!("{name} ready while serving {serving}"));
            standin.set_pod_ready("ns-a", &name, true).unwrap();
            pods.push((pod, Some(app)));
        } else if (live.len() as u64) > wanted {
            let cost = |p: &Value| {
                p["metadata"]["annotations"][DELETION_COST]
                    .as_str()
                    .map_or(0, |c| c.parse::<i64>().unwrap())
            };
            let ready = |p: &Value| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            };
            let going = live.iter().min_by_key(|p| (ready(p), cost(p))).unwrap();
            let name = going["metadata"]["name"].as_str().unwrap().to_owned();
            server
                .runtime
                .block_on(api.delete(&name, &Default::default()))
                .unwrap();
            let state = if ready(going) { "" } else { ", not ready" };
            did.push(format!("deleted {name} of cost {}{state}", cost(going)));
            if let Some(place) = pods.iter().position(|(p, _)| p.name == name) {
                let (pod, app) = pods.remove(place);
                drop(app);
                node.remove(&pod);
            }
        }
    }
    did
}

/// `paracloud --kubernetes migrate POD`, make before break: the CLI scales the service up by
/// one on the resource, the ReplicaSet (played here) makes the successor, which the data plane
/// gives no request (the resource names the pods that serve) until it has the state; the old pod hands its
/// state over through PaCI (`migrate`, by the agent of its node, through the API server's
/// `pods/exec`) and the successor takes it (`restore`); the old pod gets the lowest deletion
/// cost and the service shrinks back, so the ReplicaSet removes it. A successor that refuses
/// the state is removed instead, and the old pod gets its state back and keeps serving; what
/// cannot move is refused before anything changes.
#[test]
fn a_pod_migrates_to_a_successor_on_a_cluster_by_a_paci_handover_through_the_node_agents() {
    let mut node = Node::new("migrate");
    let server = ApiServer::start_with(
        MIGRATING,
        Options {
            exec: Some(exec_in_agent(node.root())),
            ..Options::default()
        },
    );
    let standin = server.standin();
    make_agent_pod(standin);
    standin.set_pod_ready("ns-a", "web-a", true).unwrap();
    let a = node.pod_in("ns-a", "a", 1000, &server.uid_a);
    node.agent_with_kubeconfig(&[&a], server.kubeconfig.path());
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_paracloud"))
            .args(["--kubernetes", "-a", "shop", "migrate"])
            .args(args)
            .env("KUBECONFIG", server.kubeconfig.path())
            .env_remove("PARACLOUD_ROOT")
            .output()
            .unwrap()
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let resource = || {
        standin
            .object("paracloud.dev", "v1alpha1", "paracloudapps", "ns-a", "shop")
            .unwrap()
    };

    // Refused before anything changes.
    standin.clear_requests();
    for (args, expected) in [
        (vec!["web-q"], "no pod web-q in namespace ns-a"),
        (
            vec!["web-z"],
            "no node agent runs on node \"node-2\" of pod web-z in namespace paracloud-system",
        ),
        (
            vec!["web-a", "--via", "criu"],
            "--via criu does not work on a cluster",
        ),
        (
            vec!["web-a", "--cpus", "2"],
            "--revision and --cpus do not act on a cluster",
        ),
        (
            vec!["web-a"],
            "web-a does not follow its PaCI events, so it cannot hand its state over",
        ),
    ] {
        refused(&cli, &args, expected);
    }
    assert!(
        standin
            .requests()
            .iter()
            .all(|r| r.verb == paracloud_kube_standin::Verb::Get
                || r.verb == paracloud_kube_standin::Verb::List
                || r.subresource.as_deref() == Some("exec")),
        "nothing was changed: {:?}",
        standin.requests()
    );
    assert!(resource()["spec"]["scale"].is_null());

    // The application in web-a follows its events: it moves to web-n.
    let app_a = PaciApp::start(&node, &a, r#"{"carts": 3}"#, false);
    let mut pods = vec![(a, Some(app_a))];
    standin.clear_requests();
    let (moved, did) =
        while_replicaset_plays(&server, &mut node, &mut pods, Successor::new("n"), || {
            cli(&["web-a"])
        });
    let requests = standin.requests();
    let said = text(&moved.stderr);
    assert!(moved.status.success(), "{said}\n{did:?}\n{}", node.log());
    assert!(
        said.contains("migrated web-a to web-n via paci in ")
            && said.contains("(state of 11 bytes handed over in "),
        "{said}"
    );
    assert_eq!(
        did,
        [
            "made web-n",
            "web-n ready while serving {\"web\":[\"web-a\",\"web-z\"]}",
            "deleted web-a of cost -2147483648",
        ],
        "{said}"
    );
    // The successor took the state; the old pod was told where its requests go.
    let (_, app_n) = pods.iter().find(|(p, _)| p.name == "web-n").unwrap();
    let restored = app_n
        .as_ref()
        .unwrap()
        .next(Duration::from_secs(5))
        .unwrap();
    assert_eq!(restored["event"]["kind"], "restore");
    assert_eq!(restored["event"]["from"], "web-a");
    assert_eq!(restored["state"], json!({ "carts": 3 }));
    // The service is its size again, and its migration has ended.
    assert_eq!(resource()["spec"]["scale"]["web"]["replicas"], 2);
    let none = |field: &str| {
        resource()["spec"][field]
            .as_object()
            .is_none_or(|o| o.is_empty())
    };
    assert!(
        none("migrating") && none("weights"),
        "{}",
        resource()["spec"]
    );
    assert!(
        server
            .events()
            .iter()
            .any(|(reason, message, _)| reason == "Migrated"
                && message.starts_with("pod web-a migrated to web-n via paci in ")),
        "{:?}",
        server.events()
    );
    // What the CLI asked of the API server: what docs/kubernetes.md tells to grant. The one
    // deletion is the test's ReplicaSet's (which lists pods too).
    let mut asked: Vec<String> = requests
        .iter()
        .map(|r| format!("{} {}", r.verb.as_str(), r.rbac_resource()))
        .collect();
    asked.sort();
    assert_eq!(asked.iter().filter(|r| *r == "delete pods").count(), 1);
    asked.retain(|r| r != "delete pods");
    // The node agent shares this API server, and proves a pod's owners again once its proof is
    // older than APP_TTL (30 s): on a busy machine that falls within the migration. Reading a
    // pod's owners is the agent's; the CLI's requests are the rest.
    asked.retain(|r| r != "get replicasets" && r != "get deployments");
    asked.dedup();
    assert_eq!(
        asked,
        [
            "create events",
            "create pods/exec",
            "get paracloudapps",
            "get pods",
            "list paracloudapps",
            "list pods",
            "patch paracloudapps",
            "patch pods",
            "watch pods",
        ],
        "the test's ReplicaSet made and deleted pods, the CLI the rest"
    );

    // A successor that refuses the state is removed; web-n gets its state back and serves on.
    let app_n = pods
        .iter_mut()
        .find(|(p, _)| p.name == "web-n")
        .and_then(|(_, app)| app.take())
        .unwrap();
    let refusing = Successor {
        refuses: true,
        ..Successor::new("m")
    };
    let (abandoned, did) =
        while_replicaset_plays(&server, &mut node, &mut pods, refusing, || cli(&["web-n"]));
    let said = text(&abandoned.stderr);
    assert_eq!(abandoned.status.code(), Some(1), "{said}");
    assert!(
        said.contains(
            "the migration of web-n was abandoned: restore to pod ns-a/web-m: refused after "
        ) && said.contains("no room for the state; web-n keeps serving"),
        "{said}"
    );
    assert_eq!(
        did,
        [
            "made web-m",
            "web-m ready while serving {\"web\":[\"web-n\",\"web-z\"]}",
            "deleted web-m of cost -2147483648",
        ]
    );
    let handed = app_n.next(Duration::from_secs(5)).unwrap();
    assert_eq!(handed["event"]["kind"], "migrate");
    assert_eq!(
        handed["event"]["to"],
        json!({ "instance": "web-m", "address": "10.0.0.1" })
    );
    let back = app_n.next(Duration::from_secs(5)).unwrap();
    assert_eq!(back["event"]["kind"], "restore");
    assert_eq!(back["event"]["from"], "web-n");
    assert_eq!(back["state"], json!({ "carts": 3 }));
    assert_eq!(resource()["spec"]["scale"]["web"]["replicas"], 2);
    assert!(none("migrating"));
    assert!(server
        .events()
        .iter()
        .any(|(reason, message, _)| reason == "MigrationAbandoned" && message.contains("no room")));

    // A successor that falls unready after the switch is what its ReplicaSet removes, whatever
    // the deletion costs: the CLI says so instead of waiting for web-n to go.
    let falling = Successor {
        falls_unready: true,
        ..Successor::new("k")
    };
    let (unready, did) =
        while_replicaset_plays(&server, &mut node, &mut pods, falling, || cli(&["web-n"]));
    let said = text(&unready.stderr);
    assert_eq!(unready.status.code(), Some(1), "{said}");
    assert!(
        said.contains("the migration of web-n did not end as asked: the ReplicaSet removed web-k instead of web-n (a pod that is not ready goes first, whatever its deletion cost); web-n still runs, with the state as it was at the handover"),
        "{said}"
    );
    assert_eq!(
        did,
        [
            "made web-k",
            "web-k ready while serving {\"web\":[\"web-n\",\"web-z\"]}",
            "web-k fell unready after the switch",
            "deleted web-k of cost 0, not ready",
        ]
    );
    assert_eq!(resource()["spec"]["scale"]["web"]["replicas"], 2);
    assert!(
        none("migrating"),
        "web-n serves again: {}",
        resource()["spec"]
    );
}
