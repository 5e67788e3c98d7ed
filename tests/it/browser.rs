//! A real headless Chromium for the dashboard's tests: Debian's `chromium` driven through its `chromedriver`
//! (WebDriver, with `fantoccini`), started on a free loopback port and killed with its browsers when dropped.
//! `scripts/test` installs both packages.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::reaped::Reaped;

/// The longest a page may take to show what a test waits for.
pub const WAIT: Duration = Duration::from_secs(30);

/// A chromedriver and one headless browser session on it.
pub struct Browser {
    pub client: Client,
    /// The chromedriver, in a process group of its own with the browsers it starts (all killed on drop).
    driver: Reaped,
    /// Where screenshots go: `target/screenshots/`.
    shots: PathBuf,
    /// The browser's profile, removed when dropped.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, its window `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Self {
        let (driver, port) = start_driver();
        let profile = tempfile::tempdir().unwrap();
        // The flags keep Chromium off the network it has not got (see the machine notes): no background
        // requests, no component updates, no sync; root in a container needs --no-sandbox.
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), json!({"binary": "/usr/bin/chromium", "args": args}));
        let deadline = Instant::now() + WAIT;
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let connected = ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
            match connected {
                Ok(client) => break client,
                Err(e) => {
                    assert!(Instant::now() < deadline, "chromedriver did not start a browser: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Self { client, driver, shots, _profile: profile }
    }

    /// Opens `url` and waits for the page to have loaded.
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap();
        self.until("the page loaded", "return document.readyState === 'complete'").await;
    }

    /// The element `css` once it is on the page (within [`WAIT`]).
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client.wait().at_most(WAIT).for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// Whether an element `css` is on the page now.
    pub async fn has(&self, css: &str) -> bool {
        self.client.find(Locator::Css(css)).await.is_ok()
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and returns its value.
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Polls `script` until it returns `true`, within [`WAIT`]; `what` names it for the failure.
    pub async fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.run(script, vec![]).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let page = self.run("return document.body.innerText", vec![]).await;
                self.screenshot(&format!("failed-{}", what.replace(' ', "-"))).await;
                panic!("{what}: not within {WAIT:?}; the page reads:\n{}", page.as_str().unwrap_or(""));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.run("return document.body.innerText", vec![]).await.as_str().unwrap_or("").to_owned()
    }

    /// Saves a screenshot of the page as `target/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        // A page still settling (its feeds connecting) can abort the capture: it is tried again.
        let mut tries = 0;
        let png = loop {
            match self.client.screenshot().await {
                Ok(png) => break png,
                Err(e) if tries < 10 => {
                    tries += 1;
                    eprintln!("screenshot {name}: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("screenshot {name}: {e}"),
            }
        };
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Signs in as `user` through the login page, from `start` (a page that sends to the login first).
    pub async fn sign_in(&self, addr: &str, start: &str, user: &str, password: &str) {
        self.open(&format!("http://{addr}{start}")).await;
        self.find("form#login").await;
        self.find("input[name=user]").await.send_keys(user).await.unwrap();
        self.find("input[name=password]").await.send_keys(password).await.unwrap();
        self.find("form#login button").await.click().await.unwrap();
        let path = start.to_owned();
        self.until("signed in", &format!("return location.pathname === {path:?} && !!document.getElementById('who')"))
            .await;
    }

    /// Closes the browser; the driver and its group are killed on drop.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browsers chromedriver started are in its process group: none outlives the test.
        let group = rustix::process::Pid::from_raw(self.driver.id() as i32);
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

/// Starts chromedriver on a free loopback port, in a process group of its own.
fn start_driver() -> (Reaped, u16) {
    use std::os::unix::process::CommandExt as _;
    for _ in 0..10 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Reaped(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver (Debian's chromium-driver; scripts/test installs it)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (child, port);
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("chromedriver did not listen");
}
