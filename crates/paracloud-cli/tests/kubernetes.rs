//! The application on Kubernetes, as a user meets it without a cluster: `paracloud k8s render`
//! prints objects that the official schemas of Kubernetes 1.31 to 1.35 accept (strictly: no
//! unknown field), for the shop, the Compose examples and a manifest using every key; the
//! custom resource's definition is valid, and sample resources validate against its own schema;
//! the same input gives the same bytes; and what has no Kubernetes form is refused with where it
//! is and what to do.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

fn paracloud(args: &[&str]) -> Output {
    std::process::Command::new(bin_dir().join("paracloud"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "paracloud failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Runs the validator on a List of objects (and a CRD file, for custom resources); returns its
/// report, or panics with it when an object is refused.
fn validate(dir: &Path, name: &str, list: &str, crd: Option<&Path>) -> String {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, list).unwrap();
    let mut cmd = std::process::Command::new(python_tool("python"));
    cmd.arg(workspace().join("crates/paracloud-cli/tests/kubernetes/validate.py"))
        .arg(&file);
    if let Some(crd) = crd {
        cmd.arg("--crd").arg(crd);
    }
    let out = cmd.output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name}: Kubernetes refuses what was rendered:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

fn kinds(list: &str) -> Vec<String> {
    let list: serde_json::Value = serde_json::from_str(list).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{} {}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// The shop example's manifest in `dir`, pointed at this build's binaries (the example's own
/// path, the release build, need not exist where the tests run).
fn shop(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(workspace().join("examples/shop/paracloud.toml")).unwrap();
    let text = text.replace(
        "\"../../target/release\"",
        &format!("{:?}", bin_dir().display().to_string()),
    );
    assert!(
        text.contains(&bin_dir().display().to_string()),
        "the example manifest changed shape"
    );
    let file = dir.join("shop.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// The every-key manifest in a directory of its own, with the files it binds.
fn every_key(dir: &Path) -> PathBuf {
    let project = dir.join("everykey");
    std::fs::create_dir_all(project.join("conf")).unwrap();
    std::fs::write(project.join("conf/site.conf"), "server { listen 8080; }\n").unwrap();
    std::fs::write(project.join("secret.txt"), "hunter2\n").unwrap();
    let file = project.join("paracloud.toml");
    std::fs::copy(
        workspace().join("crates/paracloud-cli/tests/kubernetes/every_key.toml"),
        &file,
    )
    .unwrap();
    file
}

#[test]
fn the_shop_renders_to_objects_that_kubernetes_131_to_135_accept() {
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path());
    let list = stdout(&paracloud(&[
        "k8s",
        "render",
        "-f",
        shop.to_str().unwrap(),
        "--registry",
        "registry.example/team",
        "-o",
        "json",
    ]));
    let report = validate(dir.path(), "shop", &list, None);
    assert!(report.contains(" 0 errors"), "{report}");
    let kinds = kinds(&list);
    for expected in [
        "Namespace shop",
        "StatefulSet kv",
        "Service kv-pods",
        "Deployment api",
        "Deployment web",
        "Service web",
        "Service web-public",
        "PodDisruptionBudget api",
        "NetworkPolicy kv",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "no {expected} in {kinds:?}"
        );
    }

    // The micro-image shop names images of the store, which pass through as they are.
    let micro = workspace().join("examples/shop/paracloud.micro.toml");
    let list = stdout(&paracloud(&[
        "k8s",
        "render",
        "-f",
        micro.to_str().unwrap(),
        "-n",
        "team-a",
        "--no-namespace",
        "-o",
        "json",
    ]));
    validate(dir.path(), "micro", &list, None);
    assert!(!list.contains("\"kind\": \"Namespace\""), "{list}");
    assert!(list.contains("\"namespace\": \"team-a\""));
}

#[test]
fn the_compose_examples_render_to_objects_that_kubernetes_131_to_135_accept() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = workspace().join("crates/paracloud-compose/tests/corpus");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path().join("compose.yaml"))
        .filter(|p| p.is_file())
        .collect();
    examples.sort();
    assert!(examples.len() >= 6, "{examples:?}");
    for compose in &examples {
        let name = compose
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let list = stdout(&paracloud(&[
            "k8s",
            "render",
            "-f",
            compose.to_str().unwrap(),
            "--registry",
            "registry.example",
            "-o",
            "json",
        ]));
        validate(dir.path(), name, &list, None);
    }
}

#[test]
fn a_manifest_with_every_key_renders_to_objects_that_kubernetes_131_to_135_accept() {
    let dir = tempfile::tempdir().unwrap();
    let file = every_key(dir.path());
    let out = paracloud(&["k8s", "render", "-f", file.to_str().unwrap(), "-o", "json"]);
    let list = stdout(&out);
    validate(dir.path(), "every-key", &list, None);
    let kinds = kinds(&list);
    for expected in [
        "StatefulSet db",
        "Secret db-file-2",
        "ConfigMap web-file-0",
        "ConfigMap api-env",
        "Deployment api-canary",
        "Service backend",
        "Job migrate",
        "Job once",
        "NetworkPolicy db",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "no {expected} in {kinds:?}"
        );
    }
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let item = |kind: &str, name: &str| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .cloned()
            .unwrap()
    };
    // The secret's bytes travel base64-encoded in a Secret, not in a ConfigMap.
    assert_eq!(
        item("Secret", "db-file-2")["data"]["db-password"],
        "aHVudGVyMgo="
    );
    // web is on `front` only: its pods may call api (on `front` too), not db (on `back`).
    let web = item("NetworkPolicy", "web");
    let egress = web["spec"]["egress"].to_string();
    assert!(
        egress.contains("\"paracloud.dev/service\":\"api\""),
        "{egress}"
    );
    assert!(
        !egress.contains("\"paracloud.dev/service\":\"db\""),
        "{egress}"
    );
    // api's canary is reached through api's Service: its pods carry the service label of api.
    let canary = item("Deployment", "api-canary");
    assert_eq!(
        canary["spec"]["template"]["metadata"]["labels"]["paracloud.dev/service"],
        "api"
    );
    // The sandbox carries over: the root read-only, capabilities dropped but the one kept, the
    // CPU changed in place.
    let api = item("Deployment", "api");
    let container = &api["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["add"][0],
        "NET_BIND_SERVICE"
    );
    assert_eq!(container["resizePolicy"][0]["restartPolicy"], "NotRequired");
    assert!(container["livenessProbe"].is_object() && container["readinessProbe"].is_object());
    // A check that does not restart is a readiness probe alone.
    let web = &item("Deployment", "web")["spec"]["template"]["spec"]["containers"][0];
    assert!(web["readinessProbe"]["tcpSocket"].is_object(), "{web}");
    assert!(web["livenessProbe"].is_null(), "{web}");
    // What has no place on Kubernetes is said, on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("left out: services.db.ulimits"), "{stderr}");
}

