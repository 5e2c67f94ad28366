//! Pull from and push to registries over the OCI distribution protocol: manifests and blobs,
//! basic and bearer-token authentication, multi-architecture indexes (this machine's platform is
//! chosen), layers downloaded in parallel and resumed where an interrupted transfer stopped, each
//! unpacked as soon as it is complete; monolithic and chunked uploads.
//!
//! Registries are reached over HTTPS (the web's certificate authorities, and those given in a
//! [`Transport`]); a registry named with a port that answers a TLS hello with something that is
//! not TLS is spoken to over plain HTTP, as Docker does for its insecure registries. A
//! certificate that does not verify is an error, never a reason to fall back.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::stream::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use paracloud_unix_http::encode;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::assemble::this_architecture;
use crate::digest::Digest;
use crate::reference::Reference;
use crate::registries::{Registries, Source};
use crate::store::{descriptor_digest, Store, StoreError};

/// Manifest media types asked for, best first.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
/// Layers downloaded at once.
const PARALLEL: usize = 4;
/// Blobs up to this size go in one PUT; larger ones in PATCH chunks of this size.
pub const CHUNK: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot reach registry {host}: {source}")]
    Connect {
        host: String,
        source: std::io::Error,
    },
    #[error("registry {host}: {message}")]
    Http { host: String, message: String },
    #[error("registry {host} refused the credentials for {what} (401): check --username and the password, or the Docker config's entry for {host}")]
    Unauthorized { host: String, what: String },
    #[error("registry {host}: TLS: {message}{}", if *.certificate { " (the registry's certificate is not trusted: give its certificate authority)" } else { "" })]
    Tls {
        host: String,
        /// The certificate did not verify (as opposed to no TLS at all).
        certificate: bool,
        message: String,
    },
    #[error("registry {host} has no {what} (404)")]
    NotFound { host: String, what: String },
    #[error("{0}")]
    Invalid(String),
    /// Every place a pull tried failed: each one's error, in the order tried.
    #[error("{reference} cannot be pulled from any of its sources (see the state root's registries.toml): {}", .attempts.join("; "))]
    NoSource {
        reference: String,
        attempts: Vec<String>,
    },
}

impl RegistryError {
    /// Whether the next source (mirror, or the registry itself) is worth trying after this.
    fn try_next(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::Http { .. }
                | Self::Tls { .. }
                | Self::NotFound { .. }
                | Self::Unauthorized { .. }
        )
    }
}

type Result<T> = std::result::Result<T, RegistryError>;

/// A user name and password for basic auth, or for the token service of a bearer registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, in any log.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Credentials by registry (`docker.io`, `HOST:PORT`, as [`Source::registry`] names it).
pub type Auths = BTreeMap<String, Credentials>;

/// What a transfer has done so far, for progress bars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A layer's transfer started: its digest and size.
    Started { digest: Digest, size: u64 },
    /// Bytes of a layer moved (cumulative for the layer).
    Bytes { digest: Digest, done: u64 },
    /// A layer is complete (and, when pulling, unpacked).
    Done { digest: Digest },
}

pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// How registries are reached: certificate authorities trusted besides the web's.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// PEM files of certificate authorities (a registry with a certificate of its own CA).
    pub ca_files: Vec<PathBuf>,
}

impl Transport {
    /// The certificate authorities of a registry host kept with the store, as Docker keeps
    /// them: `<store>/certs.d/<host[:port]>/*.crt`.
    pub fn for_host(store: &Store, host: &str) -> Self {
        let dir = store.root().join("certs.d").join(host);
        let mut ca_files: Vec<PathBuf> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        ca_files.sort();
        Self { ca_files }
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for file in &self.ca_files {
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    RegistryError::Invalid(format!(
                        "certificate authority file {}: {e}",
                        file.display()
                    ))
                })?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    RegistryError::Invalid(format!("certificate in {}: {e}", file.display()))
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RegistryError::Invalid(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// A client of one registry host.
#[derive(Clone)]
pub struct Registry {
    host: String,
    credentials: Option<Credentials>,
    tls: Arc<rustls::ClientConfig>,
    /// Whether the registry speaks TLS, once known.
    scheme: Arc<Mutex<Option<bool>>>,
    /// The Authorization header that worked last, by scope.
    auth: Arc<Mutex<BTreeMap<String, String>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .finish()
    }
}

fn http_err(host: &str, message: impl Into<String>) -> RegistryError {
    RegistryError::Http {
        host: host.into(),
        message: message.into(),
    }
}

/// Where a request goes: a host (as in the Host header, port optional) and whether over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    tls: bool,
    host: String,
}

