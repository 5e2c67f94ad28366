//! UDP listeners with real sockets: per-flow affinity, replies from the listener's address, flows
//! that move when their backend leaves, idle flows, the bound on flows, counters, a UDP and a TCP
//! listener on one address, and an inherited UDP socket with a datagram queued on it.

mod common;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use common::*;
use paracloud_dataplane::{Config, Dataplane, Listener, Protocol, Tuning};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, watch};

/// A UDP backend that answers each datagram with `ID:` and the datagram.
async fn echo(id: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let reply = [id.as_bytes(), b":", &buf[..n]].concat();
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

/// A UDP address nothing is bound to, on this test process's own loopback address.
fn free_udp_addr() -> SocketAddr {
    let socket = std::net::UdpSocket::bind((own_loopback(), 0)).unwrap();
    socket.local_addr().unwrap()
}

fn udp_listener(bind: SocketAddr, backends: &[(&str, SocketAddr)]) -> Listener {
    listener_of(bind, Protocol::Udp, backends)
}

/// Sends `payload` from `client` to `to` and returns the reply and where it came from.
async fn ask(client: &UdpSocket, to: SocketAddr, payload: &str) -> (String, SocketAddr) {
    client.send_to(payload.as_bytes(), to).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("a reply")
        .unwrap();
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

async fn wait_udp_bound(harness: &Harness, bind: SocketAddr) {
    eventually("UDP listener bound", || async {
        harness
            .stats
            .snapshot()
            .udp_listener(bind)
            .is_some_and(|l| l.bound)
    })
    .await;
}

#[tokio::test]
async fn each_flow_keeps_one_backend_and_flows_spread_over_both() {
    let (a, b) = (echo("a").await, echo("b").await);
    let bind = free_udp_addr();
    let harness = Harness::start(
        Some(&Config {
            listeners: vec![udp_listener(bind, &[("a", a), ("b", b)])],
        }),
        Tuning::default(),
    );
    wait_udp_bound(&harness, bind).await;
    let mut seen = std::collections::BTreeSet::new();
    for flow in 0..20 {
        let client = client().await;
        let mut backend = None;
        for i in 0..3 {
            let (reply, from) = ask(&client, bind, &format!("{flow}.{i}")).await;
            assert_eq!(
                from, bind,
                "replies come from the address the client sent to"
            );
            let (id, echoed) = reply.split_once(':').unwrap();
            assert_eq!(echoed, format!("{flow}.{i}"));
            assert_eq!(*backend.get_or_insert(id.to_owned()), id, "flow {flow}");
        }
        seen.extend(backend);
    }
    assert_eq!(seen.len(), 2, "both backends got flows: {seen:?}");
    let snapshot = harness.stats.snapshot();
    let listener = snapshot.udp_listener(bind).unwrap();
    assert_eq!(listener.counters.accepted, 20, "flows");
    assert_eq!(listener.counters.active, 20, "flows open");
    assert_eq!(listener.counters.datagrams_in, 60);
    assert_eq!(listener.counters.datagrams_out, 60);
    let per_backend: u64 = listener.backends.iter().map(|b| b.counters.accepted).sum();
    assert_eq!(per_backend, 20);
    let datagrams: u64 = listener
        .backends
        .iter()
        .map(|b| b.counters.datagrams_out)
        .sum();
    assert_eq!(datagrams, 60);
    assert!(
        listener.counters.bytes_in > 0 && listener.counters.bytes_out > listener.counters.bytes_in
    );
    let metrics = snapshot.to_prometheus();
    assert!(
        metrics.contains(&format!(
            "paracloud_datagrams_total{{listener=\"test/{bind}\",direction=\"in\"}} 60"
        )),
        "{metrics}"
    );
    harness.stop().await;
}

#[tokio::test]
async fn a_flow_moves_to_another_backend_when_its_own_leaves_and_a_reload_keeps_it() {
    let (a, b) = (echo("a").await, echo("b").await);
    let bind = free_udp_addr();
    let harness = Harness::start(
        Some(&Config {
            listeners: vec![udp_listener(bind, &[("a", a)])],
        }),
        Tuning::default(),
    );
    wait_udp_bound(&harness, bind).await;
    let client = client().await;
    assert_eq!(ask(&client, bind, "1").await.0, "a:1");
    // A reload that keeps the backend keeps the flow.
    harness.reconfigure(&Config {
        listeners: vec![udp_listener(bind, &[("a", a), ("b", b)])],
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 2..6 {
        assert_eq!(ask(&client, bind, &i.to_string()).await.0, format!("a:{i}"));
    }
    // Its backend leaves: the next datagram picks the one left, within the same flow.
    harness.reconfigure(&Config {
        listeners: vec![udp_listener(bind, &[("b", b)])],
    });
    eventually("a leaves the route", || async {
        let snapshot = harness.stats.snapshot();
        snapshot
            .udp_listener(bind)
            .is_some_and(|l| l.backend("a").is_none())
    })
    .await;
    assert_eq!(ask(&client, bind, "6").await.0, "b:6");
    let snapshot = harness.stats.snapshot();
    let listener = snapshot.udp_listener(bind).unwrap();
    assert_eq!(listener.counters.accepted, 1, "one flow throughout");
    assert_eq!(listener.backend("b").unwrap().counters.accepted, 1);
    harness.stop().await;
}

#[tokio::test]
async fn an_idle_flow_ends_and_the_clients_next_datagram_begins_another() {
    let a = echo("a").await;
    let bind = free_udp_addr();
    let tuning = Tuning {
        udp_idle: Duration::from_millis(200),
        ..Tuning::default()
    };
    let harness = Harness::start(
        Some(&Config {
            listeners: vec![udp_listener(bind, &[("a", a)])],
        }),
        tuning,
    );
    wait_udp_bound(&harness, bind).await;
    let client = client().await;
    assert_eq!(ask(&client, bind, "1").await.0, "a:1");
    let counters = || {
        harness
            .stats
            .snapshot()
            .udp_listener(bind)
            .unwrap()
            .counters
    };
    assert_eq!(counters().active, 1);
    eventually("the idle flow ends", || async { counters().active == 0 }).await;
    let backend = harness
        .stats
        .snapshot()
        .udp_listener(bind)
        .unwrap()
        .backends[0]
        .clone();
    assert_eq!(backend.counters.active, 0);
    assert_eq!(ask(&client, bind, "2").await.0, "a:2");
    assert_eq!((counters().accepted, counters().active), (2, 1));
    harness.stop().await;
}

#[tokio::test]
async fn beyond_the_bound_a_new_flow_ends_the_one_idle_longest() {
    let a = echo("a").await;
    let bind = free_udp_addr();
    let tuning = Tuning {
        udp_flows: 2,
        ..Tuning::default()
    };
    let harness = Harness::start(
        Some(&Config {
            listeners: vec![udp_listener(bind, &[("a", a)])],
        }),
        tuning,
    );
    wait_udp_bound(&harness, bind).await;
    let clients = [client().await, client().await, client().await];
    for (i, c) in clients.iter().enumerate() {
        ask(c, bind, &i.to_string()).await;
    }
    let counters = || {
        harness
            .stats
            .snapshot()
            .udp_listener(bind)
            .unwrap()
            .counters
    };
    eventually("two flows open", || async { counters().active == 2 }).await;
    // The first client's flow was ended: its next datagram begins a fourth flow, ending the
    // second client's.
    assert_eq!(ask(&clients[0], bind, "again").await.0, "a:again");
    assert_eq!(counters().accepted, 4);
    eventually("still two flows open", || async { counters().active == 2 }).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_udp_and_a_tcp_listener_share_an_address() {
    let udp_backend = echo("u").await;
    let tcp_backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp_backend.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp_backend.accept().await {
            let _ = stream.write_all(b"tcp").await;
        }
    });
    let bind = free_addr();
    let harness = Harness::serving(
        vec![
            udp_listener(bind, &[("u", udp_backend)]),
            listener_of(bind, Protocol::Tcp, &[("t", tcp_addr)]),
        ],
        Tuning::default(),
    )
    .await;
    wait_udp_bound(&harness, bind).await;
    let mut stream = TcpStream::connect(bind).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert_eq!(text, "tcp");
    drop(stream);
    assert_eq!(ask(&client().await, bind, "x").await.0, "u:x");
    // Removing the UDP listener leaves the TCP one, and frees the UDP port.
    harness.reconfigure(&Config {
        listeners: vec![listener_of(bind, Protocol::Tcp, &[("t", tcp_addr)])],
    });
    eventually("the UDP port is free again", || async {
        std::net::UdpSocket::bind(bind).is_ok()
    })
    .await;
    assert!(harness.bound(bind));
    harness.stop().await;
}

#[tokio::test]
async fn an_inherited_udp_socket_is_adopted_with_the_datagram_queued_on_it() {
    let a = echo("a").await;
    let socket = std::net::UdpSocket::bind((own_loopback(), 0)).unwrap();
    let bind = socket.local_addr().unwrap();
    // A TCP socket on the same address is not taken for the UDP listener.
    let tcp = std::net::TcpListener::bind(bind).unwrap();
    let client = client().await;
    client.send_to(b"early", bind).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dataplane.json");
    let config = Config {
        listeners: vec![udp_listener(bind, &[("a", a)])],
    };
    paracloud_dataplane::write_config(&path, &config).unwrap();
    let dataplane = Dataplane::new(path, Tuning::default())
        .inherit(vec![OwnedFd::from(tcp), OwnedFd::from(socket)]);
    let (_reload, reload_rx) = watch::channel(());
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(dataplane.run_with_reload(reload_rx, async move {
        let _ = shutdown_rx.await;
    }));
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("the queued datagram is relayed")
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"a:early"[..], bind));
    eventually("the unwanted inherited TCP socket is closed", || async {
        TcpStream::connect(bind).await.is_err()
    })
    .await;
    let _ = shutdown.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("data plane stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_drain_stops_reading_and_ends_the_flows_once_no_reply_came_for_the_idle_grace() {
    let a = echo("a").await;
    let bind = free_udp_addr();
    let tuning = Tuning {
        idle_grace: Duration::from_millis(300),
        ..Tuning::default()
    };
    let mut harness = Harness::start(
        Some(&Config {
            listeners: vec![udp_listener(bind, &[("a", a)])],
        }),
        tuning,
    );
    wait_udp_bound(&harness, bind).await;
    let client = client().await;
    assert_eq!(ask(&client, bind, "1").await.0, "a:1");
    let began = tokio::time::Instant::now();
    let _ = harness.shutdown.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(10), &mut harness.task)
        .await
        .expect("the drain ends with the flow, long before the 30 s UDP idle timeout")
        .unwrap()
        .unwrap();
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "the open flow was given the idle grace: {took:?}"
    );
    assert!(
        std::net::UdpSocket::bind(bind).is_ok(),
        "the socket closed with the last flow"
    );
}
