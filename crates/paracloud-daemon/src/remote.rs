//! The remote API: the same router as the Unix socket, served over HTTPS (rustls), each request
//! authenticated by its token before the router sees it. Routes then check the token's role
//! (`api`'s registration), and commands are authorized again for what they ask (the command
//! layer). What a remote client changes is logged with its token's name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum_server::tls_rustls::RustlsConfig;
use http_body_util::BodyExt;

use crate::clock::now_ms;
use crate::driver::Driver;
use crate::engine::Engine;
use crate::peer::Peer;
use crate::session::{rejection, ClientAddr};
use crate::tls::Identity;

/// Serves the API on `listener` until `handle` shuts it down.
pub async fn serve<D: Driver>(
    engine: Arc<Engine<D>>,
    listener: std::net::TcpListener,
    identity: &Identity,
    handle: axum_server::Handle<SocketAddr>,
) -> std::io::Result<()> {
    let app = crate::api::router(engine.clone())
        .layer(axum::middleware::from_fn_with_state(
            engine,
            authenticate::<D>,
        ))
        .layer(axum::middleware::from_fn(read_what_is_sent));
    axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(identity.config.clone()))?
        .handle(handle)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await
}

/// How much of a request's body is still read, and for how long, once its answer no longer
/// needs it.
const LINGER_BYTES: usize = 16 << 20;
const LINGER_TIME: Duration = Duration::from_secs(10);

/// Reads a request's body to its end even when the answer came without it (a refusal before the
/// body: no token, too large, a wrong type), up to [`LINGER_BYTES`] or [`LINGER_TIME`], as a
/// web server's lingering close does. A connection closed with bytes of the client's still
/// unread is reset by the kernel, and a client still sending loses the answer: TLS clients say
/// "EOF occurred in violation of protocol".
async fn read_what_is_sent(request: Request, next: Next) -> Response {
    let (parts, mut body) = request.into_parts();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, axum::Error>>(4);
    tokio::spawn(async move {
        // Passed on while the handler reads.
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => Ok(data),
                    Err(_) => continue,
                },
                Err(e) => Err(e),
            };
            if sender.send(data).await.is_err() {
                break;
            }
        }
        // Read and let go once the handler no longer wants it.
        let mut read = 0;
        let _ = tokio::time::timeout(LINGER_TIME, async {
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, Bytes::len);
                if read > LINGER_BYTES {
                    break;
                }
            }
        })
        .await;
    });
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    next.run(Request::from_parts(parts, Body::from_stream(stream)))
        .await
}

/// What needs no token: logging in and out, and the dashboard's pages and assets (which hold no
/// data; everything they show comes from the API).
fn open(method: &Method, path: &str) -> bool {
    path == "/v1/session" && (method == Method::POST || method == Method::DELETE)
        || (method == Method::GET && !path.starts_with("/v1/") && path != "/metrics")
}

async fn authenticate<D: Driver>(
    State(engine): State<Arc<Engine<D>>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(ClientAddr(addr));
    if open(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let presented = crate::auth::presented(request.headers());
    let token = match engine
        .auth
        .check(&engine.store, addr.ip(), presented.as_deref(), now_ms())
        .await
    {
        Ok(token) => token,
        Err(rejected) => {
            tracing::info!(
                "remote {} {} from {addr} refused: {}",
                request.method(),
                request.uri().path(),
                rejected.message()
            );
            return rejection(&rejected);
        }
    };
    request.extensions_mut().insert(Peer::Remote {
        token: token.name.clone(),
        role: token.role,
        addr,
    });
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if method != Method::GET {
        tracing::info!(
            "remote {method} {path} by token {} from {addr}: {}",
            token.name,
            response.status()
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_login_and_the_dashboards_pages_need_no_token() {
        assert!(open(&Method::POST, "/v1/session"));
        assert!(open(&Method::GET, "/"));
        assert!(open(&Method::GET, "/assets/app.js"));
        assert!(!open(&Method::GET, "/v1/apps"));
        assert!(!open(&Method::GET, "/metrics"));
        assert!(open(&Method::DELETE, "/v1/session"));
        assert!(!open(&Method::GET, "/v1/session"));
        assert!(!open(&Method::POST, "/"));
    }
}