#[test]
fn with_the_data_plane_the_shop_and_every_key_render_to_objects_that_kubernetes_131_to_135_accept()
{
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path());
    let list = stdout(&paracloud(&[
        "k8s",
        "render",
        "-f",
        shop.to_str().unwrap(),
        "--registry",
        "registry.example/team",
        "--dataplane-image",
        "registry.example/paracloud:1",
        "-o",
        "json",
    ]));
    let report = validate(dir.path(), "shop-dataplane", &list, None);
    assert!(report.contains(" 0 errors"), "{report}");
    let kinds = kinds(&list);
    for expected in [
        "Deployment shop-dataplane",
        "PodDisruptionBudget shop-dataplane",
        "ServiceAccount shop-dataplane",
        "Role shop-dataplane",
        "RoleBinding shop-dataplane",
        "ConfigMap shop-dataplane",
        "NetworkPolicy shop-dataplane",
        "Service shop-dataplane-stats",
        "Service api-pods",
        "Service kv-pods",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "no {expected} in {kinds:?}"
        );
    }

    let file = every_key(dir.path());
    let list = stdout(&paracloud(&[
        "k8s",
        "render",
        "-f",
        file.to_str().unwrap(),
        "--dataplane-image",
        "registry.example/paracloud:1",
        "-o",
        "json",
    ]));
    validate(dir.path(), "every-key-dataplane", &list, None);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let item = |kind: &str, name: &str| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let routes: serde_json::Value = serde_json::from_str(
        item("ConfigMap", "everykey-dataplane")["data"]["routes.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let listen = |service: &str| -> Vec<serde_json::Value> {
        routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["service"] == service)
            .map(|r| r["listen"].clone())
            .collect()
    };
    // api's Service leads to the data plane's listener; the canary rides behind it.
    let api = item("Service", "api");
    assert_eq!(
        api["spec"]["selector"]["paracloud.dev/component"],
        "dataplane"
    );
    assert_eq!(api["spec"]["ports"][0]["targetPort"], listen("api")[0]);
    assert!(routes.to_string().contains("api-canary-pods"), "{routes}");
    // The networks still hold through the data plane: web (on `front`) reaches api's
    // listeners, not db's (on `back`).
    let web = item("NetworkPolicy", "web");
    let egress = web["spec"]["egress"].to_string();
    for port in listen("api") {
        assert!(egress.contains(&format!("\"port\":{port}")), "{egress}");
    }
    for port in listen("db") {
        assert!(!egress.contains(&format!("\"port\":{port}")), "{egress}");
    }
}

