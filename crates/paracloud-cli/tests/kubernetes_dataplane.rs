//! Paracloud's data plane in a cluster, for real: the `paracloud cluster-dataplane` process with
//! the routes `paracloud k8s render --dataplane-image` writes, following the EndpointSlices of a
//! stand-in API server, in front of real HTTP servers on 127.0.0.x. Requests through its listener
//! are balanced over the ready endpoints, leave one that is no longer ready, split by a
//! revision's weight, and wait while the service has no endpoint until one appears; its `/stats`
//! answer over TCP.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use paracloud_kube_standin::{Gvr, ObjectRef, Options, StandIn};
use serde_json::{json, Value};

const MANIFEST: &str = r#"
app = "shop"
[services.api]
image = "registry.example/api:1"
ports = [{ port = 8000, protocol = "http" }]
[services.api.revisions.canary]
image = "registry.example/api:2"
weight = 20
"#;

/// An HTTP/1.1 server answering every request with its name, keep-alive included.
fn backend(ip: &str, port: u16, name: &'static str) {
    let listener = TcpListener::bind((ip, port)).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream, name));
        }
    });
}

fn serve(mut stream: TcpStream, name: &str) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buffer.drain(..end);
        // A little work, so that requests at once overlap and the picking sees them in flight.
        std::thread::sleep(Duration::from_millis(10));
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{name}",
            name.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// One GET on a fresh connection: the status and the body.
