//! `networks`: the top-level declarations and each service's memberships. Services reach only
//! the services they share a network with; a service without `networks` is on `default`.

use crate::out::Out;
use crate::table::Table;
use crate::yaml::{Kind, Node};
use crate::{child, out, Reader};

/// A network's name in the manifest: Compose allows `_`, a manifest's names are DNS labels.
fn network_name(name: &str) -> String {
    name.replace('_', "-")
}

/// The top-level `networks`, written out as `[networks.NAME]`; returns their Compose names.
pub(crate) fn declared(r: &mut Reader<'_>, node: &Node, out: &mut Out) -> Vec<String> {
    let mut names = Vec::new();
    if node.is_null() {
        return names;
    }
    let Some(entries) = r.map(node, "networks") else {
        return names;
    };
    for (key, value) in entries {
        let name = key.text().unwrap_or_default().to_owned();
        let field = child("networks", &name);
        let renamed = network_name(&name);
        names.push(name.clone());
        let mut labels = Vec::new();
        let mut subnet: Option<(String, usize)> = None;
        if !value.is_null() {
            let Some(settings) = r.map(value, &field) else {
                continue;
            };
            for (k, v) in settings {
                let setting = k.text().unwrap_or_default();
                let f = child(&field, setting);
                match setting {
                    _ if setting.starts_with("x-") => {}
                    "driver" => match v.text() {
                        Some("bridge") => {}
                        _ => r.refuse(
                            k,
                            &f,
                            "a network is a set of the application's services on its own bridge",
                            "remove `driver`, or write `driver: bridge`",
                        ),
                    },
                    // Instances never reach beyond the machine's application networks: every
                    // network is internal, whatever the file says.
                    "internal" | "attachable" => {
                        r.boolean(v, &f);
                    }
                    "labels" => {
                        if let Some(dict) = r.dict(v, &f) {
                            labels = dict;
                        }
                    }
                    "enable_ipv6" => {
                        if r.boolean(v, &f) == Some(true) {
                            r.refuse(
                                k,
                                &f,
                                "application networks are IPv4",
                                "remove `enable_ipv6`",
                            );
                        }
                    }
                    "ipam" => subnet = ipam(r, v, &f),
                    "external" | "name" => r.refuse(
                        k,
                        &f,
                        "an application's networks are its own, made at `up`",
                        &format!("remove `{setting}`"),
                    ),
                    "driver_opts" => r.refuse(
                        k,
                        &f,
                        "networks take no driver options",
                        "remove `driver_opts`",
                    ),
                    _ => r.unknown(
                        k,
                        &f,
                        &["driver", "internal", "attachable", "labels", "enable_ipv6"],
                    ),
                }
            }
        }
        out.blank();
        out.line(
            format!("[networks.{}]", out::key(&renamed)),
            key.offset,
            &field,
        );
        if let Some((subnet, offset)) = subnet {
            out.line(
                format!("subnet = {}", out::string(&subnet)),
                offset,
                &child(&child(&child(&field, "ipam"), "config"), "subnet"),
            );
        }
        if !labels.is_empty() {
            out.labels(
                format!("[networks.{}.labels]", out::key(&renamed)),
                labels,
                key.offset,
                &child(&field, "labels"),
            );
        }
    }
    names
}

