//! Image references (`[registry/]repository[:tag][@sha256:...]`), parsed as the OCI distribution
//! reference grammar has them, without I/O.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The tag a reference without tag or digest means.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed image reference. `registry` is set when the first path component names a host (it
/// holds a `.` or a `:`, or is `localhost`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    pub registry: Option<String>,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("the image reference is empty")]
    Empty,
    #[error("image reference {0:?} is longer than 255 characters")]
    TooLong(String),
    #[error("{reference:?}: {problem}")]
    Invalid { reference: String, problem: String },
}

impl ReferenceError {
    /// How to write a valid one.
    pub fn hint(&self) -> &'static str {
        "write an image as `name[:tag]` with lower-case letters, digits and `._-/` in the name, such as `shop-api:1.0` or `127.0.0.1:5000/team/web:latest`"
    }
}

/// Docker Hub's registry, as references name it.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API answers: a reference's `docker.io` is reached there.
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

/// Whether `registry` is one of Docker Hub's names.
pub fn is_docker_hub(registry: &str) -> bool {
    matches!(
        registry,
        DOCKER_HUB | "index.docker.io" | DOCKER_HUB_ENDPOINT
    )
}

/// The host a registry's API is reached on: Docker Hub's endpoint for its names, else the
/// registry as named.
pub fn endpoint_host(registry: &str) -> &str {
    if is_docker_hub(registry) {
        DOCKER_HUB_ENDPOINT
    } else {
        registry
    }
}

impl Reference {
    /// The reference as Docker resolves it: a name without a registry is Docker Hub's
    /// (`docker.io`, also written `index.docker.io` or `registry-1.docker.io`), a one-part Hub
    /// name is under `library/`, and a reference without tag or digest means `latest`:
    /// `nginx` is `docker.io/library/nginx:latest`, `bitnami/redis` is
    /// `docker.io/bitnami/redis:latest`.
    pub fn resolved(mut self) -> Self {
        let hub = self.registry.as_deref().is_none_or(is_docker_hub);
        if hub {
            self.registry = Some(DOCKER_HUB.into());
            if !self.repository.contains('/') {
                self.repository = format!("library/{}", self.repository);
            }
        }
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.into());
        }
        self
    }

    /// The registry the reference is pulled from once resolved (`docker.io` when it names none).
    pub fn registry_or_hub(&self) -> &str {
        self.registry.as_deref().unwrap_or(DOCKER_HUB)
    }

    /// The reference with its default tag filled in when it has neither tag nor digest, and
    /// Docker Hub's names in their familiar form (`docker.io/library/nginx` and
    /// `library/nginx` are `nginx`), as Docker shows them: how the store names images.
    pub fn normalized(self) -> Self {
        let mut r = self.resolved();
        if r.registry.as_deref() == Some(DOCKER_HUB) {
            r.registry = None;
            if let Some(short) = r.repository.strip_prefix("library/") {
                if !short.contains('/') {
                    r.repository = short.to_owned();
                }
            }
        }
        r
    }

    /// `registry/repository` (or just the repository).
    pub fn name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.repository),
            None => self.repository.clone(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

fn invalid(reference: &str, problem: impl Into<String>) -> ReferenceError {
    ReferenceError::Invalid {
        reference: reference.into(),
        problem: problem.into(),
    }
}

/// Parses a reference; the tag stays `None` when none is written (see [`Reference::normalized`]).
pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::Empty);
    }
    if s.len() > 255 {
        return Err(ReferenceError::TooLong(s.into()));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, d)) => {
            let digest = d.parse::<Digest>().map_err(|_| {
                invalid(
                    s,
                    format!("{d:?} after '@' is not `sha256:` and 64 lower-case hex digits"),
                )
            })?;
            (rest, Some(digest))
        }
        None => (s, None),
    };
    // A tag follows the last ':' that comes after the last '/' (a ':' before it is a port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (&rest[..at], Some(&rest[at + 1..]))
        }
        None => (rest, None),
    };
    if let Some(tag) = tag {
        check_tag(s, tag)?;
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let registry = if components.len() > 1 && is_host(components[0]) {
        let host = components.remove(0);
        check_host(s, host)?;
        Some(host.to_owned())
    } else {
        None
    };
    for component in &components {
        check_component(s, component)?;
    }
    Ok(Reference {
        registry,
        repository: components.join("/"),
        tag: tag.map(str::to_owned),
        digest,
    })
}

fn is_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn check_host(s: &str, host: &str) -> Result<(), ReferenceError> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        || name.starts_with(['.', '-'])
        || name.ends_with(['.', '-'])
    {
        return Err(invalid(
            s,
            format!("registry host {name:?} is not a host name"),
        ));
    }
    if let Some(port) = port {
        if port.parse::<u16>().is_err() || port.is_empty() {
            return Err(invalid(
                s,
                format!("registry port {port:?} is not a port number"),
            ));
        }
    }
    Ok(())
}

