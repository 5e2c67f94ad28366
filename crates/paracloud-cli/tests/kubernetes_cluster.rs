//! The application on Kubernetes through the CLI, as a user meets it: `paracloud deploy
//! --kubernetes` with a kubeconfig, the `paracloud operator` process running it, and `ps`,
//! `scale`, `describe` and `events` with --kubernetes. The cluster is a stand-in API server
//! that follows the real API's semantics (no cluster can run here); the test plays the
//! cluster's controllers (pods, readiness).

mod common;

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::Api;
use paracloud_kube_standin::{Gvr, ObjectRef, Options, StandIn};
use serde_json::json;

/// The stand-in on a runtime of its own thread, for a synchronous test.
struct Cluster {
    standin: Option<StandIn>,
    runtime: tokio::runtime::Runtime,
    kubeconfig: tempfile::NamedTempFile,
}

impl Cluster {
    fn start() -> Cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let standin = runtime.block_on(async {
            let standin = StandIn::start(Options::default()).await.unwrap();
            let client = standin.client();
            // What `paracloud k8s install` puts in place: the definition and the operator's
            // namespace.
            Api::<CustomResourceDefinition>::all(client.clone())
                .create(
                    &PostParams::default(),
                    &paracloud_kube::resource::definition(),
                )
                .await
                .unwrap();
            let ns: Namespace =
                serde_json::from_value(json!({ "metadata": { "name": "paracloud-system" } }))
                    .unwrap();
            Api::<Namespace>::all(client)
                .create(&PostParams::default(), &ns)
                .await
                .unwrap();
            standin
        });
        let kubeconfig = kubeconfig(&standin.url());
        Cluster {
            standin: Some(standin),
            runtime,
            kubeconfig,
        }
    }

    fn standin(&self) -> &StandIn {
        self.standin.as_ref().unwrap()
    }

    fn paracloud(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(bin_dir().join("paracloud"))
            .current_dir(dir)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig.path())
            .env_remove("PARACLOUD_CONTEXT")
            .output()
            .unwrap()
    }

    fn operator(&self) -> Child {
        Command::new(bin_dir().join("paracloud"))
            .args([
                "operator",
                "--identity",
                "operator-cli",
                "--lease-duration",
                "3s",
                "--resync",
                "1s",
            ])
            .env("KUBECONFIG", self.kubeconfig.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn eventually<T>(&self, what: &str, mut check: impl FnMut(&StandIn) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(value) = check(self.standin()) {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let standin = self.standin.take();
        let _guard = self.runtime.enter();
        drop(standin);
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "paracloud failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "paracloud succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn deploy_runs_the_application_through_the_operator_and_the_usual_commands_see_it_there() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("conf")).unwrap();
    std::fs::write(dir.path().join("conf/site.conf"), "listen 8080;\n").unwrap();
    std::fs::write(
        dir.path().join("paracloud.toml"),
        "app = \"shop\"\n\
         [services.api]\nimage = \"registry.example/api:1\"\nports = [{ port = 8000, protocol = \"http\" }]\nreplicas = 2\nresources = { cpu = 1 }\n\
         [services.web]\nimage = \"registry.example/web:1\"\nports = [{ port = 8080, protocol = \"http\", publish = 8080 }]\nvolumes = [\"./conf/site.conf:/etc/web/site.conf:ro\"]\n",
    )
    .unwrap();
    let _operator = Reaped(cluster.operator());

    let out = ok(&cluster.paracloud(dir.path(), &["--kubernetes", "deploy"]));
    assert!(
        out.contains("applied ParacloudApp shop/shop (2 services, 1 file)"),
        "{out}"
    );
    // The file it binds travelled as a ConfigMap owned by the resource.
    let file = cluster.eventually("the file's ConfigMap", |s| {
        s.object("", "v1", "configmaps", "shop", "web-file-0")
    });
    assert_eq!(file["data"]["site.conf"], "listen 8080;\n");
    assert_eq!(
        file["metadata"]["ownerReferences"][0]["kind"],
        "ParacloudApp"
    );
    // The operator made the rest.
    cluster.eventually("the api Deployment", |s| {
        s.object("apps", "v1", "deployments", "shop", "api")
    });
    cluster.eventually("the web Deployment", |s| {
        s.object("apps", "v1", "deployments", "shop", "web")
    });

    // The test plays the cluster: a pod per replica, ready, and the Deployments' status.
    for (workload, n) in [("api", 1), ("api", 2), ("web", 1)] {
        let name = format!("{workload}-{n}");
        cluster
            .standin()
            .apply_as(
                "replicaset-controller",
                &ObjectRef::new(Gvr::new("", "v1", "pods"), "shop", &name),
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": { "name": name, "namespace": "shop", "labels": { "paracloud.dev/app": "shop", "paracloud.dev/workload": workload } },
                    "spec": { "nodeName": "node-1", "containers": [{ "name": workload, "image": "registry.example/x:1" }] },
                }),
            )
            .unwrap();
        cluster
            .standin()
            .set_pod_ready("shop", &name, true)
            .unwrap();
    }
    cluster
        .standin()
        .set_deployment_ready("shop", "api")
        .unwrap();
    cluster
        .standin()
        .set_deployment_ready("shop", "web")
        .unwrap();

    let ps = ok(&cluster.paracloud(dir.path(), &["--kubernetes", "ps"]));
    for line in ["api-1", "api-2", "web-1"] {
        assert!(
            ps.lines().any(|l| l.starts_with(line)
                && l.contains("yes")
                && l.contains("Running")
                && l.contains("node-1")),
            "{ps}"
        );
    }
    cluster.eventually("the application Ready", |s| {
        s.object("paracloud.dev", "v1alpha1", "paracloudapps", "shop", "shop")
            .filter(|a| a["status"]["conditions"].to_string().contains("AllReady"))
    });
    let describe = ok(&cluster.paracloud(
        dir.path(),
        &["--kubernetes", "-a", "shop", "describe", "api"],
    ));
    assert!(describe.contains("pods:       2 ready of 2"), "{describe}");
    assert!(
        describe.contains("Ready") && describe.contains("AllReady"),
        "{describe}"
    );

    // scale: the resource's scale, carried out by the operator.
    let out = ok(&cluster.paracloud(dir.path(), &["--kubernetes", "scale", "api=4"]));
    assert!(out.contains("api: 4 pods"), "{out}");
    cluster.eventually("api at 4 replicas", |s| {
        s.object("apps", "v1", "deployments", "shop", "api")
            .filter(|d| d["spec"]["replicas"] == 4)
    });
    // logs: each pod's last lines, after its name, as the local logs print them.
    cluster.standin().set_pod_log(
        "shop",
        "api-1",
        "api",
        "starting\nlistening on 8000\nGET /\n",
    );
    cluster
        .standin()
        .set_pod_log("shop", "api-2", "api", "starting\n");
    let logs = ok(&cluster.paracloud(dir.path(), &["--kubernetes", "logs", "api", "-n", "2"]));
    assert_eq!(
        logs,
        "api-1 | listening on 8000\napi-1 | GET /\napi-2 | starting\n"
    );
    let err = failed(&cluster.paracloud(dir.path(), &["--kubernetes", "logs", "nope"]));
    assert!(err.contains("shop has no pod of nope"), "{err}");
    let events = ok(&cluster.paracloud(dir.path(), &["--kubernetes", "events"]));
    assert!(events.contains("Applied"), "{events}");

    // Bad input changes nothing and says what to do.
    let err = failed(&cluster.paracloud(dir.path(), &["--kubernetes", "scale", "nope=2"]));
    assert!(
        err.contains("no service nope: its services are api, web"),
        "{err}"
    );
    let err = failed(&cluster.paracloud(dir.path(), &["--kubernetes", "scale", "api=100000"]));
    assert!(err.contains("at most"), "{err}");
    let err = failed(&cluster.paracloud(dir.path(), &["--kubernetes", "-a", "nothere", "ps"]));
    assert!(err.contains("no ParacloudApp nothere"), "{err}");
    let err = failed(&cluster.paracloud(dir.path(), &["--kubernetes", "restart", "api"]));
    assert!(
        err.contains(
            "with --kubernetes, deploy, ps, logs, scale, describe, events, migrate, capsule ls and capsule run do"
        ),
        "{err}"
    );
    let err = failed(&cluster.paracloud(dir.path(), &["--kubernetes", "migrate", "api.1"]));
    assert!(
        err.contains("no pod api.1 in namespace shop: `paracloud --kubernetes ps` lists the application's pods"),
        "{err}"
    );
    let err = failed(&cluster.paracloud(dir.path(), &["deploy"]));
    assert!(err.contains("pass --kubernetes"), "{err}");
    let err =
        failed(&cluster.paracloud(dir.path(), &["--kubernetes", "--context", "missing", "ps"]));
    assert!(
        err.contains("kubeconfig") && err.contains("missing"),
        "{err}"
    );
    let app = cluster
        .standin()
        .object("paracloud.dev", "v1alpha1", "paracloudapps", "shop", "shop")
        .unwrap();
    assert_eq!(app["spec"]["scale"], json!({ "api": { "replicas": 4 } }));
}
