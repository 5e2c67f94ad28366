//! Restarting the data plane loses no listening socket: the daemon holds duplicates and hands them
//! to the next data plane (socket activation), so clients never see a refused connection.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use paracloud_dataplane::{write_config, Backend, Config, Listener, Protocol};

/// One GET / answered 200 with every tier of the shop.
fn ok_page(status: u16, body: &str) -> bool {
    status == 200 && body.contains("kv: ok")
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body); returns (status, body, whether
/// the server keeps the connection open).
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String, bool)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before the response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').ok_or_else(|| bad("header"))?;
        let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        match name.as_str() {
            "content-length" => length = Some(value.parse().map_err(|_| bad("length"))?),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => close = value.contains("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| bad("chunk size"))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let mut rest = vec![0; length.ok_or_else(|| bad("no length"))?];
        reader.read_exact(&mut rest)?;
        body = rest;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned(), !close))
}

/// What the load saw; times are microseconds since the load began.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Requests that started after the new data plane was seen, and succeeded.
    ok_after_restart: AtomicU64,
    /// connect() refused: the listening socket was gone.
    refused: AtomicU64,
    /// Other connect() errors.
    connect_failed: AtomicU64,
    /// Failed requests on connections made before the old data plane was dead.
    failed_on_old: AtomicU64,
    /// Failed requests on connections made once it was dead.
    failed_on_new: AtomicU64,
    examples: Mutex<Vec<String>>,
}

struct Clock {
    start: Instant,
    /// When the killed data plane was seen dead, and when its successor was seen (u64::MAX before).
    dead: AtomicU64,
    restarted: AtomicU64,
}

impl Clock {
    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

impl Tally {
    fn failed(&self, clock: &Clock, connected_at: u64, what: String) {
        if connected_at > clock.dead.load(Ordering::SeqCst) {
            self.failed_on_new.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed_on_old.fetch_add(1, Ordering::Relaxed);
        }
        let mut examples = self.examples.lock().unwrap();
        if examples.len() < 8 {
            examples.push(what);
        }
    }

    fn succeeded(&self, clock: &Clock, started_at: u64) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        if started_at > clock.restarted.load(Ordering::SeqCst) {
            self.ok_after_restart.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn connect(&self, port: u16) -> Option<TcpStream> {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                Some(stream)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                self.connect_failed.fetch_add(1, Ordering::Relaxed);
                self.examples.lock().unwrap().push(format!("connect: {e}"));
                None
            }
        }
    }

    fn total(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
            + self.refused.load(Ordering::Relaxed)
            + self.connect_failed.load(Ordering::Relaxed)
            + self.failed_on_old.load(Ordering::Relaxed)
            + self.failed_on_new.load(Ordering::Relaxed)
    }
}

/// A client opening a fresh connection per request (HTTP/1.0).
fn fresh_client(port: u16, stop: &AtomicBool, tally: &Tally, clock: &Clock) {
    while !stop.load(Ordering::Relaxed) {
        let started = clock.now();
        let Some(mut stream) = tally.connect(port) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let connected = clock.now();
        let result = stream
            .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .and_then(|()| {
                let mut text = String::new();
                stream.read_to_string(&mut text).map(|_| text)
            });
        match result {
            Ok(text) => {
                let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
                let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                match status {
                    Some(status) if ok_page(status, body) => tally.succeeded(clock, started),
                    _ => tally.failed(clock, connected, format!("fresh: {:.200}", text)),
                }
            }
            Err(e) => tally.failed(clock, connected, format!("fresh: {e}")),
        }
    }
}

/// A client sending requests one after another on a keep-alive connection (HTTP/1.1), opening a
/// new one when it breaks.
fn keep_alive_client(port: u16, stop: &AtomicBool, tally: &Tally, clock: &Clock) {
    let mut connection: Option<(BufReader<TcpStream>, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = clock.now();
        if connection.is_none() {
            let Some(stream) = tally.connect(port) else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            connection = Some((BufReader::new(stream), clock.now()));
        }
        let (reader, connected) = connection.as_mut().unwrap();
        let connected = *connected;
        let result = reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .and_then(|()| read_response(reader));
        match result {
            Ok((status, body, keep)) => {
                if ok_page(status, &body) {
                    tally.succeeded(clock, started);
                } else {
                    tally.failed(
                        clock,
                        connected,
                        format!("keep-alive: {status} {body:.200}"),
                    );
                }
                if !keep {
                    connection = None;
                }
            }
            Err(e) => {
                tally.failed(clock, connected, format!("keep-alive: {e}"));
                connection = None;
            }
        }
    }
}

