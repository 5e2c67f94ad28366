//! A remote daemon over HTTPS: the connections of a [`Client`](crate::Client) made with
//! [`Client::remote`](crate::Client::remote). The daemon's certificate is usually self-signed,
//! so it is trusted by its fingerprint, as SSH trusts a host key: pinned at the first use, and
//! any other certificate refused from then on. Each request carries the token.

use std::sync::{Arc, Mutex};

use paracloud_unix_http::{Connection, Dial, Dialing};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

/// The fingerprint of a certificate: `sha256:` and the SHA-256 of its DER in hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Whether `text` is a fingerprint as [`fingerprint`] writes it.
pub fn is_fingerprint(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    })
}

/// A remote daemon: where it is, the certificate trusted for it, and the token to present.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `host:port`.
    pub address: String,
    /// The fingerprint trusted, or `None` to trust the first one seen (see [`Remote::seen`]).
    pub pinned: Option<String>,
    pub token: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
}

impl Remote {
    /// The daemon at `url` (`https://host:port`, or `host:port`).
    pub fn new(url: &str, pinned: Option<String>, token: Option<String>) -> Result<Self, String> {
        let address = parse_url(url)?;
        Ok(Self {
            address,
            pinned,
            token,
            seen: Default::default(),
        })
    }

    /// The fingerprint of the certificate the daemon presented at the last connection.
    pub fn seen(&self) -> Option<String> {
        self.seen.lock().unwrap().clone()
    }

    fn host(&self) -> &str {
        match self.address.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => &self.address,
        }
    }
}

/// `host:port` from `https://host:port[/]` or `host:port`; an error says what to write.
pub fn parse_url(url: &str) -> Result<String, String> {
    let hint = "write the daemon's address as https://HOST:PORT (the address of its --listen)";
    if url.starts_with("http://") {
        return Err(format!(
            "{url}: the remote API is served over HTTPS only: {hint}"
        ));
    }
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.is_empty() {
        return Err(format!("{url}: not a daemon's address: {hint}"));
    }
    let port_ok = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(format!(
            "{url}: the port is missing or not a number: {hint}"
        ));
    }
    Ok(rest.to_owned())
}

impl Dial for Remote {
    fn dial(&self) -> Dialing<'_> {
        Box::pin(async move {
            let provider = Arc::new(crypto::ring::default_provider());
            let verifier = Arc::new(Pinned {
                expected: self.pinned.clone(),
                seen: self.seen.clone(),
                provider: provider.clone(),
            });
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(std::io::Error::other)?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            let name = ServerName::try_from(self.host().to_owned())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tcp = TcpStream::connect(&self.address).await?;
            let tls = TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| match (&self.pinned, self.seen()) {
                    (Some(pinned), Some(seen)) if *pinned != seen => std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!(
                            "the daemon's certificate changed: {seen} is not the pinned {pinned}. Someone may be in the middle; if the daemon's certificate was replaced on purpose, trust the new one with `paracloud context add` and its --fingerprint"
                        ),
                    ),
                    _ => e,
                })?;
            Ok(Box::new(tls) as Box<dyn Connection>)
        })
    }

    fn target(&self) -> String {
        format!("https://{}", self.address)
    }

    fn authorization(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }
}

/// Trusts the one certificate whose fingerprint is expected (any, the first time), whatever
/// names it holds; the handshake's signatures are still checked against it, so the server
/// must hold its key.
#[derive(Debug)]
struct Pinned {
    expected: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity);
        *self.seen.lock().unwrap() = Some(seen.clone());
        match &self.expected {
            Some(expected) if *expected != seen => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_https_host_and_port() {
        assert_eq!(
            parse_url("https://example.org:8443").unwrap(),
            "example.org:8443"
        );
        assert_eq!(parse_url("10.0.0.1:8443/").unwrap(), "10.0.0.1:8443");
        assert_eq!(parse_url("https://[::1]:8443").unwrap(), "[::1]:8443");
        assert!(parse_url("http://h:1").unwrap_err().contains("HTTPS only"));
        assert!(parse_url("https://h")
            .unwrap_err()
            .contains("port is missing"));
        assert!(parse_url("https://h:1/v1")
            .unwrap_err()
            .contains("not a daemon's address"));
        let remote = Remote::new("https://[::1]:8443", None, None).unwrap();
        assert_eq!(remote.host(), "::1");
    }

    #[test]
    fn fingerprints_are_recognised() {
        let f = fingerprint(b"x");
        assert!(is_fingerprint(&f));
        assert!(!is_fingerprint("sha256:abc"));
        assert!(!is_fingerprint(&f.to_uppercase()));
    }
}
