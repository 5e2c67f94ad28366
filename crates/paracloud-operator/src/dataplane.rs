//! `paracloud cluster-dataplane`: Paracloud's data plane for one application in its cluster.
//!
//! The routes (listeners, revisions and weights) are those `paracloud_kube::dataplane::routes`
//! made when the application was rendered, read from the file its ConfigMap mounts; each
//! listener's backends are the ready endpoints of the EndpointSlices of the headless Service the
//! route names, followed with a watcher, each weighted by its pod's PaCI weight from the
//! application's resource (`spec.weights`, which the node agent writes), followed too. The data
//! plane itself runs in this process (`paracloud_dataplane::Dataplane`): each change is written
//! to its configuration file and a reload signalled, as the daemon does for its own data-plane process. A listener with no ready
//! endpoint holds its requests (announced on `/watch`) until one comes or the hold time ends.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context as _, Result};
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use paracloud_dataplane::{Backend, Config, Dataplane, Listener, Protocol, Revision, Tuning};
use paracloud_kube::dataplane::{Protocol as PortProtocol, Route, Routes};
use paracloud_kube::render::port_name;
use paracloud_kube::ParacloudApp;
use tokio::sync::watch;

/// The label the EndpointSlice controller puts on a Service's slices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A backend's weight: one core, as the daemon weighs an instance with no CPU limit.
const BACKEND_WEIGHT: u32 = 1000;

/// How the data plane of one application runs.
#[derive(Debug, Clone)]
pub struct DataplaneOptions {
    pub namespace: String,
    pub app: String,
    /// The routes file (`routes.json` of the data plane's ConfigMap).
    pub routes: PathBuf,
    /// Where the data plane's configuration file is written.
    pub state_dir: PathBuf,
    /// Where `/stats`, `/metrics` and `/watch` are served.
    pub stats_listen: SocketAddr,
    /// The address every listener binds.
    pub listen_address: IpAddr,
    /// Listeners bound to another port than their route's (to run beside others on one host).
    pub listen_ports: Vec<ListenPort>,
}

/// `SERVICE:PORT[/udp]=LISTEN`: the listener of a service's port bound to `LISTEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenPort {
    pub service: String,
    pub port: u16,
    pub udp: bool,
    pub listen: u16,
}

impl FromStr for ListenPort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wrong = || format!("`{text}` is not SERVICE:PORT[/udp]=LISTEN_PORT, as api:8000=18000");
        let (route, listen) = text.split_once('=').ok_or_else(wrong)?;
        let (service, port) = route.rsplit_once(':').ok_or_else(wrong)?;
        let (port, udp) = match port.strip_suffix("/udp") {
            Some(port) => (port, true),
            None => (port, false),
        };
        Ok(Self {
            service: service.to_owned(),
            port: port.parse().map_err(|_| wrong())?,
            udp,
            listen: listen.parse().map_err(|_| wrong())?,
        })
    }
}

/// Where each route's listener binds.
fn bind(route: &Route, options: &DataplaneOptions) -> SocketAddr {
    let port = options
        .listen_ports
        .iter()
        .find(|l| {
            l.service == route.service && l.port == route.port && l.udp == route.protocol.is_udp()
        })
        .map_or(route.listen, |l| l.listen);
    SocketAddr::new(options.listen_address, port)
}

/// Whether an endpoint takes requests: ready (absent means ready, as the API says), serving
/// (a Service that publishes addresses not ready marks them ready, but not serving), and not
/// terminating.
fn takes_requests(endpoint: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    let conditions = endpoint.conditions.as_ref();
    conditions.and_then(|c| c.ready).unwrap_or(true)
        && conditions.and_then(|c| c.serving).unwrap_or(true)
        && !conditions.and_then(|c| c.terminating).unwrap_or(false)
}

/// What the data plane follows of the cluster: the EndpointSlices, and the pods' weights from
/// the application's resource.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub slices: Vec<EndpointSlice>,
    /// PaCI weights by pod name, in percent of a pod's full share.
    pub weights: BTreeMap<String, u32>,
    /// Services under a migration, each with the pods that take requests meanwhile.
    pub migrating: BTreeMap<String, Vec<String>>,
}

