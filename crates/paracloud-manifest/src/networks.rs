//! A service's `networks`: a list of network names, or a table of them with their aliases.

use std::collections::BTreeMap;

use toml::de::DeValue;

use crate::model::ServiceNetwork;
use crate::reader::{child, index, Checker, Span, Value};

const MEMBERSHIP_KEYS: &[&str] = &["aliases", "address"];

impl Checker<'_> {
    pub(crate) fn service_networks(
        &mut self,
        value: &Value<'_>,
        field: &str,
    ) -> (BTreeMap<String, ServiceNetwork>, BTreeMap<String, Span>) {
        let mut networks = BTreeMap::new();
        let mut spans = BTreeMap::new();
        match value.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let f = index(field, i);
                    let Some(name) = self.string(item, &f) else {
                        continue;
                    };
                    if networks.contains_key(name) {
                        self.invalid(item, &f, format!("network `{name}` is named twice"));
                        continue;
                    }
                    networks.insert(name.to_owned(), ServiceNetwork::default());
                    spans.insert(name.to_owned(), item.span());
                }
            }
            DeValue::Table(table) => {
                for (key, item) in table {
                    let name = key.get_ref().to_string();
                    let f = child(field, &name);
                    let membership = match item.get_ref() {
                        DeValue::Table(t) => {
                            self.check_keys(t, &f, MEMBERSHIP_KEYS);
                            let aliases = match t.get("aliases") {
                                Some(a) => self.aliases(a, &child(&f, "aliases")),
                                None => Vec::new(),
                            };
                            let address = t
                                .get("address")
                                .and_then(|a| self.fixed_address(a, &child(&f, "address")));
                            ServiceNetwork { aliases, address }
                        }
                        _ => {
                            self.type_error(item, &f, "a table such as `{ aliases = [\"db\"] }`");
                            continue;
                        }
                    };
                    networks.insert(name.clone(), membership);
                    spans.insert(name, key.span());
                }
            }
            _ => self.type_error(value, field, "a list of network names, or a table of them"),
        }
        let written = match value.get_ref() {
            DeValue::Array(a) => !a.is_empty(),
            DeValue::Table(t) => !t.is_empty(),
            _ => true,
        };
        if !written {
            self.invalid(value, field, "a service must be on at least one network");
        }
        (networks, spans)
    }

    /// A service's fixed address: a unicast IPv4 address outside loopback and link-local.
    fn fixed_address(&mut self, value: &Value<'_>, field: &str) -> Option<std::net::Ipv4Addr> {
        let text = self.string(value, field)?;
        let Ok(address) = text.parse::<std::net::Ipv4Addr>() else {
            self.invalid(value, field, format!("{text:?} is not an IPv4 address"));
            return None;
        };
        if address.is_loopback()
            || address.is_link_local()
            || address.is_multicast()
            || address.is_broadcast()
            || address.is_unspecified()
        {
            self.invalid(
                value,
                field,
                format!("{address} cannot be a service's address (loopback, link-local, multicast, broadcast or unspecified)"),
            );
            return None;
        }
        Some(address)
    }

    /// Host names: dot-separated DNS labels.
    fn aliases(&mut self, value: &Value<'_>, field: &str) -> Vec<String> {
        let Some(items) = self.strings(value, field) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, (alias, span)) in items.into_iter().enumerate() {
            let valid = !alias.is_empty()
                && alias.len() <= 253
                && alias.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            if valid {
                out.push(alias.to_owned());
            } else {
                self.error(
                    span,
                    &index(field, i),
                    format!("invalid alias {alias:?}"),
                    Some(
                        "write a host name: letters, digits, `-` and `_` in dot-separated labels"
                            .into(),
                    ),
                );
            }
        }
        out
    }
}
