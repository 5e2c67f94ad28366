//! Where a registry's images are pulled from: the state root's `registries.toml`, in the manner
//! of containers' `registries.conf`. A machine with no route to Docker Hub names a mirror of it:
//!
//! ```toml
//! # Pulls of docker.io try the mirrors in order, then Docker Hub itself.
//! [registry."docker.io"]
//! mirrors = ["127.0.0.1:5000", { location = "mirror.internal:5000", insecure = true }]
//!
//! # A longer prefix wins: docker.io/library/nginx is 127.0.0.1:5000/hub/nginx, and only there.
//! [registry."docker.io/library"]
//! mirrors = ["127.0.0.1:5000/hub"]
//! mirrors_only = true
//! ```
//!
//! The key is a registry (`docker.io`, `ghcr.io`, `HOST:PORT`), optionally with a repository
//! prefix; the longest key that is a prefix of a reference's resolved name (whole path
//! components) applies. A mirror's location replaces that prefix. A mirror is reached over HTTPS,
//! or plain HTTP when it has a port and answers there without TLS (as any registry); `insecure`
//! speaks plain HTTP to it from the start. What to try is decided here, without I/O
//! ([`Registries::sources`]); `paracloud-image` reads the file and its registry client tries
//! the sources in order.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::reference::{self, Reference};

/// The file's name in the state root.
pub const FILE: &str = "registries.toml";

/// The mirrors of one registry, or of a repository prefix in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `registry[/path]`, Docker Hub's written `docker.io`.
    pub prefix: String,
    pub mirrors: Vec<Mirror>,
    /// Only the mirrors are tried, never the registry itself.
    pub mirrors_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `host[:port][/path]`.
    pub location: String,
    /// Plain HTTP from the start.
    pub insecure: bool,
}

/// What the file says: rules, the longest prefix first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registries {
    rules: Vec<Rule>,
}

/// One place a pull tries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The registry as named (`docker.io`, `HOST:PORT`): what credentials are looked up by.
    pub registry: String,
    /// The host (and port) to connect to.
    pub host: String,
    /// The repository there.
    pub repository: String,
    /// Plain HTTP from the start.
    pub insecure: bool,
    /// A mirror rather than the registry the reference names.
    pub mirror: bool,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

/// Docker Hub's other names are `docker.io` in keys.
fn canonical_prefix(prefix: &str) -> String {
    match prefix.split_once('/') {
        Some((registry, rest)) if reference::is_docker_hub(registry) => {
            format!("{}/{rest}", reference::DOCKER_HUB)
        }
        None if reference::is_docker_hub(prefix) => reference::DOCKER_HUB.into(),
        _ => prefix.to_owned(),
    }
}

