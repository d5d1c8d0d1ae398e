//! The operators' console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! over WebDriver): sign-in, every page with the data the admin API returns, and a screenshot of
//! each under `target/console-screenshots/`. Skips where no browser is installed, unless
//! `GUILDHALL_REQUIRE_BROWSER=1` (CI).

mod common;

use common::browser::{self, Browser};
use common::{ADMIN_KEY, Backend, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_a_strict_policy() {
    let app = TestApp::start_with(Backend::Embedded, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await;
    let http = reqwest::Client::new();
    let page = http.get(format!("{}/console/", app.api.base)).send().await.expect("console");
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().expect("ascii").to_owned();
    assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert!(page.text().await.expect("html").contains("/console/console.js"));
    let script = http.get(format!("{}/console/console.js", app.api.base)).send().await.expect("script");
    assert!(script.headers()["content-type"].to_str().expect("ascii").starts_with("text/javascript"));
    let bare = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let redirect = bare.get(format!("{}/console", app.api.base)).send().await.expect("redirect");
    assert_eq!(redirect.status(), 308);
    assert_eq!(redirect.headers()["location"], "/console/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_refuses_a_wrong_key() {
    if !browser::available() {
        eprintln!("no chromium/chromedriver here: skipping the browser test");
        return;
    }
    let app = TestApp::start_with(Backend::Embedded, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await;
    let shots = browser::screenshot_dir();
    let browser = Browser::start().await;
    browser.open(&format!("{}/console/", app.api.base)).await;
    browser.wait_for("#signin").await;
    browser.screenshot(&shots.join("signin.png")).await;
    browser.type_into("#signin input[name=key]", "not-the-key").await;
    browser.click("#signin button[type=submit]").await;
    browser.wait_for_text("#notice.error", "Sign-in failed").await;
    browser.quit().await;
}