/// Clients of each kind, all on the shop's published port.
const CLIENTS: usize = 6;

/// Runs the load on the shop, SIGKILLs the data plane in the middle, lets the load go on, and
/// checks what the clients saw.
fn sigkill_under_load(p: &Platform, what: &str) {
    let port = p.port(0);
    assert!(ok_page_now(port), "the shop answers before the load");
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clock = Arc::new(Clock {
        start: Instant::now(),
        dead: AtomicU64::new(u64::MAX),
        restarted: AtomicU64::new(u64::MAX),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, tally, clock) = (stop.clone(), tally.clone(), clock.clone());
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    fresh_client(port, &stop, &tally, &clock)
                } else {
                    keep_alive_client(port, &stop, &tally, &clock)
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_secs(2));
    let before_kill = tally.ok.load(Ordering::Relaxed);
    let first = p.dataplane_pid().unwrap();
    kill9(first);
    while alive(first) {
        std::thread::sleep(Duration::from_millis(1));
    }
    clock.dead.store(clock.now(), Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        match p.dataplane_pid() {
            Some(pid) if pid != first && alive(pid) => break pid,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no new data plane:\n{}",
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    clock.restarted.store(clock.now(), Ordering::SeqCst);
    let gap_ms =
        (clock.restarted.load(Ordering::SeqCst) - clock.dead.load(Ordering::SeqCst)) / 1000;
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let failed = tally.total() - load(&tally.ok);
    eprintln!(
        "{what}: {failed} of {} requests failed ({} refused connects, {} other connect errors, \
         {} on connections made before the old data plane was dead, {} on connections made \
         after); new data plane seen {gap_ms} ms after the old one died",
        tally.total(),
        load(&tally.refused),
        load(&tally.connect_failed),
        load(&tally.failed_on_old),
        load(&tally.failed_on_new),
    );
    let examples = tally.examples.lock().unwrap().clone();
    for example in &examples {
        eprintln!("  failed: {example}");
    }
    assert!(
        before_kill > 50,
        "the load ran before the kill: {before_kill}"
    );
    assert!(
        load(&tally.ok_after_restart) > 50,
        "the load went on after the restart: {} requests succeeded; failures: {examples:#?}",
        load(&tally.ok_after_restart)
    );
    assert_eq!(
        load(&tally.refused) + load(&tally.connect_failed),
        0,
        "every connect succeeded: the listening socket outlived the data plane; {examples:#?}"
    );
    assert_eq!(
        load(&tally.failed_on_new),
        0,
        "connections made once the old data plane was dead waited for the new one: {examples:#?}"
    );
    assert!(
        load(&tally.failed_on_old) <= 2 * CLIENTS as u64,
        "only the connections the killed process held fail (at most one or two per client): \
         {examples:#?}"
    );
    assert!(ok_page_now(port));
    let log = p.daemon_log();
    assert!(
        log.contains("killed by SIGKILL") || log.contains(") ended"),
        "{log}"
    );
    let started = format!("data plane started, pid {second}, with ");
    let inherited: u32 = log
        .lines()
        .find_map(|l| l.split_once(&started))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no start of pid {second} in the log: {log}"));
    assert!(
        inherited >= 1,
        "the new data plane inherited the listening sockets: {log}"
    );
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

/// Socket inodes of the host's listening TCP sockets on `port` (from /proc/net/tcp and tcp6).
fn listening_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && fields.get(3) == Some(&"0A") {
                inodes.push(fields[9].to_string());
            }
        }
    }
    inodes
}

