//! The accounts API over HTTP, on the embedded backends and on PostgreSQL + Redis.

#[path = "accounts/passwords.rs"]
mod passwords;

use crate::common::{ADMIN_KEY, Backend, Chat, Process, TestApp, TestEnv, audit, eventually, guest, make_friends, server_key};
use reqwest::Method;
use serde_json::json;

on_both_backends!(
    full_token_lifecycle,
    refresh_token_reuse_revokes_the_session,
    logout_ends_the_session,
    invalid_input_is_refused_with_the_field,
    usernames_and_emails_are_unique_regardless_of_case,
    wrong_password_and_unknown_email_answer_alike,
    sign_in_is_rate_limited_per_ip,
    one_address_cannot_lock_an_account_out,
    register_tells_few_addresses_that_an_email_has_an_account,
    refresh_is_rate_limited_per_ip,
    refresh_retried_within_the_grace_gets_the_same_pair,
    guests_sign_in_by_device_and_can_attach_credentials,
    upgrading_a_guest_retires_its_device_sign_in,
    profiles_update_and_public_profiles_hide_the_email,
    deleting_an_account_leaves_no_row_and_records_the_event,
    own_accounts_are_read_in_batches_each_answered_its_own,
    concurrent_reads_of_me_each_get_their_own_account,
    tokens_are_refused_without_a_valid_signature,
    health_jwks_and_openapi,
    ended_sessions_are_purged,
    named_keys_have_scopes_and_revoked_keys_stop_working,
    a_banned_player_cannot_sign_in_and_their_socket_closes,
    operators_search_view_end_sessions_and_erase_accounts,
    metrics_move_with_requests_deliveries_and_events,
    friends_request_accept_list_and_remove,
    friends_and_blocks_are_capped_and_requests_rate_limited,
    blocks_end_friendships_and_refuse_requests,
);

async fn full_token_lifecycle(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ana = app.register("ana").await;

    let me = app.get("/v1/accounts/me", Some(&ana.access)).await.expect(200);
    assert_eq!(me.body["username"], "ana");
    assert_eq!(me.body["email"], "ana@example.com");
    assert_eq!(me.body["guest"], false);

    let (access, refresh) = app.login(&ana).await;
    assert_ne!(access, ana.access);
    let pair = app.post("/v1/auth/refresh", None, json!({"refresh_token": refresh})).await.expect(200);
    assert_eq!(pair.body["token_type"], "Bearer");
    assert_eq!(pair.body["expires_in"], 900);
    let new_access = pair.body["access_token"].as_str().expect("access");
    let new_refresh = pair.body["refresh_token"].as_str().expect("refresh");
    assert_ne!(new_refresh, refresh);
    app.get("/v1/accounts/me", Some(new_access)).await.expect(200);
    // Within a session, the previous access token stays valid until it expires.
    app.get("/v1/accounts/me", Some(&access)).await.expect(200);
    // The new refresh token can be exchanged in turn.
    app.post("/v1/auth/refresh", None, json!({"refresh_token": new_refresh})).await.expect(200);
}

async fn refresh_token_reuse_revokes_the_session(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("REFRESH_REUSE_GRACE_SECS", "1");
    })
    .await;
    let ana = app.register("ana").await;
    let (other_access, _) = app.login(&ana).await;

    let first = app.post("/v1/auth/refresh", None, json!({"refresh_token": ana.refresh})).await.expect(200);
    let rotated_access = first.body["access_token"].as_str().expect("access").to_owned();
    let rotated_refresh = first.body["refresh_token"].as_str().expect("refresh").to_owned();

    // An attacker (or a replay) presents the old token again after the grace: the whole session
    // ends.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.post("/v1/auth/refresh", None, json!({"refresh_token": ana.refresh})).await.expect_error(401, "token_reused");
    app.get("/v1/accounts/me", Some(&rotated_access)).await.expect_error(401, "session_revoked");
    app.get("/v1/accounts/me", Some(&ana.access)).await.expect_error(401, "session_revoked");
    app.post("/v1/auth/refresh", None, json!({"refresh_token": rotated_refresh})).await.expect_error(401, "session_revoked");
    // Other sessions of the same account are untouched.
    app.get("/v1/accounts/me", Some(&other_access)).await.expect(200);
    // Unknown and malformed refresh tokens.
    app.post("/v1/auth/refresh", None, json!({"refresh_token": "ghr_notarealtoken"})).await.expect_error(401, "invalid_token");
    app.post("/v1/auth/refresh", None, json!({"refresh_token": ""})).await.expect_error(401, "invalid_token");
}

async fn logout_ends_the_session(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ana = app.register("ana").await;
    let (other_access, _) = app.login(&ana).await;
    app.call(Method::POST, "/v1/auth/logout", Some(&ana.access), None).await.expect(204);
    app.get("/v1/accounts/me", Some(&ana.access)).await.expect_error(401, "session_revoked");
    app.post("/v1/auth/refresh", None, json!({"refresh_token": ana.refresh})).await.expect_error(401, "session_revoked");
    app.call(Method::POST, "/v1/auth/logout", Some(&ana.access), None).await.expect_error(401, "session_revoked");
    app.get("/v1/accounts/me", Some(&other_access)).await.expect(200);
    app.call(Method::POST, "/v1/auth/logout", None, None).await.expect_error(401, "missing_token");
}

async fn invalid_input_is_refused_with_the_field(backend: Backend) {
    let app = TestApp::start(backend).await;
    let cases = [
        (json!({"email": "not-an-email", "password": "long enough", "username": "ana"}), "email"),
        (json!({"email": "ana@example.com", "password": "short", "username": "ana"}), "password"),
        (json!({"email": "ana@example.com", "password": "x".repeat(129), "username": "ana"}), "password"),
        (json!({"email": "ana@example.com", "password": "long enough", "username": "an"}), "username"),
        (json!({"email": "ana@example.com", "password": "long enough", "username": "ana!"}), "username"),
        (json!({"email": "ana@example.com", "password": "long enough", "username": "a".repeat(25)}), "username"),
        (json!({"email": "ana@example.com", "password": "long enough"}), "username"),
        (json!({"email": "ana@example.com", "password": 12345678, "username": "ana"}), "password"),
        (json!({"email": "ana@example.com", "password": "long enough", "username": "ana", "admin": true}), "admin"),
    ];
    for (body, field) in cases {
        let reply = app.post("/v1/auth/register", None, body.clone()).await.expect_error(400, "invalid_request");
        assert_eq!(reply.body["error"]["field"], field, "for {body}");
    }
    app.post("/v1/auth/guest", None, json!({"device_id": "short"})).await.expect_error(400, "invalid_request");
    app.post("/v1/auth/login", None, json!({"email": "nope", "password": "whatever1"})).await.expect_error(400, "invalid_request");

    // Not JSON, not declared as JSON, too large.
    let raw = |body: &'static str, content_type: &'static str| {
        app.client.post(format!("{}/v1/auth/register", app.base)).header("content-type", content_type).body(body).send()
    };
    let reply = crate::common::Api::reply(raw("{not json", "application/json").await.expect("sent")).await;
    reply.expect_error(400, "invalid_request");
    let reply = crate::common::Api::reply(raw("{}", "text/plain").await.expect("sent")).await;
    reply.expect_error(415, "unsupported_media_type");
    let huge = json!({"email": "a@example.com", "password": "p".repeat(100_000), "username": "ana"});
    app.post("/v1/auth/register", None, huge).await.expect_error(413, "payload_too_large");

    app.get("/v1/nothing-here", None).await.expect_error(404, "not_found");
    app.call(Method::PUT, "/v1/auth/login", None, None).await.expect_error(405, "method_not_allowed");
    // Nothing was half-written by all of that.
    let db = app.database().await;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts").fetch_one(db.pool()).await.expect("count");
    assert_eq!(count, 0);
}

async fn usernames_and_emails_are_unique_regardless_of_case(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.register("Ana").await;
    app.post("/v1/auth/register", None, json!({"email": "other@example.com", "password": "long enough", "username": "aNA"}))
        .await
        .expect_error(409, "username_taken");
    app.post("/v1/auth/register", None, json!({"email": " ANA@Example.com ", "password": "long enough", "username": "ana2"}))
        .await
        .expect_error(409, "email_taken");
    let db = app.database().await;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts").fetch_one(db.pool()).await.expect("count");
    assert_eq!(count, 1, "a refused sign-up leaves nothing behind");
    // The email works for login in any case.
    app.post("/v1/auth/login", None, json!({"email": "ANA@EXAMPLE.COM", "password": "pw-Ana-correct-horse"})).await.expect(200);
}

async fn wrong_password_and_unknown_email_answer_alike(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.register("ana").await;
    let wrong = app.post("/v1/auth/login", None, json!({"email": "ana@example.com", "password": "not the password"})).await.expect(401);
    let unknown = app.post("/v1/auth/login", None, json!({"email": "bob@example.com", "password": "not the password"})).await.expect(401);
    assert_eq!(wrong.code(), "invalid_credentials");
    assert_eq!(wrong.body, unknown.body);
}

/// A request from `ip` (through the ALB, which appends the peer to `X-Forwarded-For`).
async fn post_from(app: &TestApp, ip: &str, path: &str, token: Option<&str>, body: serde_json::Value) -> crate::common::Reply {
    let mut request = app.client.post(format!("{}{path}", app.base)).header("x-forwarded-for", format!("198.51.100.1, {ip}")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    crate::common::Api::reply(request.send().await.expect("sent")).await
}

/// The `Retry-After` of a 429, in seconds.
#[track_caller]
fn retry_after(reply: &crate::common::Reply) -> u64 {
    reply.headers["retry-after"].to_str().expect("ascii").parse().expect("seconds")
}

async fn sign_in_is_rate_limited_per_ip(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("RATE_LIMIT_AUTH_PER_IP_PER_MINUTE", "3").set("TRUST_FORWARDED_FOR", "true");
    })
    .await;
    let wrong = |email: &str| json!({"email": email, "password": "wrong password"});
    // Per IP: three attempts, then 429 with Retry-After, whatever the account.
    for i in 0..3 {
        post_from(&app, "203.0.113.1", "/v1/auth/login", None, wrong(&format!("p{i}@example.com"))).await.expect(401);
    }
    let limited = post_from(&app, "203.0.113.1", "/v1/auth/login", None, wrong("p9@example.com")).await.expect_error(429, "rate_limited");
    assert!((1..=60).contains(&retry_after(&limited)), "Retry-After {}", retry_after(&limited));
    // Another address is not limited by the first one's budget.
    post_from(&app, "203.0.113.2", "/v1/auth/login", None, wrong("p9@example.com")).await.expect(401);
}

