//! Chat over WebSocket, on the embedded backends in one process and on PostgreSQL + Redis across
//! two processes.

use std::time::Duration;

use crate::common::{
    ADMIN_KEY, Api, Backend, Chat, RawSocket, TestApp, TestEnv, deliver_again, deliver_late, eventually, guest, guest_session, server_key,
    two_chat_processes,
};
use platform::db::Dialect;
use serde_json::{Value, json};

on_both_backends!(
    a_room_delivers_each_message_once_in_order_and_keeps_history,
    groups_and_direct_messages_refuse_outsiders,
    sends_are_rate_limited_and_muted_players_cannot_send,
    presence_reports_who_is_in_a_channel,
    reports_and_erasure,
    bad_frames_get_errors_and_the_connection_stays,
    a_client_closing_gets_a_close_frame_back,
    a_session_that_ends_closes_its_sockets,
    bans_and_group_removals_reach_open_sockets,
    a_socket_closes_when_its_token_expires_unless_renewed,
    oversized_frames_close_the_socket_before_they_are_buffered,
    sockets_are_capped_per_account_and_per_address,
    rejoins_are_rate_limited_and_read_no_presence,
    sanctions_respect_their_issuers_and_can_be_lifted,
    players_page_through_their_own_sanctions,
    reports_are_filed_and_resolved_and_messages_deleted,
    reports_are_rate_limited_and_once_per_message,
    operators_list_filter_and_lift_sanctions,
    operators_read_any_channel_and_purge_a_sender,
    an_operators_chat_action_stands_only_with_its_audit_entry,
    server_keys_moderate_with_the_chat_scope_and_operators_read_a_players_sanctions,
    blocked_players_cannot_dm_or_see_each_other,
    a_failed_group_commit_stores_acknowledges_and_delivers_none_of_its_messages,
    direct_messages_share_group_commits_with_their_conversations_and_notifications,
);

/// How long a session's end, a ban or a removal may take to reach an open socket.
const PROMPTLY: Duration = Duration::from_secs(2);