#[test]
fn the_custom_resource_definition_is_valid_and_judges_custom_resources_by_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let crd = stdout(&paracloud(&["k8s", "crd", "-o", "json"]));
    validate(dir.path(), "crd", &crd, None);
    let crd_file = dir.path().join("crd.json");
    let crd_value: serde_json::Value = serde_json::from_str(&crd).unwrap();
    let definition = &crd_value["items"][0];
    assert_eq!(definition["spec"]["names"]["plural"], "paracloudapps");
    assert_eq!(
        definition["spec"]["versions"][0]["subresources"]["status"],
        serde_json::json!({})
    );

    let app = |spec: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [{
                "apiVersion": "paracloud.dev/v1alpha1",
                "kind": "ParacloudApp",
                "metadata": { "name": "shop", "namespace": "shop" },
                "spec": spec,
            }],
        })
        .to_string()
    };
    let good = app(serde_json::json!({
        "manifest": std::fs::read_to_string(workspace().join("examples/shop/paracloud.micro.toml")).unwrap(),
        "registry": "registry.example/team",
        "scale": { "api": { "replicas": 4, "cpu": 1.5 } },
    }));
    let report = validate(dir.path(), "good-app", &good, Some(&crd_file));
    assert!(report.contains("1 checks, 0 errors"), "{report}");

    // The schema refuses what it should: a spec with no manifest, a negative replica count, an
    // unknown field's type.
    for (name, spec) in [
        ("no-manifest", serde_json::json!({ "registry": "r" })),
        (
            "negative",
            serde_json::json!({ "manifest": "app = \"a\"", "scale": { "api": { "replicas": -1 } } }),
        ),
        ("wrong-type", serde_json::json!({ "manifest": 7 })),
    ] {
        let file = dir.path().join(format!("{name}.json"));
        std::fs::write(&file, app(spec)).unwrap();
        let out = std::process::Command::new(python_tool("python"))
            .arg(workspace().join("crates/paracloud-cli/tests/kubernetes/validate.py"))
            .arg(&file)
            .arg("--crd")
            .arg(&crd_file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} was accepted");
    }
}

#[test]
fn the_same_manifest_renders_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let file = every_key(dir.path());
    let first = stdout(&paracloud(&["k8s", "render", "-f", file.to_str().unwrap()]));
    let second = stdout(&paracloud(&["k8s", "render", "-f", file.to_str().unwrap()]));
    assert_eq!(first, second);
    assert!(
        first.starts_with("---\napiVersion: v1\nkind: Namespace\n"),
        "{first}"
    );
}

#[test]
fn what_has_no_kubernetes_form_is_refused_with_where_it_is_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    // The shop runs programs of this machine: without a registry to push them to, there is
    // nothing a cluster could pull.
    let shop = shop(dir.path());
    let out = paracloud(&["k8s", "render", "-f", shop.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "printed objects anyway");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "services.api.image: the image is made on this machine",
        "paracloud image build --from-binary PROGRAM -t shop-api:latest",
        "--registry REGISTRY",
        "services.kv.image",
        "services.web.image",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }

    // A bind mount whose file went missing after the manifest was checked, and a service whose
    // Kubernetes name meets another's.
    let stderr = render_refused(
        dir.path(),
        "clash",
        "app = \"clash\"\n\
         [services.api]\nimage = \"nginx:1\"\nports = [80]\n\
         [services.api.revisions.canary]\nweight = 5\n\
         [services.api-canary]\nimage = \"nginx:1\"\n",
    );
    assert!(
        stderr.contains("would be named `api-canary`")
            && stderr.contains("rename one of the two services"),
        "{stderr}"
    );

    // A capsule whose image is a directory of this machine: no node could pull it. And its
    // image and command are the application's, so it may add no more than a Baseline pod.
    std::fs::create_dir_all(dir.path().join("tools/rootfs")).unwrap();
    let stderr = render_refused(
        dir.path(),
        "tools",
        "app = \"tools\"\n\
         [services.api]\nimage = \"nginx:1\"\nports = [80]\n\
         [capsules.report]\nimage = \"dir:rootfs\"\ncommand = [\"/report\"]\n\
         capabilities = [\"SYS_PTRACE\", \"CHOWN\"]\n",
    );
    assert!(
        stderr.contains("capsules.report.image: an OCI layout or a directory of this machine cannot reach the cluster's nodes")
            && stderr.contains("push the capsule's image to a registry")
            && stderr.contains("capsules.report.capabilities: SYS_PTRACE beyond what the Baseline Pod Security Standard lets a pod add"),
        "{stderr}"
    );
}