async fn one_address_cannot_lock_an_account_out(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("RATE_LIMIT_LOGIN_FAILURES_PER_ACCOUNT_AND_IP", "2")
            .set("RATE_LIMIT_LOGIN_FAILURES_PER_ACCOUNT_PER_15_MINUTES", "6")
            .set("TRUST_FORWARDED_FOR", "true");
    })
    .await;
    let victim = app.register("victim").await;
    let wrong = json!({"email": "VICTIM@example.com", "password": "wrong password"});
    let right = json!({"email": victim.email, "password": victim.password});
    let attacker = "203.0.113.66";
    let home = "203.0.113.9";
    post_from(&app, home, "/v1/auth/login", None, right.clone()).await.expect(200);

    // The attacker's address: two failures are free, then each attempt waits, twice as long
    // after each further failure; its waiting says nothing about the password.
    post_from(&app, attacker, "/v1/auth/login", None, wrong.clone()).await.expect_error(401, "invalid_credentials");
    post_from(&app, attacker, "/v1/auth/login", None, wrong.clone()).await.expect_error(401, "invalid_credentials");
    let waiting = post_from(&app, attacker, "/v1/auth/login", None, right.clone()).await.expect_error(429, "rate_limited");
    assert_eq!(retry_after(&waiting), 1);
    // Meanwhile the owner signs in from anywhere else.
    post_from(&app, home, "/v1/auth/login", None, right.clone()).await.expect(200);
    post_from(&app, "203.0.113.10", "/v1/auth/login", None, right.clone()).await.expect(200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    post_from(&app, attacker, "/v1/auth/login", None, wrong.clone()).await.expect_error(401, "invalid_credentials");
    let waiting = post_from(&app, attacker, "/v1/auth/login", None, wrong.clone()).await.expect_error(429, "rate_limited");
    assert_eq!(retry_after(&waiting), 2, "the wait doubles");

    // Guessing spread over many addresses (3 failures so far, 6 allowed): the account closes to
    // addresses that never signed in to it, but not to those that did.
    for i in 0..3 {
        post_from(&app, &format!("192.0.2.{i}"), "/v1/auth/login", None, wrong.clone()).await.expect_error(401, "invalid_credentials");
    }
    let closed = post_from(&app, "192.0.2.200", "/v1/auth/login", None, right.clone()).await.expect_error(429, "rate_limited");
    assert!((1..=900).contains(&retry_after(&closed)), "Retry-After {}", retry_after(&closed));
    post_from(&app, home, "/v1/auth/login", None, right.clone()).await.expect(200);
    post_from(&app, "203.0.113.10", "/v1/auth/login", None, right).await.expect(200);
    // Other accounts are not affected.
    let bob = app.register("bob").await;
    post_from(&app, "192.0.2.200", "/v1/auth/login", None, json!({"email": bob.email, "password": bob.password})).await.expect(200);
}

async fn register_tells_few_addresses_that_an_email_has_an_account(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("RATE_LIMIT_EMAIL_TAKEN_PER_IP_PER_HOUR", "2").set("TRUST_FORWARDED_FOR", "true");
    })
    .await;
    app.register("ana").await;
    let probe = |email: &str, username: &str| json!({"email": email, "password": "long enough", "username": username});
    let prober = "203.0.113.5";
    post_from(&app, prober, "/v1/auth/register", None, probe("ana@example.com", "probe1")).await.expect_error(409, "email_taken");
    post_from(&app, prober, "/v1/auth/register", None, probe("ana@example.com", "probe2")).await.expect_error(409, "email_taken");
    // Its answers spent: whether the email has an account or not, the address gets 429.
    let refused = post_from(&app, prober, "/v1/auth/register", None, probe("ana@example.com", "probe3")).await;
    refused.expect_error(429, "rate_limited");
    let refused = post_from(&app, prober, "/v1/auth/register", None, probe("nobody@example.com", "probe4")).await;
    assert!(retry_after(&refused.expect_error(429, "rate_limited")) > 60);
    // A guest upgrade from that address is the same question, refused alike.
    let guest = post_from(&app, prober, "/v1/auth/guest", None, json!({"device_id": "device-probe-0001"})).await.expect(201);
    let access = guest.body["access_token"].as_str().expect("access");
    let upgrade = json!({"email": "ana@example.com", "password": "long enough"});
    post_from(&app, prober, "/v1/accounts/me/credentials", Some(access), upgrade.clone()).await.expect_error(429, "rate_limited");
    // Other addresses still get their answers.
    post_from(&app, "203.0.113.6", "/v1/accounts/me/credentials", Some(access), upgrade).await.expect_error(409, "email_taken");
    post_from(&app, "203.0.113.6", "/v1/auth/register", None, probe("nobody@example.com", "probe4")).await.expect(201);
}

async fn refresh_is_rate_limited_per_ip(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("RATE_LIMIT_REFRESH_PER_IP_PER_MINUTE", "2").set("TRUST_FORWARDED_FOR", "true");
    })
    .await;
    let ana = app.register("ana").await;
    let first = post_from(&app, "203.0.113.1", "/v1/auth/refresh", None, json!({"refresh_token": ana.refresh})).await.expect(200);
    let refresh = first.body["refresh_token"].as_str().expect("refresh").to_owned();
    post_from(&app, "203.0.113.1", "/v1/auth/refresh", None, json!({"refresh_token": "ghr_unknown"})).await.expect(401);
    let limited = post_from(&app, "203.0.113.1", "/v1/auth/refresh", None, json!({"refresh_token": refresh})).await;
    assert!((1..=60).contains(&retry_after(&limited.expect_error(429, "rate_limited"))));
    // The refused attempt did not spend the token: from another address it still works.
    post_from(&app, "203.0.113.2", "/v1/auth/refresh", None, json!({"refresh_token": refresh})).await.expect(200);
}

async fn refresh_retried_within_the_grace_gets_the_same_pair(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ana = app.register("ana").await;
    // The answer to the first refresh was lost; the client sends the same request again.
    let first = app.post("/v1/auth/refresh", None, json!({"refresh_token": ana.refresh})).await.expect(200);
    let retried = app.post("/v1/auth/refresh", None, json!({"refresh_token": ana.refresh})).await.expect(200);
    assert_eq!(retried.body["refresh_token"], first.body["refresh_token"]);
    assert_eq!(retried.body["access_token"], first.body["access_token"]);
    assert!(retried.body["expires_in"].as_u64().expect("expires_in") <= 900);
    let access = retried.body["access_token"].as_str().expect("access");
    let refresh = retried.body["refresh_token"].as_str().expect("refresh");
    // The session lives on, and the new refresh token rotates in turn.
    app.get("/v1/accounts/me", Some(access)).await.expect(200);
    app.get("/v1/accounts/me", Some(&ana.access)).await.expect(200);
    let next = app.post("/v1/auth/refresh", None, json!({"refresh_token": refresh})).await.expect(200);
    assert_ne!(next.body["refresh_token"], first.body["refresh_token"]);
    // Retries sent at once are answered alike too.
    let next_refresh = next.body["refresh_token"].as_str().expect("refresh").to_owned();
    let body = json!({"refresh_token": next_refresh});
    let (a, b) = tokio::join!(app.post("/v1/auth/refresh", None, body.clone()), app.post("/v1/auth/refresh", None, body));
    if a.status == 200 && b.status == 200 {
        assert_eq!(a.body["refresh_token"], b.body["refresh_token"]);
    } else {
        // SQLite refuses the second of two concurrent writers rather than queueing it.
        assert_eq!(backend, Backend::Embedded, "{} {} / {} {}", a.status, a.body, b.status, b.body);
    }
}

async fn guests_sign_in_by_device_and_can_attach_credentials(backend: Backend) {
    let app = TestApp::start(backend).await;
    let first = app.post("/v1/auth/guest", None, json!({"device_id": "device-0001-abcdef"})).await.expect(201);
    let access = first.body["access_token"].as_str().expect("access").to_owned();
    let me = app.get("/v1/accounts/me", Some(&access)).await.expect(200);
    assert_eq!(me.body["guest"], true);
    assert!(me.body["username"].as_str().expect("username").starts_with("guest_"));
    let again = app.post("/v1/auth/guest", None, json!({"device_id": "device-0001-abcdef"})).await.expect(200);
    let me_again = app.get("/v1/accounts/me", Some(again.body["access_token"].as_str().expect("access"))).await.expect(200);
    assert_eq!(me_again.body["id"], me.body["id"]);
    app.post("/v1/auth/guest", None, json!({"device_id": "device-0001-abcdef"})).await.expect(200);
    // A returning guest gets a session of its own, and is not announced again: one account,
    // one `account.created`, three sessions each with its refresh token.
    let db = app.database().await;
    let id = me.body["id"].as_str().expect("id");
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).bind(id).fetch_one(db.pool());
    let created = count("SELECT COUNT(*) FROM outbox WHERE event_type = 'account.created' AND payload LIKE '%' || $1 || '%'");
    assert_eq!(created.await.expect("outbox"), 1);
    let all_created: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE event_type = 'account.created'").fetch_one(db.pool()).await.expect("outbox");
    assert_eq!(all_created, 1);
    assert_eq!(count("SELECT COUNT(*) FROM sessions WHERE account_id = $1").await.expect("sessions"), 3);
    let tokens = count("SELECT COUNT(*) FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE s.account_id = $1");
    assert_eq!(tokens.await.expect("refresh tokens"), 3);

    app.register("taken").await;
    let creds = |email: &str, username: Option<&str>| json!({"email": email, "password": "guest password", "username": username});
    app.post("/v1/accounts/me/credentials", Some(&access), creds("taken@example.com", None)).await.expect_error(409, "email_taken");
    app.post("/v1/accounts/me/credentials", Some(&access), creds("g@example.com", Some("TAKEN"))).await.expect_error(409, "username_taken");
    app.post("/v1/accounts/me/credentials", Some(&access), creds("bad", None)).await.expect_error(400, "invalid_request");
    let upgraded = app.post("/v1/accounts/me/credentials", Some(&access), creds("G@Example.com", Some("grace"))).await.expect(200);
    assert_eq!(upgraded.body["guest"], false);
    assert_eq!(upgraded.body["username"], "grace");
    assert_eq!(upgraded.body["email"], "g@example.com");
    app.post("/v1/accounts/me/credentials", Some(&access), creds("h@example.com", None)).await.expect_error(409, "credentials_exist");
    let login = app.post("/v1/auth/login", None, json!({"email": "g@example.com", "password": "guest password"})).await.expect(200);
    let me_login = app.get("/v1/accounts/me", Some(login.body["access_token"].as_str().expect("access"))).await.expect(200);
    assert_eq!(me_login.body["id"], me.body["id"]);
}

async fn upgrading_a_guest_retires_its_device_sign_in(backend: Backend) {
    let app = TestApp::start(backend).await;
    let device = json!({"device_id": "device-0002-shared"});
    let first = app.post("/v1/auth/guest", None, device.clone()).await.expect(201);
    let access = first.body["access_token"].as_str().expect("access").to_owned();
    // Someone else who knows the device id signed in too.
    let other = app.post("/v1/auth/guest", None, device.clone()).await.expect(200);
    let other_access = other.body["access_token"].as_str().expect("access").to_owned();
    let other_refresh = other.body["refresh_token"].as_str().expect("refresh").to_owned();
    let id = app.get("/v1/accounts/me", Some(&access)).await.expect(200).body["id"].clone();

    let creds = json!({"email": "owner@example.com", "password": "a real password"});
    app.post("/v1/accounts/me/credentials", Some(&access), creds).await.expect(200);
    // The upgrading session goes on; every other one ended, refresh included.
    app.get("/v1/accounts/me", Some(&access)).await.expect(200);
    app.get("/v1/accounts/me", Some(&other_access)).await.expect_error(401, "session_revoked");
    app.post("/v1/auth/refresh", None, json!({"refresh_token": other_refresh})).await.expect_error(401, "session_revoked");
    // The device id alone no longer reaches the account: it makes a new guest.
    let again = app.post("/v1/auth/guest", None, device).await.expect(201);
    let me = app.get("/v1/accounts/me", Some(again.body["access_token"].as_str().expect("access"))).await.expect(200);
    assert_ne!(me.body["id"], id);
    assert_eq!(me.body["guest"], true);
    app.post("/v1/auth/login", None, json!({"email": "owner@example.com", "password": "a real password"})).await.expect(200);
}

