//! A request as a type, built without sending it (as kube-core builds its requests): one
//! [`Route`] per method and path, which the server registers at [`Route::PATH`] and the client
//! sends. The concrete path and the query string are written here, percent-encoded by
//! [`encode`], so no caller writes a route string or encodes a value itself.

use std::fmt::Display;

use hyper::{HeaderMap, Method};
use hyper_util::rt::TokioIo;
use serde::Serialize;

/// One route of an API: its method, its path pattern, what a request carries and what its
/// answer is.
pub trait Route {
    const METHOD: Method;
    /// The path pattern, parameters in braces as the server's router writes them:
    /// `/v1/apps/{app}/services/{service}`.
    const PATH: &'static str;
    /// The JSON body (`()` for routes without one).
    type Body: Serialize;
    /// What a successful answer's body is: a JSON value (any `DeserializeOwned` type), a stream
    /// of JSON lines ([`crate::JsonLines`]), bytes as they come ([`hyper::body::Incoming`]) or, after a
    /// protocol switch, the connection itself ([`Upgraded`]).
    type Answer;

    /// The concrete path: [`Route::PATH`] with each parameter filled in by [`fill`]. Routes
    /// whose pattern has parameters override it.
    fn path(&self) -> String {
        fill(Self::PATH, &[])
    }

    /// The query string without its `?`, built with [`Query`]; `None` for none.
    fn query(&self) -> Option<String> {
        None
    }

    fn body(&self) -> Option<&Self::Body> {
        None
    }

    /// The request target: the path and the query string.
    fn target(&self) -> String {
        match self.query() {
            Some(query) => format!("{}?{query}", self.path()),
            None => self.path(),
        }
    }
}

/// The answer of a route that switches protocols: the raw connection and the 101 answer's
/// headers.
pub struct Upgraded {
    pub io: TokioIo<hyper::upgrade::Upgraded>,
    pub headers: HeaderMap,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("headers", &self.headers)
            .finish()
    }
}

/// `pattern` with its `{name}` parameters replaced, in order, by `values`, each
/// percent-encoded as one path segment.
pub fn fill(pattern: &str, values: &[&str]) -> String {
    let mut path = String::with_capacity(pattern.len());
    let mut values = values.iter();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        path.push_str(&rest[..open]);
        let value = values.next();
        debug_assert!(value.is_some(), "{pattern}: a parameter without a value");
        path.push_str(&encode(value.copied().unwrap_or_default()));
        rest = &rest[close + 1..];
    }
    path.push_str(rest);
    debug_assert!(
        values.next().is_none(),
        "{pattern}: more values than parameters"
    );
    path
}

/// A query string, built pair by pair, values percent-encoded.
#[derive(Debug, Default)]
pub struct Query(String);

impl Query {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key=value`.
    pub fn pair(mut self, key: &str, value: impl Display) -> Self {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(key);
        self.0.push('=');
        self.0.push_str(&encode(&value.to_string()));
        self
    }

    /// Adds `key=value` when there is a value.
    pub fn maybe(self, key: &str, value: Option<impl Display>) -> Self {
        match value {
            Some(value) => self.pair(key, value),
            None => self,
        }
    }

    /// The query string; `None` when it has no pair.
    pub fn build(self) -> Option<String> {
        (!self.0.is_empty()).then_some(self.0)
    }
}

/// Percent-encodes a path segment or a query value: every byte but the unreserved characters
/// of RFC 3986 (letters, digits, `-`, `.`, `_`, `~`).
pub fn encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(byte as char)
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Incoming;

    #[test]
    fn parameters_are_filled_in_order_and_encoded_as_one_segment() {
        assert_eq!(fill("/v1/health", &[]), "/v1/health");
        assert_eq!(
            fill(
                "/v1/apps/{app}/services/{service}/cpu",
                &["shop", "api@canary"]
            ),
            "/v1/apps/shop/services/api%40canary/cpu"
        );
        assert_eq!(fill("/x/{name}", &["a/b c"]), "/x/a%2Fb%20c");
        assert_eq!(fill("/x/{run}/{name}", &["7", "out.txt"]), "/x/7/out.txt");
    }

    #[test]
    fn query_values_are_encoded_and_an_empty_query_is_none() {
        assert_eq!(Query::new().build(), None);
        assert_eq!(
            Query::new()
                .pair("name", "reg:5000/a:1")
                .maybe("app", None::<&str>)
                .maybe("limit", Some(3))
                .pair("command", r#"["ps","aux"]"#)
                .build()
                .as_deref(),
            Some("name=reg%3A5000%2Fa%3A1&limit=3&command=%5B%22ps%22%2C%22aux%22%5D")
        );
    }

    #[test]
    fn the_target_joins_path_and_query() {
        struct Logs {
            app: String,
            tail: usize,
        }
        impl Route for Logs {
            const METHOD: Method = Method::GET;
            const PATH: &'static str = "/v1/apps/{app}/logs";
            type Body = ();
            type Answer = Incoming;
            fn path(&self) -> String {
                fill(Self::PATH, &[&self.app])
            }
            fn query(&self) -> Option<String> {
                Query::new().pair("tail", self.tail).build()
            }
        }
        let logs = Logs {
            app: "shop".into(),
            tail: 10,
        };
        assert_eq!(logs.target(), "/v1/apps/shop/logs?tail=10");
    }
}