impl Registries {
    /// Parses the file's text; an error starts with `line N: `.
    pub fn parse(text: &str) -> Result<Self, String> {
        let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let at = |span: std::ops::Range<usize>, message: String| {
            format!("line {}: {message}", line(span.start))
        };
        let table = DeTable::parse(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            at(span, format!("not valid TOML: {}", e.message().trim_end()))
        })?;
        let table = table.into_inner();
        let mut rules = Vec::new();
        for (key, value) in table.iter() {
            if key.get_ref().as_ref() != "registry" {
                return Err(at(
                    key.span(),
                    format!(
                        "unknown key `{}`: the file holds `[registry.\"NAME\"]` tables, such as [registry.\"docker.io\"]",
                        key.get_ref()
                    ),
                ));
            }
            let DeValue::Table(registries) = value.get_ref() else {
                return Err(at(
                    value.span(),
                    "`registry` must be tables, such as [registry.\"docker.io\"]".into(),
                ));
            };
            for (name, rule) in registries.iter() {
                rules.push(parse_rule(name, rule, &at)?);
            }
        }
        rules.sort_by_key(|r: &Rule| std::cmp::Reverse(r.prefix.len()));
        Ok(Self { rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The places to pull `reference` from, in order: the mirrors of the longest rule whose
    /// prefix it starts with, then (unless `mirrors_only`) the registry itself, Docker Hub at
    /// its API's host.
    pub fn sources(&self, reference: &Reference) -> Vec<Source> {
        let resolved = reference.clone().resolved();
        let registry = resolved.registry_or_hub().to_owned();
        let name = format!("{registry}/{}", resolved.repository);
        let own = Source {
            registry: registry.clone(),
            host: reference::endpoint_host(&registry).to_owned(),
            repository: resolved.repository.clone(),
            insecure: false,
            mirror: false,
        };
        let rule = self.rules.iter().find(|r| {
            name == r.prefix
                || name
                    .strip_prefix(&r.prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        });
        let Some(rule) = rule else {
            return vec![own];
        };
        let rest = &name[rule.prefix.len()..];
        let mut sources: Vec<Source> = rule
            .mirrors
            .iter()
            .map(|m| {
                let target = format!("{}{rest}", m.location);
                let (host, repository) = target.split_once('/').unwrap_or((&target, ""));
                Source {
                    registry: host.to_owned(),
                    host: reference::endpoint_host(host).to_owned(),
                    repository: repository.to_owned(),
                    insecure: m.insecure,
                    mirror: true,
                }
            })
            .collect();
        if !rule.mirrors_only {
            sources.push(own);
        }
        sources
    }
}

type At<'a> = dyn Fn(std::ops::Range<usize>, String) -> String + 'a;

fn parse_rule(
    name: &Spanned<std::borrow::Cow<'_, str>>,
    value: &Spanned<DeValue<'_>>,
    at: &At<'_>,
) -> Result<Rule, String> {
    let prefix = canonical_prefix(name.get_ref());
    let here = format!("[registry.\"{}\"]", name.get_ref());
    check_location(&prefix).map_err(|e| at(name.span(), format!("{here}: {e}")))?;
    let DeValue::Table(table) = value.get_ref() else {
        return Err(at(
            value.span(),
            format!("{here} must be a table with `mirrors = [...]`"),
        ));
    };
    let mut rule = Rule {
        prefix,
        mirrors: Vec::new(),
        mirrors_only: false,
    };
    for (key, value) in table.iter() {
        match key.get_ref().as_ref() {
            "mirrors" => {
                let DeValue::Array(items) = value.get_ref() else {
                    return Err(at(
                        value.span(),
                        format!("{here}: mirrors must be a list, such as [\"127.0.0.1:5000\"]"),
                    ));
                };
                for item in items.iter() {
                    rule.mirrors.push(parse_mirror(item, &here, at)?);
                }
            }
            "mirrors_only" => match value.get_ref() {
                DeValue::Boolean(b) => rule.mirrors_only = *b,
                _ => {
                    return Err(at(
                        value.span(),
                        format!("{here}: mirrors_only must be true or false"),
                    ))
                }
            },
            other => {
                return Err(at(
                    key.span(),
                    format!(
                    "{here}: unknown key `{other}`: a registry has `mirrors` and `mirrors_only`"
                ),
                ))
            }
        }
    }
    if rule.mirrors_only && rule.mirrors.is_empty() {
        return Err(at(
            name.span(),
            format!(
                "{here}: mirrors_only with no mirrors leaves nowhere to pull from: list `mirrors`"
            ),
        ));
    }
    Ok(rule)
}

fn parse_mirror(item: &Spanned<DeValue<'_>>, here: &str, at: &At<'_>) -> Result<Mirror, String> {
    let (location, insecure) = match item.get_ref() {
        DeValue::String(s) => (s.to_string(), false),
        DeValue::Table(t) => {
            let mut location = None;
            let mut insecure = false;
            for (key, value) in t.iter() {
                match (key.get_ref().as_ref(), value.get_ref()) {
                    ("location", DeValue::String(s)) => location = Some(s.to_string()),
                    ("insecure", DeValue::Boolean(b)) => insecure = *b,
                    ("location" | "insecure", _) => {
                        return Err(at(
                            value.span(),
                            format!("{here}: a mirror's location is a string and insecure true or false"),
                        ))
                    }
                    (other, _) => {
                        return Err(at(
                            key.span(),
                            format!("{here}: unknown key `{other}` in a mirror: it has `location` and `insecure`"),
                        ))
                    }
                }
            }
            let location = location.ok_or_else(|| {
                at(
                    item.span(),
                    format!("{here}: a mirror needs a location, such as {{ location = \"127.0.0.1:5000\", insecure = true }}"),
                )
            })?;
            (location, insecure)
        }
        _ => {
            return Err(at(
                item.span(),
                format!("{here}: a mirror is \"HOST[:PORT][/PATH]\" or {{ location = \"...\", insecure = true }}"),
            ))
        }
    };
    check_location(&location).map_err(|e| at(item.span(), format!("{here}: mirror: {e}")))?;
    if location
        .split('/')
        .next()
        .is_some_and(reference::is_docker_hub)
    {
        return Err(at(
            item.span(),
            format!(
                "{here}: mirror {location:?} is Docker Hub itself; a mirror is another registry"
            ),
        ));
    }
    Ok(Mirror {
        location: location.trim_end_matches('/').to_owned(),
        insecure,
    })
}

/// `host[:port][/path]`, as a reference's name is written (checked by parsing one).
fn check_location(location: &str) -> Result<(), String> {
    let hint = "write HOST[:PORT][/PATH], such as \"127.0.0.1:5000\" or \"docker.io/library\", without a scheme";
    if location.contains("://") {
        return Err(format!("{location:?} has a scheme; {hint}"));
    }
    let trimmed = location.trim_end_matches('/');
    match format!("{trimmed}/x").parse::<Reference>() {
        Ok(r) if r.registry.as_deref() == trimmed.split('/').next() => Ok(()),
        Ok(_) => Err(format!(
            "{location:?} does not start with a registry host (one with a '.' or a ':', or localhost); {hint}"
        )),
        Err(e) => Err(format!("{location:?}: {e}; {hint}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(config: &str, reference: &str) -> Vec<String> {
        Registries::parse(config)
            .unwrap()
            .sources(&reference.parse().unwrap())
            .iter()
            .map(|s| {
                format!(
                    "{} {}/{}{}",
                    s.registry,
                    s.host,
                    s.repository,
                    if s.insecure { " insecure" } else { "" }
                )
            })
            .collect()
    }

    #[test]
    fn without_a_file_docker_hub_names_go_to_docker_hubs_endpoint() {
        assert_eq!(
            sources("", "nginx"),
            ["docker.io registry-1.docker.io/library/nginx"]
        );
        assert_eq!(
            sources("", "127.0.0.1:5000/a/b:1"),
            ["127.0.0.1:5000 127.0.0.1:5000/a/b"]
        );
    }

    #[test]
    fn mirrors_come_first_in_order_then_the_registry() {
        let config = r#"
[registry."docker.io"]
mirrors = ["127.0.0.1:5000", { location = "m.internal:81", insecure = true }]
"#;
        assert_eq!(
            sources(config, "bitnami/redis:7"),
            [
                "127.0.0.1:5000 127.0.0.1:5000/bitnami/redis",
                "m.internal:81 m.internal:81/bitnami/redis insecure",
                "docker.io registry-1.docker.io/bitnami/redis",
            ]
        );
        // Other registries are untouched.
        assert_eq!(sources(config, "ghcr.io/o/r"), ["ghcr.io ghcr.io/o/r"]);
    }

    #[test]
    fn the_longest_prefix_wins_and_rewrites_the_name() {
        let config = r#"
[registry."index.docker.io"]
mirrors = ["127.0.0.1:5000"]
[registry."docker.io/library"]
mirrors = ["127.0.0.1:5000/hub/"]
mirrors_only = true
"#;
        assert_eq!(
            sources(config, "nginx:alpine"),
            ["127.0.0.1:5000 127.0.0.1:5000/hub/nginx"]
        );
        // `docker.io/libraryx` is not under `docker.io/library`.
        assert_eq!(
            sources(config, "libraryx/a"),
            [
                "127.0.0.1:5000 127.0.0.1:5000/libraryx/a",
                "docker.io registry-1.docker.io/libraryx/a"
            ]
        );
    }

    #[test]
    fn bad_files_are_located_and_explained() {
        let bad = |text: &str| Registries::parse(text).unwrap_err();
        assert_eq!(
            bad("\n[registry.\"docker.io\"]\nmirors = []\n"),
            "line 3: [registry.\"docker.io\"]: unknown key `mirors`: a registry has `mirrors` and `mirrors_only`"
        );
        assert!(bad("[mirrors]\n").starts_with("line 1: unknown key `mirrors`"));
        let e = bad("[registry.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\n");
        assert!(
            e.starts_with("line 2: ") && e.contains("has a scheme"),
            "{e}"
        );
        let e = bad("[registry.\"docker.io\"]\nmirrors = [\"mirror\"]\n");
        assert!(e.contains("does not start with a registry host"), "{e}");
        let e = bad("[registry.\"docker.io\"]\nmirrors = [{ insecure = true }]\n");
        assert!(e.contains("needs a location"), "{e}");
        let e = bad("[registry.\"docker.io\"]\nmirrors_only = true\n");
        assert!(e.contains("leaves nowhere to pull from"), "{e}");
        let e = bad("[registry.\"docker.io\"]\nmirrors = 5\n");
        assert!(e.contains("must be a list"), "{e}");
        let e = bad("[registry.\"docker.io\"\n");
        assert!(e.starts_with("line 1: not valid TOML"), "{e}");
        let e = bad("[registry.\"Bad Name\"]\nmirrors = []\n");
        assert!(e.starts_with("line 1: [registry.\"Bad Name\"]"), "{e}");
    }
}
