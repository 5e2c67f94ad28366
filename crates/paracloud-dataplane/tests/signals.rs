//! `run` driven by real signals: SIGHUP reloads, SIGTERM stops. Its own test binary (process),
//! since the signals go to the whole process.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use paracloud_dataplane::{run, write_config, Backend, Config, Listener, Protocol};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

fn signal_self(name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn config(bind: SocketAddr, backend: SocketAddr) -> Config {
    Config {
        listeners: vec![Listener {
            name: "signals".into(),
            bind,
            protocol: Protocol::Tcp,
            backends: vec![Backend {
                id: "b".into(),
                addr: backend,
                weight: 1,
            }],
            revisions: Vec::new(),
        }],
    }
}

/// Connects through the data plane and reads the backend's greeting.
async fn greeting(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    Some(text)
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_stops() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = backend.accept().await {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, b"hi").await;
        }
    });
    let bind = common::free_addr();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dataplane.json");
    let stats_socket = dir.path().join("stats.sock");
    // No file yet: the data plane starts empty.
    let task = tokio::spawn(run(
        path.clone(),
        Some(stats_socket.clone()),
        Vec::new(),
        paracloud_dataplane::Tuning::default(),
        None,
        None,
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(bind).await.is_err());
    assert!(tokio::net::UnixStream::connect(&stats_socket).await.is_ok());

    write_config(&path, &config(bind, backend_addr)).unwrap();
    signal_self("HUP");
    let mut answered = None;
    for _ in 0..100 {
        answered = greeting(bind).await;
        if answered.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answered.as_deref(), Some("hi"));

    signal_self("TERM");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run returns after SIGTERM")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(bind).await.is_err());
    assert!(
        !stats_socket.exists(),
        "the stats socket is removed at exit"
    );
}
