//! Webhooks over HTTP, on embedded backends (events in process) and on real ones (PostgreSQL,
//! Redis, events over moto's SQS), each against a receiver of our own on port 0 that checks
//! every delivery's signature with the secret: retries after a 500, duplicates recognised by
//! event id, parked failures listed and redelivered, a slow receiver holding up nobody else,
//! every offered event delivered, and the secret never shown nor logged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{ADMIN_KEY, Api, Backend, Chat, Process, TestApp, TestEnv, guest, server_key};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use webhooks::signature::{self, REPLAY_WINDOW_SECS};

on_both_backends!(
    deliveries_are_signed_retried_and_recognisable_by_event_id,
    a_failing_receiver_is_parked_listed_and_redelivered,
    a_slow_receiver_holds_up_no_other_webhook,
    every_offered_event_reaches_a_webhook,
    webhooks_are_validated_and_never_show_their_secret,
    webhooks_take_their_scope_and_are_audited,
);

const SECRET: &str = "whsec-test-secret-0123456789abcdef";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Hit {
    event_id: String,
    event: String,
    delivery_id: String,
    signature: String,
    body: Value,
    raw: Bytes,
    /// What the receiver answered.
    answered: u16,
}

#[derive(Default)]
struct Inbox {
    hits: Mutex<Vec<Hit>>,
    /// Statuses to answer, in order; 200 once they run out.
    answers: Mutex<VecDeque<u16>>,
    /// While set, requests wait until it turns false (a receiver that does not answer).
    hold: Option<tokio::sync::watch::Receiver<bool>>,
}

/// A webhook receiver on 127.0.0.1:0.
#[derive(Clone)]
struct Receiver {
    url: String,
    inbox: Arc<Inbox>,
}

async fn hook(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let answered = inbox.answers.lock().expect("answers").pop_front().unwrap_or(200);
    let hit = Hit {
        event_id: header("guildhall-event-id"),
        event: header("guildhall-event"),
        delivery_id: header("guildhall-delivery-id"),
        signature: header("guildhall-signature"),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        raw,
        answered,
    };
    inbox.hits.lock().expect("hits").push(hit);
    if let Some(hold) = &inbox.hold {
        let mut hold = hold.clone();
        let _ = hold.wait_for(|held| !held).await;
    }
    StatusCode::from_u16(answered).expect("status")
}

impl Receiver {
    /// A receiver answering `answers` first, then 200.
    async fn start(answers: &[u16]) -> Receiver {
        Self::serve(Inbox { answers: Mutex::new(answers.iter().copied().collect()), ..Inbox::default() }).await
    }

    /// A receiver that answers nothing until `release` says false.
    async fn holding(release: tokio::sync::watch::Receiver<bool>) -> Receiver {
        Self::serve(Inbox { hold: Some(release), ..Inbox::default() }).await
    }

    async fn serve(inbox: Inbox) -> Receiver {
        let inbox = Arc::new(inbox);
        let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, inbox }
    }

    fn hits(&self) -> Vec<Hit> {
        self.inbox.hits.lock().expect("hits").clone()
    }

    /// Waits (at most 60 s) until the hits so far satisfy `done`, and returns them.
    async fn wait(&self, what: &str, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let hits = self.hits();
            if done(&hits) {
                return hits;
            }
            assert!(Instant::now() < deadline, "{what} never happened; received {:#?}", hits.iter().map(|h| &h.body).collect::<Vec<_>>());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a delivery of `event_type` whose body satisfies `matches`.
    async fn wait_for_event(&self, event_type: &str, matches: impl Fn(&Value) -> bool) -> Hit {
        let hits = self.wait(event_type, |hits| hits.iter().any(|h| h.event == event_type && matches(&h.body))).await;
        hits.into_iter().find(|h| h.event == event_type && matches(&h.body)).expect("found")
    }
}