fn get(port: u16, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: api\r\n{headers}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A stand-in API server with the application's namespace, the routes `k8s render` writes, and
/// the data-plane process on this test's ports.
struct Cluster {
    platform: Platform,
    standin: Option<StandIn>,
    runtime: tokio::runtime::Runtime,
    dataplane: Option<Child>,
    operator: Option<Child>,
    kubeconfig: tempfile::NamedTempFile,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(MANIFEST)
    }

    fn start_with(manifest_text: &str) -> Cluster {
        let platform = Platform::new();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let standin = runtime.block_on(async { StandIn::start(Options::default()).await.unwrap() });
        standin
            .apply_as(
                "kubectl",
                &ObjectRef::new(Gvr::new("", "v1", "namespaces"), "", "shop"),
                json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "shop" } }),
            )
            .unwrap();
        let kubeconfig = kubeconfig(&standin.url());

        // The routes as the data plane's ConfigMap carries them.
        let manifest = platform.manifest("paracloud.toml", manifest_text);
        let out = Command::new(bin_dir().join("paracloud"))
            .args(["k8s", "render", "-f"])
            .arg(&manifest)
            .args([
                "--dataplane-image",
                "registry.example/paracloud:1",
                "-o",
                "json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        let config_map = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "shop-dataplane")
            .expect("the data plane's ConfigMap");
        let routes = platform.root().join("routes.json");
        std::fs::write(&routes, config_map["data"]["routes.json"].as_str().unwrap()).unwrap();

        let dataplane = Command::new(bin_dir().join("paracloud"))
            .args([
                "cluster-dataplane",
                "--namespace",
                "shop",
                "--app",
                "shop",
                "--routes",
            ])
            .arg(&routes)
            .arg("--state-dir")
            .arg(platform.root().join("state"))
            .args(["--stats-listen", &format!("127.0.0.1:{}", platform.port(0))])
            .args(["--listen-address", "127.0.0.1"])
            .args(["--listen-port", &format!("api:8000={}", platform.port(1))])
            .env("KUBECONFIG", kubeconfig.path())
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(platform.root().join("dataplane.log")).unwrap())
            .spawn()
            .unwrap();
        let cluster = Cluster {
            platform,
            standin: Some(standin),
            runtime,
            dataplane: Some(dataplane),
            operator: None,
            kubeconfig,
        };
        eventually("the data plane's stats", || {
            TcpStream::connect(("127.0.0.1", cluster.stats_port())).is_ok()
        });
        cluster
    }

    fn stats_port(&self) -> u16 {
        self.platform.port(0)
    }

    fn listener(&self) -> u16 {
        self.platform.port(1)
    }

    /// A backend port of this test's own.
    fn backend_port(&self) -> u16 {
        self.platform.port(2)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.platform.root().join("dataplane.log")).unwrap_or_default()
    }

    /// Writes the EndpointSlice `name` of the headless Service `service`: each endpoint
    /// (pod, address, ready) on this test's backend port.
    fn slice(&self, service: &str, name: &str, endpoints: &[(&str, &str, bool)]) {
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|(pod, address, ready)| {
                json!({
                    "addresses": [address],
                    "conditions": { "ready": ready, "serving": ready, "terminating": false },
                    "targetRef": { "kind": "Pod", "namespace": "shop", "name": pod },
                })
            })
            .collect();
        self.standin
            .as_ref()
            .unwrap()
            .force_apply_as(
                "endpointslice-controller",
                &ObjectRef::new(
                    Gvr::new("discovery.k8s.io", "v1", "endpointslices"),
                    "shop",
                    name,
                ),
                json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": name,
                        "namespace": "shop",
                        "labels": { "kubernetes.io/service-name": service },
                    },
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": [{ "name": "http-8000", "port": self.backend_port(), "protocol": "TCP" }],
                }),
            )
            .unwrap();
    }

    /// The listener's snapshot from `GET /stats` over TCP.
    fn stats(&self) -> Value {
        let (status, body) = get(self.stats_port(), "/stats", "");
        assert_eq!(status, 200, "{body}");
        let stats: Value = serde_json::from_str(&body).unwrap();
        stats["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "shop/api:8000")
            .cloned()
            .unwrap_or_else(|| panic!("no listener shop/api:8000 in {stats}"))
    }

    /// Waits until the listener has exactly these backends.
    fn wait_backends(&self, ids: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listener = self.stats();
            let mut have: Vec<String> = listener["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_owned())
                .collect();
            have.sort();
            if have == ids {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the listener never had backends {ids:?}: {listener}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Who answered `n` requests, by name.
    fn spread(&self, n: usize, headers: &str) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            let (status, body) = get(self.listener(), "/", headers);
            assert_eq!(status, 200, "{body}\n{}", self.log());
            *counts.entry(body).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.operator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut child) = self.dataplane.take() {
            // Best effort: the process may have ended already.
            let _ = child.kill();
            let _ = child.wait();
        }
        let standin = self.standin.take();
        let _guard = self.runtime.enter();
        drop(standin);
    }
}

fn root_path(cluster: &Cluster, name: &str) -> PathBuf {
    cluster.platform.root().join(name)
}

#[test]
fn requests_are_balanced_over_ready_endpoints_and_leave_one_no_longer_ready() {
    let cluster = Cluster::start();
    backend("127.0.0.2", cluster.backend_port(), "api-1");
    backend("127.0.0.3", cluster.backend_port(), "api-2");
    cluster.slice(
        "api-pods",
        "api-pods-a1b2c",
        &[("api-1", "127.0.0.2", true), ("api-2", "127.0.0.3", true)],
    );
    cluster.wait_backends(&["api-1", "api-2"]);
    // Eight clients at once: the picking (in flight × latency) spreads them over both.
    let listener = cluster.listener();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| get(listener, "/", "").1)
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for client in clients {
        for body in client.join().unwrap() {
            *counts.entry(body).or_insert(0) += 1;
        }
    }
    assert!(
        counts.get("api-1").copied().unwrap_or(0) >= 10
            && counts.get("api-2").copied().unwrap_or(0) >= 10,
        "both endpoints answer: {counts:?}"
    );

    // api-2 stops being ready (its readiness probe fails, or it is terminating).
    cluster.slice(
        "api-pods",
        "api-pods-a1b2c",
        &[("api-1", "127.0.0.2", true), ("api-2", "127.0.0.3", false)],
    );
    cluster.wait_backends(&["api-1"]);
    let counts = cluster.spread(20, "");
    assert_eq!(counts.get("api-1"), Some(&20), "{counts:?}");

    // The per-listener counters, over TCP, as the operator follows them.
    let listener = cluster.stats();
    assert!(listener["requests"].as_u64().unwrap() >= 100, "{listener}");
    assert!(
        listener["responses_2xx"].as_u64().unwrap() >= 60,
        "{listener}"
    );
    assert_eq!(
        listener["bind"],
        format!("127.0.0.1:{}", cluster.listener())
    );
    let (status, metrics) = get(cluster.stats_port(), "/metrics", "");
    assert_eq!(status, 200);
    assert!(metrics.contains("shop/api:8000"), "{metrics}");
    assert!(root_path(&cluster, "state/dataplane.json").exists());
}

