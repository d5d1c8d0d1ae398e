//! A headless Chromium driven over the W3C WebDriver protocol (Debian's `chromium` and
//! `chromium-driver`), for the console's tests: a few calls of the protocol over HTTP, enough to
//! open pages, type, click, read text and take screenshots.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether this machine can run the browser tests; `GUILDHALL_REQUIRE_BROWSER=1` (CI) turns a
/// missing browser into a failure instead of a skip.
pub fn available() -> bool {
    let found = which("chromedriver").is_some() && (which("chromium").is_some() || which("chromium-browser").is_some());
    if !found && std::env::var("GUILDHALL_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!("GUILDHALL_REQUIRE_BROWSER=1 but chromium or chromedriver is missing (apt-get install chromium chromium-driver)");
    }
    found
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|path| path.is_file())
}

/// A chromedriver process and one browser session in it; both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless browser session of 1280×900.
    pub async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client");
        let started = Instant::now();
        loop {
            let ready = http.get(format!("{base}/status")).send().await.ok().and_then(|r| r.status().is_success().then_some(()));
            if ready.is_some() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not answer within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let binary = which("chromium").or_else(|| which("chromium-browser")).expect("chromium");
        // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        }}});
        let reply: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("creating a browser session")
            .json()
            .await
            .expect("session reply");
        let session = reply["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {reply}")).to_owned();
        Browser { driver, base, session, http }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply: Value = request.send().await.expect("a WebDriver call").json().await.expect("a WebDriver reply");
        if let Some(error) = reply["value"]["error"].as_str() {
            panic!("WebDriver {path}: {error}: {}", reply["value"]["message"]);
        }
        reply["value"].clone()
    }

    /// Opens `url`.
    pub async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    /// Runs `script` in the page (its `return` value comes back).
    pub async fn script(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": []}))).await
    }

    /// Waits (20 s at most: the console's live figures move every 5 s) until `css` matches an
    /// element whose text contains `text`, and returns that element's text.
    pub async fn wait_for_text(&self, css: &str, text: &str) -> String {
        let script = format!(
            "return Array.from(document.querySelectorAll({css})).map(e => e.textContent).find(t => t.includes({text})) ?? null",
            css = json!(css),
            text = json!(text)
        );
        if let Some(found) = self.poll(&script, Duration::from_secs(20)).await {
            return found.as_str().expect("the text").to_owned();
        }
        let page = self.script("return document.body.innerText").await;
        panic!("no `{css}` containing {text:?} within 20 s; the page reads:\n{}", page.as_str().unwrap_or(""));
    }

    /// Runs `script` every 100 ms until it returns something other than `null` or `false`, and
    /// returns that; `None` when `within` passed first.
    async fn poll(&self, script: &str, within: Duration) -> Option<Value> {
        let started = Instant::now();
        loop {
            let value = self.script(script).await;
            if !value.is_null() && value != Value::Bool(false) {
                return Some(value);
            }
            if started.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first element matching `css` (waiting up to 10 s for it).
    async fn element(&self, css: &str) -> String {
        self.wait_for(css).await;
        let found = self.call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element reference for `{css}`: {found}")).to_owned()
    }

    /// Waits (10 s at most) until `css` matches something.
    pub async fn wait_for(&self, css: &str) {
        let script = format!("return document.querySelector({}) !== null", json!(css));
        assert!(self.poll(&script, Duration::from_secs(10)).await.is_some(), "nothing matches `{css}` within 10 s");
    }

    /// Types `text` into the field matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/clear"), Some(json!({}))).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({"text": text}))).await;
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    /// Clicks the button whose text is exactly `label` (the first, in document order).
    pub async fn click_button(&self, label: &str) {
        let script = format!(
            "const b = Array.from(document.querySelectorAll('button')).find(b => b.textContent === {} && !b.disabled); \
             if (!b) return false; b.click(); return true",
            json!(label)
        );
        assert!(self.poll(&script, Duration::from_secs(10)).await.is_some(), "no button `{label}` within 10 s");
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().expect("base64")).expect("a PNG");
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("making the screenshot folder");
        std::fs::write(path, bytes).expect("writing the screenshot");
    }

    /// Ends the session and chromedriver.
    pub async fn quit(mut self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send().await;
        let _ = self.driver.kill().await;
    }
}

/// Where the console's screenshots go: `target/console-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("console-screenshots")
}