fn check_tag(s: &str, tag: &str) -> Result<(), ReferenceError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            s,
            format!("tag {tag:?} is not 1 to 128 letters, digits, '_', '.' or '-' (not starting with '.' or '-')"),
        ))
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn check_component(s: &str, component: &str) -> Result<(), ReferenceError> {
    let bad = |why: &str| Err(invalid(s, format!("name component {component:?} {why}")));
    if component.is_empty() {
        return bad("is empty (two '/' in a row, or one at an end)");
    }
    let bytes = component.as_bytes();
    if !bytes[0].is_ascii_lowercase() && !bytes[0].is_ascii_digit() {
        return bad("must start with a lower-case letter or a digit");
    }
    if !bytes[bytes.len() - 1].is_ascii_lowercase() && !bytes[bytes.len() - 1].is_ascii_digit() {
        return bad("must end with a lower-case letter or a digit");
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && matches!(bytes[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &component[start..i];
        let fine = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if sep.is_empty() {
            return bad(&format!("holds {:?}, which a name cannot", b as char));
        }
        if !fine {
            return bad(&format!(
                "holds the separator {sep:?}; use '.', '_', '__' or dashes"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &str) {
        let got = match parse(input) {
            Ok(r) => format!(
                "registry={:?} repository={} tag={:?} digest={}",
                r.registry,
                r.repository,
                r.tag,
                r.digest.map_or("-".into(), |d| d.short().to_owned())
            ),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect, "{input}");
    }

    #[test]
    fn references_parse_as_the_distribution_grammar_says() {
        check("nginx", "registry=None repository=nginx tag=None digest=-");
        check(
            "shop-api:1.0",
            "registry=None repository=shop-api tag=Some(\"1.0\") digest=-",
        );
        check(
            "127.0.0.1:5000/team/web:v2",
            "registry=Some(\"127.0.0.1:5000\") repository=team/web tag=Some(\"v2\") digest=-",
        );
        check(
            "localhost/a",
            "registry=Some(\"localhost\") repository=a tag=None digest=-",
        );
        check(
            &format!("a/b@sha256:{}", "ab".repeat(32)),
            "registry=None repository=a/b tag=None digest=abababababab",
        );
        check("Upper", "error: \"Upper\": name component \"Upper\" must start with a lower-case letter or a digit");
        check(
            "a::b",
            "error: \"a::b\": name component \"a:\" must end with a lower-case letter or a digit",
        );
        check("a:-b", "error: \"a:-b\": tag \"-b\" is not 1 to 128 letters, digits, '_', '.' or '-' (not starting with '.' or '-')");
        check(
            "a//b",
            "error: \"a//b\": name component \"\" is empty (two '/' in a row, or one at an end)",
        );
        check("a..b", "error: \"a..b\": name component \"a..b\" holds the separator \"..\"; use '.', '_', '__' or dashes");
        check("a@sha256:1", "error: \"a@sha256:1\": \"sha256:1\" after '@' is not `sha256:` and 64 lower-case hex digits");
        check("", "error: the image reference is empty");
    }

    #[test]
    fn display_round_trips_and_normalizing_adds_latest() {
        for s in ["a", "a:b", "h.io:99/x/y:z", "localhost/a_b__c-d"] {
            let r: Reference = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        let r: Reference = "web".parse().unwrap();
        assert_eq!(r.normalized().to_string(), "web:latest");
        let r: Reference = "docker.io/library/nginx:1".parse().unwrap();
        assert_eq!(r.normalized().to_string(), "nginx:1");
        let r: Reference = "docker.io/team/app".parse().unwrap();
        assert_eq!(r.normalized().to_string(), "team/app:latest");
        let r: Reference = "library/nginx".parse().unwrap();
        assert_eq!(r.normalized().to_string(), "nginx:latest");
    }

    #[test]
    fn docker_hub_names_resolve_as_docker_resolves_them() {
        for (name, full) in [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:alpine", "docker.io/library/nginx:alpine"),
            ("library/nginx", "docker.io/library/nginx:latest"),
            ("bitnami/redis", "docker.io/bitnami/redis:latest"),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            ("docker.io/library/nginx:1", "docker.io/library/nginx:1"),
            (
                "index.docker.io/bitnami/redis:7",
                "docker.io/bitnami/redis:7",
            ),
            (
                "registry-1.docker.io/library/nginx",
                "docker.io/library/nginx:latest",
            ),
            ("a/b/c", "docker.io/a/b/c:latest"),
            ("127.0.0.1:5000/web", "127.0.0.1:5000/web:latest"),
            ("ghcr.io/o/r:v1", "ghcr.io/o/r:v1"),
            ("localhost/x", "localhost/x:latest"),
        ] {
            let r: Reference = name.parse().unwrap();
            assert_eq!(r.clone().resolved().to_string(), full, "{name}");
            // Every spelling of one Hub image is one name in the store.
            let short = r.normalized();
            assert_eq!(short.clone().resolved().to_string(), full, "{name}");
        }
        let digest = format!("nginx@sha256:{}", "ab".repeat(32));
        let r: Reference = digest.parse().unwrap();
        assert_eq!(
            r.resolved().to_string(),
            format!("docker.io/library/{digest}")
        );
        assert_eq!(endpoint_host("docker.io"), "registry-1.docker.io");
        assert_eq!(endpoint_host("index.docker.io"), "registry-1.docker.io");
        assert_eq!(endpoint_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics_and_accepted_references_round_trip(s in "\\PC{0,60}") {
            if let Ok(r) = parse(&s) {
                proptest::prop_assert_eq!(parse(&r.to_string()).unwrap(), r);
            }
        }

        #[test]
        fn well_formed_references_are_accepted(
            host in proptest::option::of("[a-z][a-z0-9]{0,8}\\.[a-z]{2,3}(:[0-9]{1,4})?"),
            path in "[a-z0-9]{1,6}([_-][a-z0-9]{1,6}){0,2}(/[a-z0-9]{1,6}([.][a-z0-9]{1,3})?){0,2}",
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        ) {
            let mut s = host.clone().map_or(String::new(), |h| format!("{h}/"));
            s.push_str(&path);
            if let Some(t) = &tag { s.push(':'); s.push_str(t); }
            let r = parse(&s).unwrap();
            proptest::prop_assert_eq!(r.registry, host);
            proptest::prop_assert_eq!(r.tag, tag);
        }
    }
}
