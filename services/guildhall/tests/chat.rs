//! Chat over WebSocket, on the embedded backends in one process and on PostgreSQL + Redis across
//! two processes.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, Api, Backend, Chat, TestApp, guest, two_processes};
use serde_json::{Value, json};

on_both_backends!(
    a_room_delivers_each_message_once_in_order_and_keeps_history,
    groups_and_direct_messages_refuse_outsiders,
    sends_are_rate_limited_and_muted_players_cannot_send,
    presence_reports_who_is_in_a_channel,
    reports_and_erasure,
    bad_frames_get_errors_and_the_connection_stays,
    a_client_closing_gets_a_close_frame_back,
);

/// A client that closes its socket gets the server's close frame back (RFC 6455's closing
/// handshake), not a dropped connection that it would report as an abnormal closure (1006).
async fn a_client_closing_gets_a_close_frame_back(backend: Backend) {
    let app = start(backend, 10).await;
    let (_, token) = guest(&app, "closer").await;
    let mut chat = Chat::connect(&app.base, &token).await;
    chat.join("room:global").await;
    assert_eq!(chat.close().await, Some(1000));
}

async fn start(backend: Backend, burst: u32) -> TestApp {
    TestApp::start_with(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY).set("CHAT_SEND_BURST", burst.to_string()).set("CHAT_SEND_PER_SECOND", "1");
    })
    .await
}

fn dm(a: &str, b: &str) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("dm:{low}:{high}")
}

/// Ana sends `count` messages; Bob receives each once, in order; history holds them.
async fn exchange(ana_api: &Api, ana: &mut Chat, bob: &mut Chat, token: &str, channel: &str, count: usize) {
    let mut sent = Vec::new();
    for i in 0..count {
        let ack = ana.send(channel, &format!("message {i}")).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        sent.push(ack["message"]["id"].as_str().expect("message id").to_owned());
    }
    for (i, id) in sent.iter().enumerate() {
        let event = bob.next_of("message").await;
        assert_eq!(event["channel"], channel);
        assert_eq!(event["message"]["id"], id.as_str(), "message {i} out of order or missing");
        assert_eq!(event["message"]["body"], format!("message {i}"));
    }
    let extra = bob.quiet_for(Duration::from_millis(300)).await;
    assert!(extra.as_ref().is_none_or(|e| e["type"] != "message"), "a message arrived twice: {extra:?}");
    assert!(ana.quiet_for(Duration::from_millis(100)).await.is_none_or(|e| e["type"] != "message"), "the sender got its own echo");
    let history = ana_api.get(&format!("/v1/chat/channels/{channel}/messages?limit={count}"), Some(token)).await.expect(200).body;
    let ids: Vec<&str> = history["messages"].as_array().expect("messages").iter().map(|m| m["id"].as_str().expect("id")).collect();
    let newest_first: Vec<&str> = sent.iter().rev().map(String::as_str).collect();
    assert_eq!(ids, newest_first, "history matches what was delivered");
}

async fn a_room_delivers_each_message_once_in_order_and_keeps_history(backend: Backend) {
    let app = start(backend, 100).await;
    let (_, ana_token) = guest(&app, "ana").await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let mut ana = Chat::connect(&app.base, &ana_token).await;
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    ana.join("room:global").await;
    bob.join("room:global").await;
    let joined = ana.next_of("presence").await;
    assert_eq!(joined["joined"]["account_id"], bob_id.as_str());
    exchange(&app, &mut ana, &mut bob, &ana_token, "room:global", 20).await;

    // History pages backwards with `before`.
    let first = app.get("/v1/chat/channels/room:global/messages?limit=15", Some(&bob_token)).await.expect(200).body;
    let before = first["next_before"].as_str().expect("more");
    let rest =
        app.get(&format!("/v1/chat/channels/room:global/messages?limit=15&before={before}"), Some(&bob_token)).await.expect(200).body;
    assert_eq!(rest["messages"].as_array().expect("messages").len(), 5);
    assert!(rest["next_before"].is_null());
    assert_eq!(rest["messages"][4]["body"], "message 0");
}