#[test]
fn a_revision_gets_its_share_and_the_requests_that_ask_for_it() {
    let cluster = Cluster::start();
    backend("127.0.0.4", cluster.backend_port(), "api-1");
    backend("127.0.0.5", cluster.backend_port(), "canary-1");
    cluster.slice("api-pods", "api-pods-x1", &[("api-1", "127.0.0.4", true)]);
    cluster.slice(
        "api-canary-pods",
        "api-canary-pods-y1",
        &[("canary-1", "127.0.0.5", true)],
    );
    eventually("the canary's backend", || {
        cluster.stats()["backends"].as_array().unwrap().len() == 2
    });
    let counts = cluster.spread(100, "");
    let canary = counts.get("canary-1").copied().unwrap_or(0);
    assert!(
        (15..=25).contains(&canary),
        "the canary weighs 20 of 100: {counts:?}"
    );
    let asked = cluster.spread(10, "x-paracloud-revision: canary\r\n");
    assert_eq!(asked.get("canary-1"), Some(&10), "{asked:?}");
}

#[test]
fn a_request_while_the_service_has_no_endpoint_waits_for_one() {
    let cluster = Cluster::start();
    backend("127.0.0.6", cluster.backend_port(), "api-1");
    // The service at zero: its slice lists no endpoint.
    cluster.slice("api-pods", "api-pods-z1", &[]);
    let listener = cluster.listener();
    let started = Instant::now();
    let waiting = std::thread::spawn(move || get(listener, "/", ""));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!waiting.is_finished(), "held, not refused");
    // The operator brings a pod up; it becomes ready.
    cluster.slice("api-pods", "api-pods-z1", &[("api-1", "127.0.0.6", true)]);
    let (status, body) = waiting.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "api-1"), "{}", cluster.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered within the hold time"
    );
}

const QUIET: &str = r#"
app = "shop"
[services.api]
image = "registry.example/api:1"
ports = [{ port = 8000, protocol = "http" }]
scale_to_zero = "2s"
"#;

impl Cluster {
    /// The operator, following this data plane's stats, and the application as its resource.
    fn operate(&mut self, manifest: &str) {
        let standin = self.standin.as_ref().unwrap();
        self.runtime.block_on(async {
            kube::Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(standin.client())
                .create(&Default::default(), &paracloud_kube::resource::definition())
                .await
                .unwrap();
        });
        standin
            .apply_as(
                "kubectl",
                &ObjectRef::new(
                    Gvr::new("paracloud.dev", "v1alpha1", "paracloudapps"),
                    "shop",
                    "shop",
                ),
                json!({
                    "apiVersion": "paracloud.dev/v1alpha1",
                    "kind": "ParacloudApp",
                    "metadata": { "name": "shop", "namespace": "shop" },
                    "spec": { "manifest": manifest },
                }),
            )
            .unwrap();
        let operator = Command::new(bin_dir().join("paracloud"))
            .args([
                "operator",
                "--identity",
                "operator-test",
                "--lease-namespace",
                "shop",
            ])
            .args(["--lease-duration", "3s", "--resync", "1s"])
            .args([
                "--dataplane-stats",
                &format!("http://127.0.0.1:{}", self.stats_port()),
            ])
            .env("KUBECONFIG", self.kubeconfig.path())
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(self.platform.root().join("operator.log")).unwrap())
            .spawn()
            .unwrap();
        self.operator = Some(operator);
    }

    /// The pods the resource's scale asks of `service`, once set.
    fn scaled(&self, service: &str) -> Option<u64> {
        self.standin.as_ref().unwrap().object(
            "paracloud.dev",
            "v1alpha1",
            "paracloudapps",
            "shop",
            "shop",
        )?["spec"]["scale"][service]["replicas"]
            .as_u64()
    }

    fn operator_log(&self) -> String {
        std::fs::read_to_string(self.platform.root().join("operator.log")).unwrap_or_default()
    }
}

