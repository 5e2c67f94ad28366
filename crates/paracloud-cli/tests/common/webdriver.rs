//! A real Chromium driven through chromedriver by the W3C WebDriver protocol (JSON over HTTP on
//! the loopback), for the dashboard's browser tests: a session, navigation, elements found by
//! CSS selector, clicks, typing, scripts and screenshots. Blocking, on std's TCP alone: the
//! protocol is a handful of JSON requests.

#![allow(
    dead_code,
    reason = "each browser test uses its own part of the driver"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one headless Chromium session, both ended on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver on `port` (of the loopback) and a headless Chromium that accepts the
    /// daemon's self-signed certificate.
    pub fn start(port: u16) -> Self {
        // A process group of its own: Chromium and its helpers, started by chromedriver, end
        // with it whatever happened to the session.
        let driver = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian's chromium-driver: scripts/deps.sh installs it)");
        let profile = tempfile::Builder::new()
            .prefix("paracloud-chromium-")
            .tempdir()
            .unwrap();
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while browser.send("GET", "/status", None).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1440,1000",
                    "--ignore-certificate-errors",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            },
        }}});
        let answer = browser
            .send("POST", "/session", Some(capabilities))
            .unwrap_or_else(|e| panic!("no Chromium session: {e}"));
        browser.session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {answer}"))
            .to_owned();
        browser
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        // chromedriver may keep the connection open: the answer ends at its Content-Length.
        let mut response = Vec::new();
        let mut chunk = [0u8; 16384];
        let (head, body) = loop {
            let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
            response.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&response).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                });
                if n == 0 || length.is_some_and(|len| body.len() >= len) {
                    break (head.to_owned(), body.to_owned());
                }
            }
            if n == 0 {
                return Err(format!("not an HTTP answer: {text}"));
            }
        };
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let value: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 {
            return Err(format!("{method} {path}: {status} {}", value["value"]));
        }
        Ok(value)
    }

    /// A command of this session; its `value`.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let path = format!("/session/{}{path}", self.session);
        self.send(method, &path, body).map(|v| v["value"].clone())
    }

    /// Opens `url` and waits until the dashboard has shown its first view (`body[data-ready]`).
    /// Chromium cuts the loads under way when the machine's network changes
    /// (`ERR_NETWORK_CHANGED`: a test's instances add and remove interfaces), leaving an error
    /// page or a page whose scripts never came, so such a load is tried again.
    pub fn goto(&self, url: &str) {
        for _ in 0..10 {
            self.command("POST", "/url", Some(json!({ "url": url })))
                .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.find("body[data-ready]").is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("{url} did not load: {}", self.text("body"));
    }

    /// The first element `selector` matches, now.
    pub fn find(&self, selector: &str) -> Result<Element, String> {
        let value = self.command(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": selector})),
        )?;
        value[ELEMENT]
            .as_str()
            .map(|id| Element(id.to_owned()))
            .ok_or_else(|| format!("no element id in {value}"))
    }

    /// The first element `selector` matches, waited for.
    pub fn wait_for(&self, selector: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find(selector) {
                Ok(element) => return element,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "no `{selector}` on the page within {timeout:?}: {e}\n{}",
                        self.text("body")
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn click(&self, element: &Element) {
        self.command(
            "POST",
            &format!("/element/{}/click", element.0),
            Some(json!({})),
        )
        .unwrap_or_else(|e| panic!("cannot click: {e}"));
    }

    pub fn clear(&self, element: &Element) {
        self.command(
            "POST",
            &format!("/element/{}/clear", element.0),
            Some(json!({})),
        )
        .unwrap_or_else(|e| panic!("cannot clear: {e}"));
    }

    /// Types `text` into the element, as a person would, key by key.
    pub fn type_into(&self, element: &Element, text: &str) {
        self.command(
            "POST",
            &format!("/element/{}/value", element.0),
            Some(json!({ "text": text })),
        )
        .unwrap_or_else(|e| panic!("cannot type: {e}"));
    }

    /// Moves the mouse over the element, `dx` pixels right of its centre, as a person hovering.
    pub fn hover(&self, element: &Element, dx: i64) {
        let actions = json!({"actions": [{
            "type": "pointer",
            "id": "mouse",
            "parameters": {"pointerType": "mouse"},
            "actions": [
                {"type": "pointerMove", "duration": 0, "origin": {ELEMENT: element.0}, "x": dx, "y": 0},
            ],
        }]});
        self.command("POST", "/actions", Some(actions))
            .unwrap_or_else(|e| panic!("cannot move the mouse: {e}"));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its answer.
    pub fn script(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .unwrap_or_else(|e| panic!("the script failed: {e}\n{script}"))
    }

    /// The visible text of the first element `selector` matches ("" when none does).
    pub fn text(&self, selector: &str) -> String {
        self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            json!([selector]),
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits until `check` of the page holds, or fails the test after `timeout`, telling `what`.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; the page shows:\n{}",
                self.text("body")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the window, written to `path`.
    pub fn screenshot(&self, path: &Path) {
        let value = self
            .command("GET", "/screenshot", None)
            .unwrap_or_else(|e| panic!("no screenshot: {e}"));
        let png = base64_decode(value.as_str().unwrap_or_default());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.send("DELETE", &format!("/session/{}", self.session), None);
        }
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

/// Debian's Chromium, wherever this machine has it.
fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("/usr/bin/chromium")
}

/// Standard base64 (WebDriver's screenshots), padding and all.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut buffer, mut bits) = (0u32, 0);
    for six in text.bytes().filter_map(value) {
        buffer = (buffer << 6) | u32::from(six);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}