/// A network's `ipam`: the subnet of its `config` (one IPv4 subnet), where the fixed addresses
/// of its services (`ipv4_address`) must be. The daemon picks the application's own subnet; this
/// one only bounds the fixed addresses.
fn ipam(r: &mut Reader<'_>, node: &Node, field: &str) -> Option<(String, usize)> {
    let settings = r.map(node, field)?;
    let mut subnet = None;
    for (k, v) in settings {
        let setting = k.text().unwrap_or_default();
        let f = child(field, setting);
        match setting {
            "driver" => {
                if v.text() != Some("default") {
                    r.refuse(
                        k,
                        &f,
                        "addresses come from the daemon",
                        "remove `driver`, or write `driver: default`",
                    );
                }
            }
            "config" => {
                let Kind::Seq(items) = &v.kind else {
                    r.expected(v, &f, "a list of subnets");
                    continue;
                };
                for (i, item) in items.iter().enumerate() {
                    let itf = format!("{f}[{i}]");
                    let Some(entries) = r.map(item, &itf) else {
                        continue;
                    };
                    for (ck, cv) in entries {
                        let c = ck.text().unwrap_or_default();
                        let cf = child(&itf, c);
                        match c {
                            "subnet" if subnet.is_none() => {
                                subnet = r.string(cv, &cf).map(|s| (s.to_owned(), cv.offset));
                            }
                            "subnet" => r.refuse(ck, &cf, "a network has one subnet for its fixed addresses", "keep one `subnet`"),
                            "gateway" | "ip_range" | "aux_addresses" => r.refuse(ck, &cf, "the daemon gives the application its gateway and its instances their addresses", &format!("remove `{c}`; keep `subnet` for the services' `ipv4_address`")),
                            _ => r.unknown(ck, &cf, &["subnet"]),
                        }
                    }
                }
            }
            "options" => r.refuse(k, &f, "addresses come from the daemon", "remove `options`"),
            _ => r.unknown(k, &f, &["driver", "config"]),
        }
    }
    subnet
}

/// A service's `networks`: a list of names, or a mapping of them to `aliases` and
/// `ipv4_address`.
pub(crate) fn service(
    r: &mut Reader<'_>,
    declared: &[String],
    node: &Node,
    field: &str,
    t: &mut Table,
) {
    let mut parts = Vec::new();
    let check = |r: &mut Reader<'_>, name: &str, at: &Node, f: &str| -> bool {
        if name == "default" || declared.iter().any(|d| d == name) {
            return true;
        }
        let hint = match declared.is_empty() {
            true => format!("declare it at the top level: `networks: {{ {name}: {{}} }}`"),
            false => format!("the networks declared are: {}", declared.join(", ")),
        };
        r.error(
            at.offset,
            f,
            format!("network `{name}` is not declared in the top-level `networks`"),
            Some(hint),
        );
        false
    };
    match &node.kind {
        Kind::Seq(_) => {
            for (i, (name, item)) in r
                .strings(node, field)
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                if check(r, name, item, &format!("{field}[{i}]")) {
                    parts.push(format!("{} = {{}}", out::key(&network_name(name))));
                }
            }
        }
        Kind::Map(entries) => {
            for (key, value) in entries {
                let name = key.text().unwrap_or_default();
                let f = child(field, name);
                if !check(r, name, key, &f) {
                    continue;
                }
                let mut aliases = Vec::new();
                let mut address = None;
                if !value.is_null() {
                    let Some(settings) = r.map(value, &f) else {
                        continue;
                    };
                    for (k, v) in settings {
                        let setting = k.text().unwrap_or_default();
                        let sf = child(&f, setting);
                        match setting {
                            _ if setting.starts_with("x-") => {}
                            "aliases" => {
                                aliases = r
                                    .strings(v, &sf)
                                    .unwrap_or_default()
                                    .into_iter()
                                    .map(|(a, _)| a.to_owned())
                                    .collect();
                            }
                            "ipv4_address" => address = r.string(v, &sf).map(str::to_owned),
                            "ipv6_address" | "link_local_ips" => r.refuse(
                                k,
                                &sf,
                                "application networks are IPv4",
                                &format!("remove `{setting}`"),
                            ),
                            "mac_address" | "driver_opts" | "priority" | "gw_priority"
                            | "interface_name" => r.refuse(
                                k,
                                &sf,
                                "an instance has one interface on its application's bridge",
                                &format!("remove `{setting}`"),
                            ),
                            _ => r.unknown(k, &sf, &["aliases", "ipv4_address"]),
                        }
                    }
                }
                let address = address
                    .map(|a| format!(", address = {}", out::string(&a)))
                    .unwrap_or_default();
                parts.push(format!(
                    "{} = {{ aliases = {}{address} }}",
                    out::key(&network_name(name)),
                    out::strings(&aliases)
                ));
            }
        }
        _ => r.expected(node, field, "a list of networks or a mapping"),
    }
    if !parts.is_empty() {
        t.key(
            format!("networks = {{ {} }}", parts.join(", ")),
            node.offset,
            field,
        );
    }
}
