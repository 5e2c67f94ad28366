//! Restarting the data plane loses no listening socket: the daemon holds duplicates and hands them
//! to the next data plane (socket activation), so clients never see a refused connection. A
//! planned restart (`paracloud dataplane restart`) also fails no request: the old data plane
//! drains once the new one is ready.

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
        // A child's end is waited for; an adopted data plane's is seen gone by the watch.
        log.contains("killed by SIGKILL") || log.contains(") ended") || log.contains(") is gone"),
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

/// A service answering `ok` over HTTP/1.1 keep-alive (Content-Length), from the host's Python.
const RESPONDER: &str = r#"
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    disable_nagle_algorithm = True
    def do_GET(self):
        body = b'ok\n'
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer.request_queue_size = 1024
http.server.ThreadingHTTPServer(('0.0.0.0', 8000), Handler).serve_forever()
"#;

/// A TCP service echoing what it reads, line by line, for as long as the client stays.
const ECHO: &str = r#"
import socketserver
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(('0.0.0.0', 7000), Echo).serve_forever()
"#;

/// An application with the responder published on port(0) (HTTP) and the echo on port(1) (TCP).
fn responder_app(p: &Platform) -> std::path::PathBuf {
    let text = format!(
        "app = \"drain\"\n\n[services.web]\nimage = \"host\"\ncommand = [\"/usr/bin/python3\", \"-c\", {RESPONDER:?}]\n\
         ports = [{{ port = 8000, protocol = \"http\", publish = {} }}]\nhealth = {{ tcp = 8000, interval = \"1s\" }}\nreplicas = 2\n\n\
         [services.echo]\nimage = \"host\"\ncommand = [\"/usr/bin/python3\", \"-c\", {ECHO:?}]\n\
         ports = [{{ port = 7000, protocol = \"tcp\", publish = {} }}]\nhealth = {{ tcp = 7000, interval = \"1s\" }}\n",
        p.port(0),
        p.port(1),
    );
    p.manifest("drain", &text)
}

/// What the keep-alive clients saw.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    /// Responses that said `Connection: close`, after which the client opened a new connection.
    closed_by_server: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Seen {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 10 {
            failures.push(what);
        }
    }
}