/// Instances (and the processes they started) holding an fd of one of the sockets `inodes`.
fn instances_holding(p: &Platform, inodes: &[String]) -> Vec<String> {
    let mut holders = Vec::new();
    for instance in p.ps("shop") {
        let pid = instance["pid"].as_i64().unwrap();
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let link = std::fs::read_link(fd.path()).unwrap_or_default();
            let link = link.to_string_lossy();
            if inodes.iter().any(|i| *link == format!("socket:[{i}]")) {
                holders.push(format!("{} fd {link}", field(&instance, "instance")));
            }
        }
    }
    holders
}

#[test]
fn the_data_plane_killed_with_sigkill_under_load_comes_back_and_refuses_no_connection() {
    let p = Platform::new();
    let manifest = p.shop();
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    wait_held(&p);
    sigkill_under_load(&p, "data plane SIGKILL under load");

    // Instances started while the daemon holds the sockets do not inherit them.
    p.ok(&["scale", "-a", "shop", "web=4"]);
    let inodes = listening_inodes(p.port(0));
    assert_eq!(
        inodes.len(),
        1,
        "one listening socket on the published port"
    );
    assert_eq!(instances_holding(&p, &inodes), Vec::<String>::new());

    // A listener that leaves the configuration closes: the daemon let go of its duplicate.
    p.ok(&["down", "-a", "shop"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(("127.0.0.1", p.port(0))) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => assert!(
                Instant::now() < deadline,
                "the published port still accepts after down: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_restarted_daemon_takes_the_listening_sockets_of_the_data_plane_it_adopts() {
    let p = Platform::new();
    let manifest = p.shop();
    let manifest = manifest.to_str().unwrap();
    p.ok(&["up", "-f", manifest]);
    let daemon = p.daemon_pid().unwrap();
    let dataplane = p.dataplane_pid().unwrap();
    kill9(daemon);
    while alive(daemon) {
        std::thread::sleep(Duration::from_millis(10));
    }
    p.ok(&["up", "-f", manifest]);
    assert_eq!(
        p.dataplane_pid(),
        Some(dataplane),
        "the data plane was adopted"
    );
    wait_held(&p);
    sigkill_under_load(&p, "data plane SIGKILL under load, after a daemon restart");
}

fn ok_page_now(port: u16) -> bool {
    matches!(http_get(port, "/"), Ok((status, body)) if ok_page(status, &body))
}

/// `paracloud __dataplane` run standalone, with a listening socket passed the way the daemon
/// passes them (fd 3, LISTEN_FDS=1): it serves that socket, including a connection made before
/// it started.
#[test]
fn a_standalone_data_plane_adopts_a_socket_passed_by_socket_activation() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in backend.incoming().flatten() {
            let _ = stream.write_all(b"hi");
        }
    });
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bind: SocketAddr = socket.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dataplane.json");
    write_config(
        &config,
        &Config {
            listeners: vec![Listener {
                name: "activated".into(),
                bind,
                protocol: Protocol::Tcp,
                backends: vec![Backend {
                    id: "b".into(),
                    addr: backend_addr,
                    weight: 1,
                }],
                revisions: Vec::new(),
            }],
        },
    )
    .unwrap();
    let mut early = TcpStream::connect(bind).unwrap();
    early
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let mut command = Command::new(env!("CARGO_BIN_EXE_paracloud"));
    command
        .arg("__dataplane")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null());
    paracloud_runtime::handover::pass_listen_fds(&mut command, &[socket.as_fd()]).unwrap();
    let child = command.spawn().unwrap();
    drop(command);
    // From now on only the data plane holds the socket.
    drop(socket);

    let mut text = String::new();
    let read = early.read_to_string(&mut text);
    let pid = child.id() as i32;
    let served_later = TcpStream::connect(bind).and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut later = String::new();
        s.read_to_string(&mut later).map(|_| later)
    });
    kill9(pid);
    let mut child = child;
    child.wait().unwrap();
    read.unwrap();
    assert_eq!(
        text, "hi",
        "the connection queued before the start is served"
    );
    assert_eq!(served_later.unwrap(), "hi");
    assert!(
        TcpStream::connect(bind).is_err(),
        "the socket died with its last holder"
    );
}
