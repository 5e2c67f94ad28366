//! A manifest as the Kubernetes objects that run it: what `paracloud k8s render` prints and what
//! the operator applies.
//!
//! Each service becomes a workload (a Deployment; a StatefulSet with a claim per named volume; a
//! Job for a service that is not restarted), a Service for its ports (and one of type
//! LoadBalancer for its published ports), a ConfigMap of its environment, ConfigMaps and Secrets
//! of the files it mounts, a PodDisruptionBudget when it runs more than one pod, and a
//! NetworkPolicy that lets in and out only what the application's networks allow, as the
//! bridges do on one machine. Output depends only on the manifest and the options.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::api::policy::v1 as policy;
use k8s_openapi::api::rbac::v1 as rbac;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use paracloud_manifest::{
    HealthCheck, Image, Manifest, Probe, Protocol, RestartCondition, Service, VolumeMount,
};

use crate::dataplane::{
    dataplane_name, endpoints_service, routes, DataplaneOptions, Routes, COMPONENT,
    COMPONENT_LABEL, ROUTES_DIR, ROUTES_KEY, STATS_PORT,
};
use crate::names::{
    app_labels, bytes_quantity, cpu_quantity, object_name, seconds, sha256_hex, APP_LABEL,
    CONFIG_ANNOTATION, MANIFEST_ANNOTATION, REVISION_LABEL, SERVICE_LABEL, SPEC_ANNOTATION,
    WORKLOAD_LABEL,
};
use crate::object::Object;

/// How to render, beside the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// The namespace of every object; `None`: the application's name.
    pub namespace: Option<String>,
    /// Where the images made on this machine (`image = "host"`, a directory, a layout or a
    /// build) are pushed, such as `registry.example.com/team`: a service `web` of the application
    /// `shop` runs `REGISTRY/shop-web:latest`. Required when a service uses such an image.
    pub registry: Option<String>,
    /// Whether to print the Namespace object too (kept off when the namespace is an existing one
    /// the user may not create).
    pub namespace_object: bool,
    /// Whether to print the ConfigMaps and Secrets of the files services mount; the operator
    /// leaves them to `paracloud deploy --kubernetes`, which reads them on the user's machine.
    pub file_objects: bool,
    /// Whether workloads leave `replicas` out, for the operator's autoscaler to set through the
    /// scale subresource (an applied `replicas` would take the count back at every apply).
    pub replicas_by_scale: bool,
    /// Whether pods get their PaCI socket from Paracloud's node agent: its directory for the pod
    /// (a hostPath, the pod's uid as `subPathExpr`) at `/run/paracloud`, read-only, the pod's
    /// application and service in its environment, and a drain window before the stop signal
    /// ([`DRAIN_WINDOW_SECONDS`]).
    pub paci: bool,
    /// Whether Paracloud's data plane runs beside the application (see the `dataplane` module):
    /// its Services then lead to the data plane's listeners, which route to the pods.
    pub dataplane: Option<DataplaneOptions>,
}

/// Where the node agent keeps each pod's PaCI directory on the node (`k8s install`'s agent).
pub const PACI_HOST_DIR: &str = "/var/lib/paracloud-agent/paci";

/// The longest a PaCI pod's drain window lasts: a `preStop` sleep of its stop grace period, at
/// most this, during which its node's agent sends it `drain` (the kubelet asks no one before
/// it stops a pod); its stop signal comes after, with the whole grace period still its own.
pub const DRAIN_WINDOW_SECONDS: i64 = 5;

/// What a bind mount's host path holds, asked of the caller (rendering does no I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostFile {
    File(Vec<u8>),
    Directory,
    Missing,
}

/// The question rendering asks about the host paths services bind.
pub trait HostFiles {
    fn read(&self, path: &Path) -> HostFile;
}

/// Every host file absent: for callers that render without the user's files (the operator).
pub struct NoHostFiles;

impl HostFiles for NoHostFiles {
    fn read(&self, _path: &Path) -> HostFile {
        HostFile::Missing
    }
}

/// One thing of the manifest that has no Kubernetes form, with where it is and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the manifest, as a key path: `services.web.volumes[0]`.
    pub place: String,
    pub message: String,
    pub hint: String,
}

/// The objects of an application, and what of its manifest they do not carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// In the order `kubectl apply` needs.
    pub objects: Vec<Object>,
    /// Keys with no Kubernetes form that rendering left out, each saying what happens instead.
    pub left_out: Vec<Problem>,
}

/// Why a manifest could not be rendered: every problem found, in manifest order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.problems.iter().map(|p| format!("{}: {}\n  hint: {}", p.place, p.message, p.hint)).collect::<Vec<_>>().join("\n"))]
pub struct RenderError {
    pub problems: Vec<Problem>,
}

/// A ConfigMap holds at most this many bytes (the API server's limit on an object is 1 MiB).
const MAX_FILE_BYTES: usize = 1 << 20;

/// The DNS service every pod may reach, so that services find each other by name.
const DNS_PORT: i32 = 53;
const DNS_PORT_U16: u16 = 53;