impl Endpoint {
    /// The address to connect to: the host with its port, or the scheme's.
    fn addr(&self) -> String {
        if has_port(&self.host) {
            self.host.clone()
        } else if self.tls {
            format!("{}:443", self.host)
        } else {
            format!("{}:80", self.host)
        }
    }

    /// The name the certificate must be for: the host without its port (or brackets).
    fn server_name(&self) -> String {
        let name = match self.host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => &self.host,
        };
        name.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    }
}

fn has_port(host: &str) -> bool {
    host.rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The endpoint and path of an `http(s)://host[:port]/path?query` URL.
fn split_url(url: &str) -> Option<(Endpoint, String)> {
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://")?),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Some((
        Endpoint {
            tls,
            host: host.to_owned(),
        },
        path.to_owned(),
    ))
}

fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Bearer realm="...",service="...",scope="..."` into its parameters.
fn challenge(header: &str) -> (String, BTreeMap<String, String>) {
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_owned());
        rest = after.trim_start_matches([',', ' ']);
    }
    (scheme.to_ascii_lowercase(), params)
}

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

impl Registry {
    pub fn new(
        host: impl Into<String>,
        credentials: Option<Credentials>,
        transport: &Transport,
    ) -> Result<Self> {
        Ok(Self {
            host: host.into(),
            credentials,
            tls: transport.tls_config()?,
            scheme: Arc::new(Mutex::new(None)),
            auth: Arc::new(Mutex::new(BTreeMap::new())),
        })
    }

    /// The registry spoken to over plain HTTP from the start (a mirror marked `insecure`).
    pub fn plain_http(self) -> Self {
        *self.scheme.lock().unwrap_or_else(|e| e.into_inner()) = Some(false);
        self
    }

    /// The registry's endpoint: HTTPS, or plain HTTP when it has a port and what answers there
    /// is not TLS (a certificate that does not verify is an error, not a reason to fall back).
    async fn endpoint(&self) -> Result<Endpoint> {
        let known = *self.scheme.lock().unwrap_or_else(|e| e.into_inner());
        let tls = match known {
            Some(tls) => tls,
            None if !has_port(&self.host) => true,
            None => {
                let probe = Endpoint {
                    tls: true,
                    host: self.host.clone(),
                };
                match self.connect_tls(&probe).await {
                    Ok(_) => true,
                    Err(RegistryError::Tls {
                        certificate: false, ..
                    }) => false,
                    Err(e) => return Err(e),
                }
            }
        };
        *self.scheme.lock().unwrap_or_else(|e| e.into_inner()) = Some(tls);
        Ok(Endpoint {
            tls,
            host: self.host.clone(),
        })
    }

    async fn connect_tcp(&self, endpoint: &Endpoint) -> Result<TcpStream> {
        let stream = TcpStream::connect(endpoint.addr())
            .await
            .map_err(|source| RegistryError::Connect {
                host: endpoint.host.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect_tls(
        &self,
        endpoint: &Endpoint,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let stream = self.connect_tcp(endpoint).await?;
        let name = ServerName::try_from(endpoint.server_name()).map_err(|e| {
            RegistryError::Invalid(format!("{} is not a host name: {e}", endpoint.host))
        })?;
        TlsConnector::from(self.tls.clone())
            .connect(name, stream)
            .await
            .map_err(|e| {
                let certificate = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|r| {
                        matches!(
                            r,
                            rustls::Error::InvalidCertificate(_)
                                | rustls::Error::NoCertificatesPresented
                                | rustls::Error::UnsupportedNameType
                        )
                    });
                RegistryError::Tls {
                    host: endpoint.host.clone(),
                    certificate,
                    message: e.to_string(),
                }
            })
    }

    /// One request on a connection of its own (the endpoint may be the registry's, its token
    /// service's or where it redirects to).
    async fn send_to(
        &self,
        endpoint: &Endpoint,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<Response<hyper::body::Incoming>> {
        let host = endpoint.host.as_str();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .header(
                "user-agent",
                concat!("paracloud/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let request = request
            .body(body)
            .map_err(|e| http_err(host, e.to_string()))?;
        if endpoint.tls {
            let stream = self.connect_tls(endpoint).await?;
            exchange(host, TokioIo::new(stream), request).await
        } else {
            let stream = self.connect_tcp(endpoint).await?;
            exchange(host, TokioIo::new(stream), request).await
        }
    }

    /// A request to the registry with authentication: on a 401 it answers the challenge
    /// (basic, or a bearer token from the realm for `scope`) and sends it again. `body` is
    /// made anew for each attempt.
    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: impl Fn() -> Body,
        scope: &str,
    ) -> Result<Response<hyper::body::Incoming>> {
        let mut headers: Vec<(&str, String)> = headers.to_vec();
        let cached = self
            .auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(scope)
            .cloned();
        if let Some(auth) = &cached {
            headers.push(("authorization", auth.clone()));
        }
        let endpoint = self.endpoint().await?;
        let response = self
            .send_to(&endpoint, method.clone(), path, &headers, body())
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let header = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let auth = self.answer(&header, scope).await?;
        headers.retain(|(k, _)| *k != "authorization");
        headers.push(("authorization", auth.clone()));
        let response = self
            .send_to(&endpoint, method, path, &headers, body())
            .await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(RegistryError::Unauthorized {
                host: self.host.clone(),
                what: scope.into(),
            });
        }
        self.auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(scope.into(), auth);
        Ok(response)
    }

    /// The Authorization header answering a WWW-Authenticate challenge.
    async fn answer(&self, header: &str, scope: &str) -> Result<String> {
        let (scheme, params) = challenge(header);
        let basic = self.credentials.as_ref().map(|c| {
            format!(
                "Basic {}",
                base64(format!("{}:{}", c.username, c.password).as_bytes())
            )
        });
        match scheme.as_str() {
            "basic" => basic.ok_or_else(|| {
                http_err(
                    &self.host,
                    "asks for a user name and password: give --username (and the password on stdin or in PARACLOUD_REGISTRY_PASSWORD), or log in to it in the Docker config (docker login, an auths entry or a credential helper)",
                )
            }),
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| http_err(&self.host, "sent a bearer challenge without a realm"))?;
                let (token_endpoint, token_path) = split_url(realm).ok_or_else(|| {
                    http_err(
                        &self.host,
                        format!("sends us for tokens to {realm}, which is not an http:// or https:// URL"),
                    )
                })?;
                let mut query = Vec::new();
                if let Some(service) = params.get("service") {
                    query.push(format!("service={}", encode(service)));
                }
                query.push(format!(
                    "scope={}",
                    encode(params.get("scope").map_or(scope, String::as_str))
                ));
                let sep = if token_path.contains('?') { '&' } else { '?' };
                let path = format!("{token_path}{sep}{}", query.join("&"));
                let headers: Vec<(&str, String)> =
                    basic.into_iter().map(|b| ("authorization", b)).collect();
                let response = self
                    .send_to(&token_endpoint, Method::GET, &path, &headers, empty())
                    .await?;
                let status = response.status();
                let bytes = collect(&self.host, response).await?;
                if status == StatusCode::UNAUTHORIZED {
                    return Err(RegistryError::Unauthorized {
                        host: self.host.clone(),
                        what: scope.into(),
                    });
                }
                if !status.is_success() {
                    return Err(http_err(&token_endpoint.host, format!("the token service answered {status}")));
                }
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| http_err(&token_endpoint.host, format!("the token is not JSON: {e}")))?;
                let token = v["token"]
                    .as_str()
                    .or(v["access_token"].as_str())
                    .ok_or_else(|| http_err(&token_endpoint.host, "the token service sent no token"))?;
                Ok(format!("Bearer {token}"))
            }
            _ => Err(http_err(
                &self.host,
                format!("asks for authentication this client does not speak: {header:?}"),
            )),
        }
    }

    /// A manifest (or index) and its media type, checked against `expected` when given.
    async fn manifest(
        &self,
        repository: &str,
        reference: &str,
        expected: Option<&Digest>,
        scope: &str,
    ) -> Result<(Vec<u8>, String, Digest)> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let response = self
            .request(
                Method::GET,
                &path,
                &[("accept", ACCEPT.into())],
                empty,
                scope,
            )
            .await?;
        let status = response.status();
        let media_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = collect(&self.host, response).await?;
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                host: self.host.clone(),
                what: format!("manifest {repository}:{reference}"),
            });
        }
        if !status.is_success() {
            return Err(http_err(
                &self.host,
                format!(
                    "GET {path} answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ),
            ));
        }
        let digest = Digest::of(&bytes);
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(StoreError::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                }
                .into());
            }
        }
        Ok((bytes.to_vec(), media_type, digest))
    }

    /// Downloads a blob into the store, resuming a partial download left in `partial_dir`.
    async fn fetch_blob(
        &self,
        store: &Store,
        repository: &str,
        digest: &Digest,
        size: u64,
        scope: &str,
        progress: &ProgressFn,
    ) -> Result<()> {
        if store.has_blob(digest) {
            return Ok(());
        }
        let partial = partial_path(store, digest);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            let mut headers = Vec::new();
            if have > 0 {
                headers.push(("range", format!("bytes={have}-")));
            }
            let path = format!("/v2/{repository}/blobs/{digest}");
            let mut response = self
                .request(Method::GET, &path, &headers, empty, scope)
                .await?;
            // Registries may send blobs from elsewhere (object storage).
            for _ in 0..5 {
                if !response.status().is_redirection() {
                    break;
                }
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let (endpoint, path) = if location.starts_with('/') {
                    (self.endpoint().await?, location)
                } else {
                    split_url(&location).ok_or_else(|| {
                        http_err(&self.host, format!("redirects blob {digest} to {location}, which is not an http:// or https:// URL"))
                    })?
                };
                response = self
                    .send_to(&endpoint, Method::GET, &path, &headers, empty())
                    .await?;
            }
            let status = response.status();
            let append = match status {
                StatusCode::PARTIAL_CONTENT => true,
                StatusCode::OK => false,
                StatusCode::NOT_FOUND => {
                    return Err(RegistryError::NotFound {
                        host: self.host.clone(),
                        what: format!("blob {digest} of {repository}"),
                    })
                }
                // The part we have is already the whole blob, or more: start again.
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    let _ = fs::remove_file(&partial);
                    if attempts > 2 {
                        return Err(http_err(&self.host, format!("cannot fetch blob {digest}")));
                    }
                    continue;
                }
                other => {
                    return Err(http_err(&self.host, format!("GET {path} answered {other}")));
                }
            };
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(!append)
                .append(append)
                .open(&partial)
                .map_err(|source| StoreError::Io {
                    path: partial.clone(),
                    source,
                })?;
            let mut done = if append { have } else { 0 };
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    http_err(
                        &self.host,
                        format!("blob {digest} broke off after {done} bytes: {e}"),
                    )
                })?;
                if let Ok(data) = frame.into_data() {
                    file.write_all(&data).map_err(|source| StoreError::Io {
                        path: partial.clone(),
                        source,
                    })?;
                    done += data.len() as u64;
                    progress(Progress::Bytes {
                        digest: digest.clone(),
                        done,
                    });
                }
            }
            drop(file);
            if done < size {
                return Err(http_err(
                    &self.host,
                    format!(
                        "blob {digest} ended after {done} of {size} bytes; pull again to resume"
                    ),
                ));
            }
            // Checked whole before it gets its name; a wrong one is dropped (no resuming garbage).
            let store = store.clone();
            let digest2 = digest.clone();
            let partial2 = partial.clone();
            let checked =
                tokio::task::spawn_blocking(move || commit_partial(&store, &partial2, &digest2))
                    .await
                    .map_err(|e| RegistryError::Invalid(e.to_string()))?;
            return checked;
        }
    }

    /// Whether the registry has a blob.
    async fn has_blob(&self, repository: &str, digest: &Digest, scope: &str) -> Result<bool> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let response = self.request(Method::HEAD, &path, &[], empty, scope).await?;
        Ok(response.status().is_success())
    }

    /// Uploads a blob of the store: in one PUT when small, else in PATCH chunks.
    async fn upload_blob(
        &self,
        store: &Store,
        repository: &str,
        digest: &Digest,
        size: u64,
        scope: &str,
        progress: &ProgressFn,
    ) -> Result<()> {
        let path = format!("/v2/{repository}/blobs/uploads/");
        let response = self.request(Method::POST, &path, &[], empty, scope).await?;
        let status = response.status();
        let mut location = location_of(&self.host, &response)?;
        let _ = collect(&self.host, response).await?;
        if status != StatusCode::ACCEPTED {
            return Err(http_err(
                &self.host,
                format!("POST {path} answered {status}"),
            ));
        }
        let blob_path = store.blob_path(digest);
        let read_range = |offset: u64, len: u64| -> Result<Bytes> {
            let io = |source| StoreError::Io {
                path: blob_path.clone(),
                source,
            };
            let mut f = File::open(&blob_path).map_err(io)?;
            f.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf).map_err(io)?;
            Ok(Bytes::from(buf))
        };
        if size <= CHUNK {
            let bytes = read_range(0, size)?;
            let put = closing_url(&location, digest);
            let response = self
                .request(
                    Method::PUT,
                    &put,
                    &[
                        ("content-type", "application/octet-stream".into()),
                        ("content-length", size.to_string()),
                    ],
                    || full(bytes.clone()),
                    scope,
                )
                .await?;
            let status = response.status();
            let body = collect(&self.host, response).await?;
            if status != StatusCode::CREATED {
                return Err(http_err(
                    &self.host,
                    format!(
                        "the upload of {digest} answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    ),
                ));
            }
        } else {
            let mut offset = 0;
            while offset < size {
                let len = CHUNK.min(size - offset);
                let bytes = read_range(offset, len)?;
                let response = self
                    .request(
                        Method::PATCH,
                        &location,
                        &[
                            ("content-type", "application/octet-stream".into()),
                            ("content-length", len.to_string()),
                            ("content-range", format!("{offset}-{}", offset + len - 1)),
                        ],
                        || full(bytes.clone()),
                        scope,
                    )
                    .await?;
                let status = response.status();
                let next = location_of(&self.host, &response)?;
                let _ = collect(&self.host, response).await?;
                if status != StatusCode::ACCEPTED {
                    return Err(http_err(
                        &self.host,
                        format!("a chunk of {digest} at {offset} answered {status}"),
                    ));
                }
                location = next;
                offset += len;
                progress(Progress::Bytes {
                    digest: digest.clone(),
                    done: offset,
                });
            }
            let put = closing_url(&location, digest);
            let response = self
                .request(
                    Method::PUT,
                    &put,
                    &[("content-length", "0".into())],
                    empty,
                    scope,
                )
                .await?;
            let status = response.status();
            let _ = collect(&self.host, response).await?;
            if status != StatusCode::CREATED {
                return Err(http_err(
                    &self.host,
                    format!("closing the upload of {digest} answered {status}"),
                ));
            }
        }
        Ok(())
    }
}

/// The upload session's URL with the digest that closes it.
fn closing_url(location: &str, digest: &Digest) -> String {
    let separator = if location.contains('?') { '&' } else { '?' };
    format!(
        "{location}{separator}digest={}",
        encode(&digest.to_string())
    )
}

/// Sends a request over a fresh connection and returns the response.
async fn exchange<I>(
    host: &str,
    io: I,
    request: Request<Body>,
) -> Result<Response<hyper::body::Incoming>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| http_err(host, e.to_string()))?;
    tokio::spawn(async move {
        // The connection's error is the request's.
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| http_err(host, e.to_string()))
}

fn location_of(host: &str, response: &Response<hyper::body::Incoming>) -> Result<String> {
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| http_err(host, "an upload answer has no Location"))?;
    Ok(match split_url(location) {
        Some((_, path)) => path,
        None => location.to_owned(),
    })
}

async fn collect(host: &str, response: Response<hyper::body::Incoming>) -> Result<Bytes> {
    Ok(response
        .into_body()
        .collect()
        .await
        .map_err(|e| http_err(host, e.to_string()))?
        .to_bytes())
}

/// Where a download in progress is kept (across daemon restarts: resumed by the next pull).
fn partial_path(store: &Store, digest: &Digest) -> PathBuf {
    store.root().join("partial").join(digest.hex())
}

/// Hashes a finished download, fsyncs it and renames it to its blob name; a wrong one is removed.
fn commit_partial(store: &Store, partial: &Path, digest: &Digest) -> Result<()> {
    let file = File::open(partial).map_err(|source| StoreError::Io {
        path: partial.to_owned(),
        source,
    })?;
    let (actual, _) = crate::digest::HashingReader::new(&file)
        .finish()
        .map_err(|source| StoreError::Io {
            path: partial.to_owned(),
            source,
        })?;
    if actual != *digest {
        let _ = fs::remove_file(partial);
        return Err(StoreError::DigestMismatch {
            expected: digest.clone(),
            actual,
        }
        .into());
    }
    file.sync_all().map_err(|source| StoreError::Io {
        path: partial.to_owned(),
        source,
    })?;
    store.commit_blob(partial, digest)?;
    Ok(())
}

/// The host a push goes to: the registry the reference names, Docker Hub's endpoint for
/// `docker.io`. A push needs the registry written out, so that nothing leaves for Docker Hub
/// by accident.
fn registry_of(reference: &Reference) -> Result<&str> {
    reference
        .registry
        .as_deref()
        .map(crate::reference::endpoint_host)
        .ok_or_else(|| {
            RegistryError::Invalid(format!(
                "{reference} names no registry to push to: write it as HOST[:PORT]/NAME[:TAG], such as 127.0.0.1:5000/{} (or docker.io/{} for Docker Hub)",
                reference.repository, reference.repository
            ))
        })
}

fn platform_matches(descriptor: &Value) -> bool {
    descriptor["platform"]["os"] == "linux"
        && descriptor["platform"]["architecture"] == this_architecture()
}

/// Pulls `reference` into the store from its registry (Docker Hub when it names none) and
/// names it so; returns the manifest's digest. Layers already in the store are not fetched
/// again.
pub async fn pull(
    store: &Store,
    reference: &Reference,
    credentials: Option<Credentials>,
    progress: ProgressFn,
) -> Result<Digest> {
    let auths: Auths = credentials
        .map(|c| (reference.registry_or_hub().to_owned(), c))
        .into_iter()
        .collect();
    pull_via(store, reference, &Registries::default(), &auths, progress).await
}

/// [`pull`] through the sources `registries` gives (mirrors first), each tried in turn until
/// one has the image; a source that cannot be reached, lacks the image or refuses is skipped.
/// Each source's certificate authorities are those of the store's `certs.d/<host>/`, and its
/// credentials those `auths` has for its registry.
pub async fn pull_via(
    store: &Store,
    reference: &Reference,
    registries: &Registries,
    auths: &Auths,
    progress: ProgressFn,
) -> Result<Digest> {
    each_source(reference, registries, |source| {
        let transport = Transport::for_host(store, &source.host);
        let credentials = auths.get(&source.registry).cloned();
        let progress = progress.clone();
        async move {
            pull_source(store, reference, &source, credentials, &transport, progress).await
        }
    })
    .await
}

/// Where `reference` would be pulled from: the first of its sources that has its manifest, and
/// the manifest's digest (of the index, for a multi-architecture image). Nothing is stored.
pub async fn find(
    store: &Store,
    reference: &Reference,
    registries: &Registries,
    auths: &Auths,
) -> Result<(Source, Digest)> {
    each_source(reference, registries, |source| {
        let transport = Transport::for_host(store, &source.host);
        let credentials = auths.get(&source.registry).cloned();
        async move {
            let registry = client_for(&source, credentials, &transport)?;
            let scope = format!("repository:{}:pull", source.repository);
            let (_, _, digest) = registry
                .manifest(
                    &source.repository,
                    &tag_or_digest(reference),
                    reference.digest.as_ref(),
                    &scope,
                )
                .await?;
            Ok((source, digest))
        }
    })
    .await
}

/// Runs `attempt` on each source of `reference` in order until one succeeds; an error that is
/// worth trying elsewhere moves to the next. With one source its error is returned as it is.
async fn each_source<T, F, Fut>(
    reference: &Reference,
    registries: &Registries,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(Source) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let sources = registries.sources(reference);
    let single = sources.len() == 1;
    let mut attempts = Vec::new();
    for source in sources {
        let named = source.to_string();
        match attempt(source).await {
            Ok(done) => return Ok(done),
            Err(e) if single || !e.try_next() => return Err(e),
            Err(e) => attempts.push(format!("{named}: {e}")),
        }
    }
    Err(RegistryError::NoSource {
        reference: reference.clone().resolved().to_string(),
        attempts,
    })
}

fn client_for(
    source: &Source,
    credentials: Option<Credentials>,
    transport: &Transport,
) -> Result<Registry> {
    let registry = Registry::new(source.host.clone(), credentials, transport)?;
    Ok(if source.insecure {
        registry.plain_http()
    } else {
        registry
    })
}

/// The tag or digest a reference asks a registry for.
fn tag_or_digest(reference: &Reference) -> String {
    let wanted = reference.clone().normalized();
    match (&wanted.digest, &wanted.tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => crate::reference::DEFAULT_TAG.into(),
    }
}

/// [`pull`] from the registry the reference names (Docker Hub when none), with the certificate
/// authorities of `transport` trusted besides the web's.
pub async fn pull_with(
    store: &Store,
    reference: &Reference,
    credentials: Option<Credentials>,
    transport: &Transport,
    progress: ProgressFn,
) -> Result<Digest> {
    let source = Registries::default()
        .sources(reference)
        .into_iter()
        .next()
        .ok_or_else(|| {
            RegistryError::Invalid(format!("{reference} has nowhere to be pulled from"))
        })?;
    pull_source(store, reference, &source, credentials, transport, progress).await
}

/// Pulls `reference` from one source and names it in the store as the reference says.
async fn pull_source(
    store: &Store,
    reference: &Reference,
    source: &Source,
    credentials: Option<Credentials>,
    transport: &Transport,
    progress: ProgressFn,
) -> Result<Digest> {
    fs::create_dir_all(store.root().join("partial")).map_err(|source| StoreError::Io {
        path: store.root().join("partial"),
        source,
    })?;
    let registry = client_for(source, credentials, transport)?;
    let wanted = reference.clone().normalized();
    let tag_or_digest = tag_or_digest(reference);
    let repository = &source.repository;
    let scope = format!("repository:{repository}:pull");
    let (mut bytes, media_type, mut digest) = registry
        .manifest(repository, &tag_or_digest, wanted.digest.as_ref(), &scope)
        .await?;
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::Invalid(format!("the manifest is not JSON: {e}")))?;
    if media_type.contains("index")
        || media_type.contains("manifest.list")
        || doc["manifests"].is_array()
    {
        let chosen = doc["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| platform_matches(m))
            .ok_or_else(|| {
                RegistryError::Invalid(format!(
                    "{reference} has no image for linux/{}",
                    this_architecture()
                ))
            })?;
        let child: Digest = chosen["digest"]
            .as_str()
            .unwrap_or("")
            .parse()
            .map_err(|e| RegistryError::Invalid(format!("the index: {e}")))?;
        (bytes, _, digest) = registry
            .manifest(repository, &child.to_string(), Some(&child), &scope)
            .await?;
    }
    let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::Invalid(format!("the image manifest is not valid: {e}")))?;
    let config_digest = descriptor_digest(manifest.config().digest())?;
    registry
        .fetch_blob(
            store,
            repository,
            &config_digest,
            manifest.config().size(),
            &scope,
            &progress,
        )
        .await?;
    let config_bytes = store.read_blob(&config_digest)?;
    let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| RegistryError::Invalid(format!("the image config is not valid: {e}")))?;
    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != manifest.layers().len() {
        return Err(RegistryError::Invalid(format!(
            "the image has {} layers but its config lists {} diff ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    // Each layer is downloaded (a few at once) and unpacked as soon as it is complete.
    let mut pending = Vec::new();
    for (layer, diff_id) in manifest.layers().iter().zip(&diff_ids) {
        let blob = descriptor_digest(layer.digest())?;
        let diff_id: Digest = diff_id
            .parse()
            .map_err(|e| RegistryError::Invalid(format!("a diff id: {e}")))?;
        pending.push((blob, layer.size(), diff_id));
    }
    let queue = pending.into_iter();
    let launch = |(blob, size, diff_id): (Digest, u64, Digest)| {
        let registry = registry.clone();
        let store = store.clone();
        let scope = scope.clone();
        let progress = progress.clone();
        let repository = repository.clone();
        async move {
            if !store.layer_path(&diff_id).exists() {
                progress(Progress::Started {
                    digest: blob.clone(),
                    size,
                });
                registry
                    .fetch_blob(&store, &repository, &blob, size, &scope, &progress)
                    .await?;
                let s = store.clone();
                let (b, d) = (blob.clone(), diff_id.clone());
                tokio::task::spawn_blocking(move || s.ensure_layer(&b, &d))
                    .await
                    .map_err(|e| RegistryError::Invalid(e.to_string()))??;
            }
            progress(Progress::Done { digest: blob });
            Ok::<(), RegistryError>(())
        }
    };
    futures::stream::iter(queue.map(launch))
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await?;
    let store2 = store.clone();
    let manifest_digest = tokio::task::spawn_blocking(move || store2.add_image(&bytes))
        .await
        .map_err(|e| RegistryError::Invalid(e.to_string()))??;
    debug_assert_eq!(manifest_digest, digest);
    store.tag(&wanted, &manifest_digest)?;
    Ok(manifest_digest)
}

/// Pushes the store's image `name` to `target` (which names its registry and repository);
/// blobs the registry has are not sent again. Returns the manifest's digest.
pub async fn push(
    store: &Store,
    name: &str,
    target: &Reference,
    credentials: Option<Credentials>,
    progress: ProgressFn,
) -> Result<Digest> {
    let transport = Transport::for_host(store, registry_of(target)?);
    push_with(store, name, target, credentials, &transport, progress).await
}

/// [`push`] with the certificate authorities of `transport` trusted besides the web's.
pub async fn push_with(
    store: &Store,
    name: &str,
    target: &Reference,
    credentials: Option<Credentials>,
    transport: &Transport,
    progress: ProgressFn,
) -> Result<Digest> {
    let digest = store.lookup(name)?;
    let bytes = store.read_blob(&digest)?;
    let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::Invalid(format!("{digest} is not an image manifest: {e}")))?;
    let registry = Registry::new(registry_of(target)?, credentials, transport)?;
    // `docker.io/nginx` is `library/nginx` there.
    let target = &target.clone().resolved();
    let repository = &target.repository;
    let scope = format!("repository:{repository}:pull,push");
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    for layer in manifest.layers() {
        blobs.push((descriptor_digest(layer.digest())?, layer.size()));
    }
    blobs.push((
        descriptor_digest(manifest.config().digest())?,
        manifest.config().size(),
    ));
    let queue = blobs.into_iter();
    let launch = |(blob, size): (Digest, u64)| {
        let registry = registry.clone();
        let store = store.clone();
        let scope = scope.clone();
        let progress = progress.clone();
        let repository = repository.clone();
        async move {
            if !registry.has_blob(&repository, &blob, &scope).await? {
                progress(Progress::Started {
                    digest: blob.clone(),
                    size,
                });
                registry
                    .upload_blob(&store, &repository, &blob, size, &scope, &progress)
                    .await?;
            }
            progress(Progress::Done { digest: blob });
            Ok::<(), RegistryError>(())
        }
    };
    futures::stream::iter(queue.map(launch))
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await?;
    let tag = target
        .clone()
        .normalized()
        .tag
        .unwrap_or_else(|| crate::reference::DEFAULT_TAG.into());
    let media_type = manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| crate::assemble::MANIFEST_MEDIA_TYPE.into());
    let path = format!("/v2/{repository}/manifests/{tag}");
    let body = Bytes::from(bytes);
    let response = registry
        .request(
            Method::PUT,
            &path,
            &[
                ("content-type", media_type),
                ("content-length", body.len().to_string()),
            ],
            || full(body.clone()),
            &scope,
        )
        .await?;
    let status = response.status();
    let answer = collect(&registry.host, response).await?;
    if status != StatusCode::CREATED {
        return Err(http_err(
            &registry.host,
            format!(
                "PUT {path} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            ),
        ));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }

    #[test]
    fn bearer_challenges_give_their_parameters() {
        let (scheme, p) = challenge(
            r#"Bearer realm="http://127.0.0.1:9/token",service="registry",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(p["realm"], "http://127.0.0.1:9/token");
        assert_eq!(p["service"], "registry");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        assert_eq!(challenge(r#"Basic realm="x""#).0, "basic");
    }

    #[test]
    fn endpoints_know_their_address_and_certificate_name() {
        let e = Endpoint {
            tls: true,
            host: "ghcr.io".into(),
        };
        assert_eq!(
            (e.addr(), e.server_name()),
            ("ghcr.io:443".into(), "ghcr.io".into())
        );
        let e = Endpoint {
            tls: false,
            host: "127.0.0.1:5000".into(),
        };
        assert_eq!(
            (e.addr(), e.server_name()),
            ("127.0.0.1:5000".into(), "127.0.0.1".into())
        );
        assert!(!has_port("ghcr.io") && has_port("h:5000"));
    }

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(
            split_url("http://h:5000/v2/x?y=1"),
            Some((
                Endpoint {
                    tls: false,
                    host: "h:5000".into()
                },
                "/v2/x?y=1".into()
            ))
        );
        assert_eq!(
            split_url("https://auth.h/token"),
            Some((
                Endpoint {
                    tls: true,
                    host: "auth.h".into()
                },
                "/token".into()
            ))
        );
        assert_eq!(split_url("ftp://h/x"), None);
    }
}