async fn profiles_update_and_public_profiles_hide_the_email(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ana = app.register("ana").await;
    let bob = app.register("bob").await;
    let avatar = uuid::Uuid::now_v7().to_string();
    let patch = |body: serde_json::Value| app.call(Method::PATCH, "/v1/accounts/me", Some(&ana.access), Some(body));
    let updated = patch(json!({"display_name": "  Ana the Bold ", "avatar_asset_id": avatar, "locale": "pt-BR"})).await.expect(200);
    assert_eq!(updated.body["display_name"], "Ana the Bold");
    assert_eq!(updated.body["locale"], "pt-BR");
    // Absent fields are kept; null clears.
    let updated = patch(json!({"locale": null})).await.expect(200);
    assert_eq!(updated.body["display_name"], "Ana the Bold");
    assert_eq!(updated.body["avatar_asset_id"], avatar.as_str());
    assert!(updated.body["locale"].is_null());
    for (body, field) in [
        (json!({"display_name": ""}), "display_name"),
        (json!({"display_name": "x".repeat(33)}), "display_name"),
        (json!({"avatar_asset_id": "../../etc"}), "avatar_asset_id"),
        (json!({"locale": "not a locale"}), "locale"),
        (json!({"email": "new@example.com"}), "email"),
    ] {
        let reply = patch(body).await.expect_error(400, "invalid_request");
        assert_eq!(reply.body["error"]["field"], field);
    }

    let public = app.get(&format!("/v1/accounts/{}", ana.id), Some(&bob.access)).await.expect(200);
    assert_eq!(public.body["username"], "ana");
    assert_eq!(public.body["display_name"], "Ana the Bold");
    assert!(public.body.get("email").is_none(), "{}", public.body);
    app.get(&format!("/v1/accounts/{}", ana.id), None).await.expect_error(401, "missing_token");
    app.get(&format!("/v1/accounts/{}", uuid::Uuid::now_v7()), Some(&bob.access)).await.expect_error(404, "not_found");
    app.get("/v1/accounts/not-a-uuid", Some(&bob.access)).await.expect_error(404, "not_found");
}

async fn deleting_an_account_leaves_no_row_and_records_the_event(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ana = app.register("ana").await;
    let bob = app.register("bob").await;
    let (second_access, second_refresh) = app.login(&ana).await;
    app.call(Method::DELETE, "/v1/accounts/me", Some(&ana.access), None).await.expect(204);

    // Every session of the account ended, on every token.
    app.get("/v1/accounts/me", Some(&ana.access)).await.expect_error(401, "session_revoked");
    app.get("/v1/accounts/me", Some(&second_access)).await.expect_error(401, "session_revoked");
    app.post("/v1/auth/refresh", None, json!({"refresh_token": second_refresh})).await.expect_error(401, "invalid_token");
    app.post("/v1/auth/login", None, json!({"email": ana.email, "password": ana.password})).await.expect_error(401, "invalid_credentials");
    app.get(&format!("/v1/accounts/{}", ana.id), Some(&bob.access)).await.expect_error(404, "not_found");

    let db = app.database().await;
    let dialect = if backend == Backend::Real { platform::db::Dialect::Postgres } else { platform::db::Dialect::Sqlite };
    assert_eq!(db.dialect(), dialect);
    for table in ["accounts", "sessions"] {
        let column = if table == "accounts" { "id" } else { "account_id" };
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE {column} = $1"))
            .bind(&ana.id)
            .fetch_one(db.pool())
            .await
            .expect("count");
        assert_eq!(count, 0, "{table} still holds the account");
    }
    let orphans: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM refresh_tokens r WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = r.session_id)")
            .fetch_one(db.pool())
            .await
            .expect("count");
    assert_eq!(orphans, 0);
    // Each registration recorded `account.created` with its account, the erasure `account.deleted`.
    let events: Vec<(String, String)> =
        sqlx::query_as("SELECT event_type, payload FROM outbox ORDER BY id").fetch_all(db.pool()).await.expect("outbox");
    let events: Vec<(&str, serde_json::Value)> =
        events.iter().map(|(kind, payload)| (kind.as_str(), serde_json::from_str(payload).expect("json"))).collect();
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(kinds, ["account.created", "account.created", "account.deleted"]);
    assert_eq!((events[0].1["account_id"].as_str(), events[0].1["username"].as_str()), (Some(ana.id.as_str()), Some("ana")));
    assert_eq!(events[0].1["guest"], false);
    assert!(events[0].1.get("email").is_none(), "no personal detail in the event: {}", events[0].1);
    assert_eq!(events[1].1["account_id"], bob.id.as_str());
    assert_eq!(events[2].1["account_id"], ana.id.as_str());
    // Bob is untouched, and the username is free again.
    app.get("/v1/accounts/me", Some(&bob.access)).await.expect(200);
    app.register("ana").await;
}

/// `GET /v1/accounts/me` reads through `accounts::reads`: reads queued while a lane waits are
/// answered by one statement, each with its own row, and ids without an account with none.
async fn own_accounts_are_read_in_batches_each_answered_its_own(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ana = app.register("ana").await;
    let bob = app.register("bob").await;
    let cy = app.register("cyd").await;
    let dee = app.register("dee").await;
    app.call(Method::DELETE, "/v1/accounts/me", Some(&dee.access), None).await.expect(204);

    let db = app.database().await;
    let reads = accounts::reads::AccountReads::start(db.pool().clone(), 1);
    // A lone read goes out on its own.
    let alone = reads.account(&bob.id).await.expect("read").expect("bob's account");
    assert_eq!(alone.username, "bob");
    assert_eq!(reads.counts(), (1, 1));

    // With every connection of the pool held, the lane's first read waits for one and the
    // others queue behind it; once they are all queued, the connections go back.
    let mut held = Vec::new();
    for _ in 0..db.pool_stats().max {
        held.push(db.pool().acquire().await.expect("connection"));
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let asked = [&ana.id, &bob.id, &cy.id, &ana.id, &dee.id, &unknown];
    let readers: Vec<_> = asked
        .iter()
        .map(|id| {
            let (reads, id) = (reads.clone(), id.to_string());
            tokio::spawn(async move { reads.account(&id).await.expect("read") })
        })
        .collect();
    eventually(std::time::Duration::from_secs(20), "all but the first read queued", || {
        let queued = reads.queued();
        async move { queued == asked.len() - 1 }
    })
    .await;
    drop(held);
    let mut answered = Vec::new();
    for reader in readers {
        answered.push(reader.await.expect("reader").map(|account| (account.id, account.username)));
    }
    let expected = [Some((&ana.id, "ana")), Some((&bob.id, "bob")), Some((&cy.id, "cyd")), Some((&ana.id, "ana")), None, None];
    let expected: Vec<_> = expected.iter().map(|row| row.map(|(id, name)| (id.clone(), name.to_owned()))).collect();
    assert_eq!(answered, expected);
    // One statement for the six reads after the lone one.
    assert_eq!(reads.counts(), (2, 1 + asked.len() as u64));
}

/// On PostgreSQL a returning player's sign-in goes through `accounts::identity::sign_ins`: the
/// sign-ins queued while a lane waits are made by one statement (one commit), each answered with
/// its own account and its own session stored; a banned account's gets its ban and stores
/// nothing, as does an identity no account has; an expired ban does not stop a sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_players_sign_in_in_batches_each_with_its_own_session() {
    use accounts::identity::Provider;
    use accounts::identity::sign_ins::SignIns;
    use accounts::identity::store::{SignIn, SigningIn};
    if platform::testing::real_backends_skipped() {
        return;
    }
    let app = TestApp::start(Backend::Real).await;
    let mut ids = std::collections::HashMap::new();
    for name in ["ana", "bob", "banned", "was-banned"] {
        ids.insert(name, guest(&app, name).await.0);
    }
    let db = app.database().await;
    let now = platform::db::now_millis();
    for (name, until) in [("banned", None), ("was-banned", Some(now - 1000))] {
        sqlx::query(
            "INSERT INTO account_bans (account_id, reason, until, issued_by, issued_by_name, issued_at) VALUES ($1, 'test', $2, 'bootstrap', 'test', $3)",
        )
        .bind(&ids[name])
        .bind(until)
        .bind(now - 2000)
        .execute(db.pool())
        .await
        .expect("ban");
    }
    let ask = |device: &str| SigningIn {
        provider: Provider::Device,
        subject: platform::digest::sha256_hex(&format!("device-{device}")),
        session_id: uuid::Uuid::now_v7().to_string(),
        refresh_hash: platform::digest::sha256_hex(&uuid::Uuid::now_v7().to_string()),
        now,
        expires_at: now + 3_600_000,
    };
    let opened = |answer: &SignIn| match answer {
        SignIn::Opened(account) => Some(account.id.clone()),
        _ => None,
    };
    let sign_ins = SignIns::start(db.pool().clone(), 1);
    // A lone sign-in goes out on its own.
    let alone = sign_ins.sign_in(ask("bob")).await.expect("sign-in");
    assert_eq!(opened(&alone).as_ref(), Some(&ids["bob"]));
    assert_eq!(sign_ins.counts(), (1, 1));

    // With every connection of the pool held, the lane's first sign-in waits for one and the
    // others queue behind it; once they are all queued, the connections go back.
    let mut held = Vec::new();
    for _ in 0..db.pool_stats().max {
        held.push(db.pool().acquire().await.expect("connection"));
    }
    let asked: Vec<SigningIn> = ["ana", "bob", "banned", "was-banned", "nobody", "ana"].into_iter().map(ask).collect();
    let signing: Vec<_> = asked
        .iter()
        .map(|ask| {
            let (sign_ins, ask) = (sign_ins.clone(), ask.clone());
            tokio::spawn(async move { sign_ins.sign_in(ask).await.expect("sign-in") })
        })
        .collect();
    let waiting = asked.len() - 1;
    eventually(std::time::Duration::from_secs(20), "all but the first sign-in queued", || {
        let queued = sign_ins.queued();
        async move { queued == waiting }
    })
    .await;
    drop(held);
    let mut answers = Vec::new();
    for one in signing {
        answers.push(one.await.expect("sign-in task"));
    }
    // One statement for the six sign-ins after the lone one.
    assert_eq!(sign_ins.counts(), (2, 1 + asked.len() as u64));
    let expected = [Some(&ids["ana"]), Some(&ids["bob"]), None, Some(&ids["was-banned"]), None, Some(&ids["ana"])];
    assert_eq!(answers.iter().map(opened).collect::<Vec<_>>(), expected.map(|id| id.cloned()));
    assert!(matches!(&answers[2], SignIn::Banned(ban) if ban.until.is_none()), "{:?}", answers[2]);
    assert!(matches!(answers[4], SignIn::Unknown), "{:?}", answers[4]);
    // Each opened sign-in stored its own session, for its account, with its refresh token; the
    // refused and the unknown stored neither.
    for (ask, expected) in asked.iter().zip(expected) {
        let stored: Option<(String, i64)> = sqlx::query_as(
            "SELECT s.account_id, (SELECT COUNT(*) FROM refresh_tokens r WHERE r.session_id = s.id AND r.token_hash = $2) \
             FROM sessions s WHERE s.id = $1",
        )
        .bind(&ask.session_id)
        .bind(&ask.refresh_hash)
        .fetch_optional(db.pool())
        .await
        .expect("session");
        assert_eq!(stored, expected.map(|id| (id.clone(), 1)));
    }
}

/// Many players reading their own account at once (batched together by the server) each get
/// theirs; a valid token whose account row is gone gets 401 `session_revoked`.
async fn concurrent_reads_of_me_each_get_their_own_account(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut players = Vec::new();
    for n in 0..12 {
        players.push(app.register(&format!("player{n}")).await);
    }
    for _ in 0..3 {
        let replies = futures_util::future::join_all(players.iter().map(|p| app.get("/v1/accounts/me", Some(&p.access)))).await;
        for (player, reply) in players.iter().zip(replies) {
            let reply = reply.expect(200);
            assert_eq!(
                (reply.body["id"].as_str(), reply.body["username"].as_str()),
                (Some(player.id.as_str()), Some(player.username.as_str()))
            );
        }
    }
    // The row removed behind the service's back (its sessions go with it, by cascade, but are
    // not revoked, so its access token still passes the token check).
    let gone = &players[0];
    let db = app.database().await;
    sqlx::query("DELETE FROM accounts WHERE id = $1").bind(&gone.id).execute(db.pool()).await.expect("delete account");
    let replies = futures_util::future::join_all(players.iter().map(|p| app.get("/v1/accounts/me", Some(&p.access)))).await;
    let mut replies = replies.into_iter();
    replies.next().expect("reply").expect_error(401, "session_revoked");
    for (player, reply) in players[1..].iter().zip(replies) {
        assert_eq!(reply.expect(200).body["username"], player.username.as_str());
    }
}

