//! Notifications and the DM inbox: pushed on every chat socket of a player, kept for offline
//! players, read marks, the inbox's counts, events handled once, erasure; on the embedded
//! backends in one process and on PostgreSQL + Redis + SQS (moto), across two processes too.

use std::time::{Duration, Instant};

use crate::common::{ADMIN_KEY, Api, Backend, Chat, TestApp, deliver_again, guest, two_chat_processes};
use platform::db::Database;
use platform::events::{FriendAccepted, FriendRequested, SeasonClosed, SeasonPlacing};
use serde_json::{Value, json};

on_both_backends!(
    a_direct_message_notifies_a_recipient_outside_the_conversation_and_fills_the_inbox,
    offline_players_find_their_notifications_and_mark_them_read,
    events_notify_once_however_often_they_are_delivered,
    a_players_stream_is_capped,
    erasure_removes_notifications_and_conversations,
);

async fn start(backend: Backend) -> TestApp {
    TestApp::start_with(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY).set("CHAT_SEND_BURST", "100").set("CHAT_SEND_PER_SECOND", "10");
    })
    .await
}

fn dm(a: &str, b: &str) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("dm:{low}:{high}")
}

/// Records `event` in the outbox, as its producer would, for the relay to deliver: its id.
async fn record<E: platform::events::EventType>(db: &Database, event: &E) -> String {
    let mut tx = db.begin().await.expect("transaction");
    let id = platform::events::record(&mut *tx, event).await.expect("recorded");
    tx.commit().await.expect("committed");
    id
}

fn now() -> String {
    platform::time::rfc3339(platform::db::now_millis())
}

