//! The daemon's settings file, `<root>/daemon.toml`: what applies to every application of the
//! root. It lives in the state root, so that a daemon started by any command (they all start
//! one when none runs) reads the same settings as one started by hand or by systemd.
//!
//! ```toml
//! # The writable layer's size of instances whose service sets no `resources.disk`.
//! default_disk = "10G"
//! # Instances in user namespaces of their own, root inside an unprivileged host id: the
//! # default where the machine allows it; false runs them with host ids.
//! userns = true
//! # The remote API (HTTPS, tokens) and the dashboard, as `paracloud daemon --listen`.
//! listen = "0.0.0.0:8443"
//! # Its certificate and key (PEM); without them, a self-signed pair made at first start
//! # (`<root>/tls/`).
//! tls_cert = "/etc/paracloud/cert.pem"
//! tls_key = "/etc/paracloud/key.pem"
//! ```

use std::path::Path;

use serde::Deserialize;

/// The file's name in the state root.
pub const FILE: &str = "daemon.toml";

/// What the settings file says; everything is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// Bytes of the writable layer of an instance whose service sets no `resources.disk`.
    pub default_disk: Option<u64>,
    /// Instances run in user namespaces of their own (see `paracloud_runtime`'s `userns`);
    /// `None` when the file does not say: then they do where the machine allows it, which the
    /// daemon checks at start and writes here.
    pub userns: Option<bool>,
    /// Why this machine cannot give instances user namespaces, when the daemon's check at start
    /// found so (never read from the file).
    pub userns_unavailable: Option<String>,
    /// The open-files limit (soft, hard) an instance starts with when its service sets no
    /// `nofile`: the soft one the daemon was started with, before it raised its own to the hard
    /// one (it holds a few descriptors per instance), so instances start as they would have
    /// (never read from the file).
    pub instance_open_files: Option<(u64, u64)>,
    /// Where the remote API listens (HTTPS), if anywhere.
    pub listen: Option<std::net::SocketAddr>,
    /// The remote API's certificate chain and key, in PEM.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    default_disk: Option<toml::Spanned<String>>,
    userns: Option<bool>,
    listen: Option<toml::Spanned<String>>,
    tls_cert: Option<std::path::PathBuf>,
    tls_key: Option<std::path::PathBuf>,
}

/// Reads the settings of `root` (none when there is no file). An error says where and what.
pub fn load(root: &Path) -> Result<Settings, String> {
    let path = root.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn parse(text: &str) -> Result<Settings, String> {
    let raw: Raw = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
    let default_disk = match raw.default_disk {
        None => None,
        Some(size) => {
            let line = text[..size.span().start].lines().count().max(1);
            let bytes = paracloud_manifest::parse_size(size.get_ref()).map_err(|e| {
                format!("line {line}: default_disk: {e} (write a size such as \"10G\")")
            })?;
            if bytes < paracloud_manifest::MIN_DISK {
                return Err(format!(
                    "line {line}: default_disk: {bytes} bytes is below the minimum of 16M"
                ));
            }
            Some(bytes)
        }
    };
    let listen = match raw.listen {
        None => None,
        Some(listen) => {
            let line = text[..listen.span().start].lines().count().max(1);
            Some(listen.get_ref().parse().map_err(|e| {
                format!(
                    "line {line}: listen: {:?} is not an address and port ({e}): write one such as \"0.0.0.0:8443\"",
                    listen.get_ref()
                )
            })?)
        }
    };
    if raw.tls_cert.is_some() != raw.tls_key.is_some() {
        return Err(
            "tls_cert and tls_key go together: give both, or neither for a self-signed certificate"
                .into(),
        );
    }
    Ok(Settings {
        default_disk,
        userns: raw.userns,
        userns_unavailable: None,
        instance_open_files: None,
        listen,
        tls_cert: raw.tls_cert,
        tls_key: raw.tls_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_disk_is_read_and_bad_ones_are_located() {
        assert_eq!(parse("").unwrap(), Settings::default());
        assert_eq!(
            parse("default_disk = \"1G\"\n").unwrap().default_disk,
            Some(1 << 30)
        );
        assert_eq!(
            parse("\n\ndefault_disk = \"1Q\"\n").unwrap_err(),
            "line 3: default_disk: invalid memory size \"1Q\": unknown unit \"Q\" (write a size such as \"10G\")"
        );
        assert!(parse("default_disk = \"1M\"")
            .unwrap_err()
            .contains("below the minimum of 16M"));
        assert_eq!(
            parse("listen = \"127.0.0.1:8443\"").unwrap().listen,
            Some("127.0.0.1:8443".parse().unwrap())
        );
        assert_eq!(
            parse("\nlisten = \"localhost\"").unwrap_err(),
            "line 2: listen: \"localhost\" is not an address and port (invalid socket address syntax): write one such as \"0.0.0.0:8443\""
        );
        assert!(parse("tls_cert = \"c.pem\"")
            .unwrap_err()
            .starts_with("tls_cert and tls_key go together"));
        let unknown = parse("defualt_disk = \"1G\"").unwrap_err();
        assert!(
            unknown.contains("unknown field `defualt_disk`"),
            "{unknown}"
        );
        assert!(unknown.contains("line 1"), "{unknown}");
    }
}