async fn tokens_are_refused_without_a_valid_signature(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ana = app.register("ana").await;
    let mut parts: Vec<String> = ana.access.split('.').map(str::to_owned).collect();
    parts[2] = parts[2].chars().rev().collect();
    app.get("/v1/accounts/me", Some(&parts.join("."))).await.expect_error(401, "invalid_token");
    app.get("/v1/accounts/me", Some("garbage")).await.expect_error(401, "invalid_token");
    // A token from another deployment's key: a key this one does not accept.
    let other = TestApp::start(backend).await;
    let stranger = other.register("stranger").await;
    app.get("/v1/accounts/me", Some(&stranger.access)).await.expect_error(401, "unknown_signing_key");
}

async fn health_jwks_and_openapi(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.get("/health/live", None).await.expect(200);
    let ready = app.get("/health/ready", None).await.expect(200);
    assert_eq!(ready.body["status"], "ok");
    let jwks = app.get("/.well-known/jwks.json", None).await.expect(200);
    let ana = app.register("ana").await;
    let header: serde_json::Value = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(ana.access.split('.').next().expect("header")).expect("b64");
        serde_json::from_slice(&raw).expect("json")
    };
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(jwks.body["keys"][0]["kid"], header["kid"]);
    assert_eq!(jwks.body["keys"][0]["crv"], "Ed25519");
    let doc = app.get("/openapi.json", None).await.expect(200);
    for path in ["/v1/auth/register", "/v1/auth/refresh", "/v1/accounts/me", "/v1/accounts/{id}", "/health/ready"] {
        assert!(doc.body["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    // Readiness fails while draining, so the load balancer stops routing here; requests are
    // still served until the drain period ends.
    app.drain(30);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let draining = app.get("/health/ready", None).await.expect(503);
    assert_eq!(draining.body["status"], "draining");
    app.get("/health/live", None).await.expect(200);
    app.get("/v1/accounts/me", Some(&ana.access)).await.expect(200);
}

/// Two processes of the real binary on one PostgreSQL and one Redis: a token from one works on the
/// other, and a logout on one is honoured by the other at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_honour_each_others_logout() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let mut env = TestEnv::new(Backend::Real).await.expect("env");
    // Reuse is presented at once below: no grace.
    env.set("REFRESH_REUSE_GRACE_SECS", "0");
    let a = Process::start(&env).await;
    let b = Process::start(&env).await;
    let ana = a.register("ana").await;
    b.get("/v1/accounts/me", Some(&ana.access)).await.expect(200);
    let pair = b.post("/v1/auth/refresh", None, json!({"refresh_token": ana.refresh})).await.expect(200);
    let access = pair.body["access_token"].as_str().expect("access").to_owned();
    a.get("/v1/accounts/me", Some(&access)).await.expect(200);
    a.call(Method::POST, "/v1/auth/logout", Some(&access), None).await.expect(204);
    b.get("/v1/accounts/me", Some(&access)).await.expect_error(401, "session_revoked");
    b.get("/v1/accounts/me", Some(&ana.access)).await.expect_error(401, "session_revoked");
    // Reuse detected on one process is enforced on the other.
    let (_, refresh) = b.login(&ana).await;
    a.post("/v1/auth/refresh", None, json!({"refresh_token": refresh})).await.expect(200);
    b.post("/v1/auth/refresh", None, json!({"refresh_token": refresh})).await.expect_error(401, "token_reused");
}

/// The embedded defaults: the binary started in an empty folder with no variable but its address
/// creates its SQLite file and signing key under ./data, serves, and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_on_embedded_defaults_and_stops_on_sigterm() {
    let mut env = TestEnv::new(Backend::Embedded).await.expect("env");
    env.vars.retain(|key, _| key == "LISTEN_ADDR");
    let mut process = Process::start(&env).await;
    let ana = process.register("ana").await;
    process.get("/v1/accounts/me", Some(&ana.access)).await.expect(200);
    assert!(env.dir.join("data/guildhall.db").exists());
    assert!(env.dir.join("data/signing-key.pem").exists());
    // The container health check: exit 0 while the server answers, non-zero once it is gone.
    let healthcheck = |addr: String| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_guildhall")).arg("healthcheck").env_clear().env("LISTEN_ADDR", addr).status()
    };
    let addr = process.base.trim_start_matches("http://").to_owned();
    assert!(healthcheck(addr.clone()).await.expect("runs").success());
    let status = process.terminate().await;
    assert!(status.success(), "exit status {status}");
    let lines = process.lines.lock().expect("lines").join("\n");
    assert!(lines.contains("\"stopped\""), "{lines}");
    assert!(!lines.contains(&ana.password), "a password reached the logs");
    assert!(!lines.contains(&ana.refresh), "a refresh token reached the logs");
    assert!(!healthcheck(addr).await.expect("runs").success());

    // Restarted on the same folder, it keeps its key: the old token still verifies.
    let again = Process::start(&env).await;
    again.get("/v1/accounts/me", Some(&ana.access)).await.expect(200);
}

/// Running one service alone on embedded backends is refused with a clear message.
#[tokio::test]
async fn config_errors_stop_the_binary_with_a_message() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_guildhall"))
        .env_clear()
        .env("DATABASE_URL", "mysql://nope")
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("DATABASE_URL must start with postgres://"));
}

async fn ended_sessions_are_purged(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ana = app.register("ana").await;
    let (live_access, _) = app.login(&ana).await;
    app.call(Method::POST, "/v1/auth/logout", Some(&ana.access), None).await.expect(204);
    // As the accounts service purges, with its grants alone.
    let db = app.database_as(platform::db::Role::Accounts).await;
    let now = platform::db::now_millis();
    // Both sessions are recent: nothing older than the cut-off goes.
    let mut conn = db.pool().acquire().await.expect("conn");
    assert_eq!(accounts::store::purge_sessions(&mut conn, now - 60_000, 100).await.expect("purge"), 0);
    // With the cut-off after the logout, the ended session and its refresh tokens go; the live one stays.
    assert_eq!(accounts::store::purge_sessions(&mut conn, now + 1, 100).await.expect("purge"), 1);
    let sessions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(&mut *conn).await.expect("count");
    let tokens: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM refresh_tokens").fetch_one(&mut *conn).await.expect("count");
    assert_eq!((sessions, tokens), (1, 1));
    // The logout's revocation is kept for the verifiers until the session's last access token
    // has expired (15 minutes and a margin), then pruned.
    assert_eq!(platform::revocations::prune(&mut *conn, now).await.expect("prune"), 0);
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM session_revocations").fetch_one(&mut *conn).await.expect("count");
    assert_eq!(kept, 1);
    assert_eq!(platform::revocations::prune(&mut *conn, now + (15 * 60 + 61) * 1000).await.expect("prune"), 1);
    drop(conn);
    app.get("/v1/accounts/me", Some(&live_access)).await.expect(200);
}

/// The signing key rotated as README's "Rotating the signing key" says, on instances sharing
/// PostgreSQL and Redis as ECS tasks do: the next key is published to every instance, then signs,
/// then the previous key retires. Tokens of either key work everywhere until the retirement; then
/// the previous key's are refused with a code of their own; refresh tokens keep every session
/// alive throughout, so nobody is logged out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_needs_no_downtime_and_logs_nobody_out() {
    use crate::common::{chat_refusal, kid_of, published_kids};
    use platform::tokens::manage;
    if platform::testing::real_backends_skipped() {
        return;
    }
    let base = TestEnv::new(Backend::Real).await.expect("env");
    let ((a_private, a), (b_private, b)) = (manage::generate().expect("key A"), manage::generate().expect("key B"));
    let (a_public, b_public) = (manage::public_of(&a_private).expect("A").0, manage::public_of(&b_private).expect("B").0);
    let instance = |signing: Option<&str>, verify: &[&str]| {
        let mut env = base.clone();
        if let Some(key) = signing {
            env.set("TOKEN_SIGNING_KEY", key);
        }
        env.set("TOKEN_VERIFY_KEYS", verify.concat());
        TestApp::start_on(env)
    };

    // Before: accounts signs with A; chat and the rest verify with A.
    let signer = instance(Some(&a_private), &[&a_public]).await;
    let verifier = instance(None, &[&a_public]).await;
    let ana = signer.register("ana").await;
    assert_eq!(kid_of(&ana.access), a);
    verifier.get("/v1/accounts/me", Some(&ana.access)).await.expect(200);
    // A player who does nothing during the whole rotation, but holds a refresh token.
    let (_, _, idle_refresh) = crate::common::guest_session(&signer, "idle").await;
    assert_eq!(published_kids(&signer).await, vec![a.clone()]);

    // 1. B is published to every instance (a deployment of them all); A still signs. B may not
    //    sign anywhere before this: a signer whose bundle lacks its key does not start.
    let mut early = base.clone();
    early.set("TOKEN_SIGNING_KEY", &b_private).set("TOKEN_VERIFY_KEYS", &a_public);
    let refused = guildhall::App::build(early.config().expect("config"), platform::shutdown::Shutdown::new()).await.err().expect("refused");
    assert!(format!("{refused:#}").contains("does not include the public key of TOKEN_SIGNING_KEY"), "{refused:#}");
    let signer_ab = instance(Some(&a_private), &[&a_public, &b_public]).await;
    let verifier_ab = instance(None, &[&a_public, &b_public]).await;
    drop((signer, verifier));
    assert_eq!(published_kids(&signer_ab).await, [a.clone(), b.clone()]);

    // 2. B signs (accounts redeployed with the new secret), A still verifies. During the
    //    deployment old and new signers run side by side: both keys' tokens work on every instance.
    let signer_b = instance(Some(&b_private), &[&a_public, &b_public]).await;
    let (b_access, b_refresh) = signer_b.login(&ana).await;
    assert_eq!(kid_of(&b_access), b);
    let (from_old_signer, _) = signer_ab.login(&ana).await;
    assert_eq!(kid_of(&from_old_signer), a);
    for api in [&signer_ab, &verifier_ab, &signer_b] {
        for token in [&ana.access, &b_access, &from_old_signer] {
            api.get("/v1/accounts/me", Some(token)).await.expect(200);
        }
    }
    for token in [&ana.access, &b_access] {
        crate::common::Chat::connect(&verifier_ab.base, token).await.close().await;
    }
    // A session from A's time refreshes into a token of B.
    let refreshed = signer_b.post("/v1/auth/refresh", None, json!({"refresh_token": ana.refresh})).await.expect(200);
    let refreshed_access = refreshed.body["access_token"].as_str().expect("access").to_owned();
    let refreshed_refresh = refreshed.body["refresh_token"].as_str().expect("refresh").to_owned();
    assert_eq!(kid_of(&refreshed_access), b);
    assert_eq!(published_kids(&signer_b).await, [b.clone(), a.clone()]);
    drop(signer_ab);

    // 3. Once A's last token has expired (ACCESS_TOKEN_TTL_SECS after step 2), A retires: every
    //    instance is deployed with B alone. A token of A is refused with a code that says so.
    let signer_retired = instance(Some(&b_private), &[&b_public]).await;
    let verifier_retired = instance(None, &[&b_public]).await;
    drop((signer_b, verifier_ab));
    assert_eq!(published_kids(&signer_retired).await, vec![b.clone()]);
    for api in [&signer_retired, &verifier_retired] {
        api.get("/v1/accounts/me", Some(&ana.access)).await.expect_error(401, "unknown_signing_key");
        api.get("/v1/accounts/me", Some(&from_old_signer)).await.expect_error(401, "unknown_signing_key");
        api.get("/v1/accounts/me", Some(&b_access)).await.expect(200);
        api.get("/v1/accounts/me", Some(&refreshed_access)).await.expect(200);
    }
    assert_eq!(chat_refusal(&verifier_retired.base, &ana.access).await, ("unknown_signing_key".to_owned(), Some(1008)));
    // Nobody was logged out: every refresh token still works, the idle player's from before
    // the rotation too, and gives tokens of B.
    for refresh in [&b_refresh, &refreshed_refresh, &idle_refresh] {
        let pair = signer_retired.post("/v1/auth/refresh", None, json!({"refresh_token": refresh})).await.expect(200);
        let access = pair.body["access_token"].as_str().expect("access");
        assert_eq!(kid_of(access), b);
        verifier_retired.get("/v1/accounts/me", Some(access)).await.expect(200);
    }
}