/// The ready endpoints of the slices of `service` as backends of `route`'s port, sorted by id,
/// each address once, each weighted by its pod's PaCI weight; with `serving` (a migration
/// under way), a pod not named there has weight 0.
fn backends(seen: &Seen, service: &str, route: &Route, serving: Option<&[String]>) -> Vec<Backend> {
    let slices = &seen.slices;
    let name = port_name(route.port, route.protocol);
    let mut backends: Vec<Backend> = Vec::new();
    for slice in slices
        .iter()
        .filter(|s| s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service))
    {
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(route.port);
        for endpoint in slice.endpoints.iter().filter(|e| takes_requests(e)) {
            // Consumers use the first address (the others are the same pod's, for the future).
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let addr = SocketAddr::new(ip, port);
            if backends.iter().any(|b| b.addr == addr) {
                continue;
            }
            let id = endpoint
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_else(|| ip.to_string());
            let held = serving.is_some_and(|pods| !pods.contains(&id));
            let percent = if held {
                0
            } else {
                seen.weights
                    .get(&id)
                    .copied()
                    .unwrap_or(paracloud_paci::FULL_WEIGHT)
                    .min(paracloud_paci::FULL_WEIGHT)
            };
            backends.push(Backend {
                id,
                addr,
                weight: BACKEND_WEIGHT * percent / paracloud_paci::FULL_WEIGHT,
            });
        }
    }
    backends.sort_by(|a, b| a.id.cmp(&b.id).then(a.addr.cmp(&b.addr)));
    backends
}

/// The data plane's configuration: a listener per route, with the ready endpoints of its
/// service and of each revision.
pub fn config(routes: &Routes, seen: &Seen, options: &DataplaneOptions) -> Config {
    let listeners = routes
        .routes
        .iter()
        .map(|route| Listener {
            name: route.listener_name(&routes.app),
            bind: bind(route, options),
            protocol: match route.protocol {
                PortProtocol::Tcp => Protocol::Tcp,
                PortProtocol::Http => Protocol::Http,
                PortProtocol::Udp => Protocol::Udp,
            },
            backends: backends(
                seen,
                &route.endpoints,
                route,
                seen.migrating.get(&route.service).map(Vec::as_slice),
            ),
            revisions: route
                .revisions
                .iter()
                .map(|r| Revision {
                    name: r.name.clone(),
                    weight: r.weight,
                    backends: backends(seen, &r.endpoints, route, None),
                })
                .collect(),
        })
        .collect();
    Config { listeners }
}

/// Reads the routes file, and checks it is the application's.
fn read_routes(options: &DataplaneOptions) -> Result<Routes> {
    let text = std::fs::read(&options.routes)
        .with_context(|| format!("cannot read the routes file {}", options.routes.display()))?;
    let routes: Routes = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a routes file (render the application with a data plane)",
            options.routes.display()
        )
    })?;
    if routes.app != options.app {
        bail!(
            "the routes file {} is application `{}`'s, not `{}`'s",
            options.routes.display(),
            routes.app,
            options.app
        );
    }
    Ok(routes)
}

