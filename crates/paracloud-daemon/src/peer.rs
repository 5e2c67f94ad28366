//! Who calls the API: a user of this machine, known by the peer credentials of its Unix socket
//! connection, or a remote client, known by its token. Each listener puts a [`Peer`] in every
//! request's extensions before the router sees it (`local_peer` here, the remote listener's
//! authentication in `remote`); handlers take it as an extractor.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use paracloud_command::{Caller, Role};

use crate::api_error::ApiError;

#[derive(Debug, Clone)]
pub enum Peer {
    /// A process of this machine on the Unix socket (which only root can reach).
    Local { uid: Option<u32> },
    /// A remote client with a valid token.
    Remote {
        token: String,
        role: Role,
        addr: SocketAddr,
    },
}

/// The peer credentials of a Unix socket connection.
#[derive(Debug, Clone, Copy)]
pub struct UnixCredentials {
    uid: Option<u32>,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for UnixCredentials
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        UnixCredentials {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

/// Middleware of the Unix socket: the caller is the connection's user.
pub async fn local_peer(
    ConnectInfo(credentials): ConnectInfo<UnixCredentials>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(Peer::Local {
        uid: credentials.uid,
    });
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Peer>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request reached the API without a caller: its listener did not name one",
            )
        })
    }
}

impl Peer {
    /// The caller of the commands it sends.
    pub fn caller(&self) -> Caller {
        match self {
            Peer::Local { uid } => Caller::Local { uid: *uid },
            Peer::Remote { token, role, .. } => Caller::Token {
                name: token.clone(),
                role: *role,
            },
        }
    }

    /// The role it acts with: a local user may do everything.
    pub fn role(&self) -> Role {
        match self {
            Peer::Local { .. } => Role::Admin,
            Peer::Remote { role, .. } => *role,
        }
    }

    /// The user's name (`root`), `uid N` when it has none, or `token NAME`.
    pub fn who(&self) -> String {
        match self {
            Peer::Local { uid: None } => "unknown".into(),
            Peer::Local { uid: Some(uid) } => {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| format!("uid {uid}"))
            }
            Peer::Remote { token, .. } => format!("token {token}"),
        }
    }
}