async fn groups_and_direct_messages_refuse_outsiders(backend: Backend) {
    let app = start(backend, 100).await;
    let (ana_id, ana_token) = guest(&app, "ana").await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let (carol_id, carol_token) = guest(&app, "carol").await;
    let group = app.post("/v1/chat/groups", Some(&ana_token), json!({"name": "Raid night"})).await.expect(201).body;
    let channel = group["channel"].as_str().expect("channel").to_owned();
    let group_id = group["id"].as_str().expect("id").to_owned();
    app.post(&format!("/v1/chat/groups/{group_id}/members"), Some(&ana_token), json!({"account_id": bob_id, "role": "moderator"}))
        .await
        .expect(200);
    app.post(&format!("/v1/chat/groups/{group_id}/members"), Some(&bob_token), json!({"account_id": carol_id})).await.expect(200);
    app.call(reqwest::Method::DELETE, &format!("/v1/chat/groups/{group_id}/members/{carol_id}"), Some(&bob_token), None).await.expect(204);
    app.post(&format!("/v1/chat/groups/{group_id}/members"), Some(&bob_token), json!({"account_id": carol_id, "role": "moderator"}))
        .await
        .expect_error(403, "forbidden");
    app.post(&format!("/v1/chat/groups/{group_id}/members"), Some(&carol_token), json!({"account_id": carol_id}))
        .await
        .expect_error(403, "forbidden");
    app.get(&format!("/v1/chat/groups/{group_id}"), Some(&carol_token)).await.expect_error(403, "forbidden");
    let shown = app.get(&format!("/v1/chat/groups/{group_id}"), Some(&bob_token)).await.expect(200).body;
    assert_eq!(shown["members"].as_array().expect("members").len(), 2);

    let mut ana = Chat::connect(&app.base, &ana_token).await;
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    let mut carol = Chat::connect(&app.base, &carol_token).await;
    ana.join(&channel).await;
    bob.join(&channel).await;
    exchange(&app, &mut ana, &mut bob, &ana_token, &channel, 3).await;
    let refused = carol.request(json!({"type": "join", "channel": channel})).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("forbidden")));
    let refused = carol.send(&channel, "let me in").await;
    assert_eq!(refused["code"], "forbidden");
    app.get(&format!("/v1/chat/channels/{channel}/messages"), Some(&carol_token)).await.expect_error(403, "forbidden");

    let direct = dm(&ana_id, &bob_id);
    ana.join(&direct).await;
    bob.join(&direct).await;
    exchange(&app, &mut bob, &mut ana, &bob_token, &direct, 3).await;
    let refused = carol.request(json!({"type": "join", "channel": direct})).await;
    assert_eq!(refused["code"], "forbidden");
    app.get(&format!("/v1/chat/channels/{direct}/messages"), Some(&carol_token)).await.expect_error(403, "forbidden");
    app.get(&format!("/v1/chat/groups/{}", uuid::Uuid::now_v7()), Some(&ana_token)).await.expect_error(404, "not_found");
}