/// The same on embedded defaults, with the binary's own commands: `guildhall keys rotate` makes a
/// new key in DATA_DIR that signs from the next start while the old one verifies; `guildhall keys
/// retire` then drops the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_retire_on_embedded_defaults() {
    use crate::common::{kid_of, published_kids};
    let env = TestEnv::new(Backend::Embedded).await.expect("env");
    let keys = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_guildhall"))
            .arg("keys")
            .args(args)
            .env_clear()
            .envs(&env.vars)
            .output()
            .expect("guildhall keys runs");
        assert!(output.status.success(), "keys {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<serde_json::Value>(&output.stdout).expect("JSON")
    };
    let mut first = Process::start(&env).await;
    let ana = first.register("ana").await;
    let old = kid_of(&ana.access);
    assert_eq!(keys(&["show"])["signing_kid"], old.as_str());

    let rotated = keys(&["rotate"]);
    assert_eq!(rotated["still_verifying"], old.as_str());
    let new = rotated["signing_kid"].as_str().expect("new kid").to_owned();
    assert_eq!(keys(&["show"])["verifying_kids"], json!([new, old]));
    first.terminate().await;
    let mut second = Process::start(&env).await;
    second.get("/v1/accounts/me", Some(&ana.access)).await.expect(200);
    let (access, _) = second.login(&ana).await;
    assert_eq!(kid_of(&access), new);
    assert_eq!(published_kids(&second).await, [new.clone(), old.clone()]);

    keys(&["retire", &old]);
    second.terminate().await;
    let third = Process::start(&env).await;
    third.get("/v1/accounts/me", Some(&ana.access)).await.expect_error(401, "unknown_signing_key");
    third.get("/v1/accounts/me", Some(&access)).await.expect(200);
    let pair = third.post("/v1/auth/refresh", None, json!({"refresh_token": ana.refresh})).await.expect(200);
    assert_eq!(kid_of(pair.body["access_token"].as_str().expect("access")), new);
    assert_eq!(published_kids(&third).await, [new]);
}

/// CORS (`CORS_ALLOWED_ORIGINS`): a browser page on a listed origin may call the API; any other
/// origin gets no CORS headers, so the browser keeps the answer from it. The layer wraps the
/// whole router, the same on either backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_the_listed_origins() {
    let game = "https://play.example.com";
    let app = TestApp::start_with(Backend::Embedded, |env| {
        env.set("CORS_ALLOWED_ORIGINS", format!("{game}, http://localhost:5173"));
    })
    .await;
    let preflight = |origin: &'static str, path: &'static str| {
        app.client
            .request(Method::OPTIONS, format!("{}{path}", app.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type, idempotency-key")
            .send()
    };
    let allowed = crate::common::Api::reply(preflight(game, "/v1/auth/login").await.expect("sent")).await.expect(200);
    assert_eq!(allowed.headers["access-control-allow-origin"], game);
    let headers = allowed.headers["access-control-allow-headers"].to_str().expect("ascii").to_ascii_lowercase();
    for header in ["authorization", "content-type", "idempotency-key"] {
        assert!(headers.contains(header), "{header} not allowed: {headers}");
    }
    assert!(allowed.headers["access-control-allow-methods"].to_str().expect("ascii").contains("POST"));
    assert!(allowed.headers.contains_key("access-control-max-age"));
    // Every route, including ones with path parameters and ones needing a token.
    let allowed = crate::common::Api::reply(preflight(game, "/v1/accounts/some-id").await.expect("sent")).await.expect(200);
    assert_eq!(allowed.headers["access-control-allow-origin"], game);

    let refused = crate::common::Api::reply(preflight("https://evil.example.com", "/v1/auth/login").await.expect("sent")).await;
    assert!(!refused.headers.contains_key("access-control-allow-origin"), "{:?}", refused.headers);
    let near = crate::common::Api::reply(preflight("https://play.example.com.evil.com", "/v1/auth/login").await.expect("sent")).await;
    assert!(!near.headers.contains_key("access-control-allow-origin"), "{:?}", near.headers);

    // Real requests carry the header, errors included, so the page can read them.
    let live = app.client.get(format!("{}/health/live", app.base)).header("origin", game).send().await.expect("sent");
    let live = crate::common::Api::reply(live).await.expect(200);
    assert_eq!(live.headers["access-control-allow-origin"], game);
    assert!(live.headers["vary"].to_str().expect("ascii").to_ascii_lowercase().contains("origin"));
    let me = app.client.get(format!("{}/v1/accounts/me", app.base)).header("origin", game).send().await.expect("sent");
    let me = crate::common::Api::reply(me).await.expect_error(401, "missing_token");
    assert_eq!(me.headers["access-control-allow-origin"], game);
    let exposed = me.headers["access-control-expose-headers"].to_str().expect("ascii").to_ascii_lowercase();
    assert!(exposed.contains("retry-after") && exposed.contains("x-request-id"), "{exposed}");
    let other = app.client.get(format!("{}/health/live", app.base)).header("origin", "https://evil.example.com").send().await;
    let other = crate::common::Api::reply(other.expect("sent")).await.expect(200);
    assert!(!other.headers.contains_key("access-control-allow-origin"));

    // Without the variable there are no CORS headers at all.
    let plain = TestApp::start(Backend::Embedded).await;
    let reply = plain
        .client
        .request(Method::OPTIONS, format!("{}/v1/auth/login", plain.base))
        .header("origin", game)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("sent");
    let reply = crate::common::Api::reply(reply).await;
    assert!(reply.headers.keys().all(|name| !name.as_str().starts_with("access-control-")), "{:?}", reply.headers);
}

/// Reads from `stream` until the server closes it (or resets it), or `within` passes; true when
/// it closed.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// Slowloris: a client that sends its headers a byte at a time, or connects and sends nothing, is
/// cut off once `HTTP_HEADER_READ_TIMEOUT_SECS` has passed, while normal requests are served and
/// a keep-alive connection may stay idle longer than that between requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start_with(Backend::Embedded, |env| {
        env.set("HTTP_HEADER_READ_TIMEOUT_SECS", "1");
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();

    let mut trickler = tokio::net::TcpStream::connect(&addr).await.expect("connects");
    let started = Instant::now();
    let head = b"GET /health/live HTTP/1.1\r\nHost: guildhall\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut_off = false;
    for byte in head {
        if trickler.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        if closed_within(&mut trickler, Duration::from_millis(100)).await {
            cut_off = true;
            break;
        }
        // A normal request meanwhile is answered at once.
        if started.elapsed() < Duration::from_millis(300) {
            app.get("/health/live", None).await.expect(200);
        }
    }
    let elapsed = started.elapsed();
    assert!(cut_off, "the trickled request was still open after {elapsed:?}");
    assert!(elapsed < Duration::from_millis(2500), "cut off after {elapsed:?}, the timeout is 1 s");
    assert!(elapsed >= Duration::from_millis(900), "cut off early, after {elapsed:?}");

    // A connection that says nothing is cut off too.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.expect("connects");
    assert!(closed_within(&mut silent, Duration::from_millis(2500)).await, "a silent connection stayed open");

    // A keep-alive connection idle for longer than the head timeout still serves its next request.
    let mut keep = tokio::net::TcpStream::connect(&addr).await.expect("connects");
    let request = b"GET /health/live HTTP/1.1\r\nHost: guildhall\r\n\r\n";
    let mut answer = vec![0u8; 4096];
    for round in 0..2 {
        keep.write_all(request).await.expect("request sent");
        let n = tokio::time::timeout(Duration::from_secs(5), keep.read(&mut answer)).await.expect("answered").expect("read");
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "round {round}: {}", String::from_utf8_lossy(&answer[..n]));
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(1600)).await;
        }
    }
}

/// `HTTP_MAX_CONNECTIONS`: past the cap a new connection is not served until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped() {
    use std::time::Duration;
    let app = TestApp::start_with(Backend::Embedded, |env| {
        env.set("HTTP_MAX_CONNECTIONS", "2").set("HTTP_HEADER_READ_TIMEOUT_SECS", "30");
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let first = tokio::net::TcpStream::connect(&addr).await.expect("connects");
    let _second = tokio::net::TcpStream::connect(&addr).await.expect("connects");
    // The kernel completes the handshake (the backlog), but nothing is served.
    let client = reqwest::Client::builder().timeout(Duration::from_millis(1500)).build().expect("client");
    let waiting = client.get(format!("{}/health/live", app.base)).send().await;
    assert!(waiting.is_err_and(|err| err.is_timeout()), "served past the cap");
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(5), app.client.get(format!("{}/health/live", app.base)).send()).await;
    assert_eq!(served.expect("served once a connection closed").expect("answer").status(), 200);
}

/// A WebSocket keeps its connection's slot of `HTTP_MAX_CONNECTIONS` for its whole life, not only
/// for its handshake: with two sockets open at a cap of two, a third connection waits until one
/// of them closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_count_against_the_connection_cap() {
    use std::time::Duration;
    let app = TestApp::start_with(Backend::Embedded, |env| {
        env.set("HTTP_MAX_CONNECTIONS", "2").set("HTTP_HEADER_READ_TIMEOUT_SECS", "30");
    })
    .await;
    // Signed up over a connection that closes after its answer, so that it gives its slot back.
    let closing = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let ana = crate::common::Api { base: app.base.clone(), client: closing.clone() }.register("ana").await;
    let first = Chat::connect(&app.base, &ana.access).await;
    let _second = Chat::connect(&app.base, &ana.access).await;
    let waiting = closing.get(format!("{}/health/live", app.base)).timeout(Duration::from_millis(1500)).send().await;
    assert!(waiting.is_err_and(|err| err.is_timeout()), "served past the cap while two sockets were open");
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(5), closing.get(format!("{}/health/live", app.base)).send()).await;
    assert_eq!(served.expect("served once a socket closed").expect("answer").status(), 200);
}