/// A message stored but not published (Redis refused the `PUBLISH` after the commit) is still
/// acknowledged, with its stored id: an error would have its sender send it again and store it
/// twice. Members who missed it live read it from history; the fan-out goes on once Redis takes
/// publishes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_message_whose_publish_fails_is_still_acknowledged() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    // A Redis user of its own, so that forbidding it PUBLISH touches no other test's connections.
    let mut env = TestEnv::new(Backend::Real).await.expect("env");
    let upstream = env.vars["REDIS_URL"].clone();
    let mut redis = redis::Client::open(upstream.as_str()).expect("client").get_multiplexed_async_connection().await.expect("redis");
    let user = format!("publish-test-{}", uuid::Uuid::now_v7().simple());
    let acl = |rules: &[&str]| redis::cmd("ACL").arg("SETUSER").arg(&user).arg(rules).to_owned();
    let _: () = acl(&["on", ">publish-test-secret", "~*", "&*", "+@all"]).query_async(&mut redis).await.expect("ACL user");
    env.set("REDIS_URL", upstream.replacen("redis://", &format!("redis://{user}:publish-test-secret@"), 1));
    env.set("CHAT_SEND_BURST", "100").set("CHAT_SEND_PER_SECOND", "1");
    let app = TestApp::start_on_with_metrics(env).await;
    let (_, ana_token) = guest(&app, "publish-ana").await;
    let (_, bob_token) = guest(&app, "publish-bob").await;
    let (mut ana, mut bob) = Chat::pair_in(&app.base, "room:publish", &ana_token, &bob_token).await;
    let first = ana.send("room:publish", "one").await;
    assert_eq!(first["type"], "ack", "{first}");
    assert_eq!(bob.next_of("message").await["message"]["body"], "one");
    assert_eq!(app.metric("guildhall_chat_unpublished_total").await, Some(0.0));

    let _: () = acl(&["-publish"]).query_async(&mut redis).await.expect("ACL -publish");
    let second = ana.send("room:publish", "two").await;
    assert_eq!(second["type"], "ack", "a stored message is acknowledged though not published: {second}");
    let second_id = second["message"]["id"].as_str().expect("stored id").to_owned();
    assert_eq!(app.metric("guildhall_chat_unpublished_total").await, Some(1.0), "the failed publish is counted");
    let live = bob.quiet_for(Duration::from_millis(300)).await;
    assert!(live.as_ref().is_none_or(|e| e["type"] != "message"), "it was not published, so not delivered live: {live:?}");
    // Read as the sender, whose reads follow its writes to the primary.
    let history = app.get("/v1/chat/channels/room:publish/messages?limit=10", Some(&ana_token)).await.expect(200).body;
    let bodies: Vec<(&str, &str)> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["id"].as_str().expect("id"), m["body"].as_str().expect("body")))
        .collect();
    assert_eq!(bodies.len(), 2, "stored once: {bodies:?}");
    assert_eq!(bodies[0], (second_id.as_str(), "two"));

    let _: () = acl(&["+publish"]).query_async(&mut redis).await.expect("ACL +publish");
    assert_eq!(ana.send("room:publish", "three").await["type"], "ack");
    assert_eq!(bob.next_of("message").await["message"]["body"], "three");
    let _: i64 = redis::cmd("ACL").arg("DELUSER").arg(&user).query_async(&mut redis).await.expect("ACL DELUSER");
}

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
        // A refresh token presented twice ends its session at once (no retry grace), as the
        // session tests need.
        env.set("REFRESH_REUSE_GRACE_SECS", "0");
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
    let (mut ana, mut bob) = Chat::pair_in(&app.base, "room:global", &ana_token, &bob_token).await;
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
    assert_eq!(bob.closed_within(PROMPTLY).await, Some(4003), "a ban everywhere closes the socket");
    let mut bob = Chat::connect(&app.base, &bob_token).await;
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
    let (ana_id, ana_token) = guest(&app, "ana").await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    bob.join("room:global").await;
    // Ana is in their direct conversation when Bob goes, and has a group.
    let direct = dm(&ana_id, &bob_id);
    let mut ana = Chat::connect(&app.base, &ana_token).await;
    ana.join(&direct).await;
    assert_eq!(ana.send(&direct, "hi bob").await["type"], "ack");
    let group = app.post("/v1/chat/groups", Some(&ana_token), json!({"name": "crew"})).await.expect(201).body;
    let members = format!("/v1/chat/groups/{}/members", group["id"].as_str().expect("group id"));
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

    assert_eq!(filed_case(&app, &message_id, 1).await["message"]["sender_id"], bob_id.as_str());

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
    // The report of his message keeps the text, without him (anonymised in the same
    // transaction as the messages); Ana's report stays hers.
    let case = &filed_case(&app, &message_id, 1).await;
    assert_eq!(
        (case["message"]["sender_id"].clone(), case["message"]["sender_name"].as_str()),
        (Value::Null, Some("deleted player")),
        "{case}"
    );
    assert_eq!(case["message"]["body"], "something rude");
    let reporters = &case["reporters"];
    assert!(reporters.as_array().is_some_and(|r| r.len() == 1 && r[0]["account_id"].is_string()), "{reporters}");
    // Nothing of Bob's is made again (erased in the same transaction as his messages): Ana's
    // socket still in the conversation cannot send to it, nobody can join it, nor add him to a
    // group; the history stays readable.
    let refused = ana.send(&direct, "are you there?").await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("account_deleted")), "{refused}");
    let mut again = Chat::connect(&app.base, &ana_token).await;
    let join = again.request(json!({"type": "join", "channel": direct})).await;
    assert_eq!(join["code"], "account_deleted", "{join}");
    app.post(&members, Some(&ana_token), json!({"account_id": bob_id})).await.expect_error(404, "account_deleted");
    let bobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chat_conversations WHERE account_id = $1")
        .bind(&bob_id)
        .fetch_one(db.pool())
        .await
        .expect("conversations");
    assert_eq!(bobs, 0, "no conversation of Bob's made again");
    let history = app.get(&format!("/v1/chat/channels/{direct}/messages"), Some(&ana_token)).await.expect(200).body;
    assert_eq!(history["messages"][0]["body"], "hi bob");

    // Ana deletes hers: her report stays, without her.
    app.call(reqwest::Method::DELETE, "/v1/accounts/me", Some(&ana_token), None).await.expect(204);
    loop {
        let case = filed_case(&app, &message_id, 1).await;
        if case["reporters"][0]["account_id"].is_null() {
            assert_eq!(case["reporters"][0]["reason"], "rude");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the reporter was not anonymised: {case}");
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
    // A client's ping is answered with its payload, and the socket stays.
    assert!(ana.ping(b"are you there").await, "no pong");
    assert_eq!(ana.send("room:global", "after the ping").await["type"], "ack");
    // Frames against the protocol close an authenticated socket with the code for each (RFC 6455
    // §7.4.1): unmasked (1002), text that is not UTF-8 (1007). Masked with a zero key, a payload
    // goes as it is.
    for (frame, code) in [(&[0x81, 0x02, b'h', b'i'][..], 1002), (&[0x81, 0x81, 0, 0, 0, 0, 0xFF][..], 1007)] {
        let mut raw = RawSocket::connect(&app.base).await;
        raw.send_text(&json!({"type": "auth", "id": 1, "token": token}).to_string()).await;
        raw.send_bytes(frame).await;
        assert_eq!(raw.close_code_within(PROMPTLY).await, Some(code), "after {frame:?}");
    }
    // Frames past the socket's budget close it with 1008 (`chat::ws::frame_budget`: 340 in 20 s
    // with this app's send limit of 100 and 1/s): a flood of pings is answered up to the budget,
    // then closed; the close arrives though the client's frames past it were never read (the
    // server drains them before it ends the connection, which would otherwise be a reset).
    let budget = 2 * (100 + 20) + 100;
    let mut raw = RawSocket::connect(&app.base).await;
    raw.send_text(&json!({"type": "auth", "id": 1, "token": token}).to_string()).await;
    raw.send_bytes(&[0x89, 0x80, 0, 0, 0, 0].repeat(budget + 500)).await;
    assert_eq!(raw.pongs_then_close_within(PROMPTLY).await, (budget, Some(1008)));
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
    let (_env, mut a, b) = two_chat_processes().await;
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

/// Logout, a reused refresh token and account deletion each end a session: its sockets close
/// with 4002 at once, whatever they are doing; another session's socket stays open.
async fn a_session_that_ends_closes_its_sockets(backend: Backend) {
    let app = start(backend, 100).await;
    // Logout.
    let (_, ana_token, _) = guest_session(&app, "ana").await;
    let (_, ana_other, _) = guest_session(&app, "ana").await;
    let mut in_a_room = Chat::connect(&app.base, &ana_token).await;
    in_a_room.join("room:global").await;
    let mut in_no_room = Chat::connect(&app.base, &ana_token).await;
    let mut other_session = Chat::connect(&app.base, &ana_other).await;
    app.post("/v1/auth/logout", Some(&ana_token), json!({})).await.expect(204);
    assert_eq!(in_a_room.closed_within(PROMPTLY).await, Some(4002), "logout closes a socket in a channel");
    assert_eq!(in_no_room.closed_within(PROMPTLY).await, Some(4002), "logout closes a socket in no channel");
    assert_eq!(other_session.request(json!({"type": "join", "channel": "room:global"})).await["type"], "ack", "other sessions stay");

    // A refresh token used twice ends its session (the accounts service's reuse detection).
    let (_, bob_token, bob_refresh) = guest_session(&app, "bob").await;
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    app.post("/v1/auth/refresh", None, json!({"refresh_token": bob_refresh})).await.expect(200);
    app.post("/v1/auth/refresh", None, json!({"refresh_token": bob_refresh})).await.expect_error(401, "token_reused");
    assert_eq!(bob.closed_within(PROMPTLY).await, Some(4002), "refresh-token reuse closes the session's sockets");

    // Account deletion ends every session of the account.
    let (_, carol_token, _) = guest_session(&app, "carol").await;
    let (_, carol_other, _) = guest_session(&app, "carol").await;
    let mut carol = Chat::connect(&app.base, &carol_other).await;
    carol.join("room:global").await;
    app.call(reqwest::Method::DELETE, "/v1/accounts/me", Some(&carol_token), None).await.expect(204);
    assert_eq!(carol.closed_within(PROMPTLY).await, Some(4002), "deleting the account closes its other sessions' sockets");
    drop(other_session);
}

/// A global ban closes the player's sockets (4003); a channel ban and a removal from a group take
/// them out of that channel with a `removed` event, and nothing more of it reaches them.
async fn bans_and_group_removals_reach_open_sockets(backend: Backend) {
    let app = start(backend, 100).await;
    let (ana_id, ana_token) = guest(&app, "ana").await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let group = app.post("/v1/chat/groups", Some(&ana_token), json!({"name": "Raid"})).await.expect(201).body;
    let group_id = group["id"].as_str().expect("id").to_owned();
    let channel = group["channel"].as_str().expect("channel").to_owned();
    app.post(&format!("/v1/chat/groups/{group_id}/members"), Some(&ana_token), json!({"account_id": bob_id})).await.expect(200);
    let mut ana = Chat::connect(&app.base, &ana_token).await;
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    for joined in [&channel, "room:global", "room:lfg-eu"] {
        ana.join(joined).await;
        bob.join(joined).await;
    }

    // Removal from the group.
    app.call(reqwest::Method::DELETE, &format!("/v1/chat/groups/{group_id}/members/{bob_id}"), Some(&ana_token), None).await.expect(204);
    let removed = tokio::time::timeout(PROMPTLY, bob.next_of("removed")).await.expect("removed promptly");
    assert_eq!((removed["channel"].as_str(), removed["reason"].as_str()), (Some(channel.as_str()), Some("removed")));
    assert_eq!(ana.send(&channel, "after bob left").await["type"], "ack");
    assert_eq!(bob.send(&channel, "still here?").await["code"], "forbidden", "no longer joined");

    // A ban from one channel.
    app.post("/v1/chat/channels/room:lfg-eu/sanctions", Some(ADMIN_KEY), json!({"account_id": bob_id, "kind": "ban"})).await.expect(204);
    let removed = tokio::time::timeout(PROMPTLY, bob.next_of("removed")).await.expect("removed promptly");
    assert_eq!((removed["channel"].as_str(), removed["reason"].as_str()), (Some("room:lfg-eu"), Some("banned")));
    assert_eq!(ana.send("room:lfg-eu", "bob is gone").await["type"], "ack");
    assert_eq!(ana.send("room:global", "but here").await["type"], "ack");
    let next = bob.next_of("message").await;
    assert_eq!((next["channel"].as_str(), next["message"]["body"].as_str()), (Some("room:global"), Some("but here")), "{next}");

    // A ban everywhere.
    app.post("/v1/admin/chat/sanctions", Some(ADMIN_KEY), json!({"account_id": bob_id, "kind": "ban"})).await.expect(204);
    assert_eq!(bob.closed_within(PROMPTLY).await, Some(4003));
    // A mute takes nothing away from what a socket hears.
    app.post("/v1/admin/chat/sanctions", Some(ADMIN_KEY), json!({"account_id": ana_id, "kind": "mute", "minutes": 1})).await.expect(204);
    assert!(ana.closed_within(Duration::from_millis(500)).await.is_none(), "a mute closed the socket");
}

/// A socket lives as long as its access token: it closes with 4001 at expiry, unless the client
/// sent `auth` with a fresh token of the same account first.
async fn a_socket_closes_when_its_token_expires_unless_renewed(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("ACCESS_TOKEN_TTL_SECS", "4");
    })
    .await;
    let (_, token, refresh) = guest_session(&app, "ana").await;
    let (_, other_account, _) = guest_session(&app, "bob").await;
    let mut lapsing = Chat::connect(&app.base, &token).await;
    let mut renewed = Chat::connect(&app.base, &token).await;
    // Tokens expire on whole seconds: wait for the fresh one to outlive the first by some.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fresh = app.post("/v1/auth/refresh", None, json!({"refresh_token": refresh})).await.expect(200).body;
    let fresh = fresh["access_token"].as_str().expect("access token");
    let refused = renewed.request(json!({"type": "auth", "token": other_account})).await;
    assert_eq!(refused["code"], "forbidden", "another account's token cannot take a socket over: {refused}");
    let renewal = renewed.request(json!({"type": "auth", "token": fresh})).await;
    assert_eq!(renewal["type"], "ack", "{renewal}");
    assert_eq!(lapsing.closed_within(Duration::from_secs(6)).await, Some(4001), "the socket outlived its token");
    assert_eq!(renewed.join("room:global").await["type"], "ack", "the renewed socket is still open");
}

/// A frame header announcing 16 MiB closes the socket with 1009 at once, before and after
/// authentication, rather than having the server reserve the memory and wait for the bytes;
/// the server stays healthy for everyone else.
async fn oversized_frames_close_the_socket_before_they_are_buffered(backend: Backend) {
    // One account opens all the authenticated sockets at once.
    let app = TestApp::start_with(backend, |env| {
        env.set("CHAT_MAX_SOCKETS_PER_ACCOUNT", "25");
    })
    .await;
    let (_, token) = guest(&app, "ana").await;
    for authenticated in [false, true] {
        let mut sockets = Vec::new();
        for _ in 0..20 {
            let mut socket = RawSocket::connect(&app.base).await;
            if authenticated {
                socket.send_text(&json!({"type": "auth", "id": 1, "token": token}).to_string()).await;
            }
            socket.send_header_of(16 << 20).await;
            sockets.push(socket);
        }
        for socket in &mut sockets {
            assert_eq!(socket.close_code_within(PROMPTLY).await, Some(1009), "authenticated: {authenticated}");
        }
    }
    app.get("/health/live", None).await.expect(200);
    let mut ana = Chat::connect(&app.base, &token).await;
    assert_eq!(ana.join("room:global").await["type"], "ack");
    // The largest frame allowed still gets through to the usual checks.
    let big = ana.send("room:global", &"x".repeat(12 * 1024)).await;
    assert_eq!(big["code"], "invalid_request", "{big}");
}

