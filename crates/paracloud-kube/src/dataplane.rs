//! Paracloud's data plane in the cluster, as plain data: the routes of an application (one
//! listener per port of each service, its revisions behind it with their weights, as on one
//! machine) and the port each listener gets in the data plane's pods.
//!
//! The renderer writes [`Routes`] into the data plane's ConfigMap and points each Service at the
//! listener's port; `paracloud cluster-dataplane` reads the same [`Routes`] back and fills each
//! listener with the ready endpoints of the headless Service it names. Both sides go through
//! [`routes`], so a listener and the Service that leads to it always agree.

use std::collections::BTreeSet;

use paracloud_manifest::Manifest;
pub use paracloud_manifest::Protocol;
use serde::{Deserialize, Serialize};

use crate::names::{object_name, sha256_hex};

/// What the renderer needs to run the data plane beside the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneOptions {
    /// The image holding the `paracloud` binary.
    pub image: String,
}

/// Label on the data plane's pods (and its objects): which part of Paracloud they are.
pub const COMPONENT_LABEL: &str = "paracloud.dev/component";
/// The value of [`COMPONENT_LABEL`] for the data plane.
pub const COMPONENT: &str = "dataplane";

/// Where the data plane's pods serve `/stats`, `/metrics` and `/watch`.
pub const STATS_PORT: u16 = 9090;

/// Where the routes file is mounted in the data plane's pods, and its key in the ConfigMap.
pub const ROUTES_DIR: &str = "/etc/paracloud/dataplane";
pub const ROUTES_KEY: &str = "routes.json";

/// Listener ports are taken from `FIRST_PORT..FIRST_PORT + PORT_RANGE`: unprivileged (the pod
/// runs without capabilities) and clear of the stats port.
const FIRST_PORT: u16 = 20000;
const PORT_RANGE: u16 = 20000;

/// The data plane's objects' name: `shop-dataplane`.
pub fn dataplane_name(app: &str) -> String {
    format!("{app}-dataplane")
}

/// The headless Service whose EndpointSlices list a workload's pods: `api-pods`, `api-canary-pods`.
pub fn endpoints_service(service: &str) -> String {
    format!("{}-pods", object_name(service))
}

/// An application's routes: what `paracloud cluster-dataplane` listens on and where to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    pub app: String,
    pub routes: Vec<Route>,
}

/// One port of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The manifest's service.
    pub service: String,
    /// The service's port (what its pods listen on, and its Service's port).
    pub port: u16,
    pub protocol: Protocol,
    /// The data plane's listening port for it: the Service's targetPort.
    pub listen: u16,
    /// Whether the manifest publishes it (anyone may reach that listener).
    pub published: bool,
    /// The headless Service whose ready endpoints are the service's own backends.
    pub endpoints: String,
    /// The revisions running beside the service, behind the same listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<RouteRevision>,
}

/// A revision behind its service's listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRevision {
    /// The revision's name (`canary`), which the `x-paracloud-revision` header asks for.
    pub name: String,
    /// Percent of the requests not routed by header.
    pub weight: u32,
    /// The headless Service of the revision's pods.
    pub endpoints: String,
}

impl Route {
    /// The listener's name, as on one machine: `shop/api:8000`, `shop/dns:53/udp`.
    pub fn listener_name(&self, app: &str) -> String {
        match self.protocol {
            Protocol::Udp => format!("{app}/{}:{}/udp", self.service, self.port),
            Protocol::Tcp | Protocol::Http => format!("{app}/{}:{}", self.service, self.port),
        }
    }
}

impl Routes {
    /// The route of `service`'s `port` of `protocol`'s transport.
    pub fn find(&self, service: &str, port: u16, udp: bool) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.service == service && r.port == port && r.protocol.is_udp() == udp)
    }
}