async fn sends_are_rate_limited_and_muted_players_cannot_send(backend: Backend) {
    let app = start(backend, 3).await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    bob.join("room:lfg-eu").await;
    for i in 0..3 {
        assert_eq!(bob.send("room:lfg-eu", &format!("spam {i}")).await["type"], "ack");
    }
    let limited = bob.send("room:lfg-eu", "one too many").await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert!(limited["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0 && ms <= 1000));
    // The connection stays and recovers once the bucket refills.
    assert_eq!(bob.request(json!({"type": "typing", "channel": "room:lfg-eu"})).await["type"], "ack");
    // Typing events fan out like messages and have a bucket of their own.
    for _ in 0..2 {
        assert_eq!(bob.request(json!({"type": "typing", "channel": "room:lfg-eu"})).await["type"], "ack");
    }
    assert_eq!(bob.request(json!({"type": "typing", "channel": "room:lfg-eu"})).await["code"], "rate_limited");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = bob.send("room:lfg-eu", "patience").await;
    assert_eq!(after["type"], "ack", "{after}");

    app.post(
        "/v1/admin/chat/sanctions",
        Some(ADMIN_KEY),
        json!({"account_id": bob_id, "kind": "mute", "scope": "room:lfg-eu", "minutes": 5}),
    )
    .await
    .expect(204);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let muted = bob.send("room:lfg-eu", "hello?").await;
    assert_eq!(muted["code"], "forbidden", "{muted}");
    bob.join("room:other").await;
    // The refused send spent a token too (the limit is checked first, to shield the database).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(bob.send("room:other", "elsewhere is fine").await["type"], "ack");
    app.post("/v1/admin/chat/sanctions", Some(ADMIN_KEY), json!({"account_id": bob_id, "kind": "ban"})).await.expect(204);
    let banned = bob.request(json!({"type": "join", "channel": "room:third"})).await;
    assert_eq!(banned["code"], "forbidden");
    app.post("/v1/admin/chat/sanctions", Some(&bob_token), json!({"account_id": bob_id, "kind": "ban"}))
        .await
        .expect_error(401, "invalid_token");
    app.post("/v1/admin/chat/sanctions", Some(ADMIN_KEY), json!({"account_id": bob_id, "kind": "exile"}))
        .await
        .expect_error(400, "invalid_request");
}

async fn presence_reports_who_is_in_a_channel(backend: Backend) {
    let app = start(backend, 100).await;
    let (ana_id, ana_token) = guest(&app, "ana").await;
    let (_, bob_token) = guest(&app, "bob").await;
    let mut ana = Chat::connect(&app.base, &ana_token).await;
    let joined = ana.join("room:global").await;
    assert_eq!(joined["presence"]["count"], 1);
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    let mut bob_again = Chat::connect(&app.base, &bob_token).await;
    bob.join("room:global").await;
    let joined = bob_again.join("room:global").await;
    assert_eq!(joined["presence"]["count"], 2, "a player with two connections counts once");
    let presence = app.get("/v1/chat/channels/room:global/presence", Some(&ana_token)).await.expect(200).body;
    assert_eq!(presence["count"], 2);
    drop(bob);
    drop(bob_again);
    loop {
        let event = ana.next_of("presence").await;
        if event.get("left").is_some() {
            assert_eq!(event["channel"], "room:global");
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let presence = app.get("/v1/chat/channels/room:global/presence", Some(&ana_token)).await.expect(200).body;
    assert_eq!(presence["count"], 1);
    assert_eq!(presence["players"][0]["account_id"], ana_id.as_str());
}

async fn reports_and_erasure(backend: Backend) {
    let app = start(backend, 100).await;
    let (_, ana_token) = guest(&app, "ana").await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    bob.join("room:global").await;
    let sent = bob.send("room:global", "something rude").await;
    let message_id = sent["message"]["id"].as_str().expect("id").to_owned();
    app.post(&format!("/v1/chat/messages/{message_id}/report"), Some(&ana_token), json!({"reason": "rude"})).await.expect(202);
    app.post(&format!("/v1/chat/messages/{message_id}/report"), Some(&ana_token), json!({"reason": ""}))
        .await
        .expect_error(400, "invalid_request");
    app.post(&format!("/v1/chat/messages/{}/report", uuid::Uuid::now_v7()), Some(&ana_token), json!({"reason": "x"}))
        .await
        .expect_error(404, "not_found");
    let db = app.database().await;
    let reported: Vec<String> = sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = 'chat.message_reported'")
        .fetch_all(db.pool())
        .await
        .expect("outbox");
    assert_eq!(reported.len(), 1);
    let event: Value = serde_json::from_str(&reported[0]).expect("json");
    assert_eq!(event["message_id"], message_id.as_str());
    assert_eq!(event["sender_id"], bob_id.as_str());

    // Bob deletes his account: his messages stay, without him.
    drop(bob);
    app.call(reqwest::Method::DELETE, "/v1/accounts/me", Some(&bob_token), None).await.expect(204);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let history = app.get("/v1/chat/channels/room:global/messages", Some(&ana_token)).await.expect(200).body;
        let message = &history["messages"][0];
        if message["sender_id"].is_null() {
            assert_eq!(message["body"], "something rude");
            assert_eq!(message["sender_name"], "deleted player");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "messages were not anonymised: {message}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn bad_frames_get_errors_and_the_connection_stays(backend: Backend) {
    let app = start(backend, 100).await;
    // A plain request to the socket's route is refused in the API's error format.
    app.get("/v1/chat/ws", None).await.expect_error(400, "invalid_request");
    let (_, token) = guest(&app, "ana").await;
    let mut ana = Chat::connect(&app.base, &token).await;
    for (frame, code) in [
        (json!({"type": "dance"}), "invalid_request"),
        (json!({"type": "join", "channel": "room:NOT OK"}), "invalid_request"),
        (json!({"type": "join"}), "invalid_request"),
        (json!({"type": "send", "channel": "room:global", "body": "not joined"}), "forbidden"),
    ] {
        let reply = ana.request(frame.clone()).await;
        assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some(code)), "{frame} -> {reply}");
    }
    ana.join("room:global").await;
    for body in [String::new(), "x".repeat(2049), "bell\u{7}".to_owned()] {
        let reply = ana.send("room:global", &body).await;
        assert_eq!(reply["code"], "invalid_request", "{reply}");
    }
    assert_eq!(ana.send("room:global", "still here").await["type"], "ack");
    // A socket that never authenticates is closed.
    let url = format!("{}/v1/chat/ws", app.base.replacen("http://", "ws://", 1));
    let (mut stranger, _) = tokio_tungstenite::connect_async(url).await.expect("connects");
    use futures_util::{SinkExt, StreamExt};
    stranger
        .send(tokio_tungstenite::tungstenite::Message::Text(json!({"type": "auth", "token": "nope", "id": 1}).to_string().into()))
        .await
        .expect("sent");
    let mut closed = false;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(5), stranger.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Close(frame) = message {
            assert_eq!(frame.map(|f| u16::from(f.code)), Some(1008));
            closed = true;
            break;
        }
    }
    assert!(closed, "an unauthenticated socket stays open");
    app.get("/v1/chat/channels/room:global/messages?limit=0", Some(&token)).await.expect_error(400, "invalid_request");
    app.get("/v1/chat/channels/room:global/messages?before=zzz", Some(&token)).await.expect_error(400, "invalid_request");
    app.get("/v1/chat/channels/nope/messages", Some(&token)).await.expect_error(400, "invalid_request");
}

/// Two processes on one PostgreSQL and Redis: players on different instances share rooms,
/// groups and direct messages; presence is seen on both; shutdown closes sockets with 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_channels_and_presence() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (_env, mut a, b) = two_processes(|env| {
        env.set("CHAT_SEND_BURST", "100");
    })
    .await;
    let (ana_id, ana_token) = guest(&a, "ana").await;
    let (bob_id, bob_token) = guest(&b, "bob").await;
    let mut ana = Chat::connect(&a.base, &ana_token).await;
    let mut bob = Chat::connect(&b.base, &bob_token).await;

    ana.join("room:global").await;
    bob.join("room:global").await;
    exchange(&a, &mut ana, &mut bob, &ana_token, "room:global", 20).await;
    exchange(&b, &mut bob, &mut ana, &bob_token, "room:global", 5).await;
    for api in [&*a, &*b] {
        let presence = api.get("/v1/chat/channels/room:global/presence", Some(&ana_token)).await.expect(200).body;
        assert_eq!(presence["count"], 2, "presence on {}", api.base);
    }

    let direct = dm(&ana_id, &bob_id);
    ana.join(&direct).await;
    bob.join(&direct).await;
    exchange(&a, &mut ana, &mut bob, &ana_token, &direct, 5).await;

    let group = a.post("/v1/chat/groups", Some(&ana_token), json!({"name": "Guild"})).await.expect(201).body;
    let channel = group["channel"].as_str().expect("channel").to_owned();
    a.post(&format!("/v1/chat/groups/{}/members", group["id"].as_str().expect("id")), Some(&ana_token), json!({"account_id": bob_id}))
        .await
        .expect(200);
    ana.join(&channel).await;
    bob.join(&channel).await;
    exchange(&b, &mut bob, &mut ana, &bob_token, &channel, 5).await;

    // SIGTERM on A: Ana's socket gets a going-away close, and she can reconnect to B.
    let status = a.terminate().await;
    assert!(status.success());
    while ana.event().await.is_some() {}
    assert_eq!(ana.closed, Some(1001));
    let mut ana = Chat::connect(&b.base, &ana_token).await;
    ana.join("room:global").await;
    assert_eq!(ana.send("room:global", "back").await["type"], "ack");
    assert_eq!(bob.next_of("message").await["message"]["body"], "back");
}
