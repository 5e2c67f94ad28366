//! The three shop binaries as plain host processes on loopback ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use shop::model::{KeyValue, Products};

/// Ports of this test process: a block of fifty in 24000-24999, held through a lock file for the
/// process's life. Ports the kernel hands out (bind to port 0) are the ephemeral range, where an
/// outgoing connection of a test running beside could take one between our look and the
/// binary's own bind.
fn free_port() -> u16 {
    const BLOCKS: u16 = 20;
    const SIZE: u16 = 50;
    static BLOCK: std::sync::OnceLock<(u16, std::fs::File)> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let (block, _lock) = BLOCK.get_or_init(|| {
        let dir = std::env::temp_dir().join("paracloud-shop-test-ports");
        std::fs::create_dir_all(&dir).unwrap();
        let start = (std::process::id() % u32::from(BLOCKS)) as u16;
        (0..BLOCKS)
            .map(|i| (start + i) % BLOCKS)
            .find_map(|block| {
                let file = std::fs::File::create(dir.join(block.to_string())).unwrap();
                file.try_lock().is_ok().then_some((block, file))
            })
            .expect("all blocks of shop test ports are taken")
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    assert!(
        n < SIZE,
        "the shop tests of one process take at most {SIZE} ports"
    );
    24000 + block * SIZE + n
}

/// A running binary, killed when dropped so a failed test leaves nothing behind.
struct Proc(Child);

impl Proc {
    fn start(exe: &str, args: &[&str]) -> Self {
        let child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit in {within:?}"
            );
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kv(port: u16, data: &Path) -> Proc {
    let proc = Proc::start(
        env!("CARGO_BIN_EXE_shop-kv"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
            data.to_str().unwrap(),
        ],
    );
    wait_for(|| TcpStream::connect(("127.0.0.1", port)).is_ok());
    proc
}

fn api(port: u16, kv_port: u16) -> Proc {
    let proc = Proc::start(
        env!("CARGO_BIN_EXE_shop-api"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--kv",
            &format!("127.0.0.1:{kv_port}"),
        ],
    );
    wait_for(|| http(port, "GET", "/healthz", "").is_ok_and(|(s, _)| s == 200));
    proc
}

fn web(port: u16, api_port: u16) -> Proc {
    let proc = Proc::start(
        env!("CARGO_BIN_EXE_shop-web"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--api",
            &format!("http://127.0.0.1:{api_port}"),
        ],
    );
    wait_for(|| http(port, "GET", "/healthz", "").is_ok_and(|(s, _)| s == 200));
    proc
}

fn wait_for(mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "not ready after 10 s");
        sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the body.
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn get(port: u16, path: &str) -> (u16, String) {
    http(port, "GET", path, "").unwrap()
}

/// All three tiers on fresh ports with a fresh data directory.
struct Shop {
    data: tempfile::TempDir,
    ports: (u16, u16, u16),
    kv: Proc,
    api: Proc,
    web: Proc,
}

impl Shop {
    fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let ports = (free_port(), free_port(), free_port());
        let kv = kv(ports.0, data.path());
        let api = api(ports.1, ports.0);
        let web = web(ports.2, ports.1);
        Self {
            data,
            ports,
            kv,
            api,
            web,
        }
    }
}

#[test]
fn the_page_is_built_by_all_three_tiers() {
    let shop = Shop::start();
    let host = shop::sys::hostname();
    let (status, page) = get(shop.ports.2, "/");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<title>Paracloud shop</title>"), "{page}");
    assert!(
        page.contains(&format!("web: {host} · api: {host} · kv: ok")),
        "{page}"
    );
    assert!(page.contains("Sandbox bucket"));
    assert!(page.contains("<span id=\"visits\">1</span>"), "{page}");
    let (_, page) = get(shop.ports.2, "/");
    assert!(page.contains("<span id=\"visits\">2</span>"), "{page}");

    let (status, body) = get(shop.ports.1, "/api/products");
    assert_eq!(status, 200);
    let products: Products = serde_json::from_str(&body).unwrap();
    assert_eq!(products.visits, 3);
    assert_eq!(products.work, 20_000);
    assert_eq!(products.checksum, shop::work::cpu_work(20_000));
    assert_eq!(products.served_by, host);
    let (_, body) = get(shop.ports.1, "/api/products?work=5");
    let products: Products = serde_json::from_str(&body).unwrap();
    assert_eq!(products.checksum, shop::work::cpu_work(5));
}

#[test]
fn kv_data_survives_a_kv_restart() {
    let mut shop = Shop::start();
    let (status, body) = http(shop.ports.1, "PUT", "/api/kv/colour", "deep blue").unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
    get(shop.ports.2, "/");

    shop.kv.signal("TERM");
    assert_eq!(shop.kv.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let (status, body) = get(shop.ports.1, "/api/kv/colour");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains(r#""tier":"kv""#), "{body}");
    let (status, page) = get(shop.ports.2, "/");
    assert_eq!(status, 502);
    assert!(page.contains("kv tier failed"), "{page}");

    shop.kv = kv(shop.ports.0, shop.data.path());
    let (status, body) = get(shop.ports.1, "/api/kv/colour");
    assert_eq!(status, 200, "{body}");
    let value: KeyValue = serde_json::from_str(&body).unwrap();
    assert_eq!(value.value, "deep blue");
    let (_, page) = get(shop.ports.2, "/");
    assert!(page.contains("<span id=\"visits\">2</span>"), "{page}");
}

#[test]
fn missing_keys_and_routes_are_404() {
    let shop = Shop::start();
    let (status, body) = get(shop.ports.1, "/api/kv/nothing-here");
    assert_eq!(status, 404);
    assert!(body.contains("no value for key nothing-here"), "{body}");
    assert_eq!(get(shop.ports.1, "/api/nope").0, 404);
    assert_eq!(get(shop.ports.2, "/nope").0, 404);
    let (status, _) = http(shop.ports.1, "PUT", "/api/kv/k", "two\nlines").unwrap();
    assert_eq!(status, 400);
}

#[test]
fn the_web_names_the_api_when_it_is_down() {
    let mut shop = Shop::start();
    shop.api.signal("TERM");
    assert_eq!(shop.api.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let (status, page) = get(shop.ports.2, "/");
    assert_eq!(status, 502);
    assert!(page.contains("api tier failed"), "{page}");
}

#[test]
fn the_kv_speaks_its_line_protocol() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _kv = kv(port, data.path());
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut ask = |line: &str| {
        writer.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        reply
    };
    assert_eq!(ask("GET a"), "NOTFOUND\n");
    assert_eq!(ask("SET a hello world"), "OK\n");
    assert_eq!(ask("GET a"), "VALUE hello world\n");
    assert_eq!(ask("INCR n"), "VALUE 1\n");
    assert_eq!(ask("INCR n"), "VALUE 2\n");
    assert_eq!(ask("COUNT"), "VALUE 2\n");
    assert_eq!(ask("DEL a"), "OK\n");
    assert_eq!(ask("COUNT"), "VALUE 1\n");
    assert!(ask("JUMP").starts_with("ERR "));
    assert!(ask("").starts_with("ERR "));
}

#[test]
fn every_binary_exits_zero_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let mut shop = Shop::start();
        // An idle keep-alive connection must not hold up the exit.
        let _idle = TcpStream::connect(("127.0.0.1", shop.ports.2)).unwrap();
        for proc in [&mut shop.web, &mut shop.api, &mut shop.kv] {
            proc.signal(signal);
            let status = proc.wait_exit(Duration::from_secs(3));
            assert_eq!(status.code(), Some(0), "SIG{signal}");
        }
    }
}
