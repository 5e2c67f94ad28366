//! Checks a whole manifest: the top-level keys, every service, and the rules that span services
//! (dependencies, dependency cycles, published port clashes, the autoscaler's entry and bounds).

use std::collections::BTreeMap;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::draft::{Draft, Published};
use crate::model::{
    DependsCondition, Manifest, Network, RestartCondition, ScheduledCapsule, Volume, VolumeMount,
    DEFAULT_NETWORK,
};
use crate::reader::{child, Checker, Span, Value};
use crate::units;

const TOP_KEYS: &[&str] = &[
    "app",
    "services",
    "volumes",
    "autoscale",
    "schedules",
    "capsules",
    "networks",
];
const NETWORK_DECLARATION_KEYS: &[&str] = &["labels", "subnet"];
const SCHEDULE_KEYS: &[&str] = &["capsule", "cron", "selector", "args", "timeout", "keep"];
const VOLUME_DECLARATION_KEYS: &[&str] = &["labels", "external", "name", "size"];

impl Checker<'_> {
    /// Checks the whole document; the manifest is meaningful only when no diagnostic was recorded.
    pub(crate) fn manifest(&mut self, root: &Spanned<DeTable<'_>>) -> Option<Manifest> {
        let table = root.get_ref();
        self.check_keys(table, "", TOP_KEYS);

        let app = match table.get("app") {
            Some(v) => self.string(v, "app").and_then(|name| {
                self.name(name, v.span(), "app", "application name")
                    .then(|| name.to_owned())
            }),
            None => {
                self.missing(
                    0..0,
                    "app",
                    "add `app = \"NAME\"` at the top of the file, with a lower-case name such as \"shop\"",
                );
                None
            }
        };

        let mut volumes = BTreeMap::new();
        if let Some(v) = table.get("volumes") {
            if let Some(declared) = self.table(v, "volumes") {
                for (key, value) in declared {
                    if let Some(volume) = self.volume_declaration(key, value) {
                        volumes.insert(key.get_ref().to_string(), volume);
                    }
                }
            }
        }

        let mut networks = BTreeMap::new();
        if let Some(v) = table.get("networks") {
            if let Some(declared) = self.table(v, "networks") {
                for (key, value) in declared {
                    let name: &str = key.get_ref();
                    let field = child("networks", name);
                    let name_ok = self.name(name, key.span(), &field, "network name");
                    let Some(t) = self.table(value, &field) else {
                        continue;
                    };
                    self.check_keys(t, &field, NETWORK_DECLARATION_KEYS);
                    let labels = match t.get("labels") {
                        Some(l) => self.scalar_map(l, &child(&field, "labels")),
                        None => Some(BTreeMap::new()),
                    };
                    let subnet = match t.get("subnet") {
                        Some(v) => {
                            let f = child(&field, "subnet");
                            match self.string(v, &f).map(|t| (t, t.parse::<ipnet::Ipv4Net>())) {
                                Some((_, Ok(net))) => Some(Some(net.trunc())),
                                Some((text, Err(_))) => {
                                    self.invalid(v, &f, format!("{text:?} is not an IPv4 subnet such as \"172.28.0.0/16\""));
                                    None
                                }
                                None => None,
                            }
                        }
                        None => Some(None),
                    };
                    if let (true, Some(labels), Some(subnet)) = (name_ok, labels, subnet) {
                        networks.insert(name.to_owned(), Network { labels, subnet });
                    }
                }
            }
        }

        // Before the services: their policies may name the application's own capsules.
        let capsules = match table.get("capsules") {
            Some(v) => self.app_capsules(v),
            None => Some(BTreeMap::new()),
        };

        let mut drafts = BTreeMap::new();
        // Catalogue services: each one's name, its data volume, whether it makes a read service,
        // and where `catalog` is.
        let mut catalog_volumes: Vec<(String, (String, u64), bool, Span)> = Vec::new();
        // PHP web tiers that keep their sessions in a catalogue Redis: the tier, the Redis and
        // where it is named.
        let mut sessions: Vec<(String, String, Span)> = Vec::new();
        // The services written as services, which the catalogue's may not clash with.
        let mut written: Vec<String> = Vec::new();
        let no_services = Some(
            "add a service, such as `[services.web]` with `image = \"host\"` and a `command`"
                .into(),
        );
        match table.get("services") {
            None => self.error(
                0..0,
                "services",
                "the application has no services",
                no_services,
            ),
            Some(v) => {
                if let Some(services) = self.table(v, "services") {
                    if services.is_empty() {
                        let message = "the application has no services";
                        self.error(v.span(), "services", message, no_services);
                    }
                    for (key, value) in services {
                        let name: &str = key.get_ref();
                        self.name(name, key.span(), &child("services", name), "service name");
                        let catalogued = match value.get_ref() {
                            DeValue::Table(table) if table.contains_key("catalog") => {
                                Some(self.catalog_service(name, table, value))
                            }
                            _ => None,
                        };
                        if let Some(catalogued) = catalogued {
                            if let Some(made) = catalogued {
                                // A server's data volume and read service (a task farm has
                                // neither).
                                if let Some(volume) = made.volume {
                                    catalog_volumes.push((
                                        name.to_owned(),
                                        volume,
                                        made.read_service,
                                        made.span,
                                    ));
                                }
                                if let Some((redis, span)) = made.sessions {
                                    sessions.push((name.to_owned(), redis, span));
                                }
                                for draft in made.drafts {
                                    drafts.insert(draft.service.name.clone(), draft);
                                }
                            }
                            continue;
                        }
                        written.push(name.to_owned());
                        if let Some(draft) = self.service(name, value) {
                            drafts.insert(name.to_owned(), draft);
                        }
                        for draft in self.revisions(name, value) {
                            drafts.insert(draft.service.name.clone(), draft);
                        }
                    }
                }
            }
        }

        self.catalog_clashes(&catalog_volumes, &written, &mut volumes);
        self.php_sessions(&sessions, &mut drafts);

        self.dependencies(&drafts);
        self.port_clashes(&drafts);
        self.memberships(&drafts, &networks);
        let autoscale = self.autoscale(table.get("autoscale"), &mut drafts);
        if table.contains_key("autoscale") && autoscale.is_none() {
            // Every problem is reported; `finish` turns them into the error.
            return None;
        }

        let schedules = match table.get("schedules") {
            Some(v) => self.schedules(v, app.as_deref(), &drafts)?,
            None => BTreeMap::new(),
        };

        for draft in drafts.values() {
            for mount in &draft.service.volumes {
                if let VolumeMount::Named { name, .. } = mount {
                    volumes.entry(name.clone()).or_default();
                }
            }
        }
        Some(Manifest {
            app: app?,
            services: drafts
                .into_iter()
                .map(|(name, d)| (name, d.service))
                .collect(),
            volumes,
            autoscale,
            schedules,
            capsules: capsules?,
            networks,
        })
    }

    /// The services and volume a catalogue service makes are its own: no service written in the
    /// manifest has their names, and no `[volumes.NAME]` declares its volume (whose size is its
    /// `storage`), which is declared here.
    fn catalog_clashes(
        &mut self,
        catalogued: &[(String, (String, u64), bool, Span)],
        written: &[String],
        volumes: &mut BTreeMap<String, Volume>,
    ) {
        for (name, (volume, storage), read_service, span) in catalogued {
            let read = crate::catalog::read_service_name(name);
            let field = child(&child("services", name), "catalog");
            if *read_service && !self.name(&read, span.clone(), &field, "read service name") {
                continue;
            }
            if *read_service && written.contains(&read) {
                self.error(
                    span.clone(),
                    &field,
                    format!("the catalogue service `{name}` makes a service `{read}` (its read replicas), and the manifest has a service of that name"),
                    Some(format!("rename one of `{name}` and `{read}`")),
                );
            }
            if volumes.contains_key(volume) {
                self.error(
                    span.clone(),
                    &field,
                    format!("the catalogue service `{name}` keeps its data on the volume `{volume}`, which `[volumes.{volume}]` declares too"),
                    Some(if *read_service {
                        format!("remove `[volumes.{volume}]`: its size is the service's `storage`")
                    } else {
                        format!("remove `[volumes.{volume}]`, or rename the service")
                    }),
                );
                continue;
            }
            volumes.insert(
                volume.clone(),
                Volume {
                    size: Some(*storage),
                    ..Volume::default()
                },
            );
        }
    }

    /// Each PHP web tier's `sessions` names a catalogue Redis service of the manifest; the tier
    /// gets its address and password (`PARACLOUD_SESSIONS`, a session.save_path) and starts
    /// once it is healthy.
    fn php_sessions(
        &mut self,
        sessions: &[(String, String, Span)],
        drafts: &mut BTreeMap<String, Draft>,
    ) {
        use crate::model::{CatalogKind, CatalogRole};
        for (php, redis, span) in sessions {
            let field = child(&child("services", php), "sessions");
            let password = drafts.get(redis).and_then(|d| match &d.service.catalog {
                Some(c) if c.kind == CatalogKind::Redis && c.role == CatalogRole::Primary => {
                    d.service.env.get("REDIS_PASSWORD").cloned()
                }
                _ => None,
            });
            let Some(password) = password else {
                let redises: Vec<&str> = drafts
                    .values()
                    .filter(|d| {
                        d.service.catalog.as_ref().is_some_and(|c| {
                            c.kind == CatalogKind::Redis && c.role == CatalogRole::Primary
                        })
                    })
                    .map(|d| d.service.name.as_str())
                    .collect();
                let hint = match redises.as_slice() {
                    [] => "add a Redis service, `[services.cache]` with `catalog = \"redis\"`, and name it here; or remove `sessions` to keep them as files on the tier's own volume".to_owned(),
                    names => format!("the manifest's catalogue Redis services: {}", names.join(", ")),
                };
                self.error(
                    span.clone(),
                    &field,
                    format!("`{redis}` is not a catalogue Redis service of this application"),
                    Some(hint),
                );
                continue;
            };
            if let Some(draft) = drafts.get_mut(php) {
                draft.service.env.insert(
                    "PARACLOUD_SESSIONS".into(),
                    format!(
                        "tcp://{redis}:6379?auth={}",
                        percent_encoding::utf8_percent_encode(
                            &password,
                            percent_encoding::NON_ALPHANUMERIC
                        )
                    ),
                );
                draft
                    .service
                    .depends_on
                    .insert(redis.clone(), crate::model::DependsCondition::Healthy);
            }
        }
    }

    /// The networks services name are declared (or `default`), their aliases name no service,
    /// and fixed addresses are in their network's subnet, one per service and each service's
    /// own.
    fn memberships(
        &mut self,
        drafts: &BTreeMap<String, Draft>,
        declared: &BTreeMap<String, Network>,
    ) {
        let mut fixed: BTreeMap<std::net::Ipv4Addr, &str> = BTreeMap::new();
        for (name, draft) in drafts {
            // A revision has its service's address.
            if draft.service.revision_of.is_some() {
                continue;
            }
            let addresses: Vec<(&String, std::net::Ipv4Addr)> = draft
                .service
                .networks
                .iter()
                .filter_map(|(n, m)| m.address.map(|a| (n, a)))
                .collect();
            for (i, (network, address)) in addresses.iter().enumerate() {
                let span = draft.network_spans.get(*network).cloned().unwrap_or(0..0);
                let field = child(
                    &child(&child(&child("services", name), "networks"), network),
                    "address",
                );
                if i > 0 {
                    self.error(
                        span.clone(),
                        &field,
                        format!("`{name}` has a fixed address already, {}", addresses[0].1),
                        Some("give a service one fixed address: it is where all its networks reach it".into()),
                    );
                }
                if let Some(other) = fixed.insert(*address, name) {
                    self.error(
                        span.clone(),
                        &field,
                        format!("{address} is the address of `{other}` too"),
                        Some("give each service an address of its own".into()),
                    );
                }
                if let Some(subnet) = declared.get(*network).and_then(|n| n.subnet) {
                    let host = subnet.contains(address)
                        && *address != subnet.network()
                        && *address != subnet.broadcast();
                    if !host {
                        self.error(
                            span.clone(),
                            &field,
                            format!("{address} is not a host address of network `{network}`'s subnet {subnet}"),
                            Some(format!("choose an address inside {subnet}")),
                        );
                    }
                }
            }
        }
        for (name, draft) in drafts {
            for (network, membership) in &draft.service.networks {
                let span = draft.network_spans.get(network).cloned().unwrap_or(0..0);
                let field = child(&child(&child("services", name), "networks"), network);
                if network != DEFAULT_NETWORK && !declared.contains_key(network) {
                    let mut known: Vec<&str> = declared.keys().map(String::as_str).collect();
                    known.push(DEFAULT_NETWORK);
                    self.error(
                        span.clone(),
                        &field,
                        format!("network `{network}` is not declared"),
                        Some(format!(
                            "declare it with `[networks.{network}]`; the networks are: {}",
                            known.join(", ")
                        )),
                    );
                }
                for alias in &membership.aliases {
                    if drafts.contains_key(alias) && alias != name {
                        self.error(
                            span.clone(),
                            &child(&field, "aliases"),
                            format!("alias `{alias}` is the name of another service"),
                            Some("choose an alias no service has".into()),
                        );
                    }
                }
            }
        }
    }

    /// `[schedules.NAME]`: a capsule run on a cron schedule on the instances its selector
    /// matches; it must be allowed on some service the selector can match.
    fn schedules(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        app: Option<&str>,
        drafts: &BTreeMap<String, Draft>,
    ) -> Option<BTreeMap<String, ScheduledCapsule>> {
        let table = self.table(value, "schedules")?;
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (key, item) in table {
            let name: &str = key.get_ref();
            let field = child("schedules", name);
            ok &= self.name(name, key.span(), &field, "schedule name");
            match self.schedule(item, &field, app, drafts) {
                Some(schedule) => {
                    out.insert(name.to_owned(), schedule);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn schedule(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        app: Option<&str>,
        drafts: &BTreeMap<String, Draft>,
    ) -> Option<ScheduledCapsule> {
        let table = self.table(value, field)?;
        self.check_keys(table, field, SCHEDULE_KEYS);
        let span = value.span();
        let required = |this: &mut Self, key: &str, example: &str| {
            let v = table.get(key);
            if v.is_none() {
                this.missing(
                    span.clone(),
                    &child(field, key),
                    format!("add `{key} = {example}`"),
                );
            }
            v
        };
        let capsule_v = required(self, "capsule", "\"logrotate\"");
        let cron_v = required(self, "cron", "\"0 * * * *\" (every hour, UTC)");
        let selector_v = required(self, "selector", "\"service=web\"");
        let capsule = capsule_v.and_then(|v| {
            let name = self.string(v, &child(field, "capsule"))?;
            match self.capsules.get(name) {
                Some(spec) => Some(spec.clone()),
                None if self.capsules.is_broken(name) => None,
                None => {
                    let names = self.capsules.names();
                    let hint = match self.capsules.suggest(name) {
                        Some(close) => format!("did you mean {close:?}?"),
                        None => format!("the capsules are {}", names.join(", ")),
                    };
                    self.error(
                        v.span(),
                        &child(field, "capsule"),
                        format!("unknown capsule {name:?}"),
                        Some(hint),
                    );
                    None
                }
            }
        });
        let cron = cron_v.and_then(|v| {
            let text = self.string(v, &child(field, "cron"))?;
            match paracloud_capsule::Schedule::parse(text) {
                Ok(schedule) => Some(schedule),
                Err(e) => {
                    let hint = e.hint().to_string();
                    self.error(v.span(), &child(field, "cron"), e.to_string(), Some(hint));
                    None
                }
            }
        });
        let selector = selector_v.and_then(|v| {
            let text = self.string(v, &child(field, "selector"))?;
            match paracloud_capsule::Selector::parse(text) {
                Ok(selector) => Some((v, text.to_owned(), selector)),
                Err(e) => {
                    self.error(v.span(), &child(field, "selector"), e.to_string(), None);
                    None
                }
            }
        });
        let args = match table.get("args") {
            Some(v) => Some(
                self.strings(v, &child(field, "args"))?
                    .iter()
                    .map(|(s, _)| s.to_string())
                    .collect(),
            ),
            None => Some(Vec::new()),
        };
        let timeout = match table.get("timeout") {
            Some(v) => Some(Some(self.positive_duration(v, &child(field, "timeout"))?)),
            None => Some(None),
        };
        let keep = match table.get("keep") {
            Some(v) => self.schedule_keep(v, &child(field, "keep")).map(Some),
            None => Some(None),
        };
        let (capsule, cron, (selector_value, selector_text, selector), args, timeout, keep) =
            (capsule?, cron?, selector?, args?, timeout?, keep?);
        let selector_field = child(field, "selector");
        if let (Some(wanted), Some(app)) = (&selector.app, app) {
            if wanted != app {
                self.error(
                    selector_value.span(),
                    &selector_field,
                    format!("the selector names application {wanted:?}, not this one"),
                    Some(format!("a schedule runs on its own application's instances: write app={app} or leave app= out")),
                );
                return None;
            }
        }
        // The services the selector can match, and whether the policy lets the capsule attach.
        let wanted_service = selector.service.clone().or_else(|| {
            selector
                .instance
                .as_ref()
                .and_then(|i| i.rsplit_once('.').map(|(s, _)| s.to_string()))
        });
        let candidates: Vec<&String> = drafts
            .keys()
            .filter(|s| wanted_service.as_ref().is_none_or(|w| w == *s))
            .filter(|s| {
                selector
                    .labels
                    .iter()
                    .all(|(k, v)| drafts[*s].service.labels.get(k) == Some(v))
            })
            .collect();
        if candidates.is_empty() {
            self.error(
                selector_value.span(),
                &selector_field,
                format!("selector {selector_text:?} matches no service of this application"),
                Some(format!(
                    "the services are {}",
                    drafts.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
            );
            return None;
        }
        let refusals: Vec<String> = candidates
            .iter()
            .filter_map(|s| {
                paracloud_capsule::check(&capsule, s, &drafts[*s].service.capsules).err()
            })
            .map(|r| r.0)
            .collect();
        if refusals.len() == candidates.len() {
            self.error(
                selector_value.span(),
                &selector_field,
                format!(
                    "the policy lets capsule {:?} attach to no service this selector matches",
                    capsule.name
                ),
                refusals.into_iter().next(),
            );
            return None;
        }
        Some(ScheduledCapsule {
            capsule: capsule.name,
            cron,
            selector: selector_text,
            args,
            timeout,
            keep,
        })
    }

    /// A schedule's `keep`: how many of its last successful runs keep their files.
    fn schedule_keep(&mut self, value: &Value<'_>, field: &str) -> Option<u32> {
        let max = crate::model::MAX_KEEP;
        let n = self.whole(value, field, 0, u64::MAX)?;
        if !(1..=max).contains(&n) {
            self.error(
                value.span(),
                field,
                format!("keep must be between 1 and {max} runs, found {n}"),
                Some(format!(
                    "write how many of the last successful runs keep their files, such as `keep = 7` for a week of daily dumps; leave `keep` out to let them go with the daemon's last {} runs",
                    crate::model::RECENT_RUNS_KEPT
                )),
            );
            return None;
        }
        u32::try_from(n).ok()
    }

    fn volume_declaration(
        &mut self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<Volume> {
        let name: &str = key.get_ref();
        let field = child("volumes", name);
        let name_ok = self.name(name, key.span(), &field, "volume name");
        let table = self.table(value, &field)?;
        self.check_keys(table, &field, VOLUME_DECLARATION_KEYS);
        let labels = match table.get("labels") {
            Some(v) => self.scalar_map(v, &child(&field, "labels"))?,
            None => BTreeMap::new(),
        };
        let external = match table.get("external") {
            Some(v) => self.boolean(v, &child(&field, "external"))?,
            None => false,
        };
        let external = match (external, table.get("name")) {
            (true, Some(v)) => {
                let f = child(&field, "name");
                let other = self.string(v, &f)?;
                if !self.name(other, v.span(), &f, "external volume name") {
                    return None;
                }
                Some(other.to_owned())
            }
            (true, None) => Some(name.to_owned()),
            (false, Some(v)) => {
                self.error(
                    v.span(),
                    &child(&field, "name"),
                    "`name` names an external volume",
                    Some(
                        "add `external = true`, or remove `name`: the application's own volumes are named by their key"
                            .into(),
                    ),
                );
                return None;
            }
            (false, None) => None,
        };
        let size = match table.get("size") {
            None => None,
            Some(_) if external.is_some() => {
                let v = table.get("size").unwrap();
                self.error(
                    v.span(),
                    &child(&field, "size"),
                    "an external volume's size is its administrator's",
                    Some(
                        "remove `size`: the platform does not make or limit external volumes"
                            .into(),
                    ),
                );
                return None;
            }
            Some(v) => Some(self.size(v, &child(&field, "size"), &crate::service::VOLUME_SIZE)?),
        };
        name_ok.then_some(Volume {
            labels,
            external,
            size,
        })
    }

    /// Dependencies name other services, `healthy` ones have a health check, and none loops.
    fn dependencies(&mut self, drafts: &BTreeMap<String, Draft>) {
        let mut graph: BTreeMap<&str, Vec<(&str, Span, &str)>> = BTreeMap::new();
        for (name, draft) in drafts {
            let edges = graph.entry(name.as_str()).or_default();
            for (dep, condition) in &draft.service.depends_on {
                let (span, dep_field) = match draft.depends_spans.get(dep) {
                    Some((span, field)) => (span.clone(), field.as_str()),
                    None => (0..0, "depends_on"),
                };
                if dep == name {
                    self.error(
                        span.clone(),
                        dep_field,
                        format!("service `{name}` depends on itself"),
                        Some(format!("remove `{dep}` from its `depends_on`")),
                    );
                    continue;
                }
                let Some(target) = drafts.get(dep) else {
                    let hint = match units::suggest(dep, drafts.keys().map(String::as_str)) {
                        Some(close) => format!("did you mean `{close}`?"),
                        None => format!(
                            "the services are: {}",
                            drafts.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    };
                    self.error(
                        span.clone(),
                        dep_field,
                        format!("`{dep}` is not a service of this application"),
                        Some(hint),
                    );
                    continue;
                };
                if *condition == DependsCondition::Healthy && !target.has_health {
                    self.error(
                        span.clone(),
                        dep_field,
                        format!("`{dep}` has no health check, so it can never be healthy"),
                        Some(format!(
                            "add a `health` check to `{dep}`, or depend on it with \"started\""
                        )),
                    );
                }
                if *condition == DependsCondition::Completed
                    && target.service.restart.condition == RestartCondition::Always
                {
                    self.error(
                        span.clone(),
                        dep_field,
                        format!("`{dep}` restarts always, so it never stays completed"),
                        Some(format!(
                            "give `{dep}` `restart = \"no\"` (or \"on-failure\"), as a one-off job has"
                        )),
                    );
                }
                edges.push((dep.as_str(), span, dep_field));
            }
        }
        for (cycle, span, field) in find_cycles(&graph) {
            self.error(
                span,
                field,
                format!("dependency cycle: {}", cycle.join(" -> ")),
                Some(
                    "remove one of these dependencies: services in a cycle can never start".into(),
                ),
            );
        }
    }

    /// Two published addresses on the same host port clash when their IPs are equal or one of
    /// them is a wildcard (0.0.0.0 or ::), since both cannot be bound; UDP and TCP are bound
    /// side by side.
    fn port_clashes(&mut self, drafts: &BTreeMap<String, Draft>) {
        let mut published: Vec<(&Published, &str)> = drafts
            .iter()
            .flat_map(|(name, draft)| draft.publishes.iter().map(move |p| (p, name.as_str())))
            .collect();
        published.sort_by_key(|(p, _)| p.span.start);
        for (i, (this, _)) in published.iter().enumerate() {
            let (addr, other) = (this.addr, &published[..i]);
            let earlier = other.iter().find(|(other, _)| {
                other.addr.port() == addr.port()
                    && other.udp == this.udp
                    && (other.addr.ip() == addr.ip()
                        || other.addr.ip().is_unspecified()
                        || addr.ip().is_unspecified())
            });
            if let Some((other, owner)) = earlier {
                let line = self.line_of(other.span.start);
                self.error(
                    this.span.clone(),
                    &this.field,
                    format!(
                        "port clash: {addr}{} is already published by service `{owner}` as {}",
                        if this.udp { "/udp" } else { "" },
                        other.addr
                    ),
                    Some(format!(
                        "publish on another host port, or remove the entry on line {line}"
                    )),
                );
            }
        }
    }
}

/// Every cycle in the dependency graph, each as the path of names from its first service back to
/// it, with the span and field of the entry closing it.
fn find_cycles<'g>(
    graph: &BTreeMap<&'g str, Vec<(&'g str, Span, &'g str)>>,
) -> Vec<(Vec<&'g str>, Span, &'g str)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit<'g>(
        node: &'g str,
        graph: &BTreeMap<&'g str, Vec<(&'g str, Span, &'g str)>>,
        marks: &mut BTreeMap<&'g str, Mark>,
        path: &mut Vec<&'g str>,
        cycles: &mut Vec<(Vec<&'g str>, Span, &'g str)>,
    ) {
        marks.insert(node, Mark::OnPath);
        path.push(node);
        for (next, span, field) in graph.get(node).map(Vec::as_slice).unwrap_or_default() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::New => visit(next, graph, marks, path, cycles),
                Mark::OnPath => {
                    let start = path.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next);
                    cycles.push((cycle, span.clone(), field));
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut cycles = Vec::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            visit(node, graph, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    cycles
}
