//! HTTP/1.1 over a Unix socket, one connection per request: the transport of the daemon's API
//! client and of the PaCI SDK. It knows no API types, so the SDK an application links stays
//! free of the daemon's; each client reads the bodies of refusals its own way. Requests are
//! [`Route`]s: each API names its routes as types, and [`UnixHttp::call`] and its siblings send
//! them.

mod route;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{Connection as HttpConnection, SendRequest};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

pub use route::{encode, fill, Query, Route, Upgraded};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing accepts connections at the target (a socket's path, a remote address), or
    /// the connection could not be made (a TLS handshake refused).
    #[error("nothing answers on {target}: {source}")]
    Unreachable {
        target: String,
        source: std::io::Error,
    },
    #[error("the connection failed: {0}")]
    Http(#[from] hyper::Error),
    /// An answer other than success: its status and whole body.
    #[error("{status}: {}", String::from_utf8_lossy(.body))]
    Status { status: StatusCode, body: Bytes },
    /// A request that could not be written, or an answer that is not the JSON expected.
    #[error("{0}")]
    Decode(String),
}

/// A connection being made.
pub type Dialing<'a> =
    Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Connection>>> + Send + 'a>>;

/// A connection to the server, of whatever kind its [`Dial`] makes.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

/// How connections to a server are made: its Unix socket ([`UnixHttp::new`]), or what another
/// crate brings (the API client's TLS connections to a remote daemon).
pub trait Dial: Send + Sync + std::fmt::Debug + 'static {
    /// A new connection.
    fn dial(&self) -> Dialing<'_>;
    /// What is dialled, for errors: a path, `https://host:port`.
    fn target(&self) -> String;
    /// The `Authorization:` every request carries, if any.
    fn authorization(&self) -> Option<String> {
        None
    }
}

#[derive(Debug)]
struct UnixSocket(PathBuf);

impl Dial for UnixSocket {
    fn dial(&self) -> Dialing<'_> {
        Box::pin(async move {
            let stream = UnixStream::connect(&self.0).await?;
            Ok(Box::new(stream) as Box<dyn Connection>)
        })
    }

    fn target(&self) -> String {
        self.0.display().to_string()
    }
}

/// The server behind one Unix socket, or behind another [`Dial`].
#[derive(Debug, Clone)]
pub struct UnixHttp {
    dial: Arc<dyn Dial>,
    /// The socket's path, when it is one.
    socket: Option<PathBuf>,
    /// The `Host:` of every request (HTTP/1.1 wants one).
    host: String,
}

impl UnixHttp {
    pub fn new(socket: impl Into<PathBuf>, host: &str) -> Self {
        let socket = socket.into();
        Self {
            dial: Arc::new(UnixSocket(socket.clone())),
            socket: Some(socket),
            host: host.to_owned(),
        }
    }

    /// The server that `dial` reaches, named `host` in requests.
    pub fn with_dial(dial: impl Dial, host: &str) -> Self {
        Self {
            dial: Arc::new(dial),
            socket: None,
            host: host.to_owned(),
        }
    }

    /// The Unix socket's path (empty for another kind of connection).
    pub fn socket(&self) -> &Path {
        self.socket.as_deref().unwrap_or(Path::new(""))
    }

    /// What is dialled: the socket's path or a remote address.
    pub fn target(&self) -> String {
        self.dial.target()
    }

    async fn connect(
        &self,
    ) -> Result<
        (
            SendRequest<Full<Bytes>>,
            HttpConnection<TokioIo<Box<dyn Connection>>, Full<Bytes>>,
        ),
        Error,
    > {
        let stream = self
            .dial
            .dial()
            .await
            .map_err(|source| Error::Unreachable {
                target: self.dial.target(),
                source,
            })?;
        Ok(hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?)
    }

    fn builder(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        match self.dial.authorization() {
            Some(value) => builder.header("authorization", value),
            None => builder,
        }
    }

