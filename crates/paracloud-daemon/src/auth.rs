//! Tokens of the remote API: how they are made, how a presented one is checked, and the brake
//! on guessing. A token is `pct_` and 64 hex digits of randomness; the store keeps only its
//! SHA-256. A failed check is answered after a pause, and a client address with too many
//! failures in a minute is refused for a while without any check.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use paracloud_reconcile::Millis;
use paracloud_state::{Store, TokenRecord};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// What every token starts with, so that a leaked one is recognisable (and secret scanners
/// can look for it).
pub const TOKEN_PREFIX: &str = "pct_";

/// The cookie a browser's session carries its token in.
pub const SESSION_COOKIE: &str = "paracloud_session";

/// Failed checks a client address may make in [`FAILURE_WINDOW`] before it is refused.
pub const MAX_FAILURES: usize = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a failed check takes to answer.
pub const FAILURE_PAUSE: Duration = Duration::from_millis(500);

/// A new token's secret: the only time it exists outside the client.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex(&bytes))
}

/// What the store keeps of a token.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a presented token was not accepted, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// No token came with the request.
    Missing,
    /// The token is not one the daemon made (or not a token at all).
    Unknown,
    /// A token that was good: revoked or expired.
    Unusable { name: String, why: &'static str },
    /// The client failed too often lately; nothing was checked.
    Throttled { retry_after: Duration },
}

impl Rejected {
    pub fn message(&self) -> String {
        match self {
            Rejected::Missing => "this API needs a token: send `Authorization: Bearer TOKEN` (an admin makes one with `paracloud token create NAME --role viewer|operator|admin` on the daemon's machine; `paracloud context add NAME --host https://HOST:PORT --token-file FILE` uses it)".into(),
            Rejected::Unknown => "the token is not valid: it is not one this daemon made (check that it was copied whole, or ask an admin for a new one)".into(),
            Rejected::Unusable { name, why } => format!("token {name} {why}: ask an admin for a new one (paracloud token create)"),
            Rejected::Throttled { retry_after } => format!(
                "too many failed logins from this address: try again in {} s",
                retry_after.as_secs().max(1)
            ),
        }
    }
}

/// The failed checks of each client address lately.
#[derive(Debug, Default)]
pub struct Gate {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl Gate {
    /// Checks `presented` (from `client`) against the store at `now`: the token's record when it
    /// is accepted. A failure is counted, and answered after [`FAILURE_PAUSE`].
    pub async fn check(
        &self,
        store: &Store,
        client: IpAddr,
        presented: Option<&str>,
        now: Millis,
    ) -> Result<TokenRecord, Rejected> {
        if let Some(retry_after) = self.throttled(client) {
            return Err(Rejected::Throttled { retry_after });
        }
        let outcome = match presented {
            None => Err(Rejected::Missing),
            Some(token) => match store.token_by_hash(&hash(token)) {
                Ok(Some(record)) => match record.unusable(now) {
                    None => Ok(record),
                    Some(why) => Err(Rejected::Unusable {
                        name: record.name,
                        why,
                    }),
                },
                Ok(None) | Err(_) => Err(Rejected::Unknown),
            },
        };
        if outcome.is_err() {
            // A request without any token is a client that has not logged in yet (the
            // dashboard's first load): not a guess.
            if presented.is_some() {
                self.failed(client);
            }
            tokio::time::sleep(FAILURE_PAUSE).await;
        }
        outcome
    }

    fn throttled(&self, client: IpAddr) -> Option<Duration> {
        let mut failures = self.failures.lock().unwrap();
        let recent = failures.get_mut(&client)?;
        let now = Instant::now();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW)
        {
            recent.pop_front();
        }
        if recent.is_empty() {
            failures.remove(&client);
            return None;
        }
        (recent.len() >= MAX_FAILURES)
            .then(|| FAILURE_WINDOW.saturating_sub(now.duration_since(recent[0])))
    }

    fn failed(&self, client: IpAddr) {
        let mut failures = self.failures.lock().unwrap();
        // Bounded: the oldest addresses are forgotten first when too many fail at once.
        if failures.len() >= 65536 && !failures.contains_key(&client) {
            if let Some(oldest) = failures
                .iter()
                .min_by_key(|(_, times)| times.back().copied())
                .map(|(ip, _)| *ip)
            {
                failures.remove(&oldest);
            }
        }
        let recent = failures.entry(client).or_default();
        recent.push_back(Instant::now());
        while recent.len() > MAX_FAILURES {
            recent.pop_front();
        }
    }
}

/// The token a request carries: `Authorization: Bearer TOKEN`, or the session's cookie.
pub fn presented(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let a = new_token();
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_ne!(a, new_token());
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), a);
    }

    #[test]
    fn a_token_comes_in_the_authorization_header_or_the_session_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented(&headers), None);
        headers.insert(
            "cookie",
            "theme=dark; paracloud_session=pct_x".parse().unwrap(),
        );
        assert_eq!(presented(&headers).as_deref(), Some("pct_x"));
        headers.insert("authorization", "Bearer pct_y".parse().unwrap());
        assert_eq!(presented(&headers).as_deref(), Some("pct_y"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented(&headers), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_that_fails_too_often_is_refused_without_a_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let gate = Gate::default();
        let guesser: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            let refused = gate.check(&store, guesser, Some("pct_guess"), 0).await;
            assert_eq!(refused, Err(Rejected::Unknown));
        }
        let throttled = gate.check(&store, guesser, Some("pct_guess"), 0).await;
        assert!(matches!(throttled, Err(Rejected::Throttled { .. })));
        // Another address is not held back by the first one's failures, and a missing token
        // is not counted as a guess.
        for _ in 0..MAX_FAILURES + 2 {
            assert_eq!(
                gate.check(&store, other, None, 0).await,
                Err(Rejected::Missing)
            );
        }
    }
}