/// Renders every object of the application.
pub fn render(
    manifest: &Manifest,
    options: &RenderOptions,
    files: &dyn HostFiles,
) -> Result<Rendered, RenderError> {
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| manifest.app.clone());
    let manifest_sha = sha256_hex(
        serde_json::to_string(manifest)
            .expect("a manifest serializes")
            .as_bytes(),
    );
    let mut renderer = Renderer {
        manifest,
        options,
        routes: options.dataplane.as_ref().map(|_| routes(manifest)),
        files,
        namespace,
        manifest_sha,
        problems: Vec::new(),
        left_out: Vec::new(),
        objects: Vec::new(),
    };
    renderer.check_names();
    if options.namespace_object {
        let ns = core::Namespace {
            metadata: ObjectMeta {
                name: Some(renderer.namespace.clone()),
                labels: Some(app_labels(&manifest.app)),
                ..Default::default()
            },
            ..Default::default()
        };
        renderer.objects.push(Object::of(&ns));
    }
    for (name, service) in &manifest.services {
        if let Some(catalogued) = &service.catalog {
            // Said once, at the catalogue service's own table.
            if service.is_catalog_primary() {
                renderer.problem(
                    format!("services.{name}.catalog"),
                    format!(
                        "the catalogue's {} runs on one machine's daemon: its image is made of that machine's programs, and its primary keeps its data on that machine's volume",
                        paracloud_manifest::catalog::entry_of(catalogued.kind).name
                    ),
                    "on a cluster, run the database with its own operator (such as CloudNativePG for PostgreSQL) and give the services its address",
                );
            }
            if catalogued.kind == paracloud_manifest::CatalogKind::Php {
                renderer.problem(
                    format!("services.{name}.catalog"),
                    "a PHP web tier serves a directory of the daemon's machine, with an image made of that machine's nginx and php-fpm",
                    "on a cluster, build an image that holds the application (FROM php:8.2-fpm with nginx, or two containers in a pod) and run it as a service",
                );
            } else if matches!(catalogued.role, paracloud_manifest::CatalogRole::Site) {
                renderer.problem(
                    format!("services.{name}.catalog"),
                    "a static site serves a directory of the daemon's machine, with an image made of that machine's nginx",
                    "on a cluster, build an image that holds the files (FROM nginx, COPY the directory to /usr/share/nginx/html) and run it as a service",
                );
            }
            if service.task_farm().is_some() {
                renderer.problem(
                    format!("services.{name}.catalog"),
                    "a task farm's workers are started and stopped by the daemon for each batch, which a cluster does not run",
                    "on a cluster, run the tasks as a Kubernetes Job with `parallelism` and `completions`",
                );
            }
            continue;
        }
        renderer.service(name, service);
    }
    if let Some(dataplane) = &options.dataplane {
        renderer.dataplane(dataplane);
    }
    if manifest.autoscale.is_some() {
        renderer.leave_out(
            "autoscale".into(),
            "the autoscaler runs in Paracloud's operator",
            "deploy with `paracloud deploy --kubernetes` onto a cluster running the operator; rendered objects alone keep their replicas",
        );
    }
    for (name, capsule) in &manifest.capsules {
        let beyond = beyond_baseline(&capsule.capabilities);
        if !beyond.is_empty() {
            renderer.problem(
                format!("capsules.{name}.capabilities"),
                format!(
                    "{} beyond what the Baseline Pod Security Standard lets a pod add: the node agent runs the application's own capsules with no more than a pod of it could have",
                    beyond.join(", ")
                ),
                format!("remove them, or use a built-in capsule (`paracloud capsule ls`): {}", BASELINE_CAPABILITIES.join(", ")),
            );
        }
        // A node's agent pulls the capsule's image when it first runs it there.
        if !matches!(capsule.image, paracloud_manifest::Image::Stored { .. }) {
            renderer.problem(
                format!("capsules.{name}.image"),
                "an OCI layout or a directory of this machine cannot reach the cluster's nodes",
                format!("push the capsule's image to a registry (`paracloud image push IMAGE REGISTRY/NAME:TAG`) and write that name in [capsules.{name}]"),
            );
        }
    }
    if !manifest.schedules.is_empty() {
        renderer.leave_out(
            "schedules".into(),
            "scheduled capsules attach through Paracloud's node agent",
            "they run once the operator and the node agent are installed in the cluster",
        );
    }
    if renderer.problems.is_empty() {
        let mut objects = renderer.objects;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Rendered {
            objects,
            left_out: renderer.left_out,
        })
    } else {
        Err(RenderError {
            problems: renderer.problems,
        })
    }
}

struct Renderer<'a> {
    manifest: &'a Manifest,
    options: &'a RenderOptions,
    /// The data plane's routes, when it runs beside the application.
    routes: Option<Routes>,
    files: &'a dyn HostFiles,
    namespace: String,
    manifest_sha: String,
    problems: Vec<Problem>,
    left_out: Vec<Problem>,
    objects: Vec<Object>,
}

/// What a service's pods mount, and the objects those mounts need.
#[derive(Default)]
struct Mounts {
    volumes: Vec<core::Volume>,
    mounts: Vec<core::VolumeMount>,
    claims: Vec<core::PersistentVolumeClaim>,
    /// The hash input of the files the pods read from ConfigMaps and Secrets.
    config: Vec<u8>,
}

/// The capabilities the Baseline Pod Security Standard lets a container add: the most a node
/// agent gives an application's own capsule, whose image and command are the application's.
pub const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The capabilities of `capabilities` (`CAP_` or not) that are not Baseline's.
pub fn beyond_baseline(capabilities: &[String]) -> Vec<String> {
    capabilities
        .iter()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .filter(|c| !BASELINE_CAPABILITIES.contains(&c.as_str()))
        .collect()
}

