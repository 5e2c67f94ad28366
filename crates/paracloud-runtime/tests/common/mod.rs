//! Fixture of the runtime's integration tests: a private cgroup parent, instance directories in
//! a temp dir and, when asked, a bridge with its own subnet.
//!
//! These tests need root and a real kernel (namespaces, cgroups, overlayfs, netlink). Without
//! root each test prints why and passes; CI runs them as root.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fixture"
)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paracloud_runtime::{
    Exit, InstanceConfig, Limits, NetworkAttachment, NetworkConfig, Process, Rootfs, Runtime,
    RuntimeConfig,
};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

pub fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root (namespaces, cgroups, overlayfs, netlink)");
    false
}

pub struct Fixture {
    pub runtime: Runtime,
    pub tmp: tempfile::TempDir,
    pub parent: String,
    pub network: Option<NetworkConfig>,
    /// Every instance id handed out, cleaned up on drop even when the test failed.
    ids: std::sync::Mutex<Vec<String>>,
}

fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

impl Fixture {
    pub fn new() -> Self {
        let parent = format!("paracloud-rt-test-{}", random_suffix());
        let runtime = Runtime::new(RuntimeConfig {
            cgroup_root: PathBuf::from(CGROUP_ROOT),
            cgroup_parent: parent.clone(),
            helper_exe: PathBuf::from(env!("CARGO_BIN_EXE_paracloud-runtime-helper")),
        })
        .expect("runtime");
        Self {
            runtime,
            tmp: tempfile::tempdir().expect("temp dir"),
            parent,
            network: None,
            ids: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A fixture with a bridge "pct…" on 10.250.`subnet`.0/24 (the gateway is .1).
    pub async fn with_network(subnet: u8) -> Self {
        Self::with_network_serving(subnet, Vec::new()).await
    }

    /// [`Fixture::with_network`] whose instances may reach `served` on the host (the service
    /// address is 10.250.`subnet`.250).
    pub async fn with_network_serving(subnet: u8, served: Vec<SocketAddrV4>) -> Self {
        let mut f = Self::new();
        let net = NetworkConfig {
            bridge: format!("pct{}", &random_suffix()[..6]),
            gateway: format!("10.250.{subnet}.1/24").parse().unwrap(),
            service_addresses: vec![Ipv4Addr::new(10, 250, subnet, 250)],
            served,
            served_udp: Vec::new(),
            segments: Vec::new(),
        };
        f.runtime.ensure_network(&net).await.expect("bridge");
        f.network = Some(net);
        f
    }

    /// An instance running `argv` from the host's /usr, with a log in its directory.
    pub fn instance(&self, id: &str, argv: &[&str]) -> InstanceConfig {
        let dir = self.tmp.path().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        self.ids.lock().unwrap().push(id.to_string());
        InstanceConfig {
            id: id.to_string(),
            hostname: format!("{id}.host"),
            dir: dir.clone(),
            rootfs: Rootfs::Host {
                extra_paths: vec![],
            },
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            working_dir: None,
            user: None,
            mounts: vec![],
            hosts: vec![],
            network: None,
            limits: Limits::default(),
            capabilities: vec![],
            log_path: dir.join("log"),
            owned: Vec::new(),
            userns: None,
            sandbox: Default::default(),
        }
    }

    /// Attaches `cfg` to the fixture's bridge at 10.250.N.`host`.
    pub fn attach(&self, cfg: &mut InstanceConfig, host: u8) -> Ipv4Addr {
        let net = self.network.as_ref().expect("fixture without network");
        let gw = net.gateway.addr().octets();
        let address = Ipv4Addr::new(gw[0], gw[1], gw[2], host);
        cfg.network = Some(NetworkAttachment {
            bridge: net.bridge.clone(),
            address: format!("{address}/24").parse().unwrap(),
            segments: Vec::new(),
            routes: Vec::new(),
            gateway: None,
            bridge_addresses: Vec::new(),
        });
        address
    }

    pub fn log(&self, cfg: &InstanceConfig) -> String {
        std::fs::read_to_string(&cfg.log_path).unwrap_or_default()
    }

    /// Waits for the exit with a bound, so a broken sandbox fails the test instead of hanging.
    pub async fn wait(&self, cfg: &InstanceConfig, process: &Process) -> Exit {
        tokio::time::timeout(Duration::from_secs(60), self.runtime.wait(&cfg.id, process))
            .await
            .expect("instance did not exit within 60 s")
            .expect("wait")
    }

    /// Polls the log until it contains `needle`.
    pub async fn wait_for_log(&self, cfg: &InstanceConfig, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log(cfg);
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in the log of {} after 20 s: {log:?}",
                cfg.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        ["cpu", "cpuacct", "memory", "pids", "unified", ""]
            .iter()
            .map(|h| Path::new(CGROUP_ROOT).join(h).join(&self.parent).join(id))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in self.ids.lock().unwrap().iter() {
            let _ = self.runtime.cleanup(id);
        }
        for h in ["cpu", "cpuacct", "memory", "pids", "unified", ""] {
            let _ = std::fs::remove_dir(Path::new(CGROUP_ROOT).join(h).join(&self.parent));
        }
        if let Some(net) = &self.network {
            let bridge = net.bridge.clone();
            let runtime = &self.runtime;
            // Drop runs inside the test's runtime: remove the bridge on a helper thread.
            std::thread::scope(|s| {
                s.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    let _ = rt.block_on(runtime.remove_network(&bridge));
                });
            });
        }
    }
}