/// The routes of every port of every service (revisions have none of their own: they are behind
/// their service's listeners, with the weights of the manifest), sorted by service and port.
///
/// A listener's port is drawn from a hash of (service, port, transport), so that it stays the
/// same while the manifest changes elsewhere; two that draw the same port are settled in sorted
/// order, the later taking the next free one.
pub fn routes(manifest: &Manifest) -> Routes {
    let mut taken = BTreeSet::new();
    let mut routes = Vec::new();
    for (name, service) in manifest
        .services
        .iter()
        .filter(|(_, s)| s.revision_of.is_none())
    {
        let revisions: Vec<RouteRevision> = manifest
            .services
            .iter()
            .filter_map(|(other, s)| {
                let of = s.revision_of.as_ref().filter(|of| &of.service == name)?;
                Some(RouteRevision {
                    name: of.revision.clone(),
                    weight: of.weight,
                    endpoints: endpoints_service(other),
                })
            })
            .collect();
        for port in &service.ports {
            let transport = if port.protocol.is_udp() { "udp" } else { "tcp" };
            let digest = sha256_hex(format!("{name}/{}/{transport}", port.port).as_bytes());
            let drawn = u16::from_str_radix(&digest[..4], 16).unwrap_or(0) % PORT_RANGE;
            let mut offset = drawn;
            while !taken.insert(offset) {
                offset = (offset + 1) % PORT_RANGE;
            }
            routes.push(Route {
                service: name.clone(),
                port: port.port,
                protocol: port.protocol,
                listen: FIRST_PORT + offset,
                published: port.publish.is_some(),
                endpoints: endpoints_service(name),
                revisions: revisions.clone(),
            });
        }
    }
    Routes {
        app: manifest.app.clone(),
        routes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Anywhere;

    impl paracloud_manifest::FileSystem for Anywhere {
        fn exists(&self, _path: &std::path::Path) -> bool {
            true
        }
        fn is_dir(&self, _path: &std::path::Path) -> bool {
            false
        }
    }

    pub(crate) fn manifest(text: &str) -> Manifest {
        let origin = paracloud_manifest::Origin {
            file: "paracloud.toml".into(),
            base_dir: "/".into(),
        };
        paracloud_manifest::parse(text, &origin, &Anywhere).expect("a valid manifest")
    }

    const SHOP: &str = r#"
app = "shop"
[services.web]
image = "docker.io/library/nginx:1"
ports = [{ port = 8080, protocol = "http", publish = "0.0.0.0:80" }]
[services.api]
image = "docker.io/library/nginx:1"
ports = [{ port = 8000, protocol = "http" }, { port = 8000, protocol = "udp" }]
[services.api.revisions.canary]
image = "docker.io/library/nginx:2"
weight = 10
"#;

    #[test]
    fn every_port_of_every_service_gets_a_listener_and_revisions_ride_along() {
        let routes = routes(&manifest(SHOP));
        let names: Vec<String> = routes
            .routes
            .iter()
            .map(|r| r.listener_name("shop"))
            .collect();
        assert_eq!(
            names,
            ["shop/api:8000", "shop/api:8000/udp", "shop/web:8080"]
        );
        let api = routes.find("api", 8000, false).unwrap();
        assert_eq!(api.endpoints, "api-pods");
        assert_eq!(
            api.revisions,
            [RouteRevision {
                name: "canary".into(),
                weight: 10,
                endpoints: "api-canary-pods".into()
            }]
        );
        assert!(routes.find("web", 8080, false).unwrap().published);
        assert!(routes
            .routes
            .iter()
            .all(|r| (20000..40000).contains(&r.listen)));
    }

    #[test]
    fn listener_ports_are_distinct_and_stay_when_another_service_comes() {
        let before = routes(&manifest(SHOP));
        let ports: BTreeSet<u16> = before.routes.iter().map(|r| r.listen).collect();
        assert_eq!(ports.len(), before.routes.len());
        let after = routes(&manifest(&format!(
            "{SHOP}\n[services.kv]\nimage = \"docker.io/library/redis:7\"\nports = [{{ port = 6379 }}]\n"
        )));
        for route in &before.routes {
            let again = after
                .find(&route.service, route.port, route.protocol.is_udp())
                .unwrap();
            assert_eq!(again.listen, route.listen, "{}", route.service);
        }
    }

    fn render(with_dataplane: bool) -> Vec<crate::Object> {
        let options = crate::RenderOptions {
            dataplane: with_dataplane.then(|| DataplaneOptions {
                image: "registry.example/paracloud:1".into(),
            }),
            ..Default::default()
        };
        crate::render(&manifest(SHOP), &options, &crate::NoHostFiles)
            .expect("renders")
            .objects
    }

    fn find<'a>(objects: &'a [crate::Object], kind: &str, name: &str) -> &'a serde_json::Value {
        &objects
            .iter()
            .find(|o| o.key.kind == kind && o.key.name == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .body
    }

    #[test]
    fn without_the_data_plane_services_select_their_pods() {
        let objects = render(false);
        assert!(!objects.iter().any(|o| o.key.name.contains("dataplane")));
        assert!(!objects.iter().any(|o| o.key.name == "api-pods"));
        let api = find(&objects, "Service", "api");
        assert_eq!(api["spec"]["selector"]["paracloud.dev/service"], "api");
        assert_eq!(api["spec"]["ports"][0]["targetPort"], "http-8000");
    }

    #[test]
    fn with_the_data_plane_services_lead_to_its_listeners() {
        let objects = render(true);
        let routes = routes(&manifest(SHOP));
        for (service, port, udp, index) in [("api", 8000, false, 0), ("api", 8000, true, 1)] {
            let svc = find(&objects, "Service", service);
            assert_eq!(svc["spec"]["selector"][COMPONENT_LABEL], COMPONENT);
            assert_eq!(
                svc["spec"]["ports"][index]["targetPort"],
                routes.find(service, port, udp).unwrap().listen
            );
        }
        let public = find(&objects, "Service", "web-public");
        assert_eq!(public["spec"]["selector"][COMPONENT_LABEL], COMPONENT);
        assert_eq!(
            public["spec"]["ports"][0]["targetPort"],
            routes.find("web", 8080, false).unwrap().listen
        );
        // The pods' own addresses, for the data plane's EndpointSlices.
        for (headless, workload) in [("api-pods", "api"), ("api-canary-pods", "api-canary")] {
            let svc = find(&objects, "Service", headless);
            assert_eq!(svc["spec"]["clusterIP"], "None");
            assert_eq!(svc["spec"]["selector"]["paracloud.dev/workload"], workload);
            assert_eq!(svc["spec"]["ports"][0]["port"], 8000);
        }
        let deployment = find(&objects, "Deployment", "shop-dataplane");
        assert_eq!(deployment["spec"]["replicas"], 2);
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "shop-dataplane");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["containers"][0]["image"],
            "registry.example/paracloud:1"
        );
        assert_eq!(
            pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
            true
        );
        let config = find(&objects, "ConfigMap", "shop-dataplane");
        let stored: Routes =
            serde_json::from_str(config["data"][ROUTES_KEY].as_str().unwrap()).unwrap();
        assert_eq!(stored, routes);
        find(&objects, "PodDisruptionBudget", "shop-dataplane");
        find(&objects, "Service", "shop-dataplane-stats");
    }

    #[test]
    fn the_data_plane_may_list_and_watch_endpoint_slices_and_its_resource_and_nothing_else() {
        let objects = render(true);
        let role = find(&objects, "Role", "shop-dataplane");
        assert_eq!(
            role["rules"],
            serde_json::json!([
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["paracloud.dev"],
                    "resources": ["paracloudapps"],
                    "verbs": ["list", "watch"],
                },
            ])
        );
        let binding = find(&objects, "RoleBinding", "shop-dataplane");
        assert_eq!(binding["subjects"][0]["name"], "shop-dataplane");
        assert_eq!(binding["roleRef"]["name"], "shop-dataplane");
    }

    #[test]
    fn service_pods_take_traffic_from_the_data_plane_and_callers_reach_its_listeners() {
        let objects = render(true);
        let routes = routes(&manifest(SHOP));
        let api = find(&objects, "NetworkPolicy", "api");
        let from = &api["spec"]["ingress"][0]["from"];
        assert_eq!(
            from[0]["podSelector"]["matchLabels"][COMPONENT_LABEL],
            COMPONENT
        );
        let web = find(&objects, "NetworkPolicy", "web");
        let egress = web["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress[0]["ports"][0]["port"], 53, "DNS stays");
        let to_dataplane = egress
            .iter()
            .find(|r| r["to"][0]["podSelector"]["matchLabels"][COMPONENT_LABEL] == COMPONENT)
            .expect("web reaches the data plane");
        let ports: Vec<&serde_json::Value> = to_dataplane["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["port"])
            .collect();
        assert!(ports.contains(&&serde_json::json!(
            routes.find("api", 8000, false).unwrap().listen
        )));
        // Published listeners are open to anyone, as the published ports are.
        let policy = find(&objects, "NetworkPolicy", "shop-dataplane");
        let web_listener = routes.find("web", 8080, false).unwrap().listen;
        assert!(policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["from"].is_null() && r["ports"][0]["port"] == web_listener));
    }
}