/// A server on `backend` with the bootstrap key set.
async fn with_admin_key(backend: Backend) -> TestApp {
    TestApp::start_with(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await
}

/// Named keys do what their scopes allow and nothing else, grant no more than they hold, are
/// listed without the key itself, and stop working once revoked; the audit log names the key
/// behind each change.
async fn named_keys_have_scopes_and_revoked_keys_stop_working(backend: Backend) {
    let app = with_admin_key(backend).await;
    let ana = app.register("ana").await;
    app.get("/v1/admin/keys", None).await.expect_error(401, "missing_token");
    app.get("/v1/admin/keys", Some(&ana.access)).await.expect_error(401, "invalid_token");
    let (support_id, support) = server_key(&app, "support: ana", &["accounts", "audit"]).await;
    assert!(support.starts_with("ghk_") && support.len() == 47, "{support}");

    // Bad requests.
    for body in [
        json!({"name": "x", "scopes": []}),
        json!({"name": "x", "scopes": ["root"]}),
        json!({"name": " ", "scopes": ["chat"]}),
        json!({"name": "x".repeat(65), "scopes": ["chat"]}),
        json!({"name": "x", "scopes": ["chat"], "key": "mine"}),
        json!({"name": "x", "scopes": vec!["chat"; 9]}),
    ] {
        app.post("/v1/admin/keys", Some(ADMIN_KEY), body).await.expect_error(400, "invalid_request");
    }

    // What the support key may and may not do.
    app.get("/v1/admin/accounts", Some(&support)).await.expect(200);
    app.get(&format!("/v1/admin/accounts/{}", ana.id), Some(&support)).await.expect(200);
    app.get("/v1/admin/audit", Some(&support)).await.expect(200);
    app.get("/v1/admin/keys", Some(&support)).await.expect_error(403, "insufficient_scope");
    app.post("/v1/admin/keys", Some(&support), json!({"name": "more", "scopes": ["accounts"]}))
        .await
        .expect_error(403, "insufficient_scope");
    let board = json!({"id": "arena", "sort": "desc", "operator": "best"});
    app.post("/v1/admin/leaderboards", Some(&support), board.clone()).await.expect_error(403, "insufficient_scope");
    app.get("/v1/admin/assets", Some(&support)).await.expect_error(403, "insufficient_scope");
    app.post("/v1/admin/leaderboards", Some(ADMIN_KEY), board).await.expect(201);
    let for_ana = json!({"score": 5, "owner_id": ana.id, "owner_name": "ana"});
    app.post("/v1/leaderboards/arena/scores", Some(&support), for_ana.clone()).await.expect_error(403, "insufficient_scope");
    let (_, game) = server_key(&app, "game servers", &["game_server"]).await;
    app.post("/v1/leaderboards/arena/scores", Some(&game), for_ana).await.expect(200);
    app.get("/v1/admin/accounts", Some(&game)).await.expect_error(403, "insufficient_scope");

    // A key with `admin` grants only what it holds.
    let (ops_id, ops) = server_key(&app, "ops", &["admin", "accounts"]).await;
    app.post("/v1/admin/keys", Some(&ops), json!({"name": "chat mod", "scopes": ["chat"]})).await.expect_error(403, "insufficient_scope");
    let made = app.post("/v1/admin/keys", Some(&ops), json!({"name": "helper", "scopes": ["accounts"]})).await.expect(201).body;
    assert_eq!(made["created_by"], ops_id.as_str());
    assert_eq!(made["scopes"], json!(["accounts"]));

    // Lists show the keys, never the key itself, a page at a time.
    let listed = app.pages("/v1/admin/keys?limit=1", ADMIN_KEY, "keys").await;
    let names: Vec<&str> = listed.iter().map(|k| k["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["helper", "ops", "game servers", "support: ana"], "newest first");
    assert!(listed.iter().all(|k| k.get("key").is_none() && k["prefix"].as_str().is_some_and(|p| p.len() == 12)));
    assert_eq!(listed[3]["prefix"], &support[..12]);
    assert_eq!(listed[3]["scopes"], json!(["accounts", "audit"]));

    // Revoked: refused at once, listed only on request, not revoked twice.
    app.delete(&format!("/v1/admin/keys/{support_id}"), Some(ADMIN_KEY)).await.expect(204);
    app.get("/v1/admin/accounts", Some(&support)).await.expect_error(401, "invalid_token");
    app.delete(&format!("/v1/admin/keys/{support_id}"), Some(ADMIN_KEY)).await.expect_error(404, "not_found");
    app.delete("/v1/admin/keys/not-a-key", Some(ADMIN_KEY)).await.expect_error(404, "not_found");
    let live = app.pages("/v1/admin/keys?limit=100", ADMIN_KEY, "keys").await;
    assert!(live.iter().all(|k| k["id"] != support_id.as_str()));
    let all = app.pages("/v1/admin/keys?include_revoked=true", ADMIN_KEY, "keys").await;
    assert!(all.iter().any(|k| k["id"] == support_id.as_str() && k["revoked_at"].is_string()));

    // The audit log: each change, with the key that made it.
    let entries = audit(&app, "").await;
    let actions: Vec<(&str, &str)> =
        entries.iter().map(|e| (e["action"].as_str().expect("action"), e["key_name"].as_str().expect("key name"))).collect();
    assert_eq!(
        actions,
        [
            ("keys.revoke", "bootstrap"),
            ("keys.create", "ops"),
            ("keys.create", "bootstrap"),
            ("keys.create", "bootstrap"),
            ("leaderboards.create", "bootstrap"),
            ("keys.create", "bootstrap"),
        ]
    );
    assert!(entries.iter().all(|e| e["request_id"].as_str().is_some_and(|id| !id.is_empty())));
    let by_ops = audit(&app, &format!("key={ops_id}")).await;
    assert_eq!(by_ops.len(), 1);
    assert_eq!(by_ops[0]["target"], format!("key:{}", made["id"].as_str().expect("id")));
    assert_eq!(by_ops[0]["detail"]["scopes"], json!(["accounts"]));
    let revokes = audit(&app, &format!("action=keys.revoke&target=key:{support_id}")).await;
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0]["key_id"], "bootstrap");
    app.get("/v1/admin/audit?cursor=nope", Some(ADMIN_KEY)).await.expect_error(400, "invalid_request");
}

/// A banned player cannot sign in (password or device) or refresh, their sessions end and their
/// chat socket closes; lifting the ban lets them back.
async fn a_banned_player_cannot_sign_in_and_their_socket_closes(backend: Backend) {
    let app = with_admin_key(backend).await;
    let ana = app.register("ana").await;
    let mut socket = Chat::connect(&app.base, &ana.access).await;
    let (moderator_id, moderator) = server_key(&app, "moderator", &["accounts"]).await;
    let ban = format!("/v1/admin/accounts/{}/ban", ana.id);

    for body in [json!({"minutes": 0}), json!({"minutes": 525_601}), json!({"reason": "x".repeat(501)}), json!({"days": 1})] {
        app.post(&ban, Some(&moderator), body).await.expect_error(400, "invalid_request");
    }
    app.post("/v1/admin/accounts/0193aaaa-0000-7000-8000-000000000000/ban", Some(&moderator), json!({}))
        .await
        .expect_error(404, "not_found");
    let banned = app.post(&ban, Some(&moderator), json!({"reason": "cheating", "minutes": 60})).await.expect(200).body;
    assert_eq!(banned["sessions_ended"], 1);
    assert_eq!((banned["ban"]["issued_by"].as_str(), banned["ban"]["in_force"].as_bool()), (Some(moderator_id.as_str()), Some(true)));
    assert!(banned["ban"]["until"].is_string());

    assert_eq!(socket.closed_within(std::time::Duration::from_secs(5)).await, Some(4002), "the ban closes the player's socket");
    app.get("/v1/accounts/me", Some(&ana.access)).await.expect_error(401, "session_revoked");
    app.post("/v1/auth/refresh", None, json!({"refresh_token": ana.refresh})).await.expect_error(401, "session_revoked");
    let refused =
        app.post("/v1/auth/login", None, json!({"email": ana.email, "password": ana.password})).await.expect_error(403, "account_banned");
    assert!(!refused.body.to_string().contains("cheating"), "the reason stays with the operators");
    // A wrong password still says only that.
    app.post("/v1/auth/login", None, json!({"email": ana.email, "password": "wrong-password"}))
        .await
        .expect_error(401, "invalid_credentials");

    let view = app.get(&format!("/v1/admin/accounts/{}", ana.id), Some(&moderator)).await.expect(200).body;
    assert_eq!((view["ban"]["reason"].as_str(), view["live_session_count"].as_i64()), (Some("cheating"), Some(0)));
    let found = app.get("/v1/admin/accounts?query=ana", Some(&moderator)).await.expect(200).body;
    assert_eq!(found["accounts"][0]["banned"], true);

    // A guest is banned by account too: its device signs in no more.
    let guest = app.post("/v1/auth/guest", None, json!({"device_id": "device-gus"})).await.expect(201).body;
    let gus = app.get("/v1/accounts/me", Some(guest["access_token"].as_str().expect("token"))).await.expect(200).body;
    app.post(&format!("/v1/admin/accounts/{}/ban", gus["id"].as_str().expect("id")), Some(&moderator), json!({})).await.expect(200);
    let sessions_of_gus = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM sessions WHERE account_id = $1")
            .bind(gus["id"].as_str().expect("id"))
            .fetch_one(app.database().await.pool())
            .await
            .expect("sessions")
    };
    let before = sessions_of_gus().await;
    app.post("/v1/auth/guest", None, json!({"device_id": "device-gus"})).await.expect_error(403, "account_banned");
    assert_eq!(sessions_of_gus().await, before, "a refused sign-in stores no session");

    // Lifted: back in; lifting again finds nothing.
    app.delete(&ban, Some(&moderator)).await.expect(204);
    app.delete(&ban, Some(&moderator)).await.expect_error(404, "not_found");
    let (access, _) = app.login(&ana).await;
    Chat::connect(&app.base, &access).await;
    let view = app.get(&format!("/v1/admin/accounts/{}", ana.id), Some(&moderator)).await.expect(200).body;
    assert!(view["ban"].is_null());

    let history = audit(&app, &format!("target=account:{}", ana.id)).await;
    let actions: Vec<&str> = history.iter().map(|e| e["action"].as_str().expect("action")).collect();
    assert_eq!(actions, ["accounts.unban", "accounts.ban"]);
    assert!(history.iter().all(|e| e["key_id"] == moderator_id.as_str() && e["key_name"] == "moderator"));
    assert_eq!(history[1]["detail"]["reason"], "cheating");
}

/// Search by id, username or email prefix (wildcards taken literally), the account view, ending
/// every session, and an operator's erasure, which is the player's own.
async fn operators_search_view_end_sessions_and_erase_accounts(backend: Backend) {
    let app = with_admin_key(backend).await;
    let one = app.register("ana_one").await;
    let two = app.register("Ana_Two").await;
    let bob = app.register("bob").await;
    let (_, support) = server_key(&app, "support", &["accounts"]).await;
    let (_, other) = server_key(&app, "boards", &["leaderboards"]).await;

    let ids = |page: &serde_json::Value| -> Vec<String> {
        page["accounts"].as_array().expect("accounts").iter().map(|a| a["account"]["id"].as_str().expect("id").to_owned()).collect()
    };
    let search = |query: &str| {
        let path = format!("/v1/admin/accounts?query={query}");
        let support = support.clone();
        let api = app.api.clone();
        async move { api.get(&path, Some(&support)).await }
    };
    assert_eq!(ids(&search("ana_").await.expect(200).body), [two.id.as_str(), one.id.as_str()], "newest first, any case");
    assert_eq!(ids(&search("ANA_T").await.expect(200).body), [two.id.as_str()]);
    assert!(ids(&search("an_").await.expect(200).body).is_empty(), "an underscore is not a wildcard");
    assert!(ids(&search("a%25").await.expect(200).body).is_empty(), "nor is a percent sign");
    assert_eq!(ids(&search("bob%40exa").await.expect(200).body), [bob.id.as_str()], "by email prefix");
    assert_eq!(ids(&search(&one.id).await.expect(200).body), [one.id.as_str()], "by id");
    let shown = search("bob").await.expect(200).body;
    assert_eq!(shown["accounts"][0]["account"]["email"], "bob@example.com");
    assert_eq!(app.pages("/v1/admin/accounts?limit=1", &support, "accounts").await.len(), 3);
    app.get("/v1/admin/accounts?limit=0", Some(&support)).await.expect_error(400, "invalid_request");
    app.get("/v1/admin/accounts?cursor=x", Some(&support)).await.expect_error(400, "invalid_request");

    // The view: sessions, and where the other services' parts are.
    let (second, second_refresh) = app.login(&one).await;
    let view = app.get(&format!("/v1/admin/accounts/{}", one.id), Some(&support)).await.expect(200).body;
    assert_eq!((view["account"]["username"].as_str(), view["live_session_count"].as_i64()), (Some("ana_one"), Some(2)));
    assert_eq!(view["live_sessions"].as_array().map(Vec::len), Some(2));
    assert_eq!(view["parts"]["records"], format!("/v1/admin/accounts/{}/records", one.id));
    assert_eq!(view["parts"]["assets"], format!("/v1/admin/assets?owner_id={}", one.id));
    app.get("/v1/admin/accounts/nope", Some(&support)).await.expect_error(404, "not_found");

    // Every session ends; the player may sign in again.
    let ended = app.post(&format!("/v1/admin/accounts/{}/sessions/revoke", one.id), Some(&support), json!({})).await.expect(200).body;
    assert_eq!(ended["sessions_ended"], 2);
    app.get("/v1/accounts/me", Some(&one.access)).await.expect_error(401, "session_revoked");
    app.get("/v1/accounts/me", Some(&second)).await.expect_error(401, "session_revoked");
    app.post("/v1/auth/refresh", None, json!({"refresh_token": second_refresh})).await.expect_error(401, "session_revoked");
    app.login(&one).await;

    // Erasure, as the player's own: the account goes and account.deleted is recorded.
    let path = format!("/v1/admin/accounts/{}", two.id);
    app.call(Method::DELETE, &path, Some(&other), None).await.expect_error(403, "insufficient_scope");
    app.call(Method::DELETE, &path, Some(&support), None).await.expect(204);
    app.get(&path, Some(&support)).await.expect_error(404, "not_found");
    app.call(Method::DELETE, &path, Some(&support), None).await.expect_error(404, "not_found");
    app.get("/v1/accounts/me", Some(&two.access)).await.expect_error(401, "session_revoked");
    app.post("/v1/auth/login", None, json!({"email": two.email, "password": two.password})).await.expect_error(401, "invalid_credentials");
    let db = app.database().await;
    let payloads: Vec<String> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = 'account.deleted'").fetch_all(db.pool()).await.expect("outbox");
    assert_eq!(payloads.len(), 1);
    assert!(payloads[0].contains(&two.id));
    let erased = audit(&app, "action=accounts.delete").await;
    assert_eq!((erased.len(), erased[0]["target"].as_str()), (1, Some(format!("account:{}", two.id).as_str())));

    // Every account route wants the `accounts` scope.
    for (method, path) in [
        (Method::GET, "/v1/admin/accounts".to_owned()),
        (Method::GET, format!("/v1/admin/accounts/{}", bob.id)),
        (Method::POST, format!("/v1/admin/accounts/{}/ban", bob.id)),
        (Method::DELETE, format!("/v1/admin/accounts/{}/ban", bob.id)),
        (Method::POST, format!("/v1/admin/accounts/{}/sessions/revoke", bob.id)),
        (Method::GET, format!("/v1/admin/accounts/{}/records", bob.id)),
        (Method::GET, format!("/v1/admin/accounts/{}/sanctions", bob.id)),
    ] {
        let body = (method == Method::POST).then(|| json!({}));
        app.call(method.clone(), &path, Some(&other), body).await.expect_error(403, "insufficient_scope");
    }
    app.get("/v1/accounts/me", Some(&bob.access)).await.expect(200);
}

