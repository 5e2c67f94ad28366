//! A UDP service through the data plane: datagrams to its published port reach its instances,
//! every datagram of one flow (a client's address and port) the same instance, the flows spread
//! over both instances, and the counters say so; another service reaches it by name through the
//! firewall, which drops its datagrams to any other UDP port of the host; and a datagram sent
//! while the data plane is dead is answered by the next one, on the socket the daemon held.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;

/// Answers each datagram with the instance's name, a space and the datagram.
const ECHO: &str = r#"
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 5353))
name = os.environ['PARACLOUD_INSTANCE'].encode()
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(name + b' ' + data, peer)
"#;

/// Asks the echo service by name once a second, printing its answers; also sends a datagram to
/// the bridge's gateway (the host) on port `argv[1]`, which the firewall must drop.
const ASKER: &str = r#"
import socket, sys, time
echo = [l.split()[0] for l in open('/etc/hosts') if 'echo' in l.split()[1:]][0]
gateway = echo.rsplit('.', 1)[0] + '.1'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
while True:
    s.sendto(b'from the asker', (gateway, int(sys.argv[1])))
    s.sendto(b'asked', ('echo', 5353))
    try:
        print(s.recv(2048).decode(), flush=True)
    except OSError as e:
        print('no answer:', e, flush=True)
    time.sleep(0.5)
"#;

/// Sends `payload` to 127.0.0.1:`port` from `client` until an answer comes (an instance may not
/// have bound its port yet), and returns the answer.
fn ask(client: &UdpSocket, port: u16, payload: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 2048];
    loop {
        client
            .send_to(payload.as_bytes(), ("127.0.0.1", port))
            .unwrap();
        match client.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(
                    from.port(),
                    port,
                    "the answer comes from the published port"
                );
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
            Err(e) if Instant::now() < deadline => eprintln!("no answer yet to {payload}: {e}"),
            Err(e) => panic!("no answer to {payload}: {e}"),
        }
    }
}

#[test]
fn a_udp_service_keeps_each_flow_on_one_instance_and_spreads_the_flows() {
    let p = Platform::new();
    let port = p.port(0);
    // A host program the instances must not reach, on every address of the host.
    let host_only = UdpSocket::bind(("0.0.0.0", p.port(1))).unwrap();
    host_only.set_nonblocking(true).unwrap();
    let manifest = p.manifest(
        "udp",
        &format!(
            "app = \"udp\"\n\n[services.echo]\nimage = \"host\"\ncommand = [\"/usr/bin/python3\", \"-c\", {ECHO:?}]\n\
             ports = [\"{port}:5353/udp\"]\nreplicas = 2\nstop_signal = \"KILL\"\n\n\
             [services.asker]\nimage = \"host\"\ncommand = [\"/usr/bin/python3\", \"-c\", {ASKER:?}, \"{}\"]\n\
             stop_signal = \"KILL\"\n",
            p.port(1)
        ),
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    p.wait_ps("udp", Duration::from_secs(20), "two echo instances", |ps| {
        ps.iter()
            .filter(|i| field(i, "service") == "echo" && field(i, "state") == "running")
            .count()
            == 2
    });

    // Until both instances answer (one may not have bound its port yet, and a flow whose
    // datagram it refused moves to the other), from a new flow each time.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answering = BTreeSet::new();
    while answering.len() < 2 {
        assert!(Instant::now() < deadline, "only {answering:?} answer");
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let answer = ask(&client, port, "hello");
        answering.insert(answer.split_once(' ').unwrap().0.to_owned());
    }
    let before = published_listener(&p);

    let mut by_instance: BTreeMap<String, usize> = BTreeMap::new();
    let (flows, per_flow) = (16, 3);
    for flow in 0..flows {
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut instances = BTreeSet::new();
        for i in 0..per_flow {
            let payload = format!("flow {flow} datagram {i}");
            let answer = ask(&client, port, &payload);
            let (instance, echoed) = answer.split_once(' ').unwrap();
            assert_eq!(echoed, payload);
            instances.insert(instance.to_owned());
        }
        assert_eq!(
            instances.len(),
            1,
            "flow {flow} stayed on one instance: {instances:?}"
        );
        *by_instance
            .entry(instances.pop_first().unwrap())
            .or_default() += 1;
    }
    eprintln!("flows per instance: {by_instance:?}");
    assert_eq!(
        by_instance.keys().collect::<Vec<_>>(),
        ["echo.1", "echo.2"],
        "both instances got flows"
    );

    let published = published_listener(&p);
    assert_eq!(published["udp"], true, "{published}");
    let grew = |what: &str| published[what].as_u64().unwrap() - before[what].as_u64().unwrap();
    let answered = (flows * per_flow) as u64;
    assert_eq!(
        grew("accepted"),
        flows as u64,
        "one flow per client: {published}"
    );
    assert_eq!(grew("datagrams_in"), answered, "{published}");
    assert_eq!(grew("datagrams_out"), answered, "{published}");
    let backends = published["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2, "{published}");
    assert!(
        backends.iter().all(|b| b["accepted"].as_u64().unwrap() > 0),
        "{published}"
    );
    let table = p.ok(&["top", "-a", "udp", "--once"]);
    assert!(table.contains("udp/echo:5353/udp published"), "{table}");

    // The other service reaches the echo by name, through the firewall's served UDP endpoints.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = p.ok(&["logs", "-a", "udp", "asker"]);
        if logs.contains(" asked") && logs.lines().any(|l| l.contains("echo.")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the asker never got an answer: {logs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut buf = [0u8; 64];
    assert!(
        host_only.recv_from(&mut buf).is_err(),
        "a datagram from an instance reached a host port no service serves"
    );

    // The data plane dies: the daemon holds its UDP sockets, so a datagram sent meanwhile waits
    // in the published one and the next data plane answers it, sent once.
    wait_held(&p);
    let old = p.dataplane_pid().expect("a data plane");
    kill9(old);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    client
        .send_to(b"while restarting", ("127.0.0.1", port))
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = client
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no answer across the restart ({e}):\n{}", p.daemon_log()));
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with(" while restarting"));
    assert_ne!(p.dataplane_pid(), Some(old));
    p.ok(&["down"]);
}

/// Waits until the daemon holds every listening socket of the data plane.
fn wait_held(p: &Platform) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(p.root().join("daemon.log")).unwrap_or_default();
        let complete = log
            .lines()
            .rev()
            .find(|l| l.contains("holding the listening sockets"))
            .and_then(|l| l.rsplit_once(": ")?.1.split_once(" of "))
            .is_some_and(|(held, all)| held.trim() == all.split_whitespace().next().unwrap_or(""));
        if complete {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon does not hold the listeners:\n{}",
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The published UDP listener's counters, as `top -o json` shows them.
fn published_listener(p: &Platform) -> serde_json::Value {
    let json = p.ok(&["top", "-a", "udp", "--once", "-o", "json"]);
    let snapshot: serde_json::Value = serde_json::from_str(&json).unwrap();
    snapshot["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "udp/echo:5353/udp published")
        .unwrap_or_else(|| panic!("no published UDP listener in {json}"))
        .clone()
}