/// Runs the data plane until SIGTERM (then drains) or SIGINT.
pub async fn run(client: Client, options: DataplaneOptions) -> Result<()> {
    let routes = read_routes(&options)?;
    std::fs::create_dir_all(&options.state_dir).with_context(|| {
        format!(
            "cannot make the state directory {}",
            options.state_dir.display()
        )
    })?;
    let config_path = options.state_dir.join("dataplane.json");
    let first = config(&routes, &Seen::default(), &options);
    paracloud_dataplane::write_config(&config_path, &first)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let (reload, reloads) = watch::channel(());
    let dataplane = Dataplane::new(config_path.clone(), Tuning::default());
    let stats = tokio::net::TcpListener::bind(options.stats_listen)
        .await
        .with_context(|| format!("cannot listen on {} for the stats", options.stats_listen))?;
    tokio::spawn(paracloud_dataplane::serve_stats_tcp(
        stats,
        dataplane.stats(),
    ));

    let names: Vec<String> = {
        let mut names: Vec<String> = routes
            .routes
            .iter()
            .flat_map(|r| {
                std::iter::once(r.endpoints.clone())
                    .chain(r.revisions.iter().map(|v| v.endpoints.clone()))
            })
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let selector = format!("{SERVICE_NAME_LABEL} in ({})", names.join(","));
    let follow_options = options.clone();
    let following = tokio::spawn(async move {
        follow(
            client,
            selector,
            routes,
            first,
            config_path,
            reload,
            follow_options,
        )
        .await
    });
    let shutdown = async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match terminate.as_mut() {
            Ok(terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("stopping: draining the data plane");
    };
    let result = dataplane
        .run_with_reload(reloads, shutdown)
        .await
        .map_err(|e| anyhow!("data plane: {e}"));
    following.abort();
    result
}

/// One change the data plane follows: of an EndpointSlice, or of the application's resource.
enum Change {
    Slice(watcher::Result<Event<EndpointSlice>>),
    App(watcher::Result<Event<ParacloudApp>>),
}

/// Follows the EndpointSlices and the pods' weights on the application's resource, rewriting
/// the configuration and asking for a reload at each change of the backends.
async fn follow(
    client: Client,
    selector: String,
    routes: Routes,
    mut last: Config,
    config_path: PathBuf,
    reload: watch::Sender<()>,
    options: DataplaneOptions,
) {
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, EndpointSlice>> = None;
    let mut weights: BTreeMap<String, u32> = BTreeMap::new();
    let mut migrating: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &options.namespace);
    let apps: Api<ParacloudApp> = Api::namespaced(client, &options.namespace);
    let slice_events = watcher::watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .map(Change::Slice);
    let app_events = watcher::watcher(
        apps,
        watcher::Config::default().fields(&format!("metadata.name={}", options.app)),
    )
    .default_backoff()
    .map(Change::App);
    let mut events = futures::stream::select(slice_events.boxed(), app_events.boxed());
    while let Some(change) = events.next().await {
        match change {
            Change::Slice(Ok(Event::Init)) => listing = Some(BTreeMap::new()),
            Change::Slice(Ok(Event::InitApply(slice))) => {
                if let Some(listing) = listing.as_mut() {
                    listing.insert(slice.name_any(), slice);
                }
            }
            Change::Slice(Ok(Event::InitDone)) => slices = listing.take().unwrap_or_default(),
            Change::Slice(Ok(Event::Apply(slice))) => {
                slices.insert(slice.name_any(), slice);
            }
            Change::Slice(Ok(Event::Delete(slice))) => {
                slices.remove(&slice.name_any());
            }
            Change::App(Ok(Event::Apply(app) | Event::InitApply(app))) => {
                weights = app.spec.weights;
                migrating = app.spec.migrating;
            }
            Change::App(Ok(Event::Delete(_))) => {
                weights.clear();
                migrating.clear();
            }
            Change::App(Ok(Event::Init | Event::InitDone)) => {}
            Change::Slice(Err(error)) => {
                tracing::warn!(%error, "watching the EndpointSlices failed; retrying");
                continue;
            }
            Change::App(Err(error)) => {
                tracing::warn!(%error, "watching the application's resource failed; retrying");
                continue;
            }
        }
        if listing.is_some() {
            continue;
        }
        let seen = Seen {
            slices: slices.values().cloned().collect(),
            weights: weights.clone(),
            migrating: migrating.clone(),
        };
        let next = config(&routes, &seen, &options);
        if next == last {
            continue;
        }
        if let Err(error) = paracloud_dataplane::write_config(&config_path, &next) {
            tracing::error!(%error, path = %config_path.display(), "cannot write the data plane's configuration");
            continue;
        }
        last = next;
        if reload.send(()).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paracloud_kube::dataplane::RouteRevision;

    fn options() -> DataplaneOptions {
        DataplaneOptions {
            namespace: "shop".into(),
            app: "shop".into(),
            routes: PathBuf::from("routes.json"),
            state_dir: PathBuf::from("state"),
            stats_listen: "127.0.0.1:9090".parse().unwrap(),
            listen_address: "0.0.0.0".parse().unwrap(),
            listen_ports: vec!["api:8000=18000".parse().unwrap()],
        }
    }

    fn routes() -> Routes {
        Routes {
            app: "shop".into(),
            routes: vec![Route {
                service: "api".into(),
                port: 8000,
                protocol: PortProtocol::Http,
                listen: 23456,
                published: false,
                endpoints: "api-pods".into(),
                revisions: vec![RouteRevision {
                    name: "canary".into(),
                    weight: 10,
                    endpoints: "api-canary-pods".into(),
                }],
            }],
        }
    }

    fn slice(service: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": format!("{service}-x"), "labels": { SERVICE_NAME_LABEL: service } },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{ "name": "http-8000", "port": 8080, "protocol": "TCP" }],
        }))
        .unwrap()
    }

    #[test]
    fn ready_serving_endpoints_are_backends_on_the_slices_port_weighted_by_their_pods() {
        let slices = [
            slice(
                "api-pods",
                serde_json::json!([
                    { "addresses": ["10.0.0.2"], "conditions": { "ready": true }, "targetRef": { "name": "api-1" } },
                    { "addresses": ["10.0.0.3"], "conditions": { "ready": false } },
                    { "addresses": ["10.0.0.4"], "conditions": { "ready": true, "serving": false } },
                    { "addresses": ["10.0.0.5"], "conditions": { "terminating": true } },
                    { "addresses": ["10.0.0.6"] },
                ]),
            ),
            slice(
                "api-canary-pods",
                serde_json::json!([{ "addresses": ["10.0.1.2"], "targetRef": { "name": "canary-1" } }]),
            ),
            slice(
                "other-pods",
                serde_json::json!([{ "addresses": ["10.0.9.9"] }]),
            ),
        ];
        let seen = Seen {
            slices: slices.to_vec(),
            // api-1 asked for a quarter of its share; 10.0.0.6 asked nothing; an unknown pod's
            // weight is no backend.
            weights: BTreeMap::from([("api-1".to_owned(), 25), ("gone".to_owned(), 0)]),
            migrating: BTreeMap::new(),
        };
        let config = config(&routes(), &seen, &options());
        let listener = &config.listeners[0];
        assert_eq!(listener.name, "shop/api:8000");
        assert_eq!(listener.bind, "0.0.0.0:18000".parse().unwrap());
        let backends: Vec<(&str, String, u32)> = listener
            .backends
            .iter()
            .map(|b| (b.id.as_str(), b.addr.to_string(), b.weight))
            .collect();
        assert_eq!(
            backends,
            [
                ("10.0.0.6", "10.0.0.6:8080".to_owned(), 1000),
                ("api-1", "10.0.0.2:8080".to_owned(), 250)
            ]
        );
        assert_eq!(listener.revisions[0].name, "canary");
        assert_eq!(listener.revisions[0].weight, 10);
        assert_eq!(listener.revisions[0].backends[0].id, "canary-1");
    }

    #[test]
    fn during_a_migration_only_the_pods_named_serve_and_the_revisions_are_left_alone() {
        let slices = [
            slice(
                "api-pods",
                serde_json::json!([
                    { "addresses": ["10.0.0.2"], "targetRef": { "name": "api-old" } },
                    { "addresses": ["10.0.0.3"], "targetRef": { "name": "api-other" } },
                    { "addresses": ["10.0.0.4"], "targetRef": { "name": "api-successor" } },
                ]),
            ),
            slice(
                "api-canary-pods",
                serde_json::json!([{ "addresses": ["10.0.1.2"], "targetRef": { "name": "canary-1" } }]),
            ),
        ];
        let weights = |migrating: BTreeMap<String, Vec<String>>| {
            let seen = Seen {
                slices: slices.to_vec(),
                weights: BTreeMap::from([("api-other".to_owned(), 50)]),
                migrating,
            };
            let config = config(&routes(), &seen, &options());
            let listener = &config.listeners[0];
            let mut all: Vec<(String, u32)> = listener
                .backends
                .iter()
                .chain(&listener.revisions[0].backends)
                .map(|b| (b.id.clone(), b.weight))
                .collect();
            all.sort();
            all
        };
        let held = weights(BTreeMap::from([(
            "api".to_owned(),
            vec!["api-old".to_owned(), "api-other".to_owned()],
        )]));
        assert_eq!(
            held,
            [
                ("api-old".to_owned(), 1000),
                ("api-other".to_owned(), 500),
                ("api-successor".to_owned(), 0),
                ("canary-1".to_owned(), 1000),
            ]
        );
        let switched = weights(BTreeMap::from([(
            "api".to_owned(),
            vec!["api-successor".to_owned(), "api-other".to_owned()],
        )]));
        assert_eq!(switched[0], ("api-old".to_owned(), 0));
        assert_eq!(switched[2], ("api-successor".to_owned(), 1000));
        // Another service's migration changes nothing here.
        let elsewhere = weights(BTreeMap::from([("web".to_owned(), vec![])]));
        assert!(elsewhere
            .iter()
            .all(|(id, w)| *w == if id == "api-other" { 500 } else { 1000 }));
    }

    #[test]
    fn a_listen_port_names_a_service_port_and_its_transport() {
        assert_eq!(
            "dns:53/udp=18053".parse::<ListenPort>(),
            Ok(ListenPort {
                service: "dns".into(),
                port: 53,
                udp: true,
                listen: 18053
            })
        );
        assert!("api=8000".parse::<ListenPort>().is_err());
        assert!("api:http=1".parse::<ListenPort>().is_err());
    }
}