/// A key revoked on one process stops working on the other within seconds (each remembers what
/// it looked up for 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_process_stops_working_on_every_other() {
    if platform::testing::real_backends_skipped() {
        return;
    }
    let (_env, a, b) = crate::common::two_processes(|_| {}).await;
    let (id, key) = server_key(&a, "ops", &["accounts"]).await;
    b.get("/v1/admin/accounts", Some(&key)).await.expect(200);
    a.delete(&format!("/v1/admin/keys/{id}"), Some(ADMIN_KEY)).await.expect(204);
    a.get("/v1/admin/accounts", Some(&key)).await.expect_error(401, "invalid_token");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while b.get("/v1/admin/accounts", Some(&key)).await.status == 200 {
        assert!(std::time::Instant::now() < deadline, "the other process still takes the revoked key");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    b.get("/v1/admin/accounts", Some(&key)).await.expect_error(401, "invalid_token");
}

/// One scrape of `/metrics`, parsed: each sample line's series (`name{labels}` as written) and
/// value. Checks the format on the way: every sample belongs to a family announced by a `# TYPE`
/// line, and every histogram's buckets rise and end in `+Inf` equal to its `_count`.
async fn scrape(base: &str) -> std::collections::BTreeMap<String, f64> {
    let response = reqwest::get(format!("{base}/metrics")).await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.expect("body");
    let mut types: std::collections::HashMap<String, String> = Default::default();
    let mut samples = std::collections::BTreeMap::new();
    let mut in_order = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "{name} announced twice");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        let name = series.split('{').next().expect("name");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|base| types.get(*base).is_some_and(|k| k == "histogram")))
            .unwrap_or(name);
        assert!(types.contains_key(family), "{name} has no # TYPE line before it");
        assert!(samples.insert(series.to_owned(), value).is_none(), "{series} twice");
        in_order.push((series.to_owned(), value));
    }
    // Histograms, in the order written: cumulative buckets per series, the last one +Inf and
    // equal to the count.
    let mut last: std::collections::HashMap<String, f64> = Default::default();
    for (series, value) in &in_order {
        let Some((name, labels)) = series.split_once("_bucket{") else { continue };
        let (others, le) = labels.rsplit_once("le=\"").expect("le label");
        let key = format!("{name}{{{others}");
        if let Some(previous) = last.get(&key) {
            assert!(value >= previous || le.starts_with("+Inf"), "{series} falls");
        }
        last.insert(key, *value);
        if le.starts_with("+Inf") {
            let others = others.trim_end_matches(',');
            let count = if others.is_empty() { format!("{name}_count") } else { format!("{name}_count{{{others}}}") };
            assert_eq!(samples.get(&count), Some(value), "{series} against {count}");
        }
    }
    samples
}

/// The value of `series` in `scrape`, 0 when absent.
fn figure(scrape: &std::collections::BTreeMap<String, f64>, series: &str) -> f64 {
    scrape.get(series).copied().unwrap_or(0.0)
}