/// One account holds `CHAT_MAX_SOCKETS_PER_ACCOUNT` sockets on an instance (the next closes with
/// 4029); one address holds `CHAT_MAX_SOCKETS_PER_IP`, authenticated or not (the next upgrade is
/// answered 429 `too_many_connections`). Closing a socket frees its place.
async fn sockets_are_capped_per_account_and_per_address(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("CHAT_MAX_SOCKETS_PER_ACCOUNT", "2").set("CHAT_MAX_SOCKETS_PER_IP", "4");
    })
    .await;
    let (_, ana_token) = guest(&app, "ana").await;
    let (_, bob_token) = guest(&app, "bob").await;
    let first = Chat::connect(&app.base, &ana_token).await;
    let _second = Chat::connect(&app.base, &ana_token).await;
    let url = format!("{}/v1/chat/ws", app.base.replacen("http://", "ws://", 1));
    let mut third = RawSocket::connect(&app.base).await;
    third.send_text(&json!({"type": "auth", "id": 1, "token": ana_token}).to_string()).await;
    assert_eq!(third.close_code_within(PROMPTLY).await, Some(4029), "a third socket of one account");
    drop(third);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Two of Ana's and one unauthenticated: four sockets from 127.0.0.1 with Bob's.
    let _bob = Chat::connect(&app.base, &bob_token).await;
    let _idle = RawSocket::connect(&app.base).await;
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).expect("JSON error");
            assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
        }
        other => panic!("a fifth socket from one address was not refused: {:?}", other.map(|_| ())),
    }
    assert_eq!(first.close().await, Some(1000));
    let mut again = None;
    for _ in 0..20 {
        // The server counts the closed socket out once its task has ended.
        if let Ok((socket, _)) = tokio_tungstenite::connect_async(&url).await {
            again = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "a closed socket did not free its place");
}

/// Joining a channel already joined is acknowledged without a presence read, and spends a join
/// token like any join, so repeating it runs into the join limit.
async fn rejoins_are_rate_limited_and_read_no_presence(backend: Backend) {
    // Burst 1: joins have a bucket of 5, refilled at 5 a second.
    let app = start(backend, 1).await;
    let (_, token) = guest(&app, "ana").await;
    let mut ana = Chat::connect(&app.base, &token).await;
    assert!(ana.join("room:global").await["presence"].is_object(), "a first join reports presence");
    let mut limited = None;
    for _ in 0..10 {
        let reply = ana.request(json!({"type": "join", "channel": "room:global"})).await;
        if reply["type"] == "error" {
            limited = Some(reply);
            break;
        }
        assert_eq!(reply["already_joined"], true, "{reply}");
        assert!(reply.get("presence").is_none(), "a re-join read the presence: {reply}");
    }
    let limited = limited.expect("re-joins were never limited");
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert!(ana.send("room:global", "still joined").await["type"] == "ack");
}

/// The server key outranks a group's owner, who outranks its moderators: a sanction is replaced
/// or lifted only by its issuer or a higher authority (403 `sanction_outranked`), and who issued
/// it is recorded.
async fn sanctions_respect_their_issuers_and_can_be_lifted(backend: Backend) {
    let app = start(backend, 100).await;
    let (_, ana_token) = guest(&app, "ana").await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let (carol_id, carol_token) = guest(&app, "carol").await;
    let (dave_id, dave_token) = guest(&app, "dave").await;
    let group = app.post("/v1/chat/groups", Some(&ana_token), json!({"name": "Guild"})).await.expect(201).body;
    let group_id = group["id"].as_str().expect("id").to_owned();
    let channel = group["channel"].as_str().expect("channel").to_owned();
    for (account, role) in [(&bob_id, "moderator"), (&dave_id, "moderator"), (&carol_id, "member")] {
        app.post(&format!("/v1/chat/groups/{group_id}/members"), Some(&ana_token), json!({"account_id": account, "role": role}))
            .await
            .expect(200);
    }
    let sanctions = format!("/v1/chat/channels/{channel}/sanctions");
    let ban = format!("{sanctions}/{carol_id}/ban");
    let mute = format!("{sanctions}/{carol_id}/mute");
    let delete = |path: String, token: String| {
        let app = &app;
        async move { app.call(reqwest::Method::DELETE, &path, Some(&token), None).await }
    };

    // The server bans Carol for good; neither a moderator nor the owner can shorten or lift it.
    app.post(&sanctions, Some(ADMIN_KEY), json!({"account_id": carol_id, "kind": "ban", "reason": "cheating"})).await.expect(204);
    for token in [&bob_token, &ana_token] {
        app.post(&sanctions, Some(token), json!({"account_id": carol_id, "kind": "ban", "minutes": 1}))
            .await
            .expect_error(403, "sanction_outranked");
        delete(ban.clone(), token.clone()).await.expect_error(403, "sanction_outranked");
    }
    let mine = app.get("/v1/chat/me/sanctions", Some(&carol_token)).await.expect(200).body;
    assert_eq!(mine["sanctions"].as_array().map(Vec::len), Some(1), "{mine}");
    let recorded = &mine["sanctions"][0];
    assert_eq!(
        (recorded["scope"].as_str(), recorded["kind"].as_str(), recorded["issued_by"].as_str(), recorded["in_force"].as_bool()),
        (Some(channel.as_str()), Some("ban"), Some("server"), Some(true))
    );
    assert!(recorded["until"].is_null() && recorded["reason"] == "cheating", "{recorded}");
    delete(ban.clone(), ADMIN_KEY.to_owned()).await.expect(204);
    delete(ban.clone(), ADMIN_KEY.to_owned()).await.expect_error(404, "not_found");
    let mut carol = Chat::connect(&app.base, &carol_token).await;
    carol.join(&channel).await;

    // A moderator's mute: another moderator may not touch it, the owner may, the issuer may.
    app.post(&sanctions, Some(&bob_token), json!({"account_id": carol_id, "kind": "mute", "minutes": 60})).await.expect(204);
    app.post(&sanctions, Some(&dave_token), json!({"account_id": carol_id, "kind": "mute", "minutes": 1}))
        .await
        .expect_error(403, "sanction_outranked");
    delete(mute.clone(), dave_token.clone()).await.expect_error(403, "sanction_outranked");
    assert_eq!(carol.send(&channel, "hello?").await["code"], "forbidden", "muted");
    app.post(&sanctions, Some(&bob_token), json!({"account_id": carol_id, "kind": "mute", "minutes": 5})).await.expect(204);
    delete(mute.clone(), bob_token.clone()).await.expect(204);
    assert_eq!(carol.send(&channel, "free again").await["type"], "ack");
    app.post(&sanctions, Some(&bob_token), json!({"account_id": carol_id, "kind": "mute", "minutes": 60})).await.expect(204);
    app.post(&sanctions, Some(&ana_token), json!({"account_id": carol_id, "kind": "mute", "minutes": 120})).await.expect(204);
    let mine = app.get("/v1/chat/me/sanctions", Some(&carol_token)).await.expect(200).body;
    assert_eq!(mine["sanctions"][0]["issued_by"], "owner", "the owner's replaced the moderator's: {mine}");
    delete(mute.clone(), bob_token.clone()).await.expect_error(403, "sanction_outranked");
    delete(mute.clone(), ana_token.clone()).await.expect(204);

    // A member cannot sanction or lift; bad input is a 400.
    app.post(&sanctions, Some(&carol_token), json!({"account_id": bob_id, "kind": "mute"})).await.expect_error(403, "forbidden");
    delete(format!("{sanctions}/{bob_id}/mute"), carol_token.clone()).await.expect_error(403, "forbidden");
    delete(format!("{sanctions}/{carol_id}/exile"), ana_token.clone()).await.expect_error(400, "invalid_request");
    delete(format!("/v1/admin/chat/sanctions/{carol_id}/ban?scope=nowhere"), ADMIN_KEY.to_owned())
        .await
        .expect_error(400, "invalid_request");
    delete(format!("/v1/admin/chat/sanctions/{carol_id}/ban"), bob_token.clone()).await.expect_error(401, "invalid_token");
}

/// A player sees their own sanctions, everywhere and per channel, page by page; nobody else's.
async fn players_page_through_their_own_sanctions(backend: Backend) {
    let app = start(backend, 100).await;
    let (carol_id, carol_token) = guest(&app, "carol").await;
    let (_, bob_token) = guest(&app, "bob").await;
    for (scope, kind) in [("global", "mute"), ("room:a", "ban"), ("room:b", "mute"), ("room:b", "ban"), ("room:c", "ban")] {
        app.post("/v1/admin/chat/sanctions", Some(ADMIN_KEY), json!({"account_id": carol_id, "kind": kind, "scope": scope, "minutes": 10}))
            .await
            .expect(204);
    }
    let all = app.pages("/v1/chat/me/sanctions?limit=2", &carol_token, "sanctions").await;
    let listed: Vec<(&str, &str)> = all.iter().map(|s| (s["scope"].as_str().expect("scope"), s["kind"].as_str().expect("kind"))).collect();
    assert_eq!(listed, [("global", "mute"), ("room:a", "ban"), ("room:b", "ban"), ("room:b", "mute"), ("room:c", "ban")]);
    assert!(all.iter().all(|s| s["in_force"] == true && s["until"].is_string()));
    let none = app.get("/v1/chat/me/sanctions", Some(&bob_token)).await.expect(200).body;
    assert_eq!(none["sanctions"].as_array().map(Vec::len), Some(0));
    assert!(none["next_cursor"].is_null());
    app.get("/v1/chat/me/sanctions?limit=0", Some(&carol_token)).await.expect_error(400, "invalid_request");
    app.get("/v1/chat/me/sanctions?cursor=x!", Some(&carol_token)).await.expect_error(400, "invalid_request");
    app.get("/v1/chat/me/sanctions", None).await.expect_error(401, "missing_token");
}