    /// Sends a request with a JSON body (or none) and returns a successful answer as it comes
    /// (its body may be a stream); any other answer is [`Error::Status`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, Error> {
        let (mut sender, connection) = self.connect().await?;
        tokio::spawn(async move {
            // The connection ends with the response; its error is the request's.
            let _ = connection.await;
        });
        let request = self
            .builder(method, path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Decode(e.to_string()))?;
        let response = sender.send_request(request).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(refusal(response).await)
    }

    /// Sends a request and reads its successful answer as JSON.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, Error> {
        let response = self.send(method, path, body).await?;
        let bytes = response.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Decode(format!("{e}: {}", String::from_utf8_lossy(&bytes))))
    }

    /// Sends `route`'s request and returns a successful answer as it comes.
    pub async fn request<R: Route>(&self, route: &R) -> Result<Response<Incoming>, Error> {
        let body = route.body().map(to_json).transpose()?;
        self.send(R::METHOD, &route.target(), body).await
    }

    /// Sends `route`'s request and reads its answer as JSON; an empty answer reads as `null`,
    /// which `()` takes.
    pub async fn call<R: Route>(&self, route: &R) -> Result<R::Answer, Error>
    where
        R::Answer: DeserializeOwned,
    {
        let bytes = self.request(route).await?.into_body().collect().await?;
        let bytes = bytes.to_bytes();
        let json: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(json)
            .map_err(|e| Error::Decode(format!("{e}: {}", String::from_utf8_lossy(&bytes))))
    }

    /// Sends `route`'s request and reads its answer as JSON lines, one item at a time.
    pub async fn lines<R, T>(&self, route: &R) -> Result<JsonLines<T>, Error>
    where
        R: Route<Answer = JsonLines<T>>,
        T: DeserializeOwned,
    {
        Ok(JsonLines::new(self.request(route).await?))
    }

    /// Sends `route`'s request and returns its answer's body as it comes (text, bytes).
    pub async fn stream<R: Route<Answer = Incoming>>(&self, route: &R) -> Result<Incoming, Error> {
        Ok(self.request(route).await?.into_body())
    }

    /// Sends `route`'s request (a GET) asking to switch the connection to `protocol`.
    pub async fn switch<R: Route<Answer = Upgraded>>(
        &self,
        route: &R,
        protocol: &str,
    ) -> Result<Upgraded, Error> {
        let (io, headers) = self.upgrade(&route.target(), protocol).await?;
        Ok(Upgraded { io, headers })
    }

    /// Sends a GET that asks to switch the connection to `protocol` (`Upgrade:`); returns the
    /// raw connection and the 101 answer's headers.
    pub async fn upgrade(
        &self,
        path: &str,
        protocol: &str,
    ) -> Result<(TokioIo<hyper::upgrade::Upgraded>, HeaderMap), Error> {
        let (mut sender, connection) = self.connect().await?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let request = self
            .builder(Method::GET, path)
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Decode(e.to_string()))?;
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(refusal(response).await);
        }
        let headers = response.headers().clone();
        let upgraded = hyper::upgrade::on(response).await?;
        Ok((TokioIo::new(upgraded), headers))
    }
}

/// A streamed body of JSON lines (events, progress), read one item at a time.
pub struct JsonLines<T> {
    body: Incoming,
    buffer: Vec<u8>,
    _item: std::marker::PhantomData<T>,
}

impl<T> std::fmt::Debug for JsonLines<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLines")
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl<T: DeserializeOwned> JsonLines<T> {
    pub fn new(response: Response<Incoming>) -> Self {
        Self {
            body: response.into_body(),
            buffer: Vec::new(),
            _item: std::marker::PhantomData,
        }
    }

    /// The next item; `None` once the server has closed the stream.
    pub async fn next(&mut self) -> Result<Option<T>, Error> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let item = serde_json::from_slice(&line[..end]).map_err(|e| {
                    Error::Decode(format!("{e}: {}", String::from_utf8_lossy(&line[..end])))
                })?;
                return Ok(Some(item));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// `body` as a JSON request body.
pub fn to_json<B: Serialize>(body: &B) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(body).map_err(|e| Error::Decode(e.to_string()))
}