/// Checks `hit`'s signature as a receiver would, and that its headers match its body.
#[track_caller]
fn assert_signed(hit: &Hit) {
    let now = i64::try_from(platform::time::now_unix()).expect("now");
    let checked = signature::verify(SECRET, &hit.signature, &hit.event_id, &hit.raw, now, REPLAY_WINDOW_SECS);
    assert_eq!(checked, Ok(()), "signature {} of {}", hit.signature, hit.body);
    assert_eq!(
        signature::verify("not-the-secret-0123456789abcdef", &hit.signature, &hit.event_id, &hit.raw, now, 300),
        Err(signature::Refused::Mismatch)
    );
    assert_eq!(hit.body["id"], hit.event_id.as_str());
    assert_eq!(hit.body["type"], hit.event.as_str());
    assert!(hit.body["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", hit.body);
    assert!(uuid::Uuid::try_parse(&hit.delivery_id).is_ok(), "{}", hit.delivery_id);
}

/// A server with the admin key, local receivers allowed and fast retries, plus `extra`.
async fn start(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    TestApp::start_with(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY).set("WEBHOOK_ALLOW_LOCAL_TARGETS", "true").set("WEBHOOK_RETRY_FIRST_SECS", "1");
        for (key, value) in extra {
            env.set(key, *value);
        }
    })
    .await
}

/// Registers a webhook to `url` for `events`; returns its id.
async fn register(api: &Api, url: &str, events: Value) -> String {
    let created =
        api.post("/v1/admin/webhooks", Some(ADMIN_KEY), json!({"url": url, "events": events, "secret": SECRET})).await.expect(201);
    assert!(!created.body.to_string().contains(SECRET), "the secret is never answered: {}", created.body);
    created.body["id"].as_str().expect("id").to_owned()
}

async fn deliveries(api: &Api, webhook: &str, query: &str) -> Vec<Value> {
    api.get(&format!("/v1/admin/webhooks/{webhook}/deliveries?{query}"), Some(ADMIN_KEY)).await.expect(200).body["deliveries"]
        .as_array()
        .expect("deliveries")
        .clone()
}

