//! The operators' console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! over WebDriver): sign-in, every page with the data the admin API returns, and a screenshot of
//! each under `target/console-screenshots/`. Skips where no browser is installed, unless
//! `GUILDHALL_REQUIRE_BROWSER=1` (CI).

use std::time::Duration;

use crate::common::browser::{self, Browser};
use crate::common::{ADMIN_KEY, Backend, Chat, TestApp, guest};
use serde_json::{Value, json};

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

/// An operator signs in and goes through every page, acting on each, with what the admin API
/// returns: the live figures, a player (found, banned), a board (its records, one deleted), the
/// reports queue (a hostile message shown as text, then deleted), a player's uploads, and the
/// audit log of all of it. A screenshot of each page lands in `target/console-screenshots/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_goes_through_every_page() {
    if !browser::available() {
        eprintln!("no chromium/chromedriver here: skipping the browser test");
        return;
    }
    let app = TestApp::start_with(Backend::Embedded, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await;
    // What the pages will show.
    let (ana, ana_token) = guest(&app, "ana").await;
    let (bob, bob_token) = guest(&app, "bob").await;
    let board = json!({"id": "arena", "sort": "desc", "operator": "best"});
    app.post("/v1/admin/leaderboards", Some(ADMIN_KEY), board).await.expect(201);
    for (owner, score) in [(&ana, 300), (&bob, 200)] {
        let body = json!({"score": score, "owner_id": owner, "owner_name": if *owner == ana { "Ana" } else { "Bob" }});
        app.post("/v1/leaderboards/arena/scores", Some(ADMIN_KEY), body).await.expect(200);
    }
    let hostile = r#"<img src=x onerror="document.title='pwned'"> gg ez"#;
    let mut bob_chat = Chat::connect(&app.base, &bob_token).await;
    bob_chat.join("room:global").await;
    let sent = bob_chat.send("room:global", hostile).await;
    let message_id = sent["message"]["id"].as_str().expect("message id").to_owned();
    app.post(&format!("/v1/chat/messages/{message_id}/report"), Some(&ana_token), json!({"reason": "insult"})).await.expect(202);
    let upload = json!({"purpose": "avatar", "content_type": "image/png", "size_bytes": 68});
    app.post("/v1/uploads", Some(&ana_token), upload).await.expect(201);
    let filed = std::time::Instant::now();
    while app.pages("/v1/admin/chat/reports?status=open", ADMIN_KEY, "reports").await.is_empty() {
        assert!(filed.elapsed() < Duration::from_secs(20), "the report was never filed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let shots = browser::screenshot_dir();
    let browser = Browser::start().await;
    browser.open(&format!("{}/console/", app.api.base)).await;
    browser.type_into("#signin input[name=key]", ADMIN_KEY).await;
    browser.click("#signin button[type=submit]").await;

    // Live figures.
    browser.wait_for_text("#who", "bootstrap").await;
    browser.wait_for("main[data-page=live] #stat-players").await;
    // Each process publishes its figures every 5 s and the page reads them every 5 s.
    browser.wait_for_text("#stat-players .value", "1").await;
    assert_eq!(browser.wait_for_text("#stat-instances .value", "").await, "1");
    browser.screenshot(&shots.join("live.png")).await;

    // Players: search, open, ban.
    browser.open(&format!("{}/console/#/players?q={bob}", app.api.base)).await;
    browser.wait_for("main tbody td a").await;
    let found = browser.script("return Array.from(document.querySelectorAll('main tbody td a')).map(a => a.getAttribute('href'))").await;
    assert_eq!(found, json!([format!("#/player/{bob}")]), "a search by id finds that account alone");
    browser.screenshot(&shots.join("players.png")).await;
    browser.open(&format!("{}/console/#/player/{bob}", app.api.base)).await;
    browser.wait_for_text("main td a", "arena").await;
    browser.type_into("main input[name=reason]", "cheating").await;
    browser.script("window.confirm = () => true").await;
    browser.click_button("Ban").await;
    browser.wait_for_text("#notice", "Ban: done").await;
    browser.wait_for_text("main dd", "cheating").await;
    browser.screenshot(&shots.join("player.png")).await;
    app.post("/v1/auth/guest", None, json!({"device_id": "device-bob"})).await.expect_error(403, "account_banned");

    // Boards: the list, then a board's records; Bob's record goes.
    browser.open(&format!("{}/console/#/boards", app.api.base)).await;
    browser.wait_for_text("main td a", "arena").await;
    browser.screenshot(&shots.join("boards.png")).await;
    browser.open(&format!("{}/console/#/board/arena", app.api.base)).await;
    browser.wait_for_text("main td a", "Bob").await;
    browser.script("window.confirm = () => true").await;
    browser
        .script(
            "const row = Array.from(document.querySelectorAll('main tr')).find(r => r.textContent.includes('Bob')); \
         row.querySelector('button').click()",
        )
        .await;
    browser.wait_for_text("#notice", "Delete record: done").await;
    browser.screenshot(&shots.join("board.png")).await;
    let records = app.get("/v1/leaderboards/arena/records", Some(ADMIN_KEY)).await.expect(200).body;
    let owners: Vec<&str> = records["records"].as_array().expect("records").iter().map(|r| r["owner_id"].as_str().expect("id")).collect();
    assert_eq!(owners, [ana.as_str()]);

    // Chat moderation: the hostile message is text, not markup; deleting it resolves the case.
    browser.open(&format!("{}/console/#/chat", app.api.base)).await;
    let shown = browser.wait_for_text("main td .quote", "gg ez").await;
    assert_eq!(shown, hostile);
    assert_eq!(browser.script("return document.querySelectorAll('main img').length").await, json!(0));
    browser.screenshot(&shots.join("chat.png")).await;
    browser.click_button("Delete message").await;
    browser.wait_for_text("#notice", "Delete message: done").await;
    browser.wait_for_text("main p", "No open report").await;
    assert_eq!(browser.script("return document.title").await, json!("Guildhall console"));
    let history = app.get("/v1/chat/channels/room:global/messages", Some(&ana_token)).await.expect(200).body;
    assert!(history["messages"].as_array().expect("messages").is_empty(), "{history}");

    // Uploads: Ana's pending avatar.
    browser.open(&format!("{}/console/#/uploads?owner={ana}", app.api.base)).await;
    browser.wait_for_text("main td", "image/png").await;
    browser.screenshot(&shots.join("uploads.png")).await;

    // The audit log holds what the operator did, newest first.
    browser.open(&format!("{}/console/#/audit", app.api.base)).await;
    browser.wait_for_text("main td", "chat.delete_message").await;
    let actions = browser.script("return Array.from(document.querySelectorAll('main tbody tr')).map(r => r.children[2].textContent)").await;
    let actions: Vec<&str> = actions.as_array().expect("rows").iter().filter_map(Value::as_str).collect();
    for expected in ["chat.delete_message", "leaderboards.record_delete", "accounts.ban", "leaderboards.create"] {
        assert!(actions.contains(&expected), "{expected} missing from {actions:?}");
    }
    browser.screenshot(&shots.join("audit.png")).await;

    // Signing out forgets the key.
    browser.click("#sign-out").await;
    browser.wait_for("#signin").await;
    assert_eq!(browser.script("return sessionStorage.length").await, json!(0));
    browser.quit().await;
}