/// Across two processes: a logout on one closes the session's socket on the other; a ban and a
/// removal from a group made through one reach the sockets on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_end_sessions_and_apply_bans_everywhere() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (_env, a, b) = two_chat_processes().await;
    let (_, ana_token) = guest(&a, "ana").await;
    let (bob_id, bob_token) = guest(&b, "bob").await;
    let (_, carol_token) = guest(&a, "carol").await;
    let group = a.post("/v1/chat/groups", Some(&ana_token), json!({"name": "Guild"})).await.expect(201).body;
    let group_id = group["id"].as_str().expect("id").to_owned();
    let channel = group["channel"].as_str().expect("channel").to_owned();
    a.post(&format!("/v1/chat/groups/{group_id}/members"), Some(&ana_token), json!({"account_id": bob_id})).await.expect(200);

    // Bob's socket is on B; everything is done through A.
    let mut bob = Chat::connect(&b.base, &bob_token).await;
    bob.join(&channel).await;
    bob.join("room:global").await;
    a.call(reqwest::Method::DELETE, &format!("/v1/chat/groups/{group_id}/members/{bob_id}"), Some(&ana_token), None).await.expect(204);
    let removed = tokio::time::timeout(PROMPTLY, bob.next_of("removed")).await.expect("removed promptly");
    assert_eq!(removed["channel"], channel.as_str());
    a.post("/v1/admin/chat/sanctions", Some(ADMIN_KEY), json!({"account_id": bob_id, "kind": "ban"})).await.expect(204);
    assert_eq!(bob.closed_within(PROMPTLY).await, Some(4003));

    // Carol's socket is on B too; she logs out through A.
    let mut carol = Chat::connect(&b.base, &carol_token).await;
    carol.join("room:global").await;
    a.post("/v1/auth/logout", Some(&carol_token), json!({})).await.expect(204);
    assert_eq!(carol.closed_within(PROMPTLY).await, Some(4002));
}

