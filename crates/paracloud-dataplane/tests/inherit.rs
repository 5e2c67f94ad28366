//! Inherited listening sockets (socket activation): a listener adopts the socket bound to its
//! address, with the connections already queued on it; sockets no listener wants are closed.

mod common;

use std::os::fd::OwnedFd;
use std::time::Duration;

use common::{eventually, listener_of};
use paracloud_dataplane::{write_config, Config, Dataplane, Protocol, Tuning};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

async fn greeting_backend() -> std::net::SocketAddr {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = backend.accept().await {
            let _ = stream.write_all(b"hi").await;
        }
    });
    addr
}

#[tokio::test]
async fn a_listener_adopts_the_inherited_socket_with_the_connections_queued_on_it() {
    let backend = greeting_backend().await;
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = socket.local_addr().unwrap();
    let unwanted = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unwanted_addr = unwanted.local_addr().unwrap();
    let not_a_socket = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());

    // Connected before any data plane runs: the kernel queued it on the socket.
    let mut early = TcpStream::connect(bind).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dataplane.json");
    let config = Config {
        listeners: vec![listener_of(bind, Protocol::Tcp, &[("b", backend)])],
    };
    write_config(&path, &config).unwrap();
    let dataplane = Dataplane::new(path, Tuning::default()).inherit(vec![
        OwnedFd::from(socket),
        OwnedFd::from(unwanted),
        not_a_socket,
    ]);
    let stats = dataplane.stats();
    let (_reload, reload_rx) = watch::channel(());
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(dataplane.run_with_reload(reload_rx, async move {
        let _ = shutdown_rx.await;
    }));

    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), early.read_to_string(&mut text))
        .await
        .expect("the queued connection is served")
        .unwrap();
    assert_eq!(text, "hi");
    drop(early);
    assert!(stats.snapshot().listener(bind).is_some_and(|l| l.bound));
    eventually("the unwanted inherited socket is closed", || async {
        TcpStream::connect(unwanted_addr).await.is_err()
    })
    .await;

    let _ = shutdown.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("data plane stops")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(bind).await.is_err(),
        "the adopted socket closes with the data plane"
    );
}