/// A client as a well-behaved HTTP/1.1 one is: one keep-alive connection, requests back to back;
/// a new connection only after a response that said `Connection: close`. Anything else (a
/// refused connect, a reset, the connection closed before or within a response, a status other
/// than 200) is a failed request.
fn persistent_client(port: u16, stop: &AtomicBool, seen: &Seen) {
    let mut connection: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        if connection.is_none() {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    connection = Some(BufReader::new(stream));
                }
                Err(e) => {
                    seen.fail(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let reader = connection.as_mut().unwrap();
        let sent = reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n");
        match sent.and_then(|()| read_response(reader)) {
            Ok((200, body, keep)) if body == "ok\n" => {
                seen.ok.fetch_add(1, Ordering::Relaxed);
                if !keep {
                    seen.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    // The server closes its side after such a response: nothing more comes.
                    let mut rest = Vec::new();
                    match reader.read_to_end(&mut rest) {
                        Ok(0) => {}
                        other => seen.fail(format!("after Connection: close: {other:?} {rest:?}")),
                    }
                    connection = None;
                }
            }
            Ok((status, body, _)) => {
                seen.fail(format!("{status} {body:.100}"));
                connection = None;
            }
            Err(e) => {
                seen.fail(format!("request: {e}"));
                connection = None;
            }
        }
    }
}

/// Runs `paracloud dataplane restart` and returns (old pid, new pid) from what it printed.
fn restart_dataplane(p: &Platform, args: &[&str]) -> (i32, i32) {
    let mut all = vec!["dataplane", "restart"];
    all.extend_from_slice(args);
    let out = p.run(&all);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{said}\n--- daemon log ---\n{}\n--- data plane log ---\n{}",
        p.daemon_log(),
        p.dataplane_log()
    );
    eprintln!("{}", said.trim_end());
    let pids = said
        .lines()
        .find_map(|l| l.strip_prefix("data plane restarted: pid "))
        .and_then(|rest| {
            let (old, rest) = rest.split_once(" -> pid ")?;
            Some((
                old.parse().ok()?,
                rest.split_whitespace().next()?.parse().ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("no pids in: {said}"));
    assert!(said.contains(" drained in "), "{said}");
    pids
}

/// Requests the data plane counted on the listener bound to `port` (from its stats socket).
fn served_on(p: &Platform, port: u16) -> u64 {
    let (status, body) = unix_http(&p.root().join("dataplane-stats.sock"), "GET", "/stats", "");
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bind = format!("127.0.0.1:{port}");
    stats["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["bind"] == bind.as_str())
        .and_then(|l| l["requests"].as_u64())
        .unwrap_or_else(|| panic!("no listener on {bind}: {body}"))
}

#[test]
fn a_planned_data_plane_restart_under_keep_alive_load_fails_no_request() {
    const CLIENTS: usize = 8;
    let p = Platform::new();
    let manifest = responder_app(&p);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    wait_held(&p);
    let port = p.port(0);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || persistent_client(port, &stop, &seen))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let before = seen.ok.load(Ordering::Relaxed);
    let first = p.dataplane_pid().unwrap();

    let (old, second) = restart_dataplane(&p, &[]);
    assert_eq!(old, first);
    let after_first = seen.ok.load(Ordering::Relaxed);
    // A second one right after, still under load.
    let (old, third) = restart_dataplane(&p, &[]);
    assert_eq!(old, second);
    let after_second = seen.ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    let ok = seen.ok.load(Ordering::Relaxed);
    let failed = seen.failed.load(Ordering::Relaxed);
    let closed = seen.closed_by_server.load(Ordering::Relaxed);
    let served_by_third = served_on(&p, port);
    eprintln!(
        "{ok} requests answered, {failed} failed, over {CLIENTS} keep-alive clients: {before} \
         before the first restart, {} between the two, {} after the second; {closed} connections \
         ended by Connection: close; the last data plane counted {served_by_third}",
        after_second - before,
        ok - after_second,
    );
    let failures = seen.failures.lock().unwrap().clone();
    assert_eq!(
        failed,
        0,
        "no request failed: {failures:#?}\n--- data plane log ---\n{}",
        p.dataplane_log()
    );
    assert!(before > 50, "the load ran before the restart: {before}");
    assert!(
        ok - after_second > 50 && served_by_third > 50,
        "the new data plane served the load: {} answered after the restart, {served_by_third} counted",
        ok - after_second
    );
    assert!(after_first >= before);
    assert!(
        closed >= CLIENTS as u64,
        "every connection of the first data plane was ended by a Connection: close: {closed}"
    );
    assert_eq!(
        p.dataplane_pid(),
        Some(third),
        "the pid file names the new one"
    );
    assert!(first != second && second != third);
    assert!(
        !alive(first) && !alive(second),
        "the old data planes are gone"
    );
    assert!(alive(third));
}

#[test]
fn a_long_tcp_connection_runs_through_a_data_plane_restart_until_the_drain_timeout() {
    let p = Platform::new();
    let manifest = responder_app(&p);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    wait_held(&p);
    let stream = TcpStream::connect(("127.0.0.1", p.port(1))).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut echo = BufReader::new(stream);
    let mut say = |text: &str| -> std::io::Result<String> {
        echo.get_mut().write_all(format!("{text}\n").as_bytes())?;
        let mut line = String::new();
        echo.read_line(&mut line)?;
        Ok(line)
    };
    assert_eq!(say("before").unwrap(), "before\n");
    let first = p.dataplane_pid().unwrap();

    let out = std::thread::scope(|scope| {
        let restart = scope.spawn(|| p.run(&["dataplane", "restart", "--drain-timeout", "2s"]));
        // The connection, accepted by the old data plane, still works while that one drains.
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(say("during").unwrap(), "during\n");
        restart.join().unwrap()
    });
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}\n{}", p.daemon_log());
    assert!(
        said.contains(&format!("pid {first} ended after"))
            && said.contains("the connections still open at the drain timeout (2s) were closed"),
        "{said}"
    );
    // Closed at the timeout; a new connection reaches the new data plane.
    assert!(
        !matches!(say("after"), Ok(line) if line == "after\n"),
        "the connection was closed at the drain timeout"
    );
    assert!(!alive(first));
    let mut fresh = BufReader::new(TcpStream::connect(("127.0.0.1", p.port(1))).unwrap());
    fresh.get_mut().write_all(b"again\n").unwrap();
    let mut line = String::new();
    fresh.read_line(&mut line).unwrap();
    assert_eq!(line, "again\n");
}

#[test]
fn a_data_plane_restart_with_nothing_deployed_works_and_bad_timeouts_are_refused() {
    let p = Platform::new();
    // The first command starts the daemon, which starts the data plane.
    let said = p.fails(&["dataplane", "restart", "--drain-timeout", "soon"]);
    assert!(said.contains("--drain-timeout"), "{said}");
    let (old, new) = restart_dataplane(&p, &["--drain-timeout", "1s"]);
    assert_ne!(old, new);
    assert!(!alive(old));
    assert_eq!(p.dataplane_pid(), Some(new));
    let said = p.fails(&["dataplane", "restart", "--drain-timeout", "2h"]);
    assert!(
        said.contains("a drain timeout of 2h is longer than the longest, 10m"),
        "{said}"
    );
    assert_eq!(p.dataplane_pid(), Some(new), "nothing was replaced");
    let out = p.ok(&["dataplane", "restart", "-o", "json"]);
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["old_pid"], new);
    assert_eq!(answer["drained"], true);
    assert!(alive(answer["new_pid"].as_i64().unwrap() as i32));

    // A data plane killed by hand is still brought back at once, on the held sockets.
    let current = p.dataplane_pid().unwrap();
    kill9(current);
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.dataplane_pid() == Some(current) || !p.dataplane_pid().is_some_and(alive) {
        assert!(Instant::now() < deadline, "{}", p.daemon_log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_daemon_that_starts_while_no_data_plane_runs_starts_one() {
    let p = Platform::new();
    let manifest = responder_app(&p);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let (daemon, dataplane) = (p.daemon_pid().unwrap(), p.dataplane_pid().unwrap());
    // Both gone (a reboot, say): nobody holds the listening sockets any more.
    kill9(daemon);
    kill9(dataplane);
    while alive(daemon) || alive(dataplane) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(http_get(p.port(0), "/").is_err());
    // Any command starts the daemon, and the daemon the data plane, which binds them again.
    p.ok(&["ps", "-a", "drain"]);
    let started = p.dataplane_pid().unwrap();
    assert_ne!(started, dataplane);
    assert!(alive(started));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(http_get(p.port(0), "/"), Ok((200, ref body)) if body == "ok\n") {
        assert!(
            Instant::now() < deadline,
            "the published port does not answer again:\n{}",
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_new_data_plane_that_does_not_get_ready_leaves_the_old_one_serving() {
    let p = Platform::new();
    let manifest = responder_app(&p);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    wait_held(&p);
    let old = p.dataplane_pid().unwrap();
    let port = p.port(0);
    let served = served_on(&p, port);
    // A configuration the new data plane cannot read (the old one read it long ago).
    let config = p.root().join("dataplane.json");
    let good = std::fs::read(&config).unwrap();
    std::fs::write(&config, "{ not json").unwrap();
    let said = p.fails(&["dataplane", "restart"]);
    std::fs::write(&config, good).unwrap();
    eprintln!("{}", said.trim_end());
    assert!(
        said.contains("the old one (pid ") && said.contains("serves on")
            || said.contains("cannot start a new data plane"),
        "{said}"
    );
    assert_eq!(p.dataplane_pid(), Some(old), "{said}");
    assert!(alive(old));
    assert!(matches!(http_get(port, "/"), Ok((200, body)) if body == "ok\n"));
    // Its figures are still where they were: the new one never took the stats socket's path.
    assert!(served_on(&p, port) > served);
    let (replaced, new) = restart_dataplane(&p, &[]);
    assert_eq!(replaced, old);
    assert!(alive(new) && !alive(old));
}