impl Renderer<'_> {
    fn problem(&mut self, place: String, message: impl Into<String>, hint: impl Into<String>) {
        self.problems.push(Problem {
            place,
            message: message.into(),
            hint: hint.into(),
        });
    }

    fn leave_out(&mut self, place: String, message: impl Into<String>, hint: impl Into<String>) {
        self.left_out.push(Problem {
            place,
            message: message.into(),
            hint: hint.into(),
        });
    }

    /// The keys a cluster has no place for, said once each.
    fn left_out(&mut self, name: &str, service: &Service) {
        if service.revision_of.is_some() {
            // Its service's notes say it.
            return;
        }
        let place = |key: &str| format!("services.{name}.{key}");
        if service.resources.pids.is_some() {
            self.leave_out(
                place("resources.pids"),
                "a container has no process limit of its own on Kubernetes",
                "the node's kubelet limits processes per pod (podPidsLimit)",
            );
        }
        if !service.sandbox.ulimits.is_empty() {
            self.leave_out(
                place("ulimits"),
                "Kubernetes has no per-container ulimits",
                "the container runtime's defaults apply; set them in the image's entrypoint if needed",
            );
        }
        if service.stop_signal != "SIGTERM" {
            self.leave_out(
                place("stop_signal"),
                format!(
                    "{} cannot be set per container before Kubernetes' stopSignal (alpha in 1.33)",
                    service.stop_signal
                ),
                "the image's STOPSIGNAL applies (SIGTERM when it has none): set it in the image",
            );
        }
        if service.user.as_deref().is_some_and(|u| {
            u.split(':')
                .next()
                .is_some_and(|uid| uid.parse::<i64>().is_err())
        }) {
            self.leave_out(
                place("user"),
                "a user name cannot be given to Kubernetes, only a uid",
                "the image's USER applies; write the uid (\"1000:1000\") to set it",
            );
        }
        if !service.depends_on.is_empty() {
            self.leave_out(
                place("depends_on"),
                "Kubernetes starts every workload at once",
                "readiness probes keep traffic away from pods until they are ready",
            );
        }
        if service.scale_to_zero.is_some() {
            if self.routes.is_some() {
                self.leave_out(
                    place("scale_to_zero"),
                    "the operator scales the service to zero and back, following the data plane (which holds requests meanwhile)",
                    "deploy with `paracloud deploy --kubernetes` onto a cluster running the operator; rendered objects alone keep their replicas",
                );
            } else {
                self.leave_out(
                    place("scale_to_zero"),
                    "scaling to zero needs Paracloud's data plane in the cluster, which rendering alone does not deploy",
                    "the service keeps its replicas",
                );
            }
        }
    }

    fn meta(&self, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        let mut all = app_labels(&self.manifest.app);
        all.extend(labels);
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(all),
            annotations: Some(BTreeMap::from([(
                MANIFEST_ANNOTATION.to_owned(),
                self.manifest_sha.clone(),
            )])),
            ..Default::default()
        }
    }

    /// Two services whose Kubernetes names meet (`api@canary` and `api-canary`) cannot both be
    /// rendered.
    fn check_names(&mut self) {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        if self.routes.is_some() {
            let dataplane = dataplane_name(&self.manifest.app);
            seen.insert(dataplane.clone(), "the data plane".into());
            seen.insert(format!("{dataplane}-stats"), "the data plane".into());
        }
        for name in self.manifest.services.keys() {
            let mut objects = vec![object_name(name), format!("{}-public", object_name(name))];
            if self.routes.is_some() {
                objects.push(endpoints_service(name));
            }
            for object in objects {
                if let Some(other) = seen.insert(object.clone(), format!("service `{name}`")) {
                    self.problem(
                        format!("services.{name}"),
                        format!("its Kubernetes objects would be named `{object}`, as those of {other} are"),
                        "rename one of the two services",
                    );
                }
            }
        }
    }

    fn service(&mut self, name: &str, service: &Service) {
        let object = object_name(name);
        let base = service
            .revision_of
            .as_ref()
            .map(|r| r.service.clone())
            .unwrap_or_else(|| name.to_owned());
        let mut pod_labels = BTreeMap::from([
            (SERVICE_LABEL.to_owned(), object_name(&base)),
            (WORKLOAD_LABEL.to_owned(), object.clone()),
            ("app.kubernetes.io/name".to_owned(), object_name(&base)),
        ]);
        if let Some(revision) = &service.revision_of {
            pod_labels.insert(REVISION_LABEL.to_owned(), revision.revision.clone());
        }
        let spec_sha = sha256_hex(
            serde_json::to_string(service)
                .expect("a service serializes")
                .as_bytes(),
        );

        self.left_out(name, service);
        let Some(image) = self.image(name, service) else {
            return;
        };
        let mut mounts = self.mounts(name, service);
        if self.options.paci {
            mounts.volumes.push(core::Volume {
                name: "paci".into(),
                host_path: Some(core::HostPathVolumeSource {
                    path: PACI_HOST_DIR.into(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..Default::default()
            });
            mounts.mounts.push(core::VolumeMount {
                name: "paci".into(),
                mount_path: "/run/paracloud".into(),
                sub_path_expr: Some("$(PARACLOUD_POD_UID)".into()),
                read_only: Some(true),
                ..Default::default()
            });
        }
        let env_from = if service.env.is_empty() {
            None
        } else {
            let config_map = core::ConfigMap {
                metadata: self.meta(&format!("{object}-env"), pod_labels.clone()),
                data: Some(service.env.clone()),
                ..Default::default()
            };
            mounts
                .config
                .extend(serde_json::to_vec(&service.env).expect("strings serialize"));
            self.objects.push(Object::of(&config_map));
            Some(vec![core::EnvFromSource {
                config_map_ref: Some(core::ConfigMapEnvSource {
                    name: format!("{object}-env"),
                    optional: Some(false),
                }),
                ..Default::default()
            }])
        };
        let (command, args) = match (&service.image, service.entrypoint.is_empty()) {
            // A host image has no entrypoint of its own: the command is the whole argv.
            (Image::Host { .. } | Image::Dir { .. }, _) => (non_empty(service.argv()), None),
            (_, true) => (None, non_empty(service.command.clone())),
            (_, false) => (
                non_empty(service.entrypoint.clone()),
                non_empty(service.command.clone()),
            ),
        };
        let grace = i64::from(seconds(service.stop_grace_period, 0));
        // A PaCI pod's drain window, before its stop signal (see DRAIN_WINDOW_SECONDS).
        let drain = self
            .options
            .paci
            .then(|| grace.clamp(1, DRAIN_WINDOW_SECONDS));
        let container = core::Container {
            name: object.clone(),
            image: Some(image),
            lifecycle: drain.map(|seconds| core::Lifecycle {
                pre_stop: Some(core::LifecycleHandler {
                    sleep: Some(core::SleepAction { seconds }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            command,
            args,
            env_from,
            env: self
                .options
                .paci
                .then(|| paci_env(&self.manifest.app, &object_name(&base))),
            working_dir: service.working_dir.clone(),
            ports: non_empty(
                service
                    .ports
                    .iter()
                    .map(|p| core::ContainerPort {
                        container_port: i32::from(p.port),
                        name: Some(port_name(p.port, p.protocol)),
                        protocol: Some(l4(p.protocol).to_owned()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            readiness_probe: service.health.as_ref().map(|h| probe(h, h.retries)),
            // A check that does not restart is a readiness check alone.
            liveness_probe: service
                .health
                .as_ref()
                .filter(|h| h.restart)
                .map(|h| probe(h, h.retries)),
            startup_probe: service
                .health
                .as_ref()
                .filter(|h| !h.start_period.is_zero())
                .map(|h| {
                    let interval = h.interval.as_millis().max(1000);
                    let tries = h.start_period.as_millis().div_ceil(interval) as u32;
                    probe(h, tries.saturating_add(h.retries))
                }),
            resources: Some(resources(service)),
            // The CPU changes in place, as the autoscaler asks (in-place pod resize).
            resize_policy: Some(vec![core::ContainerResizePolicy {
                resource_name: "cpu".into(),
                restart_policy: "NotRequired".into(),
            }]),
            security_context: Some(self.security_context(name, service)),
            volume_mounts: non_empty(std::mem::take(&mut mounts.mounts)),
            ..Default::default()
        };
        let user = self.user(service);
        let pod = core::PodSpec {
            containers: vec![container],
            volumes: non_empty(std::mem::take(&mut mounts.volumes)),
            hostname: service.hostname.clone(),
            // The pod's own init (the pause container, pid 1) reaps and passes signals on.
            share_process_namespace: service.sandbox.init.then_some(true),
            termination_grace_period_seconds: Some(grace + drain.unwrap_or(0)),
            restart_policy: Some(
                match service.restart.condition {
                    RestartCondition::Always => "Always",
                    RestartCondition::OnFailure => "OnFailure",
                    RestartCondition::No => "Never",
                }
                .into(),
            ),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(core::PodSecurityContext {
                run_as_user: user.0,
                run_as_group: user.1,
                seccomp_profile: Some(core::SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                sysctls: non_empty(
                    service
                        .sandbox
                        .sysctls
                        .iter()
                        .map(|(name, value)| core::Sysctl {
                            name: name.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut template_annotations = BTreeMap::from([(SPEC_ANNOTATION.to_owned(), spec_sha)]);
        if !mounts.config.is_empty() {
            template_annotations.insert(CONFIG_ANNOTATION.to_owned(), sha256_hex(&mounts.config));
        }
        let template = core::PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some({
                    let mut labels = app_labels(&self.manifest.app);
                    labels.extend(pod_labels.clone());
                    labels
                }),
                annotations: Some(template_annotations),
                ..Default::default()
            }),
            spec: Some(pod),
        };
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([
                (APP_LABEL.to_owned(), self.manifest.app.clone()),
                (WORKLOAD_LABEL.to_owned(), object.clone()),
            ])),
            ..Default::default()
        };
        let replicas = Some(i32::try_from(service.replicas).unwrap_or(i32::MAX));
        let workload_replicas = replicas.filter(|_| !self.options.replicas_by_scale);

        if service.restart.condition != RestartCondition::Always {
            // Run to completion: a Job, retried as the restart policy says.
            let job = batch::Job {
                metadata: self.meta(&object, pod_labels.clone()),
                spec: Some(batch::JobSpec {
                    backoff_limit: Some(match service.restart.condition {
                        RestartCondition::OnFailure => service
                            .restart
                            .max_retries
                            .map_or(6, |n| i32::try_from(n).unwrap_or(i32::MAX)),
                        _ => 0,
                    }),
                    completions: replicas,
                    parallelism: replicas,
                    template,
                    ..Default::default()
                }),
                ..Default::default()
            };
            self.objects.push(Object::of(&job));
            self.pods_service(name, &object, &pod_labels);
        } else if !mounts.claims.is_empty() {
            let headless = format!("{object}-pods");
            let ss = apps::StatefulSet {
                metadata: self.meta(&object, pod_labels.clone()),
                spec: Some(apps::StatefulSetSpec {
                    replicas: workload_replicas,
                    selector,
                    service_name: Some(headless.clone()),
                    template,
                    volume_claim_templates: Some(std::mem::take(&mut mounts.claims)),
                    pod_management_policy: Some("Parallel".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            self.objects.push(Object::of(&ss));
            // The StatefulSet's pods get their stable names from a headless Service.
            let svc = core::Service {
                metadata: self.meta(&headless, pod_labels.clone()),
                spec: Some(core::ServiceSpec {
                    cluster_ip: Some("None".into()),
                    selector: Some(BTreeMap::from([
                        (APP_LABEL.to_owned(), self.manifest.app.clone()),
                        (WORKLOAD_LABEL.to_owned(), object.clone()),
                    ])),
                    ports: non_empty(service_ports(service, false, None)),
                    publish_not_ready_addresses: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            };
            self.objects.push(Object::of(&svc));
        } else {
            let deployment = apps::Deployment {
                metadata: self.meta(&object, pod_labels.clone()),
                spec: Some(apps::DeploymentSpec {
                    replicas: workload_replicas,
                    selector,
                    template,
                    // Make before break, as on one machine.
                    strategy: Some(crate::names::make_before_break()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            self.objects.push(Object::of(&deployment));
            self.pods_service(name, &object, &pod_labels);
        }

        if service.revision_of.is_none() {
            self.services(&object, service);
        }
        if service.replicas >= 2 && service.restart.condition == RestartCondition::Always {
            let pdb = policy::PodDisruptionBudget {
                metadata: self.meta(&object, pod_labels.clone()),
                spec: Some(policy::PodDisruptionBudgetSpec {
                    max_unavailable: Some(IntOrString::Int(1)),
                    selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([
                            (APP_LABEL.to_owned(), self.manifest.app.clone()),
                            (WORKLOAD_LABEL.to_owned(), object.clone()),
                        ])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            self.objects.push(Object::of(&pdb));
        }
        self.network_policy(name, &object, service, pod_labels);
    }

    /// With the data plane, the headless Service whose EndpointSlices list the workload's pods
    /// (a StatefulSet has its own already): the data plane's backends for it.
    fn pods_service(&mut self, name: &str, object: &str, pod_labels: &BTreeMap<String, String>) {
        if self.routes.is_none() {
            return;
        }
        let base = self.manifest.services.get(name).map_or(name, |s| {
            s.revision_of.as_ref().map_or(name, |r| r.service.as_str())
        });
        let Some(ports) = self
            .manifest
            .services
            .get(base)
            .map(|s| service_ports(s, false, None))
            .filter(|p| !p.is_empty())
        else {
            return;
        };
        let svc = core::Service {
            metadata: self.meta(&endpoints_service(name), pod_labels.clone()),
            spec: Some(core::ServiceSpec {
                cluster_ip: Some("None".into()),
                selector: Some(BTreeMap::from([
                    (APP_LABEL.to_owned(), self.manifest.app.clone()),
                    (WORKLOAD_LABEL.to_owned(), object.to_owned()),
                ])),
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.objects.push(Object::of(&svc));
    }

    /// Paracloud's data plane beside the application: a Deployment of two pods running
    /// `paracloud cluster-dataplane` with the routes in a ConfigMap, allowed by its own
    /// ServiceAccount to list and watch the namespace's EndpointSlices and nothing else, a
    /// disruption budget, a Service for its stats, and a NetworkPolicy.
    fn dataplane(&mut self, options: &DataplaneOptions) {
        let Some(routes) = self.routes.clone() else {
            return;
        };
        let name = dataplane_name(&self.manifest.app);
        let labels = BTreeMap::from([(COMPONENT_LABEL.to_owned(), COMPONENT.to_owned())]);
        let selector = self.dataplane_selector();
        let routes_json = serde_json::to_string_pretty(&routes).expect("routes serialize");
        let config_map = core::ConfigMap {
            metadata: self.meta(&name, labels.clone()),
            data: Some(BTreeMap::from([(
                ROUTES_KEY.to_owned(),
                routes_json.clone(),
            )])),
            ..Default::default()
        };
        self.objects.push(Object::of(&config_map));
        self.objects.push(Object::of(&core::ServiceAccount {
            metadata: self.meta(&name, labels.clone()),
            ..Default::default()
        }));
        self.objects.push(Object::of(&rbac::Role {
            metadata: self.meta(&name, labels.clone()),
            rules: Some(crate::access::dataplane_rules()),
        }));
        self.objects.push(Object::of(&rbac::RoleBinding {
            metadata: self.meta(&name, labels.clone()),
            role_ref: rbac::RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: name.clone(),
            },
            subjects: Some(vec![rbac::Subject {
                kind: "ServiceAccount".into(),
                name: name.clone(),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            }]),
        }));
        let mut ports = vec![core::ContainerPort {
            container_port: i32::from(STATS_PORT),
            name: Some("stats".into()),
            protocol: Some("TCP".into()),
            ..Default::default()
        }];
        ports.extend(routes.routes.iter().map(|r| core::ContainerPort {
            container_port: i32::from(r.listen),
            protocol: Some(l4(r.protocol).to_owned()),
            ..Default::default()
        }));
        let container = core::Container {
            name: "dataplane".into(),
            image: Some(options.image.clone()),
            // The image's entrypoint is paracloud, as the operator's.
            args: Some(vec![
                "cluster-dataplane".into(),
                "--namespace".into(),
                self.namespace.clone(),
                "--app".into(),
                self.manifest.app.clone(),
                "--routes".into(),
                format!("{ROUTES_DIR}/{ROUTES_KEY}"),
                "--state-dir".into(),
                "/run/paracloud".into(),
                "--stats-listen".into(),
                format!("0.0.0.0:{STATS_PORT}"),
            ]),
            ports: Some(ports),
            readiness_probe: Some(core::Probe {
                http_get: Some(core::HTTPGetAction {
                    path: Some("/stats".into()),
                    port: IntOrString::String("stats".into()),
                    ..Default::default()
                }),
                period_seconds: Some(5),
                ..Default::default()
            }),
            resources: Some(crate::names::resources(("1", "256Mi"), ("100m", "64Mi"))),
            security_context: Some(crate::names::locked_down()),
            volume_mounts: Some(vec![
                core::VolumeMount {
                    name: "routes".into(),
                    mount_path: ROUTES_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                },
                core::VolumeMount {
                    name: "state".into(),
                    mount_path: "/run/paracloud".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let mut template_labels = app_labels(&self.manifest.app);
        template_labels.extend(selector.clone());
        let pod = core::PodSpec {
            service_account_name: Some(name.clone()),
            containers: vec![container],
            volumes: Some(vec![
                core::Volume {
                    name: "routes".into(),
                    config_map: Some(core::ConfigMapVolumeSource {
                        name: name.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                memory_volume("state", Some(16 << 20)),
            ]),
            enable_service_links: Some(false),
            security_context: Some(crate::names::non_root_pod()),
            ..Default::default()
        };
        let label_selector = LabelSelector {
            match_labels: Some(selector.clone()),
            ..Default::default()
        };
        let deployment = apps::Deployment {
            metadata: self.meta(&name, labels.clone()),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(2),
                selector: label_selector.clone(),
                template: core::PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(template_labels),
                        // New routes roll the data plane's pods, one at a time.
                        annotations: Some(BTreeMap::from([(
                            CONFIG_ANNOTATION.to_owned(),
                            sha256_hex(routes_json.as_bytes()),
                        )])),
                        ..Default::default()
                    }),
                    spec: Some(pod),
                },
                strategy: Some(crate::names::make_before_break()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.objects.push(Object::of(&deployment));
        self.objects.push(Object::of(&policy::PodDisruptionBudget {
            metadata: self.meta(&name, labels.clone()),
            spec: Some(policy::PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(label_selector.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }));
        self.objects.push(Object::of(&core::Service {
            metadata: self.meta(&format!("{name}-stats"), labels.clone()),
            spec: Some(core::ServiceSpec {
                selector: Some(selector),
                ports: Some(vec![core::ServicePort {
                    name: Some("stats".into()),
                    port: i32::from(STATS_PORT),
                    target_port: Some(IntOrString::String("stats".into())),
                    protocol: Some("TCP".into()),
                    app_protocol: Some("http".into()),
                    ..Default::default()
                }]),
                type_: Some("ClusterIP".into()),
                ..Default::default()
            }),
            ..Default::default()
        }));
        self.dataplane_policy(&name, &routes, label_selector, labels);
    }

    /// What may reach the data plane's pods: each service's callers on its listeners, anyone on
    /// published ones, and the operator on the stats port; what they may reach: the
    /// application's pods, the cluster's DNS and the API server.
    fn dataplane_policy(
        &mut self,
        name: &str,
        routes: &Routes,
        selector: LabelSelector,
        labels: BTreeMap<String, String>,
    ) {
        let app = self.manifest.app.clone();
        let port = |number: u16, protocol: &str| net::NetworkPolicyPort {
            port: Some(IntOrString::Int(i32::from(number))),
            protocol: Some(protocol.to_owned()),
            ..Default::default()
        };
        let pods_of = |service: &str| net::NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([
                    (APP_LABEL.to_owned(), app.clone()),
                    (SERVICE_LABEL.to_owned(), object_name(service)),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut ingress = Vec::new();
        for route in &routes.routes {
            let listener = port(route.listen, l4(route.protocol));
            if route.published {
                ingress.push(net::NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![listener]),
                });
                continue;
            }
            let callers: Vec<net::NetworkPolicyPeer> = self
                .manifest
                .services
                .iter()
                .filter(|(other, s)| {
                    s.revision_of.is_none() && self.manifest.reaches(other, &route.service)
                })
                .map(|(other, _)| pods_of(other))
                .collect();
            if !callers.is_empty() {
                ingress.push(net::NetworkPolicyIngressRule {
                    from: Some(callers),
                    ports: Some(vec![listener]),
                });
            }
        }
        ingress.push(net::NetworkPolicyIngressRule {
            from: Some(vec![net::NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector::default()),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/name".to_owned(),
                        crate::install::OPERATOR.to_owned(),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(vec![port(STATS_PORT, "TCP")]),
        });
        let egress = vec![
            net::NetworkPolicyEgressRule {
                to: Some(vec![net::NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector::default()),
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "k8s-app".to_owned(),
                            "kube-dns".to_owned(),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(vec![port(DNS_PORT_U16, "UDP"), port(DNS_PORT_U16, "TCP")]),
            },
            net::NetworkPolicyEgressRule {
                to: Some(vec![net::NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(APP_LABEL.to_owned(), app.clone())])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: None,
            },
            // The API server, for the EndpointSlices: its address is the cluster's, not a pod's.
            net::NetworkPolicyEgressRule {
                to: None,
                ports: Some(vec![port(443, "TCP"), port(6443, "TCP")]),
            },
        ];
        self.objects.push(Object::of(&net::NetworkPolicy {
            metadata: self.meta(name, labels),
            spec: Some(net::NetworkPolicySpec {
                pod_selector: Some(selector),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(ingress),
                egress: Some(egress),
            }),
        }));
    }

    /// The labels of the data plane's pods.
    fn dataplane_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (APP_LABEL.to_owned(), self.manifest.app.clone()),
            (COMPONENT_LABEL.to_owned(), COMPONENT.to_owned()),
        ])
    }

    /// The Service other services reach this one by (`api:8000` finds it under its name), and
    /// one of type LoadBalancer for the ports the manifest publishes.
    fn services(&mut self, object: &str, service: &Service) {
        let labels = BTreeMap::from([(SERVICE_LABEL.to_owned(), object.to_owned())]);
        // Through the data plane when it runs: its listeners are the targets.
        let selector = match self.routes {
            Some(_) => self.dataplane_selector(),
            None => BTreeMap::from([
                (APP_LABEL.to_owned(), self.manifest.app.clone()),
                (SERVICE_LABEL.to_owned(), object.to_owned()),
            ]),
        };
        let routes = self.routes.clone();
        let listeners = routes.as_ref().map(|r| (r, object));
        let ports = service_ports(service, false, listeners);
        if !ports.is_empty() {
            let svc = core::Service {
                metadata: self.meta(object, labels.clone()),
                spec: Some(core::ServiceSpec {
                    selector: Some(selector.clone()),
                    ports: Some(ports),
                    type_: Some("ClusterIP".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            self.objects.push(Object::of(&svc));
        }
        // A network alias is one more name for the same pods.
        let aliases: std::collections::BTreeSet<&String> = service
            .networks
            .values()
            .flat_map(|n| n.aliases.iter())
            .collect();
        for alias in aliases {
            if self.manifest.services.contains_key(alias.as_str()) {
                self.problem(
                    format!("services.{object}.networks"),
                    format!("the alias `{alias}` is also a service's name, and a namespace has one Service of a name"),
                    "rename the alias",
                );
                continue;
            }
            let svc = core::Service {
                metadata: self.meta(alias, labels.clone()),
                spec: Some(core::ServiceSpec {
                    selector: Some(selector.clone()),
                    ports: non_empty(service_ports(service, false, listeners)),
                    type_: Some("ClusterIP".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            self.objects.push(Object::of(&svc));
        }
        let published = service_ports(service, true, listeners);
        if !published.is_empty() {
            let svc = core::Service {
                metadata: self.meta(&format!("{object}-public"), labels),
                spec: Some(core::ServiceSpec {
                    selector: Some(selector),
                    ports: Some(published),
                    type_: Some("LoadBalancer".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            self.objects.push(Object::of(&svc));
        }
    }

    /// What may reach the service's pods and what they may reach: the pods of the services it
    /// shares a network with, the cluster's DNS, and, on its published ports, anyone.
    fn network_policy(
        &mut self,
        name: &str,
        object: &str,
        service: &Service,
        labels: BTreeMap<String, String>,
    ) {
        let peers = |reaches: &dyn Fn(&str) -> bool| -> Vec<net::NetworkPolicyPeer> {
            let mut names: Vec<String> = self
                .manifest
                .services
                .iter()
                .filter(|(other, _)| reaches(other))
                .map(|(other, s)| {
                    object_name(
                        s.revision_of
                            .as_ref()
                            .map_or(other.as_str(), |r| &r.service),
                    )
                })
                .collect();
            names.sort();
            names.dedup();
            names
                .into_iter()
                .map(|peer| net::NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([
                            (APP_LABEL.to_owned(), self.manifest.app.clone()),
                            (SERVICE_LABEL.to_owned(), peer),
                        ])),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect()
        };
        let base = service
            .revision_of
            .as_ref()
            .map_or(name.to_owned(), |r| r.service.clone());
        let callers = peers(&|other| self.manifest.reaches(other, &base) || other == base);
        let callees = peers(&|other| self.manifest.reaches(&base, other));
        let own_ports = || {
            non_empty(
                service
                    .ports
                    .iter()
                    .map(|p| net::NetworkPolicyPort {
                        port: Some(IntOrString::Int(i32::from(p.port))),
                        protocol: Some(l4(p.protocol).to_owned()),
                        ..Default::default()
                    })
                    .collect(),
            )
        };
        let mut ingress = Vec::new();
        // Through the data plane, callers reach the service's pods by way of its pods alone, and
        // reach its listeners for the services they share a network with (see `dataplane`).
        let (callers, callees) = match &self.routes {
            None => (callers, callees),
            Some(_) => {
                let own = peers(&|other| other == base);
                let mut from = vec![net::NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(self.dataplane_selector()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }];
                from.extend(own.clone());
                (from, own)
            }
        };
        if !service.ports.is_empty() && !callers.is_empty() {
            ingress.push(net::NetworkPolicyIngressRule {
                from: Some(callers),
                ports: own_ports(),
            });
        }
        let published: Vec<net::NetworkPolicyPort> = service
            .ports
            .iter()
            .filter(|p| p.publish.is_some())
            .map(|p| net::NetworkPolicyPort {
                port: Some(IntOrString::Int(i32::from(p.port))),
                protocol: Some(l4(p.protocol).to_owned()),
                ..Default::default()
            })
            .collect();
        if !published.is_empty() {
            ingress.push(net::NetworkPolicyIngressRule {
                from: None,
                ports: Some(published),
            });
        }
        let mut egress = vec![net::NetworkPolicyEgressRule {
            to: Some(vec![net::NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector::default()),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "k8s-app".to_owned(),
                        "kube-dns".to_owned(),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(
                ["UDP", "TCP"]
                    .into_iter()
                    .map(|protocol| net::NetworkPolicyPort {
                        port: Some(IntOrString::Int(DNS_PORT)),
                        protocol: Some(protocol.into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }];
        if !callees.is_empty() {
            egress.push(net::NetworkPolicyEgressRule {
                to: Some(callees),
                ports: None,
            });
        }
        if let Some(routes) = &self.routes {
            let listeners: Vec<net::NetworkPolicyPort> = routes
                .routes
                .iter()
                .filter(|r| self.manifest.reaches(&base, &r.service))
                .map(|r| net::NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(r.listen))),
                    protocol: Some(l4(r.protocol).to_owned()),
                    ..Default::default()
                })
                .collect();
            if !listeners.is_empty() {
                egress.push(net::NetworkPolicyEgressRule {
                    to: Some(vec![net::NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(self.dataplane_selector()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ports: Some(listeners),
                });
            }
        }
        let policy = net::NetworkPolicy {
            metadata: self.meta(object, labels),
            spec: Some(net::NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([
                        (APP_LABEL.to_owned(), self.manifest.app.clone()),
                        (WORKLOAD_LABEL.to_owned(), object.to_owned()),
                    ])),
                    ..Default::default()
                }),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(ingress),
                egress: Some(egress),
            }),
        };
        self.objects.push(Object::of(&policy));
    }

    /// The image a cluster pulls for the service.
    fn image(&mut self, name: &str, service: &Service) -> Option<String> {
        match &service.image {
            Image::Stored { reference, digest } => Some(match digest {
                Some(digest) if !reference.contains('@') => {
                    format!(
                        "{}@{digest}",
                        reference.split(':').next().unwrap_or(reference)
                    )
                }
                _ => reference.clone(),
            }),
            Image::Host { .. } | Image::Dir { .. } | Image::Layout { .. } | Image::Build { .. } => {
                match &self.options.registry {
                    Some(registry) => Some(format!(
                        "{}/{}-{}:latest",
                        registry.trim_end_matches('/'),
                        self.manifest.app,
                        object_name(name)
                    )),
                    None => {
                        let image = format!("{}-{}:latest", self.manifest.app, object_name(name));
                        let make = match &service.image {
                            Image::Host { .. } => format!(
                                "make it a micro-image (`paracloud image build --from-binary PROGRAM -t {image}`), "
                            ),
                            Image::Dir { .. } => "make it an image, ".to_owned(),
                            _ => String::new(),
                        };
                        self.problem(
                            format!("services.{name}.image"),
                            "the image is made on this machine, and a cluster pulls its images from a registry",
                            format!(
                                "{make}push it (`paracloud image push {image} REGISTRY/{image}`) and render with --registry REGISTRY"
                            ),
                        );
                        None
                    }
                }
            }
        }
    }

    /// Named volumes become claims (one per pod, of a StatefulSet); an external volume is the
    /// claim of that name. A bind-mounted file becomes a ConfigMap (a Secret under
    /// `/run/secrets/`), a bind-mounted directory the node's path, and `tmpfs` and `shm_size`
    /// memory-backed emptyDirs.
    fn mounts(&mut self, name: &str, service: &Service) -> Mounts {
        let object = object_name(name);
        let mut out = Mounts::default();
        for (i, mount) in service.volumes.iter().enumerate() {
            let place = format!("services.{name}.volumes[{i}]");
            match mount {
                VolumeMount::Named {
                    name: volume,
                    target,
                    read_only,
                } => {
                    let declared = self
                        .manifest
                        .volumes
                        .get(volume)
                        .cloned()
                        .unwrap_or_default();
                    out.mounts.push(core::VolumeMount {
                        name: volume.clone(),
                        mount_path: target.clone(),
                        read_only: read_only.then_some(true),
                        ..Default::default()
                    });
                    if let Some(external) = &declared.external {
                        out.volumes.push(core::Volume {
                            name: volume.clone(),
                            persistent_volume_claim: Some(
                                core::PersistentVolumeClaimVolumeSource {
                                    claim_name: external.clone(),
                                    read_only: read_only.then_some(true),
                                },
                            ),
                            ..Default::default()
                        });
                    } else if !out
                        .claims
                        .iter()
                        .any(|c| c.metadata.name.as_deref() == Some(volume))
                    {
                        out.claims.push(core::PersistentVolumeClaim {
                            metadata: ObjectMeta {
                                name: Some(volume.clone()),
                                labels: Some(app_labels(&self.manifest.app)),
                                ..Default::default()
                            },
                            spec: Some(core::PersistentVolumeClaimSpec {
                                access_modes: Some(vec!["ReadWriteOnce".into()]),
                                resources: Some(core::VolumeResourceRequirements {
                                    requests: Some(BTreeMap::from([(
                                        "storage".to_owned(),
                                        Quantity(bytes_quantity(declared.size.unwrap_or(1 << 30))),
                                    )])),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        });
                    }
                }
                VolumeMount::Bind {
                    source,
                    target,
                    read_only,
                } => {
                    let volume = format!("bind-{i}");
                    match self.files.read(source) {
                        HostFile::Directory => {
                            out.volumes.push(core::Volume {
                                name: volume.clone(),
                                host_path: Some(core::HostPathVolumeSource {
                                    path: source.display().to_string(),
                                    type_: Some("Directory".into()),
                                }),
                                ..Default::default()
                            });
                            out.mounts.push(core::VolumeMount {
                                name: volume,
                                mount_path: target.clone(),
                                read_only: read_only.then_some(true),
                                ..Default::default()
                            });
                        }
                        HostFile::File(bytes) if bytes.len() > MAX_FILE_BYTES => self.problem(
                            place,
                            format!(
                                "{} is {} bytes, more than a ConfigMap or Secret holds (1 MiB)",
                                source.display(),
                                bytes.len()
                            ),
                            "put the file into the image, or mount a named volume holding it",
                        ),
                        HostFile::File(bytes) => {
                            let file = BoundFile::new(&object, i, target);
                            out.config.extend_from_slice(target.as_bytes());
                            out.config.extend_from_slice(&bytes);
                            if self.options.file_objects {
                                let labels =
                                    BTreeMap::from([(SERVICE_LABEL.to_owned(), object.clone())]);
                                let metadata = self.meta(&file.holder, labels);
                                self.objects.push(file.object(metadata, bytes));
                            }
                            file.mount(&mut out, volume);
                        }
                        HostFile::Missing if !self.options.file_objects => {
                            // Made by whoever read the files: the volume refers to it by name.
                            BoundFile::new(&object, i, target).mount(&mut out, volume);
                        }
                        HostFile::Missing => self.problem(
                            place,
                            format!("{} does not exist on this machine", source.display()),
                            "create it, or remove the mount",
                        ),
                    }
                }
            }
        }
        for (i, tmpfs) in service.sandbox.tmpfs.iter().enumerate() {
            let volume = format!("tmpfs-{i}");
            out.volumes.push(memory_volume(&volume, tmpfs.size));
            out.mounts.push(core::VolumeMount {
                name: volume,
                mount_path: tmpfs.target.clone(),
                ..Default::default()
            });
        }
        if let Some(size) = service.sandbox.shm_size {
            out.volumes.push(memory_volume("shm", Some(size)));
            out.mounts.push(core::VolumeMount {
                name: "shm".into(),
                mount_path: "/dev/shm".into(),
                ..Default::default()
            });
        }
        out
    }

    /// As on one machine: no privilege escalation, only the capabilities the service keeps, the
    /// root read-only when asked.
    fn security_context(&mut self, name: &str, service: &Service) -> core::SecurityContext {
        let add: Vec<String> = service
            .cap_add
            .iter()
            .map(|c| c.trim_start_matches("CAP_").to_owned())
            .collect();
        let _ = name;
        core::SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(core::Capabilities {
                add: non_empty(add),
                drop: Some(vec!["ALL".into()]),
            }),
            read_only_root_filesystem: service.sandbox.read_only.then_some(true),
            ..Default::default()
        }
    }

    /// A numeric `user` as the pod's uid and gid; a user name is resolved in the image, which
    /// Kubernetes does too when no uid is given.
    fn user(&self, service: &Service) -> (Option<i64>, Option<i64>) {
        let Some(user) = &service.user else {
            return (None, None);
        };
        let mut parts = user.splitn(2, ':');
        let uid = parts.next().and_then(|u| u.parse::<i64>().ok());
        let gid = parts.next().and_then(|g| g.parse::<i64>().ok());
        (uid, gid.filter(|_| uid.is_some()))
    }
}

/// A bind-mounted file as Kubernetes carries it: a ConfigMap, or a Secret for a target under
/// `/run/secrets/`, named `SERVICE-file-N`, mounted read-only at the target by `subPath`.
struct BoundFile<'a> {
    holder: String,
    key: String,
    target: &'a str,
    secret: bool,
}

impl<'a> BoundFile<'a> {
    fn new(object: &str, index: usize, target: &'a str) -> BoundFile<'a> {
        BoundFile {
            holder: format!("{object}-file-{index}"),
            key: Path::new(target)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| is_config_key(n))
                .unwrap_or_else(|| "content".into()),
            target,
            secret: target.starts_with("/run/secrets/"),
        }
    }

    /// The ConfigMap or Secret holding the file's bytes.
    fn object(&self, metadata: ObjectMeta, bytes: Vec<u8>) -> Object {
        if self.secret {
            return Object::of(&core::Secret {
                metadata,
                data: Some(BTreeMap::from([(self.key.clone(), ByteString(bytes))])),
                type_: Some("Opaque".into()),
                ..Default::default()
            });
        }
        let (data, binary_data) = match String::from_utf8(bytes) {
            Ok(text) => (Some(BTreeMap::from([(self.key.clone(), text)])), None),
            Err(e) => (
                None,
                Some(BTreeMap::from([(
                    self.key.clone(),
                    ByteString(e.into_bytes()),
                )])),
            ),
        };
        Object::of(&core::ConfigMap {
            metadata,
            data,
            binary_data,
            ..Default::default()
        })
    }

    /// The pod's volume of it and the container's mount.
    fn mount(&self, out: &mut Mounts, volume: String) {
        out.volumes.push(core::Volume {
            name: volume.clone(),
            secret: self.secret.then(|| core::SecretVolumeSource {
                secret_name: Some(self.holder.clone()),
                ..Default::default()
            }),
            config_map: (!self.secret).then(|| core::ConfigMapVolumeSource {
                name: self.holder.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
        out.mounts.push(core::VolumeMount {
            name: volume,
            mount_path: self.target.to_owned(),
            sub_path: Some(self.key.clone()),
            read_only: Some(true),
            ..Default::default()
        });
    }
}

/// The environment the node agent names a pod by: its application, its service, and its uid
/// (which picks its PaCI directory).
fn paci_env(app: &str, service: &str) -> Vec<core::EnvVar> {
    vec![
        core::EnvVar {
            name: "PARACLOUD_APP".into(),
            value: Some(app.to_owned()),
            ..Default::default()
        },
        core::EnvVar {
            name: "PARACLOUD_SERVICE".into(),
            value: Some(service.to_owned()),
            ..Default::default()
        },
        core::EnvVar {
            name: "PARACLOUD_POD_UID".into(),
            value_from: Some(core::EnvVarSource {
                field_ref: Some(core::ObjectFieldSelector {
                    field_path: "metadata.uid".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

/// A ConfigMap key: letters, digits, `-`, `_` and `.`.
fn is_config_key(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name != "."
        && name != ".."
}

fn l4(protocol: Protocol) -> &'static str {
    if protocol.is_udp() {
        "UDP"
    } else {
        "TCP"
    }
}

/// A port's name (at most 15 characters, a letter among them): `http-8000`, `udp-53`.
pub fn port_name(port: u16, protocol: Protocol) -> String {
    format!("{}-{port}", protocol.name())
}

/// A service's ports as a Service's; with `listeners` (the routes and the service's name), each
/// leads to the data plane's listener for it rather than to the pods' port.
fn service_ports(
    service: &Service,
    published: bool,
    listeners: Option<(&Routes, &str)>,
) -> Vec<core::ServicePort> {
    service
        .ports
        .iter()
        .filter(|p| !published || p.publish.is_some())
        .map(|p| core::ServicePort {
            name: Some(port_name(p.port, p.protocol)),
            port: match (published, p.publish) {
                (true, Some(addr)) => i32::from(addr.port()),
                _ => i32::from(p.port),
            },
            target_port: Some(
                match listeners.and_then(|(r, name)| r.find(name, p.port, p.protocol.is_udp())) {
                    Some(route) => IntOrString::Int(i32::from(route.listen)),
                    None => IntOrString::String(port_name(p.port, p.protocol)),
                },
            ),
            protocol: Some(l4(p.protocol).to_owned()),
            app_protocol: (p.protocol == Protocol::Http).then(|| "http".to_owned()),
            ..Default::default()
        })
        .collect()
}

fn memory_volume(name: &str, size: Option<u64>) -> core::Volume {
    core::Volume {
        name: name.to_owned(),
        empty_dir: Some(core::EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: size.map(|s| Quantity(bytes_quantity(s))),
        }),
        ..Default::default()
    }
}

fn probe(health: &HealthCheck, failures: u32) -> core::Probe {
    let mut probe = core::Probe {
        period_seconds: Some(seconds(health.interval, 1)),
        timeout_seconds: Some(seconds(health.timeout, 1)),
        failure_threshold: Some(i32::try_from(failures.max(1)).unwrap_or(i32::MAX)),
        ..Default::default()
    };
    match &health.probe {
        Probe::Exec { command } => {
            probe.exec = Some(core::ExecAction {
                command: Some(command.clone()),
            })
        }
        Probe::Tcp { port } => {
            probe.tcp_socket = Some(core::TCPSocketAction {
                port: IntOrString::Int(i32::from(*port)),
                ..Default::default()
            })
        }
        Probe::Http { port, path } => {
            probe.http_get = Some(core::HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(i32::from(*port)),
                ..Default::default()
            })
        }
    }
    probe
}

/// Limits from `resources`, requests from the reservations; the writable layer's size is the
/// container's ephemeral storage.
fn resources(service: &Service) -> core::ResourceRequirements {
    let r = &service.resources;
    let mut limits = BTreeMap::new();
    let mut requests = BTreeMap::new();
    if let Some(cpu) = r.cpu {
        limits.insert("cpu".to_owned(), Quantity(cpu_quantity(cpu)));
    }
    if let Some(memory) = r.memory {
        limits.insert("memory".to_owned(), Quantity(bytes_quantity(memory)));
    }
    if let Some(disk) = r.disk {
        limits.insert(
            "ephemeral-storage".to_owned(),
            Quantity(bytes_quantity(disk)),
        );
    }
    if let Some(cpu) = r.cpu_reservation {
        requests.insert("cpu".to_owned(), Quantity(cpu_quantity(cpu)));
    }
    if let Some(memory) = r.memory_reservation {
        requests.insert("memory".to_owned(), Quantity(bytes_quantity(memory)));
    }
    core::ResourceRequirements {
        limits: (!limits.is_empty()).then_some(limits),
        requests: (!requests.is_empty()).then_some(requests),
        ..Default::default()
    }
}