#[test]
fn a_quiet_service_goes_to_zero_and_a_waiting_request_brings_it_back_through_the_operator() {
    let mut cluster = Cluster::start_with(QUIET);
    cluster.operate(QUIET);
    backend("127.0.0.7", cluster.backend_port(), "api-1");
    cluster.slice("api-pods", "api-pods-q1", &[("api-1", "127.0.0.7", true)]);
    cluster.wait_backends(&["api-1"]);
    assert_eq!(get(cluster.listener(), "/", "").0, 200);

    // Two seconds without a request: the operator, following the data plane, scales it to
    // zero through the resource; the cluster (played here) takes the pod and its endpoint away.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.scaled("api") != Some(0) {
        assert!(
            Instant::now() < deadline,
            "never scaled to zero:\n{}",
            cluster.operator_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.slice("api-pods", "api-pods-q1", &[("api-1", "127.0.0.7", false)]);
    cluster.wait_backends(&[]);

    // A request now waits in the data plane; the operator sees it waiting and asks for the
    // manifest's pod again; once its endpoint is ready, the held request is answered.
    let listener = cluster.listener();
    let held = std::thread::spawn(move || get(listener, "/", ""));
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.scaled("api") != Some(1) {
        assert!(
            Instant::now() < deadline,
            "never brought back:\n{}",
            cluster.operator_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.slice("api-pods", "api-pods-q1", &[("api-1", "127.0.0.7", true)]);
    let (status, body) = held.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "api-1"), "{}", cluster.log());

    // Both are Events on the resource, with their reasons.
    let events = cluster.runtime.block_on(async {
        kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(
            cluster.standin.as_ref().unwrap().client(),
            "shop",
        )
        .list(&Default::default())
        .await
        .unwrap()
    });
    let reasons: Vec<String> = events
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons.iter().any(|r| r == "ScaledToZero")
            && reasons.iter().any(|r| r == "ScaledFromZero"),
        "{reasons:?}"
    );
}

const AUTOSCALED: &str = r#"
app = "shop"
[autoscale]
policy = "hpa"
entry = "api"
[services.api]
image = "registry.example/api:1"
ports = [{ port = 8000, protocol = "http" }]
resources = { cpu = 1 }
autoscale = { min = 1, max = 4, cpu_min = 1, cpu_max = 1 }
"#;