/// `/metrics` on the metrics listener follows what the server does: requests by route template
/// (never the raw path), chat sockets and deliveries, the score writer's batches, the pool, the
/// cache, and events through the outbox to their consumers; the API's listener does not serve it.
async fn metrics_move_with_requests_deliveries_and_events(backend: Backend) {
    let app = TestApp::start_with_metrics(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", crate::common::ADMIN_KEY);
    })
    .await;
    let metrics = app.metrics_base.clone().expect("a metrics listener");
    let before = scrape(&metrics).await;
    assert_eq!(figure(&before, "guildhall_chat_sockets"), 0.0);
    assert!(before.contains_key("guildhall_db_pool_max"), "pool figures from the start");
    assert!(before.contains_key("guildhall_outbox_pending"), "the relay runs here: outbox figures");

    // Requests: three reads of one route, and a path no route matches.
    let (ana_id, ana) = crate::common::guest(&app, "metrics-ana").await;
    let (_, bob) = crate::common::guest(&app, "metrics-bob").await;
    for _ in 0..3 {
        app.get("/v1/accounts/me", Some(&ana)).await.expect(200);
    }
    app.get(&format!("/v1/nothing/{ana_id}"), None).await.expect(404);
    // The API's own listener has no /metrics.
    app.get("/metrics", None).await.expect_error(404, "not_found");

    // A score through the group commit.
    app.post("/v1/admin/leaderboards", Some(crate::common::ADMIN_KEY), json!({"id": "metrics-board", "sort": "desc", "operator": "best"}))
        .await
        .expect(201);
    app.post("/v1/leaderboards/metrics-board/scores", Some(&ana), json!({"score": 10})).await.expect(200);

    // A chat message from ana reaches bob.
    let mut ana_chat = crate::common::Chat::connect(&app.base, &ana).await;
    let mut bob_chat = crate::common::Chat::connect(&app.base, &bob).await;
    ana_chat.join("room:metrics").await;
    bob_chat.join("room:metrics").await;
    let ack = ana_chat.send("room:metrics", "hello").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let delivered = bob_chat.next_of("message").await;
    assert_eq!(delivered["message"]["body"], "hello");

    let during = scrape(&metrics).await;
    let me = r#"{method="GET",route="/v1/accounts/me",status="2xx"}"#;
    // Each guest sign-in reads /me once too.
    assert_eq!(
        figure(&during, &format!("guildhall_http_requests_total{me}")) - figure(&before, &format!("guildhall_http_requests_total{me}")),
        5.0
    );
    assert_eq!(figure(&during, r#"guildhall_http_requests_total{method="GET",route="unmatched",status="4xx"}"#), 2.0, "the two 404s");
    assert!(during.keys().all(|series| !series.contains(&ana_id) && !series.contains("/v1/nothing")), "raw paths never become labels");
    assert_eq!(figure(&during, r#"guildhall_http_request_duration_seconds_count{method="GET",route="/v1/accounts/me"}"#), 5.0);
    assert_eq!(figure(&during, r#"guildhall_http_requests_total{method="GET",route="/v1/chat/ws",status="1xx"}"#), 2.0, "two upgrades");
    assert_eq!(figure(&during, "guildhall_chat_sockets"), 2.0);
    assert_eq!(figure(&during, "guildhall_chat_players_connected"), 2.0);
    assert_eq!(figure(&during, "guildhall_chat_sockets_opened_total"), 2.0);
    // bob got ana's message and the presence of ana... whichever joined later; ana got bob's.
    assert!(figure(&during, "guildhall_chat_deliveries_total") >= 2.0, "{during:?}");
    assert!(figure(&during, "guildhall_chat_fanout_seconds_count") >= 2.0);
    assert!(figure(&during, "guildhall_leaderboard_batch_size_count") >= 1.0);
    assert!(figure(&during, "guildhall_leaderboard_commit_seconds_count") >= 1.0);
    assert_eq!(figure(&during, "guildhall_leaderboard_failed_batches_total"), 0.0);
    assert!(figure(&during, "guildhall_db_pool_connections") >= 1.0);
    assert_eq!(figure(&during, r#"guildhall_cache_errors_total{kind="unavailable"}"#), 0.0);

    // The summary the console reads agrees.
    let summary =
        reqwest::get(format!("{metrics}/metrics/summary")).await.expect("summary").json::<serde_json::Value>().await.expect("json");
    assert_eq!(summary["players_connected"], 2);
    assert_eq!(summary["chat_sockets"], 2);
    assert!(summary["http"]["requests"].as_u64().expect("requests") >= 12, "{summary}");
    assert!(summary["db_pool"]["max"].as_u64().expect("pool") >= 1, "{summary}");

    // An event through the outbox to its consumers (in process, or SQS on the real backends).
    ana_chat.close().await;
    bob_chat.close().await;
    app.call(Method::DELETE, "/v1/accounts/me", Some(&ana), None).await.expect(204);
    let handled = r#"guildhall_events_handled_total{consumer="chat",outcome="ok"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let after = loop {
        let now = scrape(&metrics).await;
        let settled = figure(&now, handled) >= 1.0 && figure(&now, "guildhall_chat_sockets") == 0.0;
        if settled || std::time::Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(figure(&after, handled), 1.0, "chat handled account.deleted once");
    assert!(figure(&after, r#"guildhall_events_consumer_lag_seconds_count{consumer="chat"}"#) >= 1.0);
    assert!(figure(&after, "guildhall_outbox_delivered_total") >= 1.0);
    assert_eq!(figure(&after, "guildhall_outbox_dead"), 0.0);
    assert_eq!(figure(&after, "guildhall_chat_sockets"), 0.0, "closed sockets leave the gauge");
}

/// How many events of `event_type` the outbox holds.
async fn recorded(app: &TestApp, event_type: &str) -> i64 {
    let db = app.database().await;
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE event_type = $1").bind(event_type).fetch_one(db.pool()).await.expect("outbox")
}

/// The `account_id`s of a list's entries.
fn ids(entries: &[serde_json::Value]) -> Vec<&str> {
    entries.iter().map(|e| e["account_id"].as_str().expect("account_id")).collect()
}

async fn friends_request_accept_list_and_remove(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (ana_id, ana) = guest(&app, "ana").await;
    let (bob_id, bob) = guest(&app, "bob").await;
    let (cy_id, cy) = guest(&app, "cy").await;
    let bob_name = app.get("/v1/accounts/me", Some(&bob)).await.expect(200).body["username"].clone();

    // Bad targets.
    app.post(&format!("/v1/friends/{ana_id}"), Some(&ana), json!({})).await.expect_error(400, "cannot_target_self");
    app.post(&format!("/v1/friends/{}", uuid::Uuid::now_v7()), Some(&ana), json!({})).await.expect_error(404, "not_found");
    app.post("/v1/friends/not-an-id", Some(&ana), json!({})).await.expect_error(404, "not_found");
    app.delete(&format!("/v1/friends/{}", uuid::Uuid::now_v7()), Some(&ana)).await.expect_error(404, "not_found");
    app.get("/v1/friends?state=enemies", Some(&ana)).await.expect_error(400, "invalid_request");
    app.get("/v1/friends?limit=0", Some(&ana)).await.expect_error(400, "invalid_request");
    app.get("/v1/friends?cursor=nope", Some(&ana)).await.expect_error(400, "invalid_request");
    app.get("/v1/friends", None).await.expect(401);

    // A request, repeated: one request, one event.
    let sent = app.post(&format!("/v1/friends/{bob_id}"), Some(&ana), json!({})).await.expect(201).body;
    assert_eq!((sent["account_id"].as_str(), sent["state"].as_str()), (Some(bob_id.as_str()), Some("outgoing")), "{sent}");
    assert_eq!(app.post(&format!("/v1/friends/{bob_id}"), Some(&ana), json!({})).await.expect(200).body["state"], "outgoing");
    assert_eq!(recorded(&app, "social.friend_requested").await, 1);
    let outgoing = app.get("/v1/friends?state=outgoing", Some(&ana)).await.expect(200).body;
    assert_eq!(outgoing["friends"][0]["account_id"], bob_id.as_str());
    assert_eq!(outgoing["friends"][0]["name"], bob_name);
    assert!(outgoing["friends"][0].get("online").is_none(), "requests do not tell when a stranger plays: {outgoing}");
    let incoming = app.get("/v1/friends?state=incoming", Some(&bob)).await.expect(200).body;
    assert_eq!(ids(incoming["friends"].as_array().expect("list")), [ana_id.as_str()]);
    assert!(app.get("/v1/friends", Some(&ana)).await.expect(200).body["friends"].as_array().expect("list").is_empty());

    // Bob asking back accepts: friends both ways, one accept event.
    let accepted = app.post(&format!("/v1/friends/{ana_id}"), Some(&bob), json!({})).await.expect(200).body;
    assert_eq!(accepted["state"], "friends");
    assert_eq!(recorded(&app, "social.friend_accepted").await, 1);
    for (token, other) in [(&ana, &bob_id), (&bob, &ana_id)] {
        let friends = app.get("/v1/friends?state=friends", Some(token)).await.expect(200).body;
        assert_eq!(ids(friends["friends"].as_array().expect("list")), [other.as_str()]);
        assert_eq!(friends["friends"][0]["online"], false, "{friends}");
        assert!(app.get("/v1/friends?state=incoming", Some(token)).await.expect(200).body["friends"].as_array().expect("list").is_empty());
    }
    assert_eq!(app.post(&format!("/v1/friends/{bob_id}"), Some(&ana), json!({})).await.expect(200).body["state"], "friends");

    // Online while Ana has a chat socket open, offline once it closes.
    let online = |want: bool| {
        let (app, bob) = (&app, &bob);
        async move { app.get("/v1/friends", Some(bob)).await.expect(200).body["friends"][0]["online"] == want }
    };
    let socket = Chat::connect(&app.base, &ana).await;
    eventually(std::time::Duration::from_secs(5), "Ana shows online", || online(true)).await;
    socket.close().await;
    eventually(std::time::Duration::from_secs(5), "Ana shows offline", || online(false)).await;

    // Pages: Cy is friends with Ana too; one at a time, each once.
    make_friends(&app, (&cy_id, &cy), (&ana_id, &ana)).await;
    let first = app.get("/v1/friends?limit=1", Some(&ana)).await.expect(200).body;
    assert_eq!(first["friends"].as_array().expect("list").len(), 1);
    assert!(first["next_cursor"].is_string());
    let all = app.pages("/v1/friends?limit=1", &ana, "friends").await;
    let mut expected = vec![bob_id.as_str(), cy_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids(&all), expected);

    // Removing a friend, declining and withdrawing: each ends the relation both ways, once.
    app.delete(&format!("/v1/friends/{ana_id}"), Some(&bob)).await.expect(204);
    app.delete(&format!("/v1/friends/{ana_id}"), Some(&bob)).await.expect(204);
    assert_eq!(ids(app.get("/v1/friends", Some(&ana)).await.expect(200).body["friends"].as_array().expect("list")), [cy_id.as_str()]);
    assert!(app.get("/v1/friends", Some(&bob)).await.expect(200).body["friends"].as_array().expect("list").is_empty());
    app.post(&format!("/v1/friends/{bob_id}"), Some(&cy), json!({})).await.expect(201);
    app.delete(&format!("/v1/friends/{cy_id}"), Some(&bob)).await.expect(204);
    assert!(app.get("/v1/friends?state=outgoing", Some(&cy)).await.expect(200).body["friends"].as_array().expect("list").is_empty());
    assert_eq!(recorded(&app, "social.friend_removed").await, 2);

    // Erasure: Cy's account goes, and with it every relation of hers.
    app.call(Method::DELETE, "/v1/accounts/me", Some(&cy), None).await.expect(204);
    assert!(app.get("/v1/friends", Some(&ana)).await.expect(200).body["friends"].as_array().expect("list").is_empty());
    let db = app.database().await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM friend_links WHERE account_id = $1 OR other_id = $1")
        .bind(&cy_id)
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(left, 0);
}

async fn friends_and_blocks_are_capped_and_requests_rate_limited(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("SOCIAL_MAX_FRIENDS", "2")
            .set("SOCIAL_MAX_PENDING_REQUESTS", "3")
            .set("SOCIAL_FRIEND_REQUESTS_PER_HOUR", "4")
            .set("SOCIAL_MAX_BLOCKS", "1");
    })
    .await;
    let mut players = Vec::new();
    for i in 0..8 {
        players.push(guest(&app, &format!("p{i}")).await);
    }
    let ask = |from: usize, to: usize| {
        let (app, players) = (&app, &players);
        async move { app.post(&format!("/v1/friends/{}", players[to].0), Some(&players[from].1), json!({})).await }
    };
    // Three requests wait at most.
    for to in 1..=3 {
        ask(0, to).await.expect(201);
    }
    ask(0, 4).await.expect_error(409, "too_many_pending_requests");
    // Two friends at most: a request beyond is refused, and so is accepting one.
    ask(1, 0).await.expect(200);
    ask(2, 0).await.expect(200);
    ask(0, 4).await.expect_error(409, "friend_limit_reached");
    ask(3, 0).await.expect_error(409, "friend_limit_reached");
    ask(4, 5).await.expect(201);
    // A request to a full player is delivered; they cannot accept it until they drop a friend.
    ask(5, 0).await.expect(201);
    ask(0, 5).await.expect_error(409, "friend_limit_reached");

    // Received requests are capped too, with the answer a block gets.
    for from in 5..=7 {
        ask(from, 4).await.expect(if from == 5 { 200 } else { 201 });
    }
    app.delete(&format!("/v1/friends/{}", players[5].0), Some(&players[4].1)).await.expect(204);
    ask(1, 4).await.expect(201);
    ask(3, 4).await.expect_error(403, "request_not_delivered");

    // Four new requests an hour: player 6 asked 4 above; withdrawing and asking again counts
    // each time.
    let token = &players[6].1;
    ask(6, 5).await.expect(201);
    ask(6, 7).await.expect(201);
    app.delete(&format!("/v1/friends/{}", players[5].0), Some(token)).await.expect(204);
    ask(6, 5).await.expect(201);
    app.delete(&format!("/v1/friends/{}", players[5].0), Some(token)).await.expect(204);
    ask(6, 5).await.expect_error(429, "rate_limited");
    // Repeats and accepts are free.
    ask(6, 7).await.expect(200);

    // One block at most.
    app.post(&format!("/v1/blocks/{}", players[7].0), Some(&players[3].1), json!({})).await.expect(201);
    app.post(&format!("/v1/blocks/{}", players[6].0), Some(&players[3].1), json!({})).await.expect_error(409, "block_limit_reached");
}

async fn blocks_end_friendships_and_refuse_requests(backend: Backend) {
    let app = TestApp::start_with(backend, |env| {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    })
    .await;
    let (ana_id, ana) = guest(&app, "ana").await;
    let (bob_id, bob) = guest(&app, "bob").await;
    let (cy_id, cy) = guest(&app, "cy").await;
    make_friends(&app, (&ana_id, &ana), (&bob_id, &bob)).await;
    app.post(&format!("/v1/friends/{ana_id}"), Some(&cy), json!({})).await.expect(201);
    app.post(&format!("/v1/blocks/{ana_id}"), Some(&ana), json!({})).await.expect_error(400, "cannot_target_self");
    app.post(&format!("/v1/blocks/{}", uuid::Uuid::now_v7()), Some(&ana), json!({})).await.expect_error(404, "not_found");

    // A block ends the friendship and the pending request, both ways.
    let blocked = app.post(&format!("/v1/blocks/{bob_id}"), Some(&ana), json!({})).await.expect(201).body;
    assert_eq!(blocked["account_id"], bob_id.as_str());
    let again = app.post(&format!("/v1/blocks/{bob_id}"), Some(&ana), json!({})).await.expect(200).body;
    assert_eq!(again["since"], blocked["since"]);
    app.post(&format!("/v1/blocks/{cy_id}"), Some(&ana), json!({})).await.expect(201);
    for token in [&ana, &bob, &cy] {
        for state in ["friends", "incoming", "outgoing"] {
            let list = app.get(&format!("/v1/friends?state={state}"), Some(token)).await.expect(200).body;
            assert!(list["friends"].as_array().expect("list").is_empty(), "{state}: {list}");
        }
    }
    assert_eq!(recorded(&app, "social.block_added").await, 2);
    assert_eq!(recorded(&app, "social.friend_removed").await, 2, "the friendship and the request ended");

    // Neither side can ask the other; the blocked one cannot tell a block from a full inbox.
    app.post(&format!("/v1/friends/{ana_id}"), Some(&bob), json!({})).await.expect_error(403, "request_not_delivered");
    app.post(&format!("/v1/friends/{bob_id}"), Some(&ana), json!({})).await.expect_error(409, "player_blocked");
    // Bob blocking Ana back is his own block.
    app.post(&format!("/v1/blocks/{ana_id}"), Some(&bob), json!({})).await.expect(201);

    // The list, a page at a time.
    let all = app.pages("/v1/blocks?limit=1", &ana, "blocks").await;
    let mut expected = vec![bob_id.as_str(), cy_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids(&all), expected);
    assert!(all.iter().all(|b| b["name"].is_string() && b["since"].is_string()), "{all:?}");
    app.get("/v1/blocks?cursor=x", Some(&ana)).await.expect_error(400, "invalid_request");

    // Unblocking (twice is fine) lets requests through again once neither blocks.
    app.delete(&format!("/v1/blocks/{bob_id}"), Some(&ana)).await.expect(204);
    app.delete(&format!("/v1/blocks/{bob_id}"), Some(&ana)).await.expect(204);
    assert_eq!(recorded(&app, "social.block_removed").await, 1);
    app.post(&format!("/v1/friends/{bob_id}"), Some(&ana), json!({})).await.expect_error(403, "request_not_delivered");
    app.delete(&format!("/v1/blocks/{ana_id}"), Some(&bob)).await.expect(204);
    app.post(&format!("/v1/friends/{bob_id}"), Some(&ana), json!({})).await.expect(201);

    // Operators see the counts in the account view.
    let view = app.get(&format!("/v1/admin/accounts/{ana_id}"), Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!(view["social"], json!({"friends": 0, "incoming_requests": 0, "outgoing_requests": 1, "blocks": 1}), "{view}");

    // Erasure takes the blocks too, both ways.
    app.call(Method::DELETE, "/v1/accounts/me", Some(&ana), None).await.expect(204);
    let db = app.database().await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blocks WHERE blocker_id = $1 OR blocked_id = $1")
        .bind(&ana_id)
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(left, 0);
}