/// A player's notifications (`query` appended), waiting up to 20 s until `done` holds.
async fn notifications_until(api: &Api, token: &str, query: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = api.get(&format!("/v1/notifications?{query}"), Some(token)).await.expect(200).body;
        if done(&page) {
            return page;
        }
        assert!(Instant::now() < deadline, "notifications never got there: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kinds(page: &Value) -> Vec<&str> {
    page["notifications"].as_array().expect("notifications").iter().map(|n| n["kind"].as_str().expect("kind")).collect()
}

async fn conversations(api: &Api, token: &str) -> Vec<Value> {
    api.pages("/v1/chat/conversations?limit=1", token, "conversations").await
}

/// Ana writes to Bob, whose socket is open but not in their conversation: Bob gets a `dm`
/// notification, one while unread, updated by each further message; joined, he gets the
/// messages and no notification. Both inboxes show the conversation with the right counts; read
/// marks move them.
async fn a_direct_message_notifies_a_recipient_outside_the_conversation_and_fills_the_inbox(backend: Backend) {
    let app = start(backend).await;
    let (ana_id, ana_token) = guest(&app, "ana").await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let (carol_id, carol_token) = guest(&app, "carol").await;
    let mut ana = Chat::connect(&app.base, &ana_token).await;
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    let channel = dm(&ana_id, &bob_id);
    ana.join(&channel).await;

    let first = ana.send(&channel, "hello bob").await;
    let first_id = first["message"]["id"].as_str().expect("message id").to_owned();
    let pushed = bob.next_of("notification").await;
    let notification = &pushed["notification"];
    assert_eq!((notification["kind"].as_str(), notification["read"].as_bool()), (Some("dm"), Some(false)), "{pushed}");
    assert_eq!(notification["data"]["channel"], channel.as_str());
    assert_eq!(notification["data"]["sender_id"], ana_id.as_str());
    assert_eq!(notification["data"]["message_id"], first_id.as_str());
    let notification_id = notification["id"].as_str().expect("id").to_owned();
    // A second message updates the same notification (its newest message), pushed again.
    let second = ana.send(&channel, "are you there?").await;
    let second_id = second["message"]["id"].as_str().expect("message id").to_owned();
    let pushed = bob.next_of("notification").await;
    assert_eq!(pushed["notification"]["id"], notification_id.as_str());
    assert_eq!(pushed["notification"]["data"]["message_id"], second_id.as_str());
    let listed = app.get("/v1/notifications", Some(&bob_token)).await.expect(200).body;
    assert_eq!(kinds(&listed), ["dm"]);
    assert_eq!(listed["unread_count"], 1);

    // Inboxes: Bob has two unread, Ana (who wrote) none.
    let inbox = conversations(&app, &bob_token).await;
    assert_eq!(inbox.len(), 1);
    assert_eq!((inbox[0]["channel"].as_str(), inbox[0]["other_id"].as_str()), (Some(channel.as_str()), Some(ana_id.as_str())));
    assert_eq!(inbox[0]["unread_count"], 2);
    assert_eq!(inbox[0]["last_message"]["body"], "are you there?");
    assert!(inbox[0]["other_name"].is_string(), "{}", inbox[0]);
    let inbox = conversations(&app, &ana_token).await;
    assert_eq!((inbox[0]["unread_count"].as_i64(), inbox[0]["other_id"].as_str()), (Some(0), Some(bob_id.as_str())));
    assert_eq!(inbox[0]["read_up_to"], second_id.as_str());

    // Bob joins: the next message comes as a message, with no notification.
    bob.join(&channel).await;
    ana.send(&channel, "there you are").await;
    assert_eq!(bob.next_of("message").await["message"]["body"], "there you are");
    let extra = bob.quiet_for(Duration::from_millis(500)).await;
    assert!(extra.as_ref().is_none_or(|e| e["type"] != "notification"), "notified while in the conversation: {extra:?}");
    assert_eq!(conversations(&app, &bob_token).await[0]["unread_count"], 3);

    // Read up to the first message: two left; then all: none, and the notification is read.
    let read = format!("/v1/chat/conversations/{channel}/read");
    app.post(&read, Some(&bob_token), json!({"up_to": first_id})).await.expect(204);
    let inbox = conversations(&app, &bob_token).await;
    assert_eq!((inbox[0]["unread_count"].as_i64(), inbox[0]["read_up_to"].as_str()), (Some(2), Some(first_id.as_str())));
    // A mark never moves back.
    app.post(&read, Some(&bob_token), json!({})).await.expect(204);
    app.post(&read, Some(&bob_token), json!({"up_to": first_id})).await.expect(204);
    assert_eq!(conversations(&app, &bob_token).await[0]["unread_count"], 0);
    let listed = app.get("/v1/notifications", Some(&bob_token)).await.expect(200).body;
    assert_eq!((listed["unread_count"].as_i64(), listed["notifications"][0]["read"].as_bool()), (Some(0), Some(true)));

    // Out of the conversation again, the next message makes a new notification.
    bob.request(json!({"type": "leave", "channel": channel})).await;
    ana.send(&channel, "bye").await;
    let pushed = bob.next_of("notification").await;
    assert_ne!(pushed["notification"]["id"], notification_id.as_str());

    // Carol writes to Bob later: her conversation comes first; the list pages.
    let carol_channel = dm(&carol_id, &bob_id);
    let mut carol = Chat::connect(&app.base, &carol_token).await;
    carol.join(&carol_channel).await;
    carol.send(&carol_channel, "hi from carol").await;
    let inbox = conversations(&app, &bob_token).await;
    let order: Vec<&str> = inbox.iter().map(|c| c["other_id"].as_str().expect("other")).collect();
    assert_eq!(order, [carol_id.as_str(), ana_id.as_str()]);
    assert_eq!(app.get("/v1/notifications?unread=true", Some(&bob_token)).await.expect(200).body["unread_count"], 2);

    // Refusals.
    let theirs = format!("/v1/chat/conversations/{channel}/read");
    app.post(&theirs, Some(&carol_token), json!({})).await.expect_error(403, "forbidden");
    app.post(&read, Some(&bob_token), json!({"up_to": uuid::Uuid::now_v7().to_string()})).await.expect_error(404, "not_found");
    let carols_message = conversations(&app, &carol_token).await[0]["last_message"]["id"].as_str().expect("id").to_owned();
    app.post(&read, Some(&bob_token), json!({"up_to": carols_message})).await.expect_error(404, "not_found");
    app.post("/v1/chat/conversations/room:global/read", Some(&bob_token), json!({})).await.expect_error(400, "invalid_request");
    let (dan_id, dan_token) = guest(&app, "dan").await;
    app.post(&format!("/v1/chat/conversations/{}/read", dm(&dan_id, &bob_id)), Some(&dan_token), json!({}))
        .await
        .expect_error(404, "not_found");
    app.get("/v1/chat/conversations?limit=0", Some(&bob_token)).await.expect_error(400, "invalid_request");
    app.get("/v1/chat/conversations?cursor=nope", Some(&bob_token)).await.expect_error(400, "invalid_request");
    app.get("/v1/chat/conversations", None).await.expect(401);
    assert!(conversations(&app, &dan_token).await.is_empty());
}

/// Events for an offline player are kept: friend requests, acceptances and season results are
/// listed newest first, filtered by unread, paged, and marked read by ids or up to one.
async fn offline_players_find_their_notifications_and_mark_them_read(backend: Backend) {
    let app = start(backend).await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let (ana_id, ana_token) = guest(&app, "ana").await;
    let db = app.database().await;
    record(&db, &FriendRequested { from_id: ana_id.clone(), to_id: bob_id.clone(), requested_at: now() }).await;
    record(&db, &FriendAccepted { requester_id: bob_id.clone(), accepter_id: ana_id.clone(), accepted_at: now() }).await;
    let placing = |rank: u64, owner: &str| SeasonPlacing {
        rank,
        owner_id: owner.to_owned(),
        name: owner.to_owned(),
        score: 100 - rank as i64,
        subscore: 0,
    };
    let season = SeasonClosed {
        board_id: "0193aaaa-0000-7000-8000-00000000b0a2".into(),
        season: 3,
        started_at: now(),
        ended_at: now(),
        record_count: 40,
        top: vec![placing(1, &ana_id), placing(2, &bob_id)],
    };
    record(&db, &season).await;

    let page = notifications_until(&app, &bob_token, "", |p| p["notifications"].as_array().is_some_and(|n| n.len() == 3)).await;
    let mut listed = kinds(&page);
    listed.sort_unstable();
    assert_eq!(listed, ["friend_accepted", "friend_request", "season_result"]);
    assert_eq!(page["unread_count"], 3);
    let of = |kind: &str| page["notifications"].as_array().expect("list").iter().find(|n| n["kind"] == kind).expect(kind).clone();
    assert_eq!(of("friend_request")["data"]["account_id"], ana_id.as_str());
    assert_eq!(of("friend_accepted")["data"]["account_id"], ana_id.as_str());
    let result = of("season_result");
    assert_eq!((result["data"]["rank"].as_u64(), result["data"]["season"].as_i64()), (Some(2), Some(3)), "{result}");
    assert_eq!(result["data"]["board_id"], season.board_id.as_str());
    // Ana placed too: hers only.
    let anas = notifications_until(&app, &ana_token, "", |p| !p["notifications"].as_array().expect("list").is_empty()).await;
    assert_eq!(kinds(&anas), ["season_result"]);
    assert_eq!(anas["notifications"][0]["data"]["rank"], 1);

    // Newest first, paged.
    let ids: Vec<String> =
        page["notifications"].as_array().expect("list").iter().map(|n| n["id"].as_str().expect("id").to_owned()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted);
    let paged = app.pages("/v1/notifications?limit=1", &bob_token, "notifications").await;
    assert_eq!(paged.iter().map(|n| n["id"].as_str().expect("id")).collect::<Vec<_>>(), ids.iter().map(String::as_str).collect::<Vec<_>>());

    // By ids (Ana's and unknown ones are ignored), then up to the newest.
    let anas_id = anas["notifications"][0]["id"].as_str().expect("id").to_owned();
    let marked = app
        .post("/v1/notifications/read", Some(&bob_token), json!({"ids": [ids[2], anas_id, uuid::Uuid::now_v7().to_string()]}))
        .await
        .expect(200)
        .body;
    assert_eq!((marked["marked"].as_u64(), marked["unread_count"].as_i64()), (Some(1), Some(2)));
    let unread = app.get("/v1/notifications?unread=true", Some(&bob_token)).await.expect(200).body;
    assert_eq!(
        unread["notifications"].as_array().map(|n| n.iter().map(|n| n["id"].as_str().expect("id")).collect::<Vec<_>>()),
        Some(vec![ids[0].as_str(), ids[1].as_str()])
    );
    assert_eq!(app.get("/v1/notifications", Some(&ana_token)).await.expect(200).body["unread_count"], 1, "Ana's stays unread");
    let marked = app.post("/v1/notifications/read", Some(&bob_token), json!({"up_to": ids[1]})).await.expect(200).body;
    assert_eq!((marked["marked"].as_u64(), marked["unread_count"].as_i64()), (Some(1), Some(1)));
    let marked = app.post("/v1/notifications/read", Some(&bob_token), json!({"up_to": ids[0]})).await.expect(200).body;
    assert_eq!((marked["marked"].as_u64(), marked["unread_count"].as_i64()), (Some(1), Some(0)));
    let unread = app.get("/v1/notifications?unread=true", Some(&bob_token)).await.expect(200).body;
    assert!(unread["notifications"].as_array().is_some_and(Vec::is_empty), "{unread}");
    let all = app.get("/v1/notifications", Some(&bob_token)).await.expect(200).body;
    assert!(all["notifications"].as_array().expect("list").iter().all(|n| n["read"] == true), "{all}");

    // Refusals.
    let read = |body: Value| {
        let app = &app;
        let token = bob_token.clone();
        async move { app.post("/v1/notifications/read", Some(&token), body).await }
    };
    read(json!({})).await.expect_error(400, "invalid_request");
    read(json!({"ids": [], "up_to": ids[0]})).await.expect_error(400, "invalid_request");
    read(json!({"ids": []})).await.expect_error(400, "invalid_request");
    read(json!({"ids": ["nope"]})).await.expect_error(400, "invalid_request");
    read(json!({"ids": vec![ids[0].clone(); 101]})).await.expect_error(400, "invalid_request");
    read(json!({"up_to": ids[0], "all": true})).await.expect_error(400, "invalid_request");
    app.get("/v1/notifications?limit=101", Some(&bob_token)).await.expect_error(400, "invalid_request");
    app.get("/v1/notifications?cursor=zzz", Some(&bob_token)).await.expect_error(400, "invalid_request");
    app.get("/v1/notifications", None).await.expect(401);
}

/// A connected player gets each event's notification pushed once; an event delivered again
/// (its consumption forgotten, its outbox row due again) stores and pushes nothing more.
async fn events_notify_once_however_often_they_are_delivered(backend: Backend) {
    let app = start(backend).await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let (ana_id, _) = guest(&app, "ana").await;
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    let mut phone = Chat::connect(&app.base, &bob_token).await;
    let db = app.database().await;
    let event_id = record(&db, &FriendRequested { from_id: ana_id.clone(), to_id: bob_id.clone(), requested_at: now() }).await;
    // Every socket of his gets it.
    for socket in [&mut bob, &mut phone] {
        let pushed = socket.next_of("notification").await;
        assert_eq!(pushed["notification"]["kind"], "friend_request");
        assert_eq!(pushed["notification"]["data"]["account_id"], ana_id.as_str());
    }
    deliver_again(&db, "chat", &event_id).await;
    let extra = bob.quiet_for(Duration::from_millis(500)).await;
    assert!(extra.is_none(), "pushed twice: {extra:?}");
    let page = app.get("/v1/notifications", Some(&bob_token)).await.expect(200).body;
    assert_eq!(kinds(&page), ["friend_request"]);
}

/// A player's stream keeps the newest 200: more events delete the oldest. Notifications older
/// than 30 days are not listed, and an instance starting prunes them.
async fn a_players_stream_is_capped(backend: Backend) {
    let app = start(backend).await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let db = app.database().await;
    let mut tx = db.begin().await.expect("transaction");
    let mut first = Vec::new();
    for n in 0..205 {
        let event = FriendRequested { from_id: format!("friend-{n}"), to_id: bob_id.clone(), requested_at: now() };
        first.push(platform::events::record(&mut *tx, &event).await.expect("recorded"));
    }
    tx.commit().await.expect("committed");
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM consumed_events WHERE consumer = 'chat'")
            .fetch_one(db.pool())
            .await
            .expect("count")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored().await < 205 {
        assert!(Instant::now() < deadline, "the events were not all consumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = app.pages("/v1/notifications?limit=100", &bob_token, "notifications").await;
    assert_eq!(listed.len(), 200);
    assert_eq!(app.get("/v1/notifications?limit=1", Some(&bob_token)).await.expect(200).body["unread_count"], 200);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chat_notifications WHERE account_id = $1")
        .bind(&bob_id)
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(rows, 200);

    // One made 31 days ago (as if): not listed; pruned by an instance that starts.
    let old = platform::db::now_millis() - 31 * 24 * 3600 * 1000;
    sqlx::query("UPDATE chat_notifications SET created_at = $2 WHERE account_id = $1 AND data LIKE '%friend-204%'")
        .bind(&bob_id)
        .bind(old)
        .execute(db.pool())
        .await
        .expect("aged");
    let page = app.get("/v1/notifications?limit=1", Some(&bob_token)).await.expect(200).body;
    assert_eq!(page["unread_count"], 199);
    assert_ne!(page["notifications"][0]["data"]["account_id"], "friend-204");
    let _second = TestApp::start_on(app.env.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chat_notifications WHERE account_id = $1")
            .bind(&bob_id)
            .fetch_one(db.pool())
            .await
            .expect("count");
        if rows == 199 {
            break;
        }
        assert!(Instant::now() < deadline, "the old notification was not pruned ({rows} rows)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rows of `table` whose `column` is `account`.
async fn rows(db: &Database, table: &str, column: &str, account: &str) -> i64 {
    // Table and column are the test's constants; the account is bound.
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE {column} = $1"))
        .bind(account)
        .fetch_one(db.pool())
        .await
        .expect("count")
}

/// Waits up to 20 s until no row of `table` has `column` = `account` (an erasure's consumer ran).
async fn until_none(db: &Database, table: &str, column: &str, account: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while rows(db, table, column, account).await > 0 {
        assert!(Instant::now() < deadline, "{table} still holds {column} = {account}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deleting an account erases its notifications and conversation rows, the notifications about
/// it in other players' streams, and its name in its partners' inboxes.
async fn erasure_removes_notifications_and_conversations(backend: Backend) {
    let app = start(backend).await;
    let (ana_id, ana_token) = guest(&app, "ana").await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let (carol_id, carol_token) = guest(&app, "carol").await;
    let mut ana = Chat::connect(&app.base, &ana_token).await;
    let channel = dm(&ana_id, &bob_id);
    ana.join(&channel).await;
    ana.send(&channel, "hi bob").await;
    let db = app.database().await;
    record(&db, &FriendRequested { from_id: carol_id.clone(), to_id: bob_id.clone(), requested_at: now() }).await;
    record(&db, &FriendRequested { from_id: bob_id.clone(), to_id: ana_id.clone(), requested_at: now() }).await;
    notifications_until(&app, &bob_token, "", |p| p["notifications"].as_array().is_some_and(|n| n.len() == 2)).await;
    notifications_until(&app, &ana_token, "", |p| p["notifications"].as_array().is_some_and(|n| n.len() == 1)).await;

    // Carol goes: her friend request leaves Bob's stream.
    app.call(reqwest::Method::DELETE, "/v1/accounts/me", Some(&carol_token), None).await.expect(204);
    until_none(&db, "chat_notifications", "actor_id", &carol_id).await;
    assert_eq!(kinds(&app.get("/v1/notifications", Some(&bob_token)).await.expect(200).body), ["dm"]);

    // Ana goes: her rows and the notification of her message go; Bob's inbox keeps the
    // conversation, without her name.
    drop(ana);
    app.call(reqwest::Method::DELETE, "/v1/accounts/me", Some(&ana_token), None).await.expect(204);
    until_none(&db, "chat_conversations", "account_id", &ana_id).await;
    assert_eq!(rows(&db, "chat_notifications", "account_id", &ana_id).await, 0);
    assert_eq!(rows(&db, "chat_notifications", "actor_id", &ana_id).await, 0);
    assert!(app.get("/v1/notifications", Some(&bob_token)).await.expect(200).body["notifications"].as_array().is_some_and(Vec::is_empty));
    let inbox = conversations(&app, &bob_token).await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0]["other_name"], "deleted player");
    assert!(inbox[0]["last_message"]["sender_id"].is_null(), "{}", inbox[0]);

    // Bob goes: nothing of his is left.
    app.call(reqwest::Method::DELETE, "/v1/accounts/me", Some(&bob_token), None).await.expect(204);
    until_none(&db, "chat_conversations", "account_id", &bob_id).await;
    assert_eq!(rows(&db, "chat_notifications", "account_id", &bob_id).await, 0);
}

/// Two processes on one PostgreSQL, Redis and SQS: a notification made on one instance (a direct
/// message sent there, an event consumed there) reaches the recipient's socket on the other; a
/// recipient in the conversation on the other instance is not notified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_push_notifications_to_every_instance() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (env, a, b) = two_chat_processes().await;
    let (ana_id, ana_token) = guest(&a, "ana").await;
    let (bob_id, bob_token) = guest(&b, "bob").await;
    let mut ana = Chat::connect(&a.base, &ana_token).await;
    let mut bob = Chat::connect(&b.base, &bob_token).await;
    let channel = dm(&ana_id, &bob_id);
    ana.join(&channel).await;
    ana.send(&channel, "across instances").await;
    let pushed = bob.next_of("notification").await;
    assert_eq!(
        (pushed["notification"]["kind"].as_str(), pushed["notification"]["data"]["sender_id"].as_str()),
        (Some("dm"), Some(ana_id.as_str()))
    );

    // In the conversation on B: the message, no notification.
    bob.join(&channel).await;
    ana.send(&channel, "now you are here").await;
    assert_eq!(bob.next_of("message").await["message"]["body"], "now you are here");
    let extra = bob.quiet_for(Duration::from_millis(500)).await;
    assert!(extra.as_ref().is_none_or(|e| e["type"] != "notification"), "{extra:?}");
    let inbox = b.get("/v1/chat/conversations", Some(&bob_token)).await.expect(200).body;
    assert_eq!(inbox["conversations"][0]["unread_count"], 2);

    // An event, consumed by whichever process: Ana's socket on A gets it.
    let config = env.config().expect("config");
    let db = Database::connect(&config.database).await.expect("database");
    record(&db, &FriendAccepted { requester_id: ana_id.clone(), accepter_id: bob_id.clone(), accepted_at: now() }).await;
    let pushed = ana.next_of("notification").await;
    assert_eq!(
        (pushed["notification"]["kind"].as_str(), pushed["notification"]["data"]["account_id"].as_str()),
        (Some("friend_accepted"), Some(bob_id.as_str()))
    );
}