/// The autoscaler in the cluster: the operator follows the data plane each second, reads the
/// pods and metrics-server's CPU use (both played here), and its policy's decision (HPA: a pod
/// at 90% of its CPU, above the 70% target, wants a second) becomes the resource's scale, an
/// Event with the reason, and the Deployment's replicas through the reconcile. Every request
/// the operator made on the way is one its roles grant.
#[test]
fn the_operator_autoscales_an_application_from_its_data_plane_and_pod_metrics() {
    let mut cluster = Cluster::start_with(AUTOSCALED);
    let standin = cluster.standin.as_ref().unwrap();
    standin.clear_requests();
    let labels = json!({ "paracloud.dev/app": "shop", "paracloud.dev/service": "api" });
    let pods = Gvr::new("", "v1", "pods");
    standin
        .apply_as(
            "kube-controller-manager",
            &ObjectRef::new(pods.clone(), "shop", "api-1"),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": "api-1", "namespace": "shop", "labels": labels },
                "spec": { "containers": [{
                    "name": "api", "image": "registry.example/api:1",
                    "resources": { "requests": { "cpu": "1" }, "limits": { "cpu": "1" } },
                }]},
            }),
        )
        .unwrap();
    standin.set_pod_ready("shop", "api-1", true).unwrap();
    // Running for long enough that HPA trusts its CPU figures.
    standin
        .set_status(
            "kubelet",
            &pods,
            "shop",
            "api-1",
            json!({ "startTime": "2026-01-01T00:00:00Z" }),
        )
        .unwrap();
    standin
        .apply_as(
            "metrics-server",
            &ObjectRef::new(
                Gvr::new("metrics.k8s.io", "v1beta1", "pods"),
                "shop",
                "api-1",
            ),
            json!({
                "apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
                "metadata": { "name": "api-1", "namespace": "shop", "labels": labels },
                "timestamp": "2026-01-01T00:00:00Z", "window": "15s",
                "containers": [{ "name": "api", "usage": { "cpu": "900m", "memory": "64Mi" } }],
            }),
        )
        .unwrap();
    backend("127.0.0.8", cluster.backend_port(), "api-1");
    cluster.slice("api-pods", "api-pods-a1", &[("api-1", "127.0.0.8", true)]);
    cluster.operate(AUTOSCALED);
    cluster.wait_backends(&["api-1"]);
    assert_eq!(get(cluster.listener(), "/", "").0, 200);

    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.scaled("api") != Some(2) {
        assert!(
            Instant::now() < deadline,
            "never scaled out:\n{}",
            cluster.operator_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let standin = cluster.standin.as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while standin
        .object("apps", "v1", "deployments", "shop", "api")
        .is_none_or(|d| d["spec"]["replicas"] != 2)
    {
        assert!(
            Instant::now() < deadline,
            "the Deployment was never scaled:\n{}",
            cluster.operator_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let events = cluster.runtime.block_on(async {
        kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(standin.client(), "shop")
            .list(&Default::default())
            .await
            .unwrap()
    });
    let said: Vec<(String, String)> = events
        .items
        .iter()
        .map(|e| {
            (
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        said.iter()
            .any(|(r, m)| r == "AutoscalerStarted" && m.starts_with("autoscaler hpa follows shop")),
        "{said:?}"
    );
    let scaled = said
        .iter()
        .find(|(r, _)| r == "Autoscaled")
        .unwrap_or_else(|| panic!("no Autoscaled event: {said:?}"));
    assert!(
        scaled.1.starts_with("api: autoscaler hpa: pods 1 -> 2: ") && scaled.1.len() > 40,
        "with its reason: {}",
        scaled.1
    );

    let granted: std::collections::BTreeSet<(String, String, String)> =
        paracloud_kube::access::operator_permissions()
            .into_iter()
            .chain(paracloud_kube::access::delegated_permissions())
            .map(|p| p.triple())
            .collect();
    let used: std::collections::BTreeSet<(String, String, String)> = standin
        .requests()
        .into_iter()
        // This test's own: the Events listed above, and the definition it installed.
        .filter(|r| !(r.resource == "events" && r.verb.as_str() == "list"))
        .filter(|r| r.resource != "customresourcedefinitions")
        .map(|r| r.rbac())
        .collect();
    let ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(ungranted.is_empty(), "used but not granted: {ungranted:?}");
    assert!(
        used.contains(&("metrics.k8s.io".into(), "pods".into(), "list".into())),
        "metrics-server was read: {used:?}"
    );
}

/// A pod's PaCI weight, as the node agent writes it on the application's resource, shifts the
/// pod's share: the data plane follows the resource beside the EndpointSlices. At weight 0 a
/// pod gets no request while another can serve; dropped from the resource, it gets its full
/// share again. During a migration only the pods the resource names serve.
#[test]
fn a_pods_weight_and_a_migration_on_the_resource_shift_its_share_of_requests() {
    let cluster = Cluster::start();
    let standin = cluster.standin.as_ref().unwrap();
    cluster.runtime.block_on(async {
        kube::Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(standin.client())
            .create(&Default::default(), &paracloud_kube::resource::definition())
            .await
            .unwrap();
    });
    let app = ObjectRef::new(
        Gvr::new("paracloud.dev", "v1alpha1", "paracloudapps"),
        "shop",
        "shop",
    );
    standin
        .apply_as(
            "kubectl",
            &app,
            json!({
                "apiVersion": "paracloud.dev/v1alpha1", "kind": "ParacloudApp",
                "metadata": { "name": "shop", "namespace": "shop" },
                "spec": { "manifest": MANIFEST },
            }),
        )
        .unwrap();
    backend("127.0.0.4", cluster.backend_port(), "api-1");
    backend("127.0.0.5", cluster.backend_port(), "api-2");
    cluster.slice(
        "api-pods",
        "api-pods-w1",
        &[("api-1", "127.0.0.4", true), ("api-2", "127.0.0.5", true)],
    );
    cluster.wait_backends(&["api-1", "api-2"]);

    let weight_of = |pod: &str| -> Option<u64> {
        let text = std::fs::read_to_string(root_path(&cluster, "state/dataplane.json")).ok()?;
        let config: Value = serde_json::from_str(&text).ok()?;
        config["listeners"][0]["backends"]
            .as_array()?
            .iter()
            .find(|b| b["id"] == pod)?["weight"]
            .as_u64()
    };
    let wait_weight = |pod: &str, weight: u64| {
        eventually(&format!("{pod} weighs {weight}"), || {
            weight_of(pod) == Some(weight)
        })
    };
    // api-2 asks to be left out while api-1 serves (as a pod draining its work would).
    standin
        .merge_patch_as(
            "paracloud-node-agent",
            &app,
            json!({ "spec": { "weights": { "api-2": 0 } } }),
        )
        .unwrap();
    wait_weight("api-2", 0);
    assert_eq!(weight_of("api-1"), Some(1000));
    let counts = cluster.spread(20, "");
    assert_eq!(counts.get("api-1"), Some(&20), "{counts:?}");

    // Back to its full share.
    standin
        .merge_patch_as(
            "paracloud-node-agent",
            &app,
            json!({ "spec": { "weights": { "api-2": null } } }),
        )
        .unwrap();
    wait_weight("api-2", 1000);

    // A migration of api-2 (`paracloud migrate --kubernetes`): the resource names the pods that
    // serve before the successor api-3 appears, so api-3 gets no request while it is ready but
    // has not got the state; at the switch api-3 serves and api-2 no more; at the end, all do.
    let migrating = |serving: Value| {
        standin
            .merge_patch_as(
                "paracloud-cli",
                &app,
                json!({ "spec": { "migrating": { "api": serving } } }),
            )
            .unwrap();
    };
    migrating(json!(["api-1", "api-2"]));
    backend("127.0.0.6", cluster.backend_port(), "api-3");
    cluster.slice(
        "api-pods",
        "api-pods-w1",
        &[
            ("api-1", "127.0.0.4", true),
            ("api-2", "127.0.0.5", true),
            ("api-3", "127.0.0.6", true),
        ],
    );
    wait_weight("api-3", 0);
    let counts = cluster.spread(30, "");
    assert_eq!(counts.get("api-3"), None, "{counts:?}");
    migrating(json!(["api-1", "api-3"]));
    wait_weight("api-2", 0);
    assert_eq!(weight_of("api-3"), Some(1000));
    let counts = cluster.spread(30, "");
    assert_eq!(counts.get("api-2"), None, "{counts:?}");
    migrating(Value::Null);
    wait_weight("api-2", 1000);
    assert_eq!(weight_of("api-3"), Some(1000));
}