/// `k8s render` of the manifest `text`, written in `DIR/NAME`, fails and prints nothing; what it
/// said.
fn render_refused(dir: &Path, name: &str, text: &str) -> String {
    let project = dir.join(name);
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("paracloud.toml"), text).unwrap();
    let out = paracloud(&[
        "k8s",
        "render",
        "-f",
        project.join("paracloud.toml").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "printed objects anyway");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_operator_installs_from_valid_objects_with_no_wildcard_and_no_secret_access() {
    let dir = tempfile::tempdir().unwrap();
    let list = stdout(&paracloud(&[
        "k8s",
        "install",
        "--image",
        "registry.example/paracloud:0.1",
        "-o",
        "json",
    ]));
    validate(dir.path(), "install", &list, None);
    let kinds = kinds(&list);
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition paracloudapps.paracloud.dev",
            "Namespace paracloud-system",
            "ServiceAccount paracloud-node-agent",
            "ServiceAccount paracloud-operator",
            "ClusterRole paracloud-node-agent",
            "ClusterRole paracloud-operator",
            "Role paracloud-operator",
            "ClusterRoleBinding paracloud-node-agent",
            "ClusterRoleBinding paracloud-operator",
            "RoleBinding paracloud-operator",
            "Deployment paracloud-operator",
            "DaemonSet paracloud-node-agent",
        ]
    );
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let item = |kind: &str, name: &str| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap()
            .clone()
    };
    let rules = item("ClusterRole", "paracloud-operator")["rules"].to_string();
    assert!(!rules.contains('*'), "{rules}");
    assert!(!rules.contains("secrets"), "{rules}");
    assert!(
        !rules.contains("leases"),
        "leases belong to the Role of its namespace: {rules}"
    );
    assert!(item("Role", "paracloud-operator")["rules"]
        .to_string()
        .contains("leases"));
    let deployment = item("Deployment", "paracloud-operator");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    // With the node agent installed, the operator gives pods their PaCI socket.
    assert!(pod["containers"][0]["args"].to_string().contains("--paci"));
    let daemonset = item("DaemonSet", "paracloud-node-agent");
    let agent = &daemonset["spec"]["template"]["spec"];
    assert_eq!(agent["hostPID"], true);
    assert!(agent["containers"][0]["args"]
        .to_string()
        .contains("/run/containerd/runc/k8s.io"));
    // The agent reads pods and their owners and writes the scale a pod asks for; nothing else.
    assert_eq!(agent["serviceAccountName"], "paracloud-node-agent");
    let rules = item("ClusterRole", "paracloud-node-agent")["rules"].to_string();
    assert!(
        !rules.contains('*') && !rules.contains("secrets") && !rules.contains("watch"),
        "{rules}"
    );
    assert!(
        rules.contains("paracloudapps") && rules.contains("patch"),
        "{rules}"
    );

    // Without it, nothing privileged is installed.
    let list = stdout(&paracloud(&[
        "k8s",
        "install",
        "--image",
        "registry.example/paracloud:0.1",
        "--no-node-agent",
        "-o",
        "json",
    ]));
    assert!(
        !list.contains("DaemonSet")
            && !list.contains("privileged")
            && !list.contains("--paci")
            && !list.contains("paracloud-node-agent"),
        "{list}"
    );
}

#[test]
fn with_the_node_agent_pods_get_their_paci_directory_and_name_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let micro = workspace().join("examples/shop/paracloud.micro.toml");
    let list = stdout(&paracloud(&[
        "k8s",
        "render",
        "--paci",
        "-f",
        micro.to_str().unwrap(),
        "-o",
        "json",
    ]));
    validate(dir.path(), "paci", &list, None);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let api = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "api")
        .unwrap();
    let pod = &api["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "paci")
        .unwrap();
    assert_eq!(volume["hostPath"]["path"], "/var/lib/paracloud-agent/paci");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "paci")
        .unwrap();
    assert_eq!(mount["mountPath"], "/run/paracloud");
    assert_eq!(mount["subPathExpr"], "$(PARACLOUD_POD_UID)");
    assert_eq!(mount["readOnly"], true);
    let env = pod["containers"][0]["env"].to_string();
    assert!(
        env.contains("PARACLOUD_SERVICE") && env.contains("metadata.uid"),
        "{env}"
    );
    // The drain window: a preStop sleep of the grace period, at most 5 s, during which the
    // node's agent sends `drain`; the stop signal then still gets the whole grace period (10 s).
    assert_eq!(
        pod["containers"][0]["lifecycle"],
        serde_json::json!({ "preStop": { "sleep": { "seconds": 5 } } })
    );
    assert_eq!(pod["terminationGracePeriodSeconds"], 15);
}
