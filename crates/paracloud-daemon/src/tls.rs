//! The remote API's certificate: the one the settings name, or a self-signed one made at the
//! first start under `<root>/tls/` (its key readable by root alone) and kept across restarts, so
//! that clients that pinned it keep trusting it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::auth::hex;

/// The server's side of TLS, and how clients recognise it.
pub struct Identity {
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate, `sha256:` and 64 hex digits: what clients pin.
    pub fingerprint: String,
    /// Where the certificate was read from.
    pub cert_path: PathBuf,
}

/// The fingerprint clients pin: SHA-256 of the certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(der)))
}

/// The identity from `cert` and `key` (PEM), or the root's self-signed one, made when missing.
pub fn load(root: &Path, given: Option<(&Path, &Path)>) -> Result<Identity, String> {
    let (cert_path, key_path) = match given {
        Some((cert, key)) => (cert.to_path_buf(), key.to_path_buf()),
        None => self_signed(root)?,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert_path.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "{} holds no certificate (a PEM file with -----BEGIN CERTIFICATE-----)",
            cert_path.display()
        ));
    };
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("cannot read the private key {}: {e}", key_path.display()))?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                format!(
                    "the certificate {} and key {} do not make a TLS identity: {e}",
                    cert_path.display(),
                    key_path.display()
                )
            })?;
    Ok(Identity {
        config: Arc::new(config),
        fingerprint,
        cert_path,
    })
}

/// `<root>/tls/cert.pem` and `key.pem`, made at the first start.
fn self_signed(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

    let dir = root.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Ok(host) = nix::unistd::gethostname() {
        if let Some(host) = host.to_str() {
            names.push(host.to_string());
        }
    }
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
    let write = |path: &Path, text: String, mode: u32| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(&key, made.signing_key.serialize_pem(), 0o600)?;
    write(&cert, made.cert.pem(), 0o644)?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_identity_is_made_once_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let first = load(root.path(), None).unwrap();
        assert!(first.fingerprint.starts_with("sha256:"));
        assert_eq!(first.fingerprint.len(), "sha256:".len() + 64);
        let again = load(root.path(), None).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.path().join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let missing = load(
            root.path(),
            Some((
                Path::new("/nonexistent/c.pem"),
                Path::new("/nonexistent/k.pem"),
            )),
        )
        .err()
        .unwrap();
        assert!(
            missing.starts_with("cannot read the certificate /nonexistent/c.pem"),
            "{missing}"
        );
    }
}
