//! Sandboxing as a user meets it: what an instance can see and how far it can go.

mod common;

use std::time::Duration;

use common::*;

fn logs_until(p: &Platform, target: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let logs = p.ok(&["logs", "-a", "iso", target]);
        if logs.contains(needle) {
            return logs;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "no {needle:?} in the logs of {target}: {logs}\n{}",
                p.daemon_log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_instance_sees_only_its_own_processes_and_files() {
    let p = Platform::new();
    let manifest = p.manifest(
        "iso",
        r#"
app = "iso"
[services.a]
image = "host"
stop_grace_period = "1s"
command = ["/bin/sh", "-c", "echo mine > /tmp/mine; echo mine > /mine; ls -d /proc/[0-9]* > /tmp/pids; echo pids: $(wc -l < /tmp/pids); echo init: $(tr '\\0' ' ' < /proc/1/cmdline); echo host: $(hostname); exec sleep 100000"]
[services.b]
image = "host"
stop_grace_period = "1s"
depends_on = ["a"]
command = ["/bin/sh", "-c", "sleep 0.5; for f in /tmp/mine /mine; do test -e $f && echo VISIBLE $f || echo hidden $f; done; echo done; exec sleep 100000"]
"#,
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let a = logs_until(&p, "a", "host:");
    // The shell's glob, expanded by pid 1 itself, finds only pid 1: none of the host's processes.
    assert!(a.contains("pids: 1\n"), "only its own processes: {a}");
    assert!(
        a.contains("init: /bin/sh -c"),
        "its first process is pid 1: {a}"
    );
    assert!(a.contains("host: a.1"), "{a}");
    let b = logs_until(&p, "b", "done");
    assert!(
        b.contains("hidden /tmp/mine") && b.contains("hidden /mine"),
        "{b}"
    );
    assert!(!b.contains("VISIBLE"), "{b}");
    // The sandbox has no capabilities: mounting fails even as uid 0.
    let ps = p.ps("iso");
    let a_pid = ps.iter().find(|i| field(i, "instance") == "a.1").unwrap()["pid"]
        .as_i64()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{a_pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l == "CapEff:\t0000000000000000"),
        "{status}"
    );
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
}

#[test]
fn the_memory_limit_is_enforced_and_reported_as_oom_then_restarted() {
    let p = Platform::new();
    let manifest = p.manifest(
        "oom",
        r#"
app = "iso"
[services.hog]
image = "host"
command = ["/usr/bin/python3", "-c", "import time; print('allocating', flush=True); b = bytearray(300 * 1024 * 1024); print('survived', flush=True); time.sleep(1000)"]
resources = { memory = "32M" }
restart = { condition = "on-failure", backoff = "200ms" }
"#,
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap(), "--detach"]);
    p.wait_ps(
        "iso",
        Duration::from_secs(30),
        "hog to be restarted after an OOM kill",
        |ps| ps.iter().any(|i| i["restarts"].as_u64().unwrap_or(0) >= 1),
    );
    let events = p.ok(&["events", "-a", "iso"]);
    assert!(events.contains("out of memory"), "{events}");
    let logs = p.ok(&["logs", "-a", "iso", "hog"]);
    assert!(
        logs.contains("allocating") && !logs.contains("survived"),
        "{logs}"
    );
    // The host is fine: this test process and the daemon still answer.
    p.ok(&["ps", "-a", "iso"]);
}

#[test]
fn the_pids_limit_stops_a_fork_loop() {
    let p = Platform::new();
    let manifest = p.manifest(
        "pids",
        r#"
app = "iso"
[services.forker]
image = "host"
stop_grace_period = "1s"
command = ["/usr/bin/python3", "-c", """
import os, time
started = 0
for _ in range(60):
    try:
        if os.fork() == 0:
            time.sleep(1000)
            os._exit(0)
        started += 1
    except OSError as e:
        print('fork failed:', e, flush=True)
        break
print('started', started, flush=True)
time.sleep(100000)
"""]
resources = { pids = 16 }
"#,
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let logs = logs_until(&p, "forker", "started");
    assert!(
        logs.contains("fork failed: [Errno 11]"),
        "forks beyond the limit fail with EAGAIN: {logs}"
    );
    let ps = p.ps("iso");
    let pid = ps[0]["pid"].as_i64().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let n = children.split_whitespace().count();
    assert!(n < 16, "at most the limit: {n} children");
}

#[test]
fn logs_follow_new_lines_as_they_come() {
    let p = Platform::new();
    let manifest = p.manifest(
        "ticker",
        r#"
app = "iso"
[services.ticker]
image = "host"
stop_grace_period = "1s"
command = ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"]
"#,
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let mut follower = p
        .command()
        .args(["logs", "-a", "iso", "ticker", "-f", "-n", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut seen = Vec::new();
    while seen.len() < 10 {
        seen.push(lines.next().expect("the follower keeps printing").unwrap());
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let numbers: Vec<u64> = seen
        .iter()
        .map(|l| {
            l.trim_start_matches("ticker.1 | tick ")
                .parse()
                .unwrap_or_else(|_| panic!("{l:?}"))
        })
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, none lost or repeated: {numbers:?}"
    );
}

#[test]
fn regression_a_host_image_instance_reads_no_host_secret() {
    // `image = "host"` instances read the host's /etc/shadow through the read-only /etc.
    let p = Platform::new();
    let manifest = p.manifest(
        "iso",
        r#"
app = "iso"
[services.a]
image = "host"
stop_grace_period = "1s"
command = ["/bin/sh", "-c", "echo shadow: $(cat /etc/shadow 2>/dev/null | grep -c '^root:'); echo gshadow: $(cat /etc/gshadow 2>/dev/null | grep -c '^root:'); echo passwd: $(grep -c '^root:' /etc/passwd); echo private: $(ls -A /etc/ssl/private 2>/dev/null | wc -l); echo done; exec sleep 100000"]
"#,
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let logs = logs_until(&p, "a", "done");
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    assert!(
        host_shadow.lines().any(|l| l.starts_with("root:")),
        "this host has a root entry in /etc/shadow to hide"
    );
    // Nothing of the host's shadow files can be read: masked, they read as empty or not at all.
    assert!(logs.contains("shadow: 0\n"), "{logs}");
    assert!(logs.contains("gshadow: 0\n"), "{logs}");
    assert!(
        logs.contains("passwd: 1\n"),
        "the rest of /etc is there: {logs}"
    );
    assert!(logs.contains("private: 0\n"), "{logs}");
}

/// Tries TCP connections from inside an instance and says, for each, whether it got through.
const PROBE: &str = r#"
import errno, socket, subprocess, sys, time, urllib.request
gateway, host_port, host6_port, other_gateway, other_service = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def attempt(label, address, port, family=socket.AF_INET):
    target = (address, port) if family == socket.AF_INET else (address, port, 0, socket.if_nametoindex('eth0'))
    for _ in range(100):
        s = socket.socket(family)
        s.settimeout(2)
        try:
            s.connect(target)
            print(label, 'REACHED', flush=True)
        except OSError as e:
            # A new interface's IPv6 link-local address is usable once its DAD is over.
            if e.errno == errno.EADDRNOTAVAIL:
                s.close()
                time.sleep(0.1)
                continue
            print(label, 'unreachable:', e, flush=True)
        s.close()
        return
    print(label, 'no address', flush=True)
def link_local(address):
    # The bridge's IPv6 link-local address, from its MAC (EUI-64) in the ARP cache.
    for line in open('/proc/net/arp').read().splitlines()[1:]:
        fields = line.split()
        if fields[0] == address:
            b = [int(x, 16) for x in fields[3].split(':')]
            words = [(b[0] ^ 2) << 8 | b[1], b[2] << 8 | 0xff, 0xfe << 8 | b[3], b[4] << 8 | b[5]]
            return 'fe80::' + ':'.join('%x' % w for w in words)
for _ in range(100):
    try:
        print('service', urllib.request.urlopen('http://api:8000/', timeout=2).status, flush=True)
        break
    except OSError as e:
        time.sleep(0.1)
service = socket.gethostbyname('api')
attempt('gateway', gateway, host_port)
attempt('service address', service, host_port)
attempt('ipv6 gateway', link_local(service), host6_port, socket.AF_INET6)
# With a route of its own (it has NET_ADMIN), the host's other addresses and another
# application's service address are not reachable either.
subprocess.run(['ip', 'route', 'add', 'default', 'via', gateway], check=True)
attempt('other gateway', other_gateway, host_port)
attempt('other service', other_service, 8000)
print('done', flush=True)
time.sleep(100000)
"#;

/// The bridge of the `index`-th application of a platform (named after its subnet).
fn bridge_of(p: &Platform, index: u32) -> String {
    let network = u32::from(std::net::Ipv4Addr::new(
        10,
        100 + p.slot as u8,
        index as u8,
        0,
    ));
    format!("pc{network:08x}")
}

fn nft_table(bridge: &str) -> Option<String> {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "inet", &format!("paracloud-{bridge}")])
        .output()
        .expect("nft");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn an_instance_reaches_its_services_but_nothing_else_of_the_host() {
    let p = Platform::new();
    // A host service on every address, as an sshd or a database would listen, on IPv4 and
    // IPv6: nobody but the probe knows its port.
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let host6 = std::net::TcpListener::bind("[::]:0").unwrap();
    let host6_port = host6.local_addr().unwrap().port();
    let reached = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for listener in [host, host6] {
        let seen = reached.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Ok(peer) = stream.peer_addr() {
                    seen.lock().unwrap().push(peer);
                }
            }
        });
    }
    let prefix = format!("10.{}.", 100 + p.slot);
    // Another application first: its network is the pool's first, this one's the second.
    let other = p.manifest(
        "other",
        r#"
app = "other"
[services.web]
image = "host"
stop_signal = "KILL"
command = ["/usr/bin/python3", "-m", "http.server", "--bind", "0.0.0.0", "8000"]
ports = [8000]
"#,
    );
    p.ok(&["up", "-f", other.to_str().unwrap()]);
    let other_service = format!("{prefix}0.2");
    let other_addresses = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &bridge_of(&p, 0)])
        .output()
        .unwrap();
    let other_addresses = String::from_utf8_lossy(&other_addresses.stdout).into_owned();
    assert!(
        other_addresses.contains(&format!("{other_service}/32")),
        "{other_addresses}"
    );
    let command = serde_json::to_string(&[
        "/usr/bin/python3",
        "-c",
        PROBE,
        &format!("{prefix}1.1"),
        &host_port.to_string(),
        &host6_port.to_string(),
        &format!("{prefix}0.1"),
        &other_service,
    ])
    .unwrap();
    let manifest = p.manifest(
        "iso",
        &format!(
            r#"
app = "iso"
[services.api]
image = "host"
stop_signal = "KILL"
command = ["/usr/bin/python3", "-m", "http.server", "--bind", "0.0.0.0", "8000"]
ports = [{{ port = 8000, protocol = "http", publish = {published} }}]

[services.probe]
image = "host"
stop_signal = "KILL"
# In a user namespace of its own, NET_ADMIN does not even reach the instance's network (owned
# by the host's): with host ids, it can change its routes, and the firewall must still hold.
userns = false
cap_add = ["NET_ADMIN"]
# IPv6 on its eth0, off by default, as a service may turn it back on: the firewall must hold
# there too.
sysctls = {{ "net.ipv6.conf.eth0.disable_ipv6" = 0 }}
command = {command}
"#,
            published = p.port(0)
        ),
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let logs = logs_until(&p, "probe", "done");
    assert!(
        logs.contains("service 200"),
        "its own service, by name, through the data plane: {logs}"
    );
    for target in [
        "gateway",
        "service address",
        "ipv6 gateway",
        "other gateway",
        "other service",
    ] {
        assert!(
            logs.contains(&format!("| {target} unreachable")),
            "{target}: {logs}"
        );
    }
    // IPv6 is off on an instance's eth0 unless its service turns it on.
    let ps = p.ps("iso");
    let ipv6_of = |service: &str| {
        let pid = ps
            .iter()
            .find(|i| field(i, "service") == service)
            .and_then(|i| i["pid"].as_i64())
            .unwrap();
        let out = std::process::Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-n",
                "ip",
                "-6",
                "addr",
                "show",
                "dev",
                "eth0",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let api = ipv6_of("api");
    assert!(!api.contains("inet6"), "api's eth0 has IPv6: {api}");
    let probe = ipv6_of("probe");
    assert!(
        probe.contains("inet6 fe80"),
        "the probe turned it on: {probe}"
    );
    let reached = reached.lock().unwrap().clone();
    assert!(
        reached.is_empty(),
        "the host service was reached from {reached:?}"
    );
    // The published port is still served, from the host.
    let (status, _) = http_get(p.port(0), "/").unwrap();
    assert_eq!(status, 200);

    // The rules are Paracloud's own table per bridge, gone with the application.
    let bridge = bridge_of(&p, 1);
    let table = nft_table(&bridge).expect("the application's table");
    assert!(table.contains(&format!("{prefix}1.2 . 8000")), "{table}");
    p.ok(&["down", "-a", "iso"]);
    assert_eq!(
        nft_table(&bridge),
        None,
        "the table outlives the application"
    );
    assert!(
        nft_table(&bridge_of(&p, 0)).is_some(),
        "another application's table stays"
    );
}
