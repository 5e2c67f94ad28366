//! A real Chromium driven through chromedriver by the W3C WebDriver protocol, for the
//! dashboard's browser tests, with the `fantoccini` client: a session, navigation, elements found
//! by CSS selector, clicks, typing, scripts and screenshots. The tests are plain threads, so each
//! call runs on a small tokio runtime the browser owns.

#![allow(
    dead_code,
    reason = "each browser test uses its own part of the driver"
)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, MouseActions, PointerAction};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// A chromedriver process and one headless Chromium session, both ended on drop.
pub struct Browser {
    driver: Child,
    client: Option<Client>,
    runtime: tokio::runtime::Runtime,
    _profile: tempfile::TempDir,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(fantoccini::elements::Element);

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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let capabilities = json!({
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
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let mut builder = ClientBuilder::new(connector);
            builder.capabilities(capabilities.clone());
            match runtime.block_on(builder.connect(&url)) {
                Ok(client) => break client,
                // chromedriver is still starting.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("no Chromium session through chromedriver on {port}: {e}"),
            }
        };
        Browser {
            driver,
            client: Some(client),
            runtime,
            _profile: profile,
        }
    }

    fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open until drop")
    }

    /// Opens `url` and waits until the dashboard has shown its first view (`body[data-ready]`).
    /// Chromium cuts the loads under way when the machine's network changes
    /// (`ERR_NETWORK_CHANGED`: a test's instances add and remove interfaces), leaving an error
    /// page or a page whose scripts never came, so such a load is tried again.
    pub fn goto(&self, url: &str) {
        for _ in 0..10 {
            self.runtime
                .block_on(self.client().goto(url))
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
        self.runtime
            .block_on(self.client().find(Locator::Css(selector)))
            .map(Element)
            .map_err(|e| e.to_string())
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

    /// Clears the element `selector` matches and types `text` into it. A page may build the
    /// element anew while it is typed into (the dashboard rebuilds a table when the application
    /// changes); then the new one is found and filled again.
    pub fn fill(&self, selector: &str, text: &str) {
        self.on_fresh(selector, |element| {
            self.runtime.block_on(async {
                element.0.clear().await?;
                element.0.send_keys(text).await
            })
        });
    }

    /// Clicks the element `selector` matches, found again if the page built it anew.
    pub fn click_on(&self, selector: &str) {
        self.on_fresh(selector, |element| self.runtime.block_on(element.0.click()));
    }

    /// Runs `act` on the element `selector` matches, again on a fresh one while the page keeps
    /// replacing it; any other failure fails the test.
    fn on_fresh(
        &self,
        selector: &str,
        act: impl Fn(&Element) -> Result<(), fantoccini::error::CmdError>,
    ) {
        for _ in 0..20 {
            let element = self.wait_for(selector, Duration::from_secs(10));
            match act(&element) {
                Ok(()) => return,
                Err(e) if e.to_string().contains("stale element") => continue,
                Err(e) => panic!("cannot act on `{selector}`: {e}"),
            }
        }
        panic!("`{selector}` was replaced on every one of 20 tries");
    }

    pub fn click(&self, element: &Element) {
        self.runtime
            .block_on(element.0.click())
            .unwrap_or_else(|e| panic!("cannot click: {e}"));
    }

    pub fn clear(&self, element: &Element) {
        self.runtime
            .block_on(element.0.clear())
            .unwrap_or_else(|e| panic!("cannot clear: {e}"));
    }

    /// Types `text` into the element, as a person would, key by key.
    pub fn type_into(&self, element: &Element, text: &str) {
        self.runtime
            .block_on(element.0.send_keys(text))
            .unwrap_or_else(|e| panic!("cannot type: {e}"));
    }

    /// Moves the mouse over the element, `dx` pixels right of its centre, as a person hovering.
    pub fn hover(&self, element: &Element, dx: i64) {
        let mouse = MouseActions::new("mouse".into()).then(PointerAction::MoveToElement {
            element: element.0.clone(),
            duration: None,
            x: dx as f64,
            y: 0.0,
        });
        self.runtime
            .block_on(self.client().perform_actions(mouse))
            .unwrap_or_else(|e| panic!("cannot move the mouse: {e}"));
    }

    /// Runs `script` (a function body; `arguments` are `args`, a JSON array) in the page; its
    /// answer.
    pub fn script(&self, script: &str, args: Value) -> Value {
        let args = match args {
            Value::Array(args) => args,
            Value::Null => vec![],
            other => vec![other],
        };
        self.runtime
            .block_on(self.client().execute(script, args))
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
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .unwrap_or_else(|e| panic!("no screenshot: {e}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
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
