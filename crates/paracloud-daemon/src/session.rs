//! Who the caller is, the tokens of the remote API, and a browser's session: the handlers of
//! `GET /v1/whoami`, `/v1/tokens` and `/v1/session`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use paracloud_api::{CreatedToken, SessionRequest, TokenRequest, TokenView, WhoAmI};
use paracloud_command::Command;

use crate::api_error::ApiError;
use crate::auth::{self, Rejected, SESSION_COOKIE};
use crate::clock::now_ms;
use crate::driver::Driver;
use crate::engine::Engine;
use crate::peer::Peer;

/// The address of a remote client, which its listener puts in each request.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The answer to a token that was not accepted: 401 (429 when the client is held back).
pub fn rejection(rejected: &Rejected) -> Response {
    let mut response = ApiError::new(
        match rejected {
            Rejected::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::UNAUTHORIZED,
        },
        rejected.message(),
    )
    .into_response();
    let headers = response.headers_mut();
    match rejected {
        Rejected::Throttled { retry_after } => {
            headers.insert(
                header::RETRY_AFTER,
                retry_after.as_secs().max(1).to_string().parse().unwrap(),
            );
        }
        _ => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"paracloud\"".parse().unwrap(),
            );
        }
    }
    response
}

pub async fn whoami(peer: Peer) -> Json<WhoAmI> {
    let name = match &peer {
        Peer::Remote { token, .. } => token.clone(),
        local => local.who(),
    };
    Json(WhoAmI {
        name,
        role: peer.role(),
    })
}

/// The longest a token may be made for: ten years.
const MAX_EXPIRY_SECS: u64 = 10 * 365 * 24 * 3600;

pub async fn create_token<D: Driver>(
    State(engine): State<Arc<Engine<D>>>,
    peer: Peer,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Json<CreatedToken>, ApiError> {
    let Json(request) = body?;
    let expires = match request.expires_in_secs {
        None => None,
        Some(0) | Some(MAX_EXPIRY_SECS..) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "expires_in_secs: give a lifetime between 1 second and 10 years (--expires 30d), or none for a token that lasts until revoked",
            ))
        }
        Some(secs) => Some(now_ms() + secs * 1000),
    };
    let token = auth::new_token();
    let command = Command::CreateToken {
        name: request.name.clone(),
        role: request.role,
        hash: auth::hash(&token),
        expires,
    };
    engine.submit(&peer.caller(), &command)?;
    tracing::info!(
        "token {} created with the {} role by {}",
        request.name,
        request.role.name(),
        peer.who()
    );
    Ok(Json(CreatedToken {
        name: request.name,
        role: request.role,
        expires,
        token,
    }))
}

pub async fn list_tokens<D: Driver>(
    State(engine): State<Arc<Engine<D>>>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let now = now_ms();
    let snapshot = engine.store.load()?;
    Ok(Json(
        snapshot
            .tokens
            .into_iter()
            .map(|t| TokenView {
                state: match t.unusable(now) {
                    None => "active",
                    Some(_) if t.revoked.is_some() => "revoked",
                    Some(_) => "expired",
                }
                .into(),
                name: t.name,
                role: t.role,
                created: t.created,
                expires: t.expires,
                revoked: t.revoked,
            })
            .collect(),
    ))
}

pub async fn revoke_token<D: Driver>(
    State(engine): State<Arc<Engine<D>>>,
    peer: Peer,
    UrlPath(name): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    engine.submit(&peer.caller(), &Command::RevokeToken { name: name.clone() })?;
    tracing::info!("token {name} revoked by {}", peer.who());
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/session`: the browser's login. Open on the remote listener (it is how a token
/// comes in), so it checks the token itself, under the same brake on guessing.
pub async fn open_session<D: Driver>(
    State(engine): State<Arc<Engine<D>>>,
    client: Option<Extension<ClientAddr>>,
    body: Result<Json<SessionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Some(Extension(ClientAddr(addr))) = client else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "sessions are for browsers on the remote listener (paracloud daemon --listen); on this socket every request is already yours",
        ));
    };
    let Json(request) = body?;
    let token = match engine
        .auth
        .check(
            &engine.store,
            addr.ip(),
            Some(request.token.trim()),
            now_ms(),
        )
        .await
    {
        Ok(token) => token,
        Err(rejected) => return Ok(rejection(&rejected)),
    };
    tracing::info!("token {} logged in from {addr}", token.name);
    let max_age = token
        .expires
        .map(|at| format!("; Max-Age={}", at.saturating_sub(now_ms()) / 1000))
        .unwrap_or_default();
    let cookie = format!(
        "{SESSION_COOKIE}={}; HttpOnly; Secure; SameSite=Strict; Path=/{max_age}",
        request.token.trim()
    );
    let mut response = Json(WhoAmI {
        name: token.name,
        role: token.role,
    })
    .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "the token holds characters no token has",
            )
        })?,
    );
    Ok(response)
}

/// `DELETE /v1/session`: the cookie is cleared.
pub async fn close_session() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        format!("{SESSION_COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0")
            .parse()
            .unwrap(),
    );
    response
}