/// The open case of `message_id` in the reports queue once it holds `count` reports (the
/// consumer files them moments after the report).
async fn filed_case(app: &Api, message_id: &str, count: i64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let cases = app.pages("/v1/admin/chat/reports?status=open&limit=100", ADMIN_KEY, "reports").await;
        let case = cases.into_iter().find(|c| c["message"]["id"] == message_id);
        if let Some(case) = case.filter(|c| c["report_count"] == count) {
            return case;
        }
        assert!(std::time::Instant::now() < deadline, "no case of {message_id} with {count} reports was filed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reports of one message become one case with its reporters, filed once however often the event
/// is delivered; an operator deletes the message (connected members are told, history loses it)
/// and resolves the case.
async fn reports_are_filed_and_resolved_and_messages_deleted(backend: Backend) {
    let app = start(backend, 100).await;
    let (ana_id, ana_token) = guest(&app, "ana").await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let (carol_id, carol_token) = guest(&app, "carol").await;
    let channel = "room:tavern";
    let (mut ana, mut bob) = Chat::pair_in(&app.base, channel, &ana_token, &bob_token).await;
    let sent = bob.send(channel, "something rude").await;
    let rude = sent["message"]["id"].as_str().expect("id").to_owned();
    let ruder = bob.send(channel, "something ruder").await["message"]["id"].as_str().expect("id").to_owned();
    let report = |id: &str| format!("/v1/chat/messages/{id}/report");

    app.post(&report(&rude), Some(&ana_token), json!({"reason": "  rude  "})).await.expect(202);
    app.post(&report(&rude), Some(&ana_token), json!({"reason": "still rude"})).await.expect_error(409, "already_reported");
    app.post(&report(&rude), Some(&carol_token), json!({"reason": "insulting"})).await.expect(202);
    app.post(&report(&ruder), Some(&ana_token), json!({"reason": "worse"})).await.expect(202);

    // One case per message, with the message as it was reported and both reporters.
    let case = filed_case(&app, &rude, 2).await;
    filed_case(&app, &ruder, 1).await;
    assert_eq!(case["status"], "open");
    assert_eq!(case["message"]["body"], "something rude");
    assert_eq!(case["message"]["channel"], channel);
    assert_eq!(case["message"]["sender_id"], bob_id.as_str());
    assert_eq!(case["message"]["sender_name"], sent["message"]["sender_name"]);
    assert_eq!(case["message"]["sent_at"], sent["message"]["sent_at"]);
    assert!(case["message"]["sent_at"].is_string() && case["message_deleted"] == false, "{case}");
    let reporters: Vec<(&str, &str)> = case["reporters"]
        .as_array()
        .expect("reporters")
        .iter()
        .map(|r| (r["account_id"].as_str().expect("id"), r["reason"].as_str().expect("reason")))
        .collect();
    assert_eq!(reporters, [(carol_id.as_str(), "insulting"), (ana_id.as_str(), "rude")], "latest first");
    let case_id = case["id"].as_str().expect("case id").to_owned();

    // Newest first, or most reported first, a page at a time.
    let ids = |cases: &[Value]| cases.iter().map(|c| c["message"]["id"].as_str().expect("id").to_owned()).collect::<Vec<_>>();
    let newest = app.pages("/v1/admin/chat/reports?limit=1", ADMIN_KEY, "reports").await;
    assert_eq!(ids(&newest), [ruder.clone(), rude.clone()]);
    let most = app.pages("/v1/admin/chat/reports?order=most_reported&limit=1", ADMIN_KEY, "reports").await;
    assert_eq!(ids(&most), [rude.clone(), ruder.clone()]);
    let reporters = app.pages(&format!("/v1/admin/chat/reports/{case_id}/reporters?limit=1"), ADMIN_KEY, "reporters").await;
    assert_eq!(reporters.len(), 2);

    // The event delivered again (its consumption forgotten and the outbox row due again) files
    // nothing twice.
    let db = app.database().await;
    let event_id: String = sqlx::query_scalar("SELECT id FROM outbox WHERE event_type = 'chat.message_reported' ORDER BY id LIMIT 1")
        .fetch_one(db.pool())
        .await
        .expect("the first report's event");
    deliver_again(&db, "chat", &event_id).await;
    let again = app.get(&format!("/v1/admin/chat/reports/{case_id}"), Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!(again["report_count"], 2, "{again}");
    assert_eq!(again["reporters"].as_array().map(Vec::len), Some(2));

    // The operator deletes the message: Bob and Ana, connected, are told; history loses it.
    let delete = |path: String| {
        let app = &app;
        async move { app.call(reqwest::Method::DELETE, &path, Some(ADMIN_KEY), None).await }
    };
    delete(format!("/v1/admin/chat/messages/{rude}")).await.expect(204);
    for socket in [&mut ana, &mut bob] {
        let deleted = socket.next_of("message_deleted").await;
        assert_eq!((deleted["channel"].as_str(), deleted["message_id"].as_str()), (Some(channel), Some(rude.as_str())), "{deleted}");
    }
    let history = app.get(&format!("/v1/chat/channels/{channel}/messages"), Some(&ana_token)).await.expect(200).body;
    let left: Vec<&str> = history["messages"].as_array().expect("messages").iter().map(|m| m["id"].as_str().expect("id")).collect();
    assert_eq!(left, [ruder.as_str()]);
    delete(format!("/v1/admin/chat/messages/{rude}")).await.expect_error(404, "not_found");
    delete(format!("/v1/admin/chat/messages/{rude}")).await.expect_error(404, "not_found");
    app.call(reqwest::Method::DELETE, &format!("/v1/admin/chat/messages/{ruder}"), Some(&ana_token), None)
        .await
        .expect_error(401, "invalid_token");
    app.post(&report(&rude), Some(&bob_token), json!({"reason": "gone"})).await.expect_error(404, "not_found");

    // The case keeps its copy, shows the message gone, and is resolved once.
    let resolve = format!("/v1/admin/chat/reports/{case_id}/resolve");
    app.post(&resolve, Some(ADMIN_KEY), json!({"action": "banished"})).await.expect_error(400, "invalid_request");
    app.post(&resolve, Some(ADMIN_KEY), json!({"action": "dismissed", "extra": 1})).await.expect_error(400, "invalid_request");
    let resolved = app.post(&resolve, Some(ADMIN_KEY), json!({"action": "message_deleted", "note": "insult"})).await.expect(200).body;
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["message_deleted"], true);
    assert_eq!(resolved["message"]["body"], "something rude");
    assert_eq!(
        (
            resolved["resolution"]["action"].as_str(),
            resolved["resolution"]["note"].as_str(),
            resolved["resolution"]["resolved_by"].as_str()
        ),
        (Some("message_deleted"), Some("insult"), Some("server"))
    );
    app.post(&resolve, Some(ADMIN_KEY), json!({"action": "dismissed"})).await.expect_error(409, "already_resolved");
    app.post(&format!("/v1/admin/chat/reports/{}/resolve", uuid::Uuid::now_v7()), Some(ADMIN_KEY), json!({"action": "dismissed"}))
        .await
        .expect_error(404, "not_found");
    let open = app.pages("/v1/admin/chat/reports?limit=10", ADMIN_KEY, "reports").await;
    assert_eq!(ids(&open), [ruder.as_str()]);
    let closed = app.pages("/v1/admin/chat/reports?status=resolved&limit=10", ADMIN_KEY, "reports").await;
    assert_eq!(ids(&closed), [rude.as_str()]);

    // A report after the resolution opens a new case.
    let (_, dave_token) = guest(&app, "dave").await;
    app.post(&report(&ruder), Some(&dave_token), json!({"reason": "me too"})).await.expect(202);
    filed_case(&app, &ruder, 2).await;

    // Bad queries are 400s; players are not operators.
    for query in ["status=closed", "order=oldest", "limit=0", "limit=101", "cursor=x!", "order=most_reported&cursor=bg"] {
        app.get(&format!("/v1/admin/chat/reports?{query}"), Some(ADMIN_KEY)).await.expect_error(400, "invalid_request");
    }
    app.get("/v1/admin/chat/reports", Some(&ana_token)).await.expect_error(401, "invalid_token");
    app.get("/v1/admin/chat/reports/not-a-case", Some(ADMIN_KEY)).await.expect_error(404, "not_found");
}

/// A player reports a message once, and files a bounded number of reports.
async fn reports_are_rate_limited_and_once_per_message(backend: Backend) {
    let app = start(backend, 100).await;
    let (_, ana_token) = guest(&app, "ana").await;
    let (_, bob_token) = guest(&app, "bob").await;
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    bob.join("room:global").await;
    let mut ids = Vec::new();
    for i in 0..=chat::api::REPORTS_PER_WINDOW {
        ids.push(bob.send("room:global", &format!("spam {i}")).await["message"]["id"].as_str().expect("id").to_owned());
    }
    let (last, allowed) = ids.split_last().expect("messages");
    for id in allowed {
        app.post(&format!("/v1/chat/messages/{id}/report"), Some(&ana_token), json!({"reason": "spam"})).await.expect(202);
    }
    let refused = app.post(&format!("/v1/chat/messages/{last}/report"), Some(&ana_token), json!({"reason": "spam"})).await;
    let refused = refused.expect_error(429, "rate_limited");
    assert!(refused.headers.get("retry-after").is_some());
    // Bob's own limit is his: he may still report.
    let (_, carol_token) = guest(&app, "carol").await;
    let mut carol = Chat::connect(&app.base, &carol_token).await;
    carol.join("room:global").await;
    let hers = carol.send("room:global", "hello").await["message"]["id"].as_str().expect("id").to_owned();
    app.post(&format!("/v1/chat/messages/{hers}/report"), Some(&bob_token), json!({"reason": "spam"})).await.expect(202);
    app.post(&format!("/v1/chat/messages/{hers}/report"), Some(&bob_token), json!({"reason": "spam"}))
        .await
        .expect_error(409, "already_reported");
    app.post("/v1/chat/messages/not-an-id/report", Some(&bob_token), json!({"reason": "x"})).await.expect_error(404, "not_found");
}

/// Operators list every sanction, filtered and page by page, see who issued each, and lift them.
async fn operators_list_filter_and_lift_sanctions(backend: Backend) {
    let app = start(backend, 100).await;
    let (ana_id, ana_token) = guest(&app, "ana").await;
    let (bob_id, _) = guest(&app, "bob").await;
    let (carol_id, carol_token) = guest(&app, "carol").await;
    let group = app.post("/v1/chat/groups", Some(&ana_token), json!({"name": "Guild"})).await.expect(201).body;
    let group_channel = group["channel"].as_str().expect("channel").to_owned();
    app.post(&format!("/v1/chat/groups/{}/members", group["id"].as_str().expect("id")), Some(&ana_token), json!({"account_id": carol_id}))
        .await
        .expect(200);
    let admin = |body: Value| {
        let app = &app;
        async move { app.post("/v1/admin/chat/sanctions", Some(ADMIN_KEY), body).await.expect(204) }
    };
    admin(json!({"account_id": bob_id, "kind": "mute", "scope": "room:global", "minutes": 10})).await;
    admin(json!({"account_id": bob_id, "kind": "ban", "reason": "cheating"})).await;
    admin(json!({"account_id": carol_id, "kind": "ban", "scope": "room:lfg"})).await;
    // The group's owner mutes Carol there.
    app.post(&format!("/v1/chat/channels/{group_channel}/sanctions"), Some(&ana_token), json!({"account_id": carol_id, "kind": "mute"}))
        .await
        .expect(204);

    let all = app.pages("/v1/admin/chat/sanctions?limit=1", ADMIN_KEY, "sanctions").await;
    assert_eq!(all.len(), 4, "{all:?}");
    let owners = all.iter().find(|s| s["scope"] == group_channel.as_str()).expect("the owner's mute");
    assert_eq!((owners["issued_by"].as_str(), owners["issuer_id"].as_str()), (Some("owner"), Some(ana_id.as_str())));
    assert_eq!(
        (owners["account_id"].as_str(), owners["kind"].as_str(), owners["in_force"].as_bool()),
        (Some(carol_id.as_str()), Some("mute"), Some(true))
    );
    let listed = |query: &str| {
        let app = &app;
        let path = format!("/v1/admin/chat/sanctions?limit=100&{query}");
        async move {
            let page = app.get(&path, Some(ADMIN_KEY)).await.expect(200).body;
            page["sanctions"]
                .as_array()
                .expect("sanctions")
                .iter()
                .map(|s| {
                    (
                        s["account_id"].as_str().expect("id").to_owned(),
                        s["scope"].as_str().expect("scope").to_owned(),
                        s["kind"].as_str().expect("kind").to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let bobs = listed(&format!("account_id={bob_id}")).await;
    assert_eq!(bobs.len(), 2);
    assert_eq!(listed("kind=ban&scope=global").await, [(bob_id.clone(), "global".to_owned(), "ban".to_owned())]);
    assert_eq!(listed("scope=room:lfg").await, [(carol_id.clone(), "room:lfg".to_owned(), "ban".to_owned())]);
    assert_eq!(listed("state=in_force").await.len(), 4);
    assert!(listed("state=expired").await.is_empty());
    for query in ["kind=exile", "scope=nowhere", "state=old", "account_id=no%20one", "limit=0", "cursor=x!"] {
        app.get(&format!("/v1/admin/chat/sanctions?{query}"), Some(ADMIN_KEY)).await.expect_error(400, "invalid_request");
    }
    app.get("/v1/admin/chat/sanctions", Some(&carol_token)).await.expect_error(401, "invalid_token");

    // The server key lifts the owner's mute (it outranks every issuer) and its own ban.
    let lift = |path: String| {
        let app = &app;
        async move { app.call(reqwest::Method::DELETE, &path, Some(ADMIN_KEY), None).await }
    };
    lift(format!("/v1/admin/chat/sanctions/{carol_id}/mute?scope={group_channel}")).await.expect(204);
    lift(format!("/v1/admin/chat/sanctions/{bob_id}/ban")).await.expect(204);
    lift(format!("/v1/admin/chat/sanctions/{bob_id}/ban")).await.expect_error(404, "not_found");
    assert_eq!(listed("").await.len(), 2);
    assert_eq!(listed(&format!("account_id={bob_id}")).await, [(bob_id.clone(), "room:global".to_owned(), "mute".to_owned())]);
}

/// Operators read any channel's history, private ones included, and delete everything one
/// sender wrote in a channel.
async fn operators_read_any_channel_and_purge_a_sender(backend: Backend) {
    let app = start(backend, 100).await;
    let (ana_id, ana_token) = guest(&app, "ana").await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let direct = dm(&ana_id, &bob_id);
    let mut ana = Chat::connect(&app.base, &ana_token).await;
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    for channel in [direct.as_str(), "room:global"] {
        ana.join(channel).await;
        bob.join(channel).await;
    }
    for i in 0..3 {
        assert_eq!(bob.send(&direct, &format!("psst {i}")).await["type"], "ack");
        assert_eq!(bob.send("room:global", &format!("spam {i}")).await["type"], "ack");
    }
    assert_eq!(ana.send("room:global", "hello").await["type"], "ack");

    let page = app.get(&format!("/v1/admin/chat/channels/{direct}/messages?limit=2"), Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["messages"][0]["body"], "psst 2");
    let before = page["next_before"].as_str().expect("next_before");
    let older =
        app.get(&format!("/v1/admin/chat/channels/{direct}/messages?limit=2&before={before}"), Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!(older["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(older["messages"][0]["body"], "psst 0");
    app.get("/v1/admin/chat/channels/room:NOPE/messages", Some(ADMIN_KEY)).await.expect_error(400, "invalid_request");
    app.get(&format!("/v1/admin/chat/channels/{direct}/messages"), Some(&ana_token)).await.expect_error(401, "invalid_token");

    // Bob's spam in the room goes; his direct messages and Ana's stay.
    let purge = format!("/v1/admin/chat/channels/room:global/senders/{bob_id}/messages");
    let purged = app.call(reqwest::Method::DELETE, &purge, Some(ADMIN_KEY), None).await.expect(200).body;
    assert_eq!(purged["deleted"], 3);
    let deleted = ana.next_of("message_deleted").await;
    assert_eq!((deleted["channel"].as_str(), deleted["sender_id"].as_str()), (Some("room:global"), Some(bob_id.as_str())), "{deleted}");
    let room = app.get("/v1/admin/chat/channels/room:global/messages", Some(ADMIN_KEY)).await.expect(200).body;
    let bodies: Vec<&str> = room["messages"].as_array().expect("messages").iter().map(|m| m["body"].as_str().expect("body")).collect();
    assert_eq!(bodies, ["hello"]);
    let private = app.get(&format!("/v1/admin/chat/channels/{direct}/messages"), Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!(private["messages"].as_array().map(Vec::len), Some(3));
    let again = app.call(reqwest::Method::DELETE, &purge, Some(ADMIN_KEY), None).await.expect(200).body;
    assert_eq!(again["deleted"], 0);
    app.call(reqwest::Method::DELETE, "/v1/admin/chat/channels/room:global/senders/no%20one/messages", Some(ADMIN_KEY), None)
        .await
        .expect_error(400, "invalid_request");
}

/// An operator's chat action and its audit entry are written together: while the audit log
/// refuses chat's entries, every change is refused and left undone, and neither a case nor a
/// conversation is read; once it takes them again, the same actions go through, each recorded.
async fn an_operators_chat_action_stands_only_with_its_audit_entry(backend: Backend) {
    let app = start(backend, 100).await;
    let (ana_id, ana_token) = guest(&app, "ana").await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let channel = "room:tavern";
    let (_ana, mut bob) = Chat::pair_in(&app.base, channel, &ana_token, &bob_token).await;
    let rude = bob.send(channel, "something rude").await["message"]["id"].as_str().expect("id").to_owned();
    let direct = dm(&ana_id, &bob_id);
    bob.join(&direct).await;
    assert_eq!(bob.send(&direct, "psst").await["type"], "ack");
    app.post(&format!("/v1/chat/messages/{rude}/report"), Some(&ana_token), json!({"reason": "rude"})).await.expect(202);
    let case_id = filed_case(&app, &rude, 1).await["id"].as_str().expect("case id").to_owned();
    let sanction = json!({"account_id": bob_id, "kind": "mute", "minutes": 5});
    app.post("/v1/admin/chat/sanctions", Some(ADMIN_KEY), json!({"account_id": bob_id, "kind": "ban", "scope": "room:cellar"}))
        .await
        .expect(204);

    let db = app.database().await;
    refuse_rows(&db, "refuse_chat", ("admin_audit", "action"), "chat.").await;
    let delete = |path: String| {
        let app = &app;
        async move { app.call(reqwest::Method::DELETE, &path, Some(ADMIN_KEY), None).await }
    };
    let resolve = format!("/v1/admin/chat/reports/{case_id}/resolve");
    let purge = format!("/v1/admin/chat/channels/{channel}/senders/{bob_id}/messages");
    let lift = format!("/v1/admin/chat/sanctions/{bob_id}/ban?scope=room:cellar");
    app.post("/v1/admin/chat/sanctions", Some(ADMIN_KEY), sanction.clone()).await.expect_error(500, "internal");
    delete(lift.clone()).await.expect_error(500, "internal");
    delete(format!("/v1/admin/chat/messages/{rude}")).await.expect_error(500, "internal");
    delete(purge.clone()).await.expect_error(500, "internal");
    app.post(&resolve, Some(ADMIN_KEY), json!({"action": "dismissed"})).await.expect_error(500, "internal");
    app.get(&format!("/v1/admin/chat/reports/{case_id}"), Some(ADMIN_KEY)).await.expect_error(500, "internal");
    app.get(&format!("/v1/admin/chat/reports/{case_id}/reporters"), Some(ADMIN_KEY)).await.expect_error(500, "internal");
    app.get(&format!("/v1/admin/chat/channels/{direct}/messages"), Some(ADMIN_KEY)).await.expect_error(500, "internal");

    // Nothing changed: Bob is banned from the cellar and not muted, his message is there, the
    // case is open.
    let sanctions = app.get(&format!("/v1/admin/chat/sanctions?account_id={bob_id}"), Some(ADMIN_KEY)).await.expect(200).body;
    let kinds: Vec<&str> =
        sanctions["sanctions"].as_array().expect("sanctions").iter().map(|s| s["kind"].as_str().expect("kind")).collect();
    assert_eq!(kinds, ["ban"], "{sanctions}");
    let history = app.get(&format!("/v1/chat/channels/{channel}/messages"), Some(&ana_token)).await.expect(200).body;
    assert_eq!(history["messages"][0]["id"], rude.as_str(), "{history}");
    filed_case(&app, &rude, 1).await;
    let entries = crate::common::audit(&app, "action=chat.sanction").await;
    assert_eq!(entries.len(), 1, "only the ban before the refusal: {entries:?}");

    // The audit log takes chat's entries again: each action goes through, with its entry.
    let allow = match db.dialect() {
        Dialect::Postgres => "ALTER TABLE admin_audit DROP CONSTRAINT refuse_chat",
        Dialect::Sqlite => "DROP TRIGGER refuse_chat",
    };
    sqlx::query(allow).execute(db.pool()).await.expect("the rule dropped");
    app.post("/v1/admin/chat/sanctions", Some(ADMIN_KEY), sanction).await.expect(204);
    delete(lift).await.expect(204);
    app.get(&format!("/v1/admin/chat/channels/{direct}/messages"), Some(ADMIN_KEY)).await.expect(200);
    app.get(&format!("/v1/admin/chat/reports/{case_id}"), Some(ADMIN_KEY)).await.expect(200);
    delete(format!("/v1/admin/chat/messages/{rude}")).await.expect(204);
    assert_eq!(delete(purge).await.expect(200).body["deleted"], 0);
    app.post(&resolve, Some(ADMIN_KEY), json!({"action": "message_deleted"})).await.expect(200);
    let mut actions: Vec<String> = crate::common::audit(&app, "")
        .await
        .iter()
        .filter_map(|e| e["action"].as_str().filter(|a| a.starts_with("chat.")).map(str::to_owned))
        .collect();
    actions.reverse();
    assert_eq!(
        actions,
        [
            "chat.sanction",
            "chat.sanction",
            "chat.lift_sanction",
            "chat.read_history",
            "chat.read_report",
            "chat.delete_message",
            "chat.delete_sender_messages",
            "chat.resolve_report",
        ]
    );
}

/// A message deleted through one process disappears from the sockets on the other too, through
/// the fan-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_tell_every_socket_of_a_deleted_message() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (_env, a, b) = two_chat_processes().await;
    let (_, ana_token) = guest(&a, "ana").await;
    let (_, bob_token) = guest(&b, "bob").await;
    let mut ana = Chat::connect(&a.base, &ana_token).await;
    let mut bob = Chat::connect(&b.base, &bob_token).await;
    ana.join("room:global").await;
    bob.join("room:global").await;
    let id = bob.send("room:global", "delete me").await["message"]["id"].as_str().expect("id").to_owned();
    assert_eq!(ana.next_of("message").await["message"]["id"], id.as_str());
    a.call(reqwest::Method::DELETE, &format!("/v1/admin/chat/messages/{id}"), Some(ADMIN_KEY), None).await.expect(204);
    for socket in [&mut ana, &mut bob] {
        let deleted = tokio::time::timeout(PROMPTLY, socket.next_of("message_deleted")).await.expect("told promptly");
        assert_eq!(deleted["message_id"], id.as_str());
    }
    let history = b.get("/v1/chat/channels/room:global/messages", Some(&bob_token)).await.expect(200).body;
    assert!(history["messages"].as_array().expect("messages").is_empty());
}

/// A mute or its lift through one process holds at once on the other, whose sends had read the
/// player's sanctions already (`chat::known_sanctions`, kept right by notices: without one, the
/// other process would take up to 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_agree_on_a_mute_at_once() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (_env, a, b) = two_chat_processes().await;
    let (ana_id, ana_token) = guest(&a, "ana").await;
    let mut ana = Chat::connect(&a.base, &ana_token).await;
    ana.join("room:global").await;
    assert_eq!(ana.send("room:global", "hello").await["type"], "ack");
    let mute = json!({"account_id": ana_id, "kind": "mute", "scope": "room:global"});
    b.post("/v1/admin/chat/sanctions", Some(ADMIN_KEY), mute).await.expect(204);
    let refused = tokio::time::timeout(PROMPTLY, async {
        loop {
            let reply = ana.send("room:global", "still here?").await;
            if reply["type"] == "error" {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("refused promptly");
    assert_eq!(refused["code"], "forbidden", "{refused}");
    b.call(reqwest::Method::DELETE, &format!("/v1/admin/chat/sanctions/{ana_id}/mute?scope=room:global"), Some(ADMIN_KEY), None)
        .await
        .expect(204);
    tokio::time::timeout(PROMPTLY, async {
        while ana.send("room:global", "back").await["type"] != "ack" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("taken promptly");
}

/// Moderating with a server key takes its `chat` scope (the admin routes and a channel's, where
/// the key has the server's authority); the account view's chat part takes `accounts`.
async fn server_keys_moderate_with_the_chat_scope_and_operators_read_a_players_sanctions(backend: Backend) {
    let app = start(backend, 100).await;
    let (carol, _) = guest(&app, "carol").await;
    let (_, moderator) = server_key(&app, "chat moderator", &["chat"]).await;
    let (_, support) = server_key(&app, "support", &["accounts"]).await;
    let global = json!({"account_id": carol, "kind": "mute", "minutes": 10});
    app.post("/v1/admin/chat/sanctions", Some(&support), global.clone()).await.expect_error(403, "insufficient_scope");
    app.post("/v1/admin/chat/sanctions", Some(&moderator), global).await.expect(204);
    let in_room = json!({"account_id": carol, "kind": "ban"});
    app.post("/v1/chat/channels/room:lobby/sanctions", Some(&support), in_room.clone()).await.expect_error(403, "insufficient_scope");
    app.post("/v1/chat/channels/room:lobby/sanctions", Some(&moderator), in_room).await.expect(204);
    app.call(reqwest::Method::DELETE, &format!("/v1/admin/chat/sanctions/{carol}/mute"), Some(&support), None)
        .await
        .expect_error(403, "insufficient_scope");

    let path = format!("/v1/admin/accounts/{carol}/sanctions");
    app.get(&path, Some(&moderator)).await.expect_error(403, "insufficient_scope");
    let listed = app.pages(&format!("{path}?limit=1"), &support, "sanctions").await;
    let shown: Vec<(&str, &str)> =
        listed.iter().map(|s| (s["scope"].as_str().expect("scope"), s["kind"].as_str().expect("kind"))).collect();
    assert_eq!(shown, [("global", "mute"), ("room:lobby", "ban")]);
    assert!(listed.iter().all(|s| s["issued_by"] == "server" && s["in_force"] == true));
    app.call(reqwest::Method::DELETE, &format!("/v1/admin/chat/sanctions/{carol}/mute"), Some(&moderator), None).await.expect(204);

    // The audit log names the key behind each chat action (and none for the refused ones).
    let entries = crate::common::audit(&app, &format!("target=account:{carol}")).await;
    let done: Vec<(&str, &str)> =
        entries.iter().map(|e| (e["action"].as_str().expect("action"), e["key_name"].as_str().expect("key"))).collect();
    assert_eq!(
        done,
        [("chat.lift_sanction", "chat moderator"), ("chat.sanction", "chat moderator"), ("chat.sanction", "chat moderator")],
        "{entries:?}"
    );
    assert_eq!((entries[1]["detail"]["scope"].as_str(), entries[2]["detail"]["scope"].as_str()), (Some("room:lobby"), Some("global")));
}

/// The next presence frame about `channel`.
async fn next_presence_in(chat: &mut Chat, channel: &str) -> Value {
    loop {
        let event = chat.next_of("presence").await;
        if event["channel"] == channel {
            return event;
        }
    }
}

/// The account ids a presence list names.
fn present(list: &Value) -> Vec<&str> {
    list.as_array().expect("players").iter().map(|p| p["account_id"].as_str().expect("account_id")).collect()
}

async fn blocked_players_cannot_dm_or_see_each_other(backend: Backend) {
    let app = start(backend, 100).await;
    let (ana_id, ana_token) = guest(&app, "ana").await;
    let (bob_id, bob_token) = guest(&app, "bob").await;
    let (cy_id, cy_token) = guest(&app, "cy").await;
    let direct = dm(&ana_id, &bob_id);
    let (mut ana, mut bob) = Chat::pair_in(&app.base, &direct, &ana_token, &bob_token).await;
    ana.join("room:global").await;

    // Ana blocks Bob. Chat learns it through the event (SQS on the real backends): the DM
    // refuses sends, both ways, with a stable code.
    app.post(&format!("/v1/blocks/{bob_id}"), Some(&ana_token), json!({})).await.expect(201);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = bob.send(&direct, "still there?").await;
        if reply["type"] == "error" {
            assert_eq!(reply["code"], "dm_blocked", "{reply}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the block did not reach chat");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ana.send(&direct, "hello?").await["code"], "dm_blocked");
    // An unblock older than the block, delivered after it (SQS keeps no order), changes nothing.
    let stale = platform::events::BlockRemoved {
        blocker_id: ana_id.clone(),
        blocked_id: bob_id.clone(),
        unblocked_at: platform::time::rfc3339(platform::db::now_millis() - 60_000),
    };
    deliver_late(&app, "chat", &stale).await;
    assert_eq!(ana.send(&direct, "hello?").await["code"], "dm_blocked", "a stale unblock lifted the block");
    let mut bob_again = Chat::connect(&app.base, &bob_token).await;
    let refused = bob_again.request(json!({"type": "join", "channel": direct})).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("dm_blocked")), "{refused}");

    // Presence: Bob's new socket joins the room; his answer does not list Ana, and Ana is not
    // told he joined (the next she hears of is Cy).
    let joined = bob_again.join("room:global").await;
    assert_eq!(present(&joined["presence"]["players"]), [bob_id.as_str()], "{joined}");
    let mut cy = Chat::connect(&app.base, &cy_token).await;
    let joined = cy.join("room:global").await;
    assert_eq!(joined["presence"]["count"], 3, "{joined}");
    let heard = next_presence_in(&mut ana, "room:global").await;
    assert_eq!(heard["joined"]["account_id"], cy_id.as_str(), "{heard}");
    let listed = app.get("/v1/chat/channels/room:global/presence", Some(&ana_token)).await.expect(200).body;
    assert!(!present(&listed["players"]).contains(&bob_id.as_str()), "{listed}");
    assert_eq!(listed["count"], 2);
    let listed = app.get("/v1/chat/channels/room:global/presence", Some(&cy_token)).await.expect(200).body;
    assert_eq!(listed["count"], 3, "Cy sees both");
    // Leaving: Cy hears Bob leave, Ana does not.
    bob_again.request(json!({"type": "leave", "channel": "room:global"})).await;
    assert_eq!(cy.next_of("presence").await["left"]["account_id"], bob_id.as_str());
    cy.request(json!({"type": "leave", "channel": "room:global"})).await;
    let heard = next_presence_in(&mut ana, "room:global").await;
    assert_eq!(heard["left"]["account_id"], cy_id.as_str(), "{heard}");

    // Unblocked, they can write again.
    app.delete(&format!("/v1/blocks/{bob_id}"), Some(&ana_token)).await.expect(204);
    loop {
        let reply = bob.send(&direct, "friends again?").await;
        if reply["type"] == "ack" {
            break;
        }
        assert_eq!(reply["code"], "dm_blocked", "{reply}");
        assert!(std::time::Instant::now() < deadline + Duration::from_secs(20), "the unblock did not reach chat");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Erasure forgets the player's blocks in chat too.
    app.post(&format!("/v1/blocks/{ana_id}"), Some(&bob_token), json!({})).await.expect(201);
    drop(bob);
    drop(bob_again);
    app.call(reqwest::Method::DELETE, "/v1/accounts/me", Some(&bob_token), None).await.expect(204);
    let db = app.database().await;
    eventually(Duration::from_secs(20), "Bob's blocks forgotten in chat", || {
        let (db, bob_id) = (&db, &bob_id);
        async move {
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chat_blocks WHERE blocker_id = $1 OR blocked_id = $1")
                .bind(bob_id)
                .fetch_one(db.pool())
                .await
                .expect("count");
            left == 0
        }
    })
    .await;
}

/// Messages are stored in group commits (`chat::writer`): a batch is one statement, so when it
/// fails every message in it fails, each sender gets `unavailable` saying it was not stored, and
/// none of them is acknowledged, delivered or in the history; the batch before it and the sends
/// after it are unaffected. The batch is made by holding the table's write lock while the
/// senders send (they queue behind the first message's commit), and made to fail by a rule the
/// test adds that refuses one of its bodies.
async fn a_failed_group_commit_stores_acknowledges_and_delivers_none_of_its_messages(backend: Backend) {
    let app = TestApp::start_with_metrics(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY).set("CHAT_SEND_BURST", "100").set("CHAT_SEND_PER_SECOND", "1");
    })
    .await;
    let metrics = app.metrics_base.clone().expect("a metrics listener");
    let channel = "room:batch";
    let (_, listener_token) = guest(&app, "batch-listener").await;
    let mut listener = Chat::connect(&app.base, &listener_token).await;
    listener.join(channel).await;
    let mut senders = Vec::new();
    for name in ["batch-ana", "batch-bob", "batch-cy", "batch-dee"] {
        let (_, token) = guest(&app, name).await;
        let mut chat = Chat::connect(&app.base, &token).await;
        chat.join(channel).await;
        senders.push(chat);
    }

    let db = app.database().await;
    poison_bodies(&db).await;
    let lock = lock_messages(&db).await;
    let send = |mut chat: Chat, body: &'static str| tokio::spawn(async move { (chat.send(channel, body).await, chat) });
    let mut senders = senders.into_iter();
    // The first batch: this message alone, waiting for the lock once the writer has taken it
    // (its batch counted in the metrics).
    let first = send(senders.next().expect("ana"), "first, alone");
    until_batches_taken(&metrics, 1.0).await;
    // The second batch: these three, queued behind it.
    let batch = [
        send(senders.next().expect("bob"), "second, in the failing batch"),
        send(senders.next().expect("cy"), "poison pill"),
        send(senders.next().expect("dee"), "third, in the failing batch"),
    ];
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(batches_taken(&metrics).await, 1.0, "the others queued behind the first");
    lock.rollback().await.expect("unlock");

    let (first_reply, _ana) = first.await.expect("ana's send");
    assert_eq!(first_reply["type"], "ack", "the batch before the failing one is stored: {first_reply}");
    let mut batch_senders = Vec::new();
    for task in batch {
        let (reply, chat) = task.await.expect("a send");
        assert_eq!(reply["type"], "error", "a message of the failing batch was acknowledged: {reply}");
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert_eq!(reply["message"], chat::writer::NOT_STORED, "{reply}");
        batch_senders.push(chat);
    }

    // Only the first is delivered, and only it is in the history.
    let delivered = listener.next_of("message").await;
    assert_eq!(delivered["message"]["body"], "first, alone");
    let extra = listener.quiet_for(Duration::from_millis(500)).await;
    assert!(extra.as_ref().is_none_or(|e| e["type"] != "message"), "a message of the failing batch was delivered: {extra:?}");
    let history = app.get(&format!("/v1/chat/channels/{channel}/messages"), Some(&listener_token)).await.expect(200).body;
    let bodies: Vec<&str> = history["messages"].as_array().expect("messages").iter().map(|m| m["body"].as_str().expect("body")).collect();
    assert_eq!(bodies, ["first, alone"], "only the committed batch is stored");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chat_messages WHERE channel_id = $1")
        .bind(channel)
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(stored, 1);

    // The senders carry on: sent again, the same text is stored and delivered.
    let bob = &mut batch_senders[0];
    let again = bob.send(channel, "second, sent again").await;
    assert_eq!(again["type"], "ack", "{again}");
    let delivered = listener.next_of("message").await;
    assert_eq!(delivered["message"]["id"], again["message"]["id"]);
}

/// Makes every stored message whose body starts with `poison` fail its statement.
async fn poison_bodies(db: &platform::db::Database) {
    refuse_rows(db, "poison", ("chat_messages", "body"), "poison").await;
}

/// Makes every insert into `table` whose `column` starts with `prefix` fail, under the rule
/// `name`: a CHECK constraint on PostgreSQL, a trigger on SQLite.
async fn refuse_rows(db: &platform::db::Database, name: &str, (table, column): (&str, &str), prefix: &str) {
    let rule = match db.dialect() {
        Dialect::Postgres => format!("ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({column} NOT LIKE '{prefix}%') NOT VALID"),
        Dialect::Sqlite => format!(
            "CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN NEW.{column} LIKE '{prefix}%' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ),
    };
    sqlx::query(&rule).execute(db.pool()).await.expect("the rule");
}

/// Holds the message table's write lock until the transaction is rolled back: SQLite's `BEGIN
/// IMMEDIATE` (the server's insert waits on its 5 s busy timeout), PostgreSQL's table lock, which
/// an INSERT's ROW EXCLUSIVE waits for.
async fn lock_messages(db: &platform::db::Database) -> platform::db::Tx {
    let mut lock = db.begin().await.expect("lock");
    if db.dialect() == Dialect::Postgres {
        sqlx::query("LOCK TABLE chat_messages IN EXCLUSIVE MODE").execute(&mut *lock).await.expect("table lock");
    }
    lock
}

/// Waits until the chat writer has taken `count` batches, then a moment more, so that the last
/// one is waiting on the lock.
async fn until_batches_taken(metrics: &str, count: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while batches_taken(metrics).await < count {
        assert!(std::time::Instant::now() < deadline, "the writer never took batch {count}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Direct messages go through the group commit too (`chat::writer`), each with its conversation
/// rows and its recipient's `dm` notification in the batch's transaction. A batch of several
/// direct messages is one commit; a batch that fails leaves no message, no conversation change
/// and no notification of any of its messages, and its senders get `unavailable`; the
/// notification rules hold across a batch (one unread notification per conversation, updated).
async fn direct_messages_share_group_commits_with_their_conversations_and_notifications(backend: Backend) {
    let app = TestApp::start_with_metrics(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY).set("CHAT_SEND_BURST", "100").set("CHAT_SEND_PER_SECOND", "1");
    })
    .await;
    let metrics = app.metrics_base.clone().expect("a metrics listener");
    let (ana_id, ana_token) = guest(&app, "dm-batch-ana").await;
    let (bob_id, bob_token) = guest(&app, "dm-batch-bob").await;
    let channel: &'static str = Box::leak(dm(&ana_id, &bob_id).into_boxed_str());
    // Bob is connected but not in the conversation: each stored message notifies him.
    let mut bob = Chat::connect(&app.base, &bob_token).await;
    // Ana writes from four sockets, so that sends wait in the writer's queue together.
    let mut sockets = Vec::new();
    for _ in 0..4 {
        let mut chat = Chat::connect(&app.base, &ana_token).await;
        chat.join(channel).await;
        sockets.push(chat);
    }
    let db = app.database().await;
    poison_bodies(&db).await;
    let send = |mut chat: Chat, body: &'static str| tokio::spawn(async move { (chat.send(channel, body).await, chat) });

    // A failing batch: the first message alone, then three queued behind it, one poisoned.
    let lock = lock_messages(&db).await;
    let mut senders = sockets.into_iter();
    let first = send(senders.next().expect("socket"), "first, alone");
    until_batches_taken(&metrics, 1.0).await;
    let batch = [
        send(senders.next().expect("socket"), "second, in the failing batch"),
        send(senders.next().expect("socket"), "poison pill"),
        send(senders.next().expect("socket"), "third, in the failing batch"),
    ];
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(batches_taken(&metrics).await, 1.0, "the others queued behind the first");
    lock.rollback().await.expect("unlock");
    let (first_reply, first_socket) = first.await.expect("a send");
    assert_eq!(first_reply["type"], "ack", "{first_reply}");
    let first_id = first_reply["message"]["id"].as_str().expect("id").to_owned();
    let mut sockets = vec![first_socket];
    for task in batch {
        let (reply, chat) = task.await.expect("a send");
        assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some("unavailable")), "{reply}");
        assert_eq!(reply["message"], chat::writer::NOT_STORED, "{reply}");
        sockets.push(chat);
    }
    let pushed = bob.next_of("notification").await;
    assert_eq!(pushed["notification"]["data"]["message_id"], first_id.as_str());
    let extra = bob.quiet_for(Duration::from_millis(500)).await;
    assert!(extra.as_ref().is_none_or(|e| e["type"] != "notification"), "a failed message notified: {extra:?}");
    let count = |table: &'static str, column: &'static str, value: String| {
        let db = &db;
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table} WHERE {column} = $1"))
                .bind(value)
                .fetch_one(db.pool())
                .await
                .expect("count")
        }
    };
    assert_eq!(count("chat_messages", "channel_id", channel.to_owned()).await, 1, "only the first batch is stored");
    assert_eq!(count("chat_notifications", "account_id", bob_id.clone()).await, 1);
    let inbox = app.get("/v1/chat/conversations", Some(&bob_token)).await.expect(200).body;
    let conversation = &inbox["conversations"][0];
    assert_eq!((conversation["unread_count"].as_i64(), conversation["last_message"]["id"].as_str()), (Some(1), Some(first_id.as_str())));

    // A batch that commits: one alone again, then three together in one commit.
    let lock = lock_messages(&db).await;
    let mut senders = sockets.into_iter();
    let alone = send(senders.next().expect("socket"), "fourth, alone");
    until_batches_taken(&metrics, 3.0).await;
    let together = [
        send(senders.next().expect("socket"), "fifth"),
        send(senders.next().expect("socket"), "sixth"),
        send(senders.next().expect("socket"), "seventh"),
    ];
    // Time for the three to reach the writer's queue (SQLite's busy timeout, 5 s, bounds the wait).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(batches_taken(&metrics).await, 3.0, "the three queued behind the fourth");
    lock.rollback().await.expect("unlock");
    let mut ids = vec![first_id];
    for task in std::iter::once(alone).chain(together) {
        let (reply, _chat) = task.await.expect("a send");
        assert_eq!(reply["type"], "ack", "{reply}");
        ids.push(reply["message"]["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(batches_taken(&metrics).await, 4.0, "the three queued direct messages were one batch");
    assert_eq!(count("chat_messages", "channel_id", channel.to_owned()).await, 5);
    // Still one unread notification for the conversation, however many messages updated it.
    let listed = app.get("/v1/notifications", Some(&bob_token)).await.expect(200).body;
    assert_eq!((listed["unread_count"].as_i64(), listed["notifications"].as_array().map(Vec::len)), (Some(1), Some(1)), "{listed}");
    let newest = ids.iter().max().expect("ids").clone();
    let inbox = app.get("/v1/chat/conversations", Some(&bob_token)).await.expect(200).body;
    let conversation = &inbox["conversations"][0];
    assert_eq!((conversation["unread_count"].as_i64(), conversation["last_message"]["id"].as_str()), (Some(5), Some(newest.as_str())));
    let inbox = app.get("/v1/chat/conversations", Some(&ana_token)).await.expect(200).body;
    assert_eq!(
        (inbox["conversations"][0]["unread_count"].as_i64(), inbox["conversations"][0]["read_up_to"].as_str()),
        (Some(0), Some(newest.as_str()))
    );
}

/// Batches the chat writer has taken so far (`guildhall_chat_batch_size`'s count).
async fn batches_taken(metrics: &str) -> f64 {
    let text = reqwest::get(format!("{metrics}/metrics")).await.expect("scrape").text().await.expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix("guildhall_chat_batch_size_count "))
        .map_or(0.0, |value| value.trim().parse().expect("a count"))
}
