//! Instance networking: a server in an instance answers on its bridge address; cleanup leaves
//! no veth and no cgroup.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{is_root, Fixture};

fn http_get(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[tokio::test(flavor = "multi_thread")]
async fn host_reaches_a_server_in_the_instance_over_the_bridge() {
    if !is_root() {
        return;
    }
    let f = Fixture::with_network(11).await;
    let mut cfg = f.instance(
        "web",
        &["python3", "-m", "http.server", "--bind", "0.0.0.0", "8000"],
    );
    let address = f.attach(&mut cfg, 2);
    let process = f.runtime.spawn(&cfg).await.expect("spawn");
    let target = SocketAddr::from((address, 8000));
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        match tokio::task::spawn_blocking(move || http_get(target))
            .await
            .unwrap()
        {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no answer from {target}: {e}; log: {}", f.log(&cfg)),
        }
    };
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    let hosts = std::fs::read_to_string(paracloud_runtime::etc_file_path(
        &cfg.dir,
        paracloud_runtime::EtcFile::Hosts,
    ))
    .unwrap();
    assert!(hosts.contains(&format!("{address}\tweb.host")), "{hosts}");

    let veth = f.runtime.veth_name(&cfg.id);
    assert!(Path::new("/sys/class/net").join(&veth).exists());
    f.runtime.cleanup(&cfg.id).unwrap();
    let exit = f.wait(&cfg, &process).await;
    assert_eq!(exit.signal, Some(9), "cleanup kills the instance");
    assert!(
        !Path::new("/sys/class/net").join(&veth).exists(),
        "veth {veth} lingers"
    );
    for dir in f.cgroup_dirs(&cfg.id) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    // Idempotent.
    f.runtime.cleanup(&cfg.id).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_reach_each_other_and_nothing_beyond_the_bridge() {
    if !is_root() {
        return;
    }
    let f = Fixture::with_network(12).await;
    let mut server = f.instance(
        "kv",
        &["python3", "-m", "http.server", "--bind", "0.0.0.0", "8001"],
    );
    let server_address = f.attach(&mut server, 2);
    let server_process = f.runtime.spawn(&server).await.expect("spawn server");
    let mut client = f.instance(
        "client",
        &[
            "python3",
            "-c",
            "import socket, time, urllib.request\n\
             for _ in range(200):\n\
             \x20   try:\n\
             \x20       print(urllib.request.urlopen('http://kv:8001/', timeout=2).status)\n\
             \x20       break\n\
             \x20   except OSError:\n\
             \x20       time.sleep(0.05)\n\
             s = socket.socket()\n\
             s.settimeout(1)\n\
             try:\n\
             \x20   s.connect(('192.0.2.1', 80))\n\
             \x20   print('outside reachable')\n\
             except OSError as e:\n\
             \x20   print('outside unreachable', e.errno)\n",
        ],
    );
    client.hosts = vec![("kv".into(), server_address)];
    f.attach(&mut client, 3);
    let client_process = f.runtime.spawn(&client).await.expect("spawn client");
    let exit = f.wait(&client, &client_process).await;
    let log = f.log(&client);
    assert_eq!(exit.code, Some(0), "{log}");
    assert!(log.contains("200\n"), "client reached kv by name: {log}");
    assert!(
        log.contains("outside unreachable"),
        "no default route: {log}"
    );
    f.runtime.cleanup(&client.id).unwrap();
    f.runtime.cleanup(&server.id).unwrap();
    f.wait(&server, &server_process).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_reach_only_the_endpoints_the_host_serves_them() {
    if !is_root() {
        return;
    }
    // A host service on every address: served on the service address, not on the gateway.
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = host.local_addr().unwrap().port();
    std::thread::spawn(move || for _stream in host.incoming() {});
    let served = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 250, 13, 250), port);
    let f = Fixture::with_network_serving(13, vec![served]).await;
    let script = format!(
        "import socket\n\
         for label, address in (('served', '10.250.13.250'), ('gateway', '10.250.13.1')):\n\
         \x20   s = socket.socket()\n\
         \x20   s.settimeout(1)\n\
         \x20   try:\n\
         \x20       s.connect((address, {port}))\n\
         \x20       print(label, 'reachable')\n\
         \x20   except OSError as e:\n\
         \x20       print(label, 'unreachable', e)\n"
    );
    let mut client = f.instance("client", &["python3", "-c", &script]);
    f.attach(&mut client, 2);
    let process = f.runtime.spawn(&client).await.expect("spawn client");
    let exit = f.wait(&client, &process).await;
    let log = f.log(&client);
    assert_eq!(exit.code, Some(0), "{log}");
    assert!(log.contains("served reachable"), "{log}");
    assert!(log.contains("gateway unreachable"), "{log}");
    f.runtime.cleanup(&client.id).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_noted_step_by_step_has_both_sides_in_the_order_they_ran() {
    if !is_root() {
        return;
    }
    use paracloud_runtime::start_steps::StartSide;
    let f = Fixture::with_network(14).await;
    let mut cfg = f.instance("steps", &["/bin/sh", "-c", "echo ran"]);
    f.attach(&mut cfg, 2);
    let (process, steps) = f.runtime.spawn_with_steps(&cfg).await.expect("spawn");
    let exit = f.wait(&cfg, &process).await;
    assert_eq!(exit.code, Some(0), "log: {}", f.log(&cfg));
    let names = |side| -> Vec<&str> {
        steps
            .steps
            .iter()
            .filter(|s| s.side == side)
            .map(|s| s.name.as_str())
            .collect()
    };
    let daemon = names(StartSide::Daemon);
    let init = names(StartSide::SandboxInit);
    assert_eq!(daemon.first(), Some(&"begin"), "{daemon:?}");
    assert_eq!(
        daemon.last(),
        Some(&"exec seen (the error pipe closed)"),
        "{daemon:?}"
    );
    assert!(daemon.contains(&"veth and neighbour entry"), "{daemon:?}");
    assert_eq!(init.first(), Some(&"sandbox-init runs"), "{init:?}");
    assert_eq!(init.last(), Some(&"seccomp filter"), "{init:?}");
    assert!(
        init.contains(&"network (lo, eth0, routes, neighbours)"),
        "{init:?}"
    );
    // One clock for both sides: sandbox-init runs after the clone and ends before the exec is
    // seen; the steps come sorted.
    let at = |side, name: &str| {
        steps
            .steps
            .iter()
            .find(|s| s.side == side && s.name == name)
            .unwrap()
            .at_ns
    };
    assert!(at(StartSide::SandboxInit, "sandbox-init runs") > at(StartSide::Daemon, "begin"));
    assert!(
        at(StartSide::SandboxInit, "seccomp filter")
            < at(StartSide::Daemon, "exec seen (the error pipe closed)")
    );
    assert!(steps.steps.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
    assert!(steps.durations_us().iter().all(|(_, _, us)| *us >= 0.0));
    // The notes file is gone; a plain spawn notes nothing.
    assert!(!cfg.dir.join("start-steps.json").exists());
    f.runtime.cleanup(&cfg.id).unwrap();
    let mut plain = f.instance("plain", &["/bin/true"]);
    f.attach(&mut plain, 3);
    let process = f.runtime.spawn(&plain).await.expect("spawn");
    f.wait(&plain, &process).await;
    assert!(!plain.dir.join("start-steps.json").exists());
    f.runtime.cleanup(&plain.id).unwrap();
}