/// Waits (at most 60 s) until `webhook` has exactly one delivery in `state`, and returns it.
async fn wait_for_delivery(api: &Api, webhook: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = deliveries(api, webhook, &format!("state={state}")).await;
        if let [one] = listed.as_slice() {
            return one.clone();
        }
        assert!(listed.is_empty(), "one delivery expected: {listed:?}");
        assert!(Instant::now() < deadline, "no {state} delivery: {:?}", deliveries(api, webhook, "").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn deliveries_are_signed_retried_and_recognisable_by_event_id(backend: Backend) {
    let app = start(backend, &[]).await;
    let receiver = Receiver::start(&[500]).await;
    let webhook = register(&app, &receiver.url, json!(["account.created", "account.deleted"])).await;
    let other = register(&app, &receiver.url.replace("/hook", "/elsewhere"), json!(["leaderboard.season_closed"])).await;

    let (guest_id, _) = guest(&app, "webhook-ana").await;
    let hits = receiver.wait("a retry after the 500", |hits| hits.len() >= 2).await;
    let (first, second) = (&hits[0], &hits[1]);
    assert_eq!((first.answered, second.answered), (500, 200));
    for hit in [first, second] {
        assert_signed(hit);
        assert_eq!(hit.event, "account.created");
        assert_eq!(hit.body["data"]["account_id"], guest_id.as_str());
        assert_eq!(hit.body["data"]["guest"], true);
    }
    // The retry is the same event, the same body and delivery, signed again.
    assert_eq!(first.event_id, second.event_id);
    assert_eq!(first.raw, second.raw);
    assert_eq!(first.delivery_id, second.delivery_id);

    let delivered = wait_for_delivery(&app, &webhook, "delivered").await;
    assert_eq!(delivered["id"], first.delivery_id.as_str());
    assert_eq!(delivered["event_id"], first.event_id.as_str());
    assert_eq!((delivered["attempts"].as_i64(), delivered["last_status"].as_i64()), (Some(2), Some(200)));
    assert!(delivered["delivered_at"].is_string() && delivered["next_attempt_at"].is_null(), "{delivered}");
    // Recorded for the subscribed webhook only, in the same transaction: the other has none.
    assert!(deliveries(&app, &other, "").await.is_empty());

    // A redelivery is a duplicate a receiver recognises by its event id.
    let again = app
        .post(&format!("/v1/admin/webhooks/{webhook}/deliveries/{}/redeliver", first.delivery_id), Some(ADMIN_KEY), json!({}))
        .await
        .expect(202);
    assert_eq!(again.body["state"], "pending");
    let hits = receiver.wait("the redelivery", |hits| hits.len() >= 3).await;
    assert_signed(&hits[2]);
    assert_eq!((hits[2].event_id.as_str(), &hits[2].raw), (first.event_id.as_str(), &first.raw));
    let seen: std::collections::HashSet<&str> = hits.iter().map(|h| h.event_id.as_str()).collect();
    assert_eq!(seen.len(), 1, "three requests, one event");
}

async fn a_failing_receiver_is_parked_listed_and_redelivered(backend: Backend) {
    let app = start(backend, &[("WEBHOOK_MAX_ATTEMPTS", "2")]).await;
    let receiver = Receiver::start(&[500, 503]).await;
    let webhook = register(&app, &receiver.url, json!(["*"])).await;
    let (guest_id, _) = guest(&app, "webhook-parked").await;

    let parked = wait_for_delivery(&app, &webhook, "failed").await;
    assert_eq!(parked["event_type"], "account.created");
    assert_eq!((parked["attempts"].as_i64(), parked["last_status"].as_i64()), (Some(2), Some(503)));
    assert!(parked["last_error"].as_str().is_some_and(|e| e.contains("503")), "{parked}");
    assert!(deliveries(&app, &webhook, "state=pending").await.is_empty());
    assert_eq!(receiver.hits().len(), 2, "no attempt after the last");

    let id = parked["id"].as_str().expect("id");
    let again = app.post(&format!("/v1/admin/webhooks/{webhook}/deliveries/{id}/redeliver"), Some(ADMIN_KEY), json!({})).await.expect(202);
    assert_eq!((again.body["state"].as_str(), again.body["attempts"].as_i64()), (Some("pending"), Some(0)));
    let delivered = wait_for_delivery(&app, &webhook, "delivered").await;
    assert_eq!(delivered["id"], id);
    assert!(deliveries(&app, &webhook, "state=failed").await.is_empty());
    let last = receiver.hits().pop().expect("a hit");
    assert_signed(&last);
    assert_eq!((last.answered, last.body["data"]["account_id"].as_str()), (200, Some(guest_id.as_str())));

    // Unknown deliveries and webhooks, bad states and cursors.
    let unknown = uuid::Uuid::now_v7();
    app.post(&format!("/v1/admin/webhooks/{webhook}/deliveries/{unknown}/redeliver"), Some(ADMIN_KEY), json!({}))
        .await
        .expect_error(404, "not_found");
    app.post(&format!("/v1/admin/webhooks/{unknown}/deliveries/{id}/redeliver"), Some(ADMIN_KEY), json!({}))
        .await
        .expect_error(404, "not_found");
    app.get(&format!("/v1/admin/webhooks/{unknown}/deliveries"), Some(ADMIN_KEY)).await.expect_error(404, "not_found");
    app.get(&format!("/v1/admin/webhooks/{webhook}/deliveries?state=lost"), Some(ADMIN_KEY)).await.expect_error(400, "invalid_request");
    app.get(&format!("/v1/admin/webhooks/{webhook}/deliveries?cursor=x"), Some(ADMIN_KEY)).await.expect_error(400, "invalid_request");
    app.get(&format!("/v1/admin/webhooks/{webhook}/deliveries?limit=101"), Some(ADMIN_KEY)).await.expect_error(400, "invalid_request");
}

async fn a_slow_receiver_holds_up_no_other_webhook(backend: Backend) {
    // Attempts to the stuck receiver outlast the test rather than time out and retry.
    let app = start(backend, &[("WEBHOOK_TIMEOUT_SECS", "60")]).await;
    let (release, held) = tokio::sync::watch::channel(true);
    let stuck = Receiver::holding(held).await;
    let healthy = Receiver::start(&[]).await;
    let stuck_hook = register(&app, &stuck.url, json!(["account.created"])).await;
    register(&app, &healthy.url, json!(["account.created"])).await;

    // Five events: the stuck receiver has its share of attempts hanging (at most four per
    // webhook), yet every event reaches the healthy one.
    for i in 0..5 {
        guest(&app, &format!("webhook-slow-{i}")).await;
    }
    healthy.wait("five deliveries to the healthy receiver", |hits| hits.len() >= 5).await;
    stuck.wait("an attempt to the stuck receiver", |hits| !hits.is_empty()).await;
    let waiting = stuck.hits().len();
    assert!((1..=webhooks::delivery::PER_WEBHOOK).contains(&waiting), "{waiting} attempts in flight to one receiver");
    assert_eq!(deliveries(&app, &stuck_hook, "state=delivered").await.len(), 0);

    // Released, it gets every event too.
    release.send(false).expect("release");
    stuck.wait("five deliveries to the released receiver", |hits| hits.len() >= 5).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while deliveries(&app, &stuck_hook, "state=delivered").await.len() < 5 {
        assert!(Instant::now() < deadline, "{:?}", deliveries(&app, &stuck_hook, "").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A page at a time.
    let pages = app.pages(&format!("/v1/admin/webhooks/{stuck_hook}/deliveries?limit=2"), ADMIN_KEY, "deliveries").await;
    assert_eq!(pages.len(), 5);
}

/// PUTs `bytes` as a `ugc` JSON upload and completes it; returns the asset id.
async fn upload(api: &Api, token: &str, bytes: &'static [u8]) -> String {
    let ticket = api
        .post("/v1/uploads", Some(token), json!({"purpose": "ugc", "content_type": "application/json", "size_bytes": bytes.len()}))
        .await
        .expect(201)
        .body;
    let mut request = api.client.put(ticket["upload"]["url"].as_str().expect("url"));
    for (name, value) in ticket["upload"]["headers"].as_object().expect("headers") {
        if name != "content-length" && name != "host" {
            request = request.header(name.as_str(), value.as_str().expect("header value"));
        }
    }
    assert_eq!(request.body(bytes).send().await.expect("PUT").status().as_u16(), 200);
    let id = ticket["asset_id"].as_str().expect("id").to_owned();
    api.post(&format!("/v1/uploads/{id}/complete"), Some(token), json!({})).await.expect(202);
    id
}

async fn every_offered_event_reaches_a_webhook(backend: Backend) {
    let app = start(backend, &[]).await;
    let receiver = Receiver::start(&[]).await;
    register(&app, &receiver.url, json!(["*"])).await;
    let is = |field: &'static str, value: String| move |body: &Value| body["data"][field] == value.as_str();

    let (ana, ana_token) = guest(&app, "webhook-all-ana").await;
    let (bob, bob_token) = guest(&app, "webhook-all-bob").await;
    receiver.wait_for_event("account.created", is("account_id", ana.clone())).await;

    // A report and a sanction.
    let mut chat = Chat::connect(&app.base, &bob_token).await;
    chat.join("room:global").await;
    let sent = chat.send("room:global", "something rude").await;
    let message_id = sent["message"]["id"].as_str().expect("id").to_owned();
    app.post(&format!("/v1/chat/messages/{message_id}/report"), Some(&ana_token), json!({"reason": "rude"})).await.expect(202);
    let report = receiver.wait_for_event("chat.message_reported", is("message_id", message_id)).await;
    assert_eq!((report.body["data"]["reported_by"].as_str(), report.body["data"]["reason"].as_str()), (Some(ana.as_str()), Some("rude")));
    app.post("/v1/admin/chat/sanctions", Some(ADMIN_KEY), json!({"account_id": bob, "kind": "mute", "minutes": 5, "reason": "rude"}))
        .await
        .expect(204);
    let sanction = receiver.wait_for_event("chat.sanction_issued", is("account_id", bob.clone())).await;
    assert_eq!(
        (sanction.body["data"]["kind"].as_str(), sanction.body["data"]["scope"].as_str(), sanction.body["data"]["issued_by"].as_str()),
        (Some("mute"), Some("global"), Some("server"))
    );
    assert!(sanction.body["data"]["until"].is_string() && sanction.body["data"]["issuer_id"].is_null(), "{}", sanction.body);

    // An upload that passes its check and one that does not.
    let ready = upload(&app, &ana_token, b"{\"level\": 1}").await;
    let rejected = upload(&app, &ana_token, b"not json at all").await;
    let hit = receiver.wait_for_event("upload.ready", is("asset_id", ready)).await;
    assert_eq!((hit.body["data"]["owner_id"].as_str(), hit.body["data"]["size_bytes"].as_i64()), (Some(ana.as_str()), Some(12)));
    let hit = receiver.wait_for_event("upload.rejected", is("asset_id", rejected)).await;
    assert!(hit.body["data"]["reason"].as_str().is_some_and(|r| r.starts_with("content_mismatch")), "{}", hit.body);

    // A season's close, with its top.
    app.post(
        "/v1/admin/leaderboards",
        Some(ADMIN_KEY),
        json!({"id": "hooked", "sort": "desc", "operator": "best", "reset": "*/2 * * * * *"}),
    )
    .await
    .expect(201);
    app.post("/v1/leaderboards/hooked/scores", Some(ADMIN_KEY), json!({"score": 42, "owner_id": ana, "owner_name": "ana"}))
        .await
        .expect(200);
    let closed = receiver.wait_for_event("leaderboard.season_closed", |body| body["data"]["top"][0]["owner_id"] == ana.as_str()).await;
    assert_eq!((closed.body["data"]["board_id"].as_str(), closed.body["data"]["top"][0]["score"].as_i64()), (Some("hooked"), Some(42)));

    // An erasure.
    app.call(reqwest::Method::DELETE, "/v1/accounts/me", Some(&ana_token), None).await.expect(204);
    receiver.wait_for_event("account.deleted", is("account_id", ana)).await;

    let hits = receiver.hits();
    hits.iter().for_each(assert_signed);
    let mut kinds: Vec<&str> = hits.iter().map(|h| h.event.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut offered: Vec<&str> = webhooks::api::WebhookEvent::ALL.iter().map(|e| e.name()).filter(|n| *n != "*").collect();
    offered.sort_unstable();
    assert_eq!(kinds, offered, "every offered event was delivered");
}

async fn webhooks_are_validated_and_never_show_their_secret(backend: Backend) {
    // Production settings: https only, public addresses only.
    let strict = TestApp::start_with(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await;
    let create = |body: Value| {
        let api = strict.api.clone();
        async move { api.post("/v1/admin/webhooks", Some(ADMIN_KEY), body).await }
    };
    let body = |url: &str| json!({"url": url, "events": ["*"], "secret": SECRET});
    for url in ["http://hooks.example.com/x", "ftp://hooks.example.com/", "https://user:pw@hooks.example.com/", "not a url"] {
        let reply = create(body(url)).await.expect_error(400, "invalid_request");
        assert_eq!(reply.body["error"]["field"], "url", "{url}");
    }
    for url in [
        "https://127.0.0.1/x",
        "https://localhost:8443/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/",
        "https://10.0.0.7/",
    ] {
        let reply = create(body(url)).await.expect_error(400, "url_not_allowed");
        assert_eq!(reply.body["error"]["field"], "url", "{url}");
    }
    let bad = [
        (json!({"url": "https://93.184.215.14/", "events": [], "secret": SECRET}), "events"),
        (json!({"url": "https://93.184.215.14/", "events": ["*", "account.created"], "secret": SECRET}), "events"),
        (json!({"url": "https://93.184.215.14/", "events": ["upload.completed"], "secret": SECRET}), "events"),
        (json!({"url": "https://93.184.215.14/", "events": ["*"], "secret": "too-short"}), "secret"),
        (json!({"url": "https://93.184.215.14/", "events": ["*"], "secret": "x".repeat(257)}), "secret"),
    ];
    for (request, field) in bad {
        let reply = create(request.clone()).await.expect_error(400, "invalid_request");
        assert!(reply.body["error"]["field"].as_str().is_some_and(|f| f.starts_with(field)), "{request}: {}", reply.body);
    }
    // The server key only.
    let (_, token) = guest(&strict, "webhook-player").await;
    strict.post("/v1/admin/webhooks", Some(&token), body("https://93.184.215.14/")).await.expect_error(401, "invalid_token");
    strict.get("/v1/admin/webhooks", None).await.expect_error(401, "missing_token");
    strict.get(&format!("/v1/admin/webhooks/{}", uuid::Uuid::now_v7()), Some(ADMIN_KEY)).await.expect_error(404, "not_found");
    strict.get("/v1/admin/webhooks/nonsense", Some(ADMIN_KEY)).await.expect_error(404, "not_found");

    // Listed a page at a time, shown and deleted, never with the secret.
    let app = start(backend, &[]).await;
    let receiver = Receiver::start(&[]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(register(&app, &receiver.url, json!(["account.deleted", "upload.ready"])).await);
    }
    let listed = app.pages("/v1/admin/webhooks?limit=2", ADMIN_KEY, "webhooks").await;
    let listed_ids: Vec<&str> = listed.iter().map(|w| w["id"].as_str().expect("id")).collect();
    assert_eq!(listed_ids, ids.iter().rev().map(String::as_str).collect::<Vec<_>>(), "newest first");
    assert_eq!(listed[0]["events"], json!(["account.deleted", "upload.ready"]));
    let shown = app.get(&format!("/v1/admin/webhooks/{}", ids[0]), Some(ADMIN_KEY)).await.expect(200);
    assert_eq!(shown.body["url"], receiver.url.as_str());
    for reply in [json!(listed), shown.body] {
        assert!(!reply.to_string().contains(SECRET), "{reply}");
    }
    app.call(reqwest::Method::DELETE, &format!("/v1/admin/webhooks/{}", ids[0]), Some(ADMIN_KEY), None).await.expect(204);
    app.call(reqwest::Method::DELETE, &format!("/v1/admin/webhooks/{}", ids[0]), Some(ADMIN_KEY), None)
        .await
        .expect_error(404, "not_found");
    app.get(&format!("/v1/admin/webhooks/{}", ids[0]), Some(ADMIN_KEY)).await.expect_error(404, "not_found");
    assert_eq!(app.pages("/v1/admin/webhooks?limit=2", ADMIN_KEY, "webhooks").await.len(), 2);
}

/// The real binary: a webhook created, a delivery retried and made, and the secret in none of
/// the log lines (nor the URL's query, which may hold a receiver's own token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_and_the_url_never_reach_the_logs() {
    let mut env = TestEnv::new(Backend::Embedded).await.expect("env");
    env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY).set("WEBHOOK_ALLOW_LOCAL_TARGETS", "true").set("WEBHOOK_RETRY_FIRST_SECS", "1");
    env.set("RUST_LOG", "debug");
    let server = Process::start(&env).await;
    let receiver = Receiver::start(&[500]).await;
    let url = format!("{}?token=receiver-own-token-42", receiver.url);
    register(&server, &url, json!(["*"])).await;
    guest(&server, "webhook-logs").await;
    receiver.wait("a delivery after a retry", |hits| hits.len() >= 2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.lines.lock().expect("lines").iter().any(|l| l.contains("webhook delivered")) {
        assert!(Instant::now() < deadline, "no delivery logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = server.lines.lock().expect("lines").clone();
    assert!(lines.iter().any(|l| l.contains("webhook registered")), "the registration is logged");
    for line in &lines {
        assert!(!line.contains(SECRET), "the secret was logged: {line}");
        assert!(!line.contains("receiver-own-token-42"), "the URL's query was logged: {line}");
    }
}

/// Managing webhooks takes a key with the `webhooks` scope; each change is in the audit log with
/// the key that made it, and neither the secret nor the URL's query is.
async fn webhooks_take_their_scope_and_are_audited(backend: Backend) {
    let app = start(backend, &[]).await;
    let receiver = Receiver::start(&[]).await;
    let (_, support) = server_key(&app, "support", &["accounts"]).await;
    let (_, ops) = server_key(&app, "integrations", &["webhooks"]).await;
    let body = json!({"url": format!("{}?token=receiver-own-token", receiver.url), "events": ["*"], "secret": SECRET});
    app.post("/v1/admin/webhooks", Some(&support), body.clone()).await.expect_error(403, "insufficient_scope");
    app.get("/v1/admin/webhooks", Some(&support)).await.expect_error(403, "insufficient_scope");
    let made = app.post("/v1/admin/webhooks", Some(&ops), body).await.expect(201).body;
    let id = made["id"].as_str().expect("id");
    app.get("/v1/admin/webhooks", Some(&ops)).await.expect(200);
    app.call(reqwest::Method::DELETE, &format!("/v1/admin/webhooks/{id}"), Some(&support), None)
        .await
        .expect_error(403, "insufficient_scope");
    app.call(reqwest::Method::DELETE, &format!("/v1/admin/webhooks/{id}"), Some(&ops), None).await.expect(204);

    let entries = crate::common::audit(&app, &format!("target=webhook:{id}")).await;
    let done: Vec<(&str, &str)> =
        entries.iter().map(|e| (e["action"].as_str().expect("action"), e["key_name"].as_str().expect("key"))).collect();
    assert_eq!(done, [("webhooks.delete", "integrations"), ("webhooks.create", "integrations")]);
    assert_eq!(entries[1]["detail"]["host"], "127.0.0.1");
    let logged = serde_json::to_string(&entries).expect("JSON");
    assert!(!logged.contains(SECRET) && !logged.contains("receiver-own-token"), "{logged}");
}
