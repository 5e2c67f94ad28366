//! A real registry server (the distribution's `docker-registry`) for one test: its own port on
//! 127.0.0.1, its own storage directory and config, optionally htpasswd basic auth; stopped
//! when dropped.

#![allow(dead_code, reason = "each test file uses its own part of the harness")]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RegistryServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl RegistryServer {
    /// Starts a registry; with `user`, only that user (password `pass`) may use it.
    pub fn start(user: Option<(&str, &str)>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("paracloud-test-registry-")
            .tempdir()
            .unwrap();
        let auth = match user {
            Some((name, pass)) => {
                let htpasswd = dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbc"])
                    .arg(&htpasswd)
                    .args([name, pass])
                    .output()
                    .expect("htpasswd is installed (.ci/run installs apache2-utils)");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                format!(
                    "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        Self::start_in(dir, auth)
    }

    /// Starts a registry with the `auth:` section given (YAML, may be empty) in `dir`.
    pub fn start_in(dir: tempfile::TempDir, auth: String) -> Self {
        Self::start_with(dir, "", auth)
    }

    /// As [`RegistryServer::start_in`], with more lines of the `http:` section (indented by
    /// two spaces), such as its `tls:`.
    pub fn start_with(dir: tempfile::TempDir, http_extra: &str, auth: String) -> Self {
        // A port the kernel just handed out; a clash with another test's is retried.
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{http_extra}{auth}",
                    dir.path().join("storage").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry is installed (.ci/run installs it)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self { port, dir, child };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "the registry did not start: {}",
            std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_file(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn storage(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