/// The answer that was not the one asked for, with its whole body.
async fn refusal(response: Response<Incoming>) -> Error {
    let status = response.status();
    match response.into_body().collect().await {
        Ok(collected) => Error::Status {
            status,
            body: collected.to_bytes(),
        },
        Err(e) => Error::Http(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on `socket` that answers each connection with `answer` once it has read the
    /// request's head; returns the heads it read.
    fn serve(socket: &Path, answer: &'static str) -> tokio::task::JoinHandle<Vec<String>> {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            let mut heads = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap() == 1 {
                    head.push(byte[0]);
                }
                heads.push(String::from_utf8(head).unwrap());
                stream.write_all(answer.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
                if heads.len() == 2 {
                    break;
                }
            }
            heads
        })
    }

    #[tokio::test]
    async fn answers_are_read_as_json_and_refusals_keep_their_status_and_body() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.sock");
        let server = serve(
            &ok,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n{\"a\": 1}\n",
        );
        let client = UnixHttp::new(&ok, "test");
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct A {
            a: u32,
        }
        let got: A = client
            .json(Method::POST, "/v1/x", Some(to_json(&[1, 2]).unwrap()))
            .await
            .unwrap();
        assert_eq!(got, A { a: 1 });
        // Not the JSON asked for: said with the text.
        let err = client
            .json::<Vec<u32>>(Method::GET, "/v1/y", None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Decode(m) if m.contains("{\"a\": 1}")),
            "{err}"
        );
        let heads = server.await.unwrap();
        assert!(heads[0].starts_with("POST /v1/x HTTP/1.1\r\n"), "{heads:?}");
        assert!(
            heads[0].to_lowercase().contains("host: test\r\n"),
            "{heads:?}"
        );
        assert!(heads[1].starts_with("GET /v1/y HTTP/1.1\r\n"), "{heads:?}");

        let refused = dir.path().join("refused.sock");
        let _server = serve(
            &refused,
            "HTTP/1.1 409 Conflict\r\ncontent-length: 14\r\n\r\n{\"error\":\"no\"}",
        );
        let err = UnixHttp::new(&refused, "test")
            .send(Method::PUT, "/v1/z", None)
            .await
            .unwrap_err();
        match err {
            Error::Status { status, body } => {
                assert_eq!(status, StatusCode::CONFLICT);
                assert_eq!(&body[..], b"{\"error\":\"no\"}");
            }
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn json_lines_come_one_by_one_across_chunks_and_a_bad_line_is_shown() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("lines.sock");
        // Chunked: a line split over two chunks, two lines in one, then a line that is not JSON.
        let _server = serve(
            &socket,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             3\r\n[1,\r\n\
             9\r\n2]\n[3]\n[4\r\n\
             7\r\n]\nnope\n\r\n\
             0\r\n\r\n",
        );
        let response = UnixHttp::new(&socket, "test")
            .send(Method::GET, "/", None)
            .await
            .unwrap();
        let mut lines = JsonLines::<Vec<u32>>::new(response);
        assert_eq!(lines.next().await.unwrap(), Some(vec![1, 2]));
        assert_eq!(lines.next().await.unwrap(), Some(vec![3]));
        assert_eq!(lines.next().await.unwrap(), Some(vec![4]));
        let err = lines.next().await.unwrap_err();
        assert!(
            matches!(&err, Error::Decode(m) if m.ends_with(": nope")),
            "{err}"
        );
        assert_eq!(lines.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_socket_nobody_serves_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let err = UnixHttp::new(&path, "test")
            .send(Method::GET, "/", None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Unreachable { target, .. } if *target == path.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("none.sock"), "{err}");
    }
}
