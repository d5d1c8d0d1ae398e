//! Sign-in with identity providers and identity linking, against local fakes of Apple's and
//! Google's key sets, Steam's `AuthenticateUserTicket` and Discord's OAuth2 endpoints: real HTTP
//! servers on loopback that this test starts, speaking each provider's wire format, with RSA keys
//! generated when the test runs (`openssl genpkey`); no network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::common::{ADMIN_KEY, Api, Backend, TestApp, TestEnv, eventually, guest};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

on_both_backends!(
    apple_and_google_id_tokens_sign_in_once_each,
    forged_or_foreign_id_tokens_are_refused,
    unknown_key_ids_refetch_the_keys_at_most_once_a_minute,
    steam_tickets_are_checked_for_this_game_and_bans,
    discord_codes_are_exchanged_with_pkce,
    identities_link_and_unlink_but_never_the_last,
    closed_sign_up_bans_and_erasure,
    guests_from_before_identities_keep_their_accounts,
    provider_sign_ins_share_the_address_limit,
);

const APPLE_CLIENT: &str = "com.example.game";
const GOOGLE_CLIENT: &str = "1234-game.apps.googleusercontent.com";
const STEAM_APP: u32 = 480;
const STEAM_KEY: &str = "publisher-key-for-tests";
const DISCORD_CLIENT: &str = "4242";
const DISCORD_SECRET: &str = "discord-secret-for-tests";
const DISCORD_REDIRECT: &str = "https://game.example/discord";

/// An RSA key made for this test run: the signer and its JWK.
struct TestKey {
    pair: RsaKeyPair,
    kid: String,
}

impl TestKey {
    fn generate(kid: &str) -> Self {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-outform", "DER"])
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl genpkey: {}", String::from_utf8_lossy(&out.stderr));
        // OpenSSL 3 writes a traditional (PKCS#1) key in DER; older ones PKCS#8.
        let pair = RsaKeyPair::from_der(&out.stdout).or_else(|_| RsaKeyPair::from_pkcs8(&out.stdout)).expect("an RSA private key");
        TestKey { pair, kid: kid.to_owned() }
    }

    fn jwk(&self) -> Value {
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(self.pair.public());
        json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&public.n), "e": URL_SAFE_NO_PAD.encode(&public.e)})
    }

    /// A compact JWS of `claims`, RS256, naming `kid`.
    fn sign(&self, kid: &str, claims: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "kid": kid, "typ": "JWT"}).to_string());
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{header}.{body}");
        let mut signature = vec![0; self.pair.public().modulus_len()];
        self.pair.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), input.as_bytes(), &mut signature).expect("signed");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// The keys of the run: two published (Apple's, Google's), one never published.
fn keys() -> &'static (TestKey, TestKey, TestKey) {
    static KEYS: OnceLock<(TestKey, TestKey, TestKey)> = OnceLock::new();
    KEYS.get_or_init(|| (TestKey::generate("apple-1"), TestKey::generate("google-1"), TestKey::generate("stranger")))
}

/// A Steam ticket the fake knows.
#[derive(Clone)]
struct Ticket {
    app_id: u32,
    steam_id: String,
    vac: bool,
    publisher: bool,
}

/// A Discord authorization the fake granted: its PKCE challenge, redirect URI and user.
#[derive(Clone)]
struct Grant {
    challenge: String,
    redirect_uri: String,
    user_id: String,
}

#[derive(Default)]
struct FakeState {
    key_fetches: HashMap<&'static str, u32>,
    tickets: HashMap<String, Ticket>,
    grants: HashMap<String, Grant>,
    discord_tokens: HashMap<String, String>,
    /// Access tokens revoked, in order.
    revoked: Vec<String>,
}

/// The fake providers, on one loopback port.
#[derive(Clone)]
struct Fakes {
    base: String,
    state: Arc<Mutex<FakeState>>,
}

impl Fakes {
    async fn start() -> Self {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let app = Router::new()
            .route("/apple/auth/keys", get(apple_keys))
            .route("/google/oauth2/v3/certs", get(google_keys))
            .route("/steam/ISteamUserAuth/AuthenticateUserTicket/v1/", get(steam_ticket))
            .route("/discord/oauth2/token", post(discord_token))
            .route("/discord/users/@me", get(discord_me))
            .route("/discord/oauth2/token/revoke", post(discord_revoke))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fakes");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Fakes { base, state }
    }

    /// The Discord access tokens revoked so far, and how many are still live.
    fn discord_revocations(&self) -> (Vec<String>, usize) {
        let state = self.state.lock().expect("state");
        (state.revoked.clone(), state.discord_tokens.len())
    }

    fn fetches(&self, provider: &'static str) -> u32 {
        self.state.lock().expect("state").key_fetches.get(provider).copied().unwrap_or(0)
    }

    fn ticket(&self, hex: &str, ticket: Ticket) {
        self.state.lock().expect("state").tickets.insert(hex.to_owned(), ticket);
    }

    /// Grants a Discord code to `user_id`, for the verifier `verifier` (S256).
    fn grant(&self, code: &str, verifier: &str, user_id: &str) {
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let grant = Grant { challenge, redirect_uri: DISCORD_REDIRECT.to_owned(), user_id: user_id.to_owned() };
        self.state.lock().expect("state").grants.insert(code.to_owned(), grant);
    }

    /// Every provider pointed at the fakes.
    fn configure(&self, env: &mut TestEnv) {
        env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY)
            .set("APPLE_CLIENT_IDS", format!("{APPLE_CLIENT},com.example.other"))
            .set("APPLE_KEYS_URL", format!("{}/apple/auth/keys", self.base))
            .set("GOOGLE_CLIENT_IDS", GOOGLE_CLIENT)
            .set("GOOGLE_KEYS_URL", format!("{}/google/oauth2/v3/certs", self.base))
            .set("STEAM_APP_ID", STEAM_APP.to_string())
            .set("STEAM_WEB_API_KEY", STEAM_KEY)
            .set("STEAM_API_URL", format!("{}/steam", self.base))
            .set("DISCORD_CLIENT_ID", DISCORD_CLIENT)
            .set("DISCORD_CLIENT_SECRET", DISCORD_SECRET)
            .set("DISCORD_API_URL", format!("{}/discord", self.base))
            .set("DISCORD_REDIRECT_URIS", DISCORD_REDIRECT);
    }
}

async fn apple_keys(State(state): State<Arc<Mutex<FakeState>>>) -> impl IntoResponse {
    *state.lock().expect("state").key_fetches.entry("apple").or_default() += 1;
    axum::Json(json!({"keys": [keys().0.jwk()]}))
}

async fn google_keys(State(state): State<Arc<Mutex<FakeState>>>) -> impl IntoResponse {
    *state.lock().expect("state").key_fetches.entry("google").or_default() += 1;
    // Google publishes two keys at a time; an EC key in the set must be skipped, not fatal.
    axum::Json(json!({"keys": [{"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "AA", "y": "AA"}, keys().1.jwk()]}))
}

/// `AuthenticateUserTicket` as Steam answers it: 403 for a wrong key, an `error` for an
/// unknown ticket or one of another app, `params` otherwise.
async fn steam_ticket(
    State(state): State<Arc<Mutex<FakeState>>>,
    Query(query): Query<HashMap<String, String>>,
) -> axum::response::Response {
    if query.get("key").map(String::as_str) != Some(STEAM_KEY) {
        return (StatusCode::FORBIDDEN, "<html>Forbidden</html>").into_response();
    }
    let app_id: u32 = query.get("appid").and_then(|a| a.parse().ok()).unwrap_or(0);
    let ticket = query.get("ticket").and_then(|t| state.lock().expect("state").tickets.get(t).cloned());
    match ticket {
        Some(t) if t.app_id == app_id => axum::Json(json!({"response": {"params": {
            "result": "OK", "steamid": t.steam_id, "ownersteamid": t.steam_id, "vacbanned": t.vac, "publisherbanned": t.publisher
        }}}))
        .into_response(),
        _ => axum::Json(json!({"response": {"error": {"errorcode": 101, "errordesc": "Invalid ticket"}}})).into_response(),
    }
}

/// Discord's token endpoint: client authentication by HTTP Basic, the code, its redirect URI and
/// the PKCE verifier checked as RFC 6749 and RFC 7636 say; `invalid_grant` otherwise.
/// An application/x-www-form-urlencoded body, decoded as a URL's query is.
fn form_of(body: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://form/?{body}"))
        .expect("form")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Whether the request carries the game's Discord client credentials (client_secret_basic).
fn discord_client(headers: &HeaderMap) -> bool {
    let basic = format!("Basic {}", STANDARD.encode(format!("{DISCORD_CLIENT}:{DISCORD_SECRET}")));
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(basic.as_str())
}

async fn discord_token(State(state): State<Arc<Mutex<FakeState>>>, headers: HeaderMap, body: String) -> axum::response::Response {
    let form = form_of(&body);
    if !discord_client(&headers) {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response();
    }
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    if field("grant_type") != "authorization_code" {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "unsupported_grant_type"}))).into_response();
    }
    let mut state = state.lock().expect("state");
    // A code is single use, whatever the outcome.
    let grant = state.grants.remove(&field("code"));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(field("code_verifier").as_bytes()));
    match grant {
        Some(g) if g.challenge == challenge && g.redirect_uri == field("redirect_uri") => {
            let token = format!("discord-access-{}", uuid::Uuid::now_v7().simple());
            state.discord_tokens.insert(token.clone(), g.user_id);
            axum::Json(
                json!({"access_token": token, "token_type": "Bearer", "expires_in": 604800, "refresh_token": "r", "scope": "identify"}),
            )
            .into_response()
        }
        _ => (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant", "error_description": "Invalid \"code\" in request."})))
            .into_response(),
    }
}

/// RFC 7009: the token named is revoked (200 whether or not it was live).
async fn discord_revoke(State(state): State<Arc<Mutex<FakeState>>>, headers: HeaderMap, body: String) -> axum::response::Response {
    let form = form_of(&body);
    if !discord_client(&headers) {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response();
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let mut state = state.lock().expect("state");
    state.discord_tokens.remove(&token);
    state.revoked.push(token);
    StatusCode::OK.into_response()
}

async fn discord_me(State(state): State<Arc<Mutex<FakeState>>>, headers: HeaderMap) -> axum::response::Response {
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
    match state.lock().expect("state").discord_tokens.get(token) {
        Some(id) => axum::Json(json!({"id": id, "username": format!("user{id}"), "global_name": null, "avatar": null})).into_response(),
        None => (StatusCode::UNAUTHORIZED, axum::Json(json!({"message": "401: Unauthorized", "code": 0}))).into_response(),
    }
}

async fn start(backend: Backend) -> (TestApp, Fakes) {
    start_with(backend, |_| {}).await
}

async fn start_with(backend: Backend, adjust: impl FnOnce(&mut TestEnv)) -> (TestApp, Fakes) {
    let fakes = Fakes::start().await;
    let app = TestApp::start_with(backend, |env| {
        fakes.configure(env);
        adjust(env);
    })
    .await;
    (app, fakes)
}

fn now() -> i64 {
    i64::try_from(platform::time::now_unix()).expect("now")
}

/// A fresh raw nonce and the claims of a valid token for `sub` from `iss` to `aud`, with the
/// nonce's hash in it.
fn token_claims(iss: &str, aud: &str, sub: &str) -> (String, Value) {
    let nonce = format!("nonce-{}", uuid::Uuid::now_v7().simple());
    (
        nonce.clone(),
        json!({"iss": iss, "aud": aud, "sub": sub, "iat": now(), "exp": now() + 600, "nonce": platform::digest::sha256_hex(&nonce)}),
    )
}

/// A valid Apple sign-in body for `sub`.
fn apple_body(sub: &str) -> Value {
    let (nonce, claims) = token_claims("https://appleid.apple.com", APPLE_CLIENT, sub);
    json!({"id_token": keys().0.sign("apple-1", &claims), "nonce": nonce})
}

fn access(reply: &crate::common::Reply) -> String {
    reply.body["access_token"].as_str().expect("access token").to_owned()
}

async fn account_id(api: &Api, access: &str) -> String {
    api.get("/v1/accounts/me", Some(access)).await.expect(200).body["id"].as_str().expect("id").to_owned()
}

/// The first sign-in creates the account (201, `account.created`), the next finds it (200), and
/// an id_token is taken once.
async fn apple_and_google_id_tokens_sign_in_once_each(backend: Backend) {
    let (app, fakes) = start(backend).await;
    let body = apple_body("001234.apple-user");
    let first = app.post("/v1/auth/apple", None, body.clone()).await.expect(201);
    assert_eq!(first.body["token_type"], "Bearer");
    assert!(first.body["refresh_token"].as_str().is_some_and(|t| t.starts_with("ghr_")));
    let ana = account_id(&app, &access(&first)).await;
    // The same token again (copied from the device, or replayed): refused.
    app.post("/v1/auth/apple", None, body).await.expect_error(401, "invalid_provider_token");
    let again = app.post("/v1/auth/apple", None, apple_body("001234.apple-user")).await.expect(200);
    assert_eq!(account_id(&app, &access(&again)).await, ana);
    let me = app.get("/v1/accounts/me", Some(&access(&again))).await.expect(200).body;
    assert!(me["username"].as_str().is_some_and(|u| u.starts_with("player_")), "{me}");
    // The other configured client id is an audience too.
    let (nonce, claims) = token_claims("https://appleid.apple.com", "com.example.other", "001234.apple-user");
    app.post("/v1/auth/apple", None, json!({"id_token": keys().0.sign("apple-1", &claims), "nonce": nonce})).await.expect(200);
    assert_eq!(fakes.fetches("apple"), 1, "the key set is fetched once and kept");

    // Google, with either spelling of its issuer; its EC key is skipped.
    for (iss, status) in [("https://accounts.google.com", 201), ("accounts.google.com", 200)] {
        let (nonce, claims) = token_claims(iss, GOOGLE_CLIENT, "109876543210");
        let reply = app.post("/v1/auth/google", None, json!({"id_token": keys().1.sign("google-1", &claims), "nonce": nonce})).await;
        reply.expect(status);
    }

    // Both created accounts were announced, as registrations are, and not as guests.
    let db = app.database().await;
    let created: Vec<String> = sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = 'account.created' ORDER BY id")
        .fetch_all(db.pool())
        .await
        .expect("outbox");
    assert_eq!(created.len(), 2);
    let payload: Value = serde_json::from_str(&created[0]).expect("JSON payload");
    assert_eq!((payload["account_id"].as_str(), payload["guest"].as_bool()), (Some(ana.as_str()), Some(false)));

    // Operators see the identities, provider and subject.
    let view = app.get(&format!("/v1/admin/accounts/{ana}"), Some(ADMIN_KEY)).await.expect(200).body;
    assert_eq!(view["identities"], json!([{"provider": "apple", "subject": "001234.apple-user"}]));
}

/// Every way a token can be wrong is refused with 401 `invalid_provider_token`; a malformed
/// request is 400; an unknown provider name 404.
async fn forged_or_foreign_id_tokens_are_refused(backend: Backend) {
    let (app, _fakes) = start(backend).await;
    let (apple, _, stranger) = keys();
    let iss = "https://appleid.apple.com";
    let sign = |key: &TestKey, kid: &str, edit: &dyn Fn(&mut Value)| {
        let (nonce, mut claims) = token_claims(iss, APPLE_CLIENT, "001.forger");
        edit(&mut claims);
        json!({"id_token": key.sign(kid, &claims), "nonce": nonce})
    };
    let refused: Vec<(&str, Value)> = vec![
        ("another app's audience", sign(apple, "apple-1", &|c| c["aud"] = json!("com.someone.else"))),
        ("another issuer", sign(apple, "apple-1", &|c| c["iss"] = json!("https://accounts.google.com"))),
        ("expired", sign(apple, "apple-1", &|c| c["exp"] = json!(now() - 120))),
        ("issued in the future", sign(apple, "apple-1", &|c| c["iat"] = json!(now() + 600))),
        ("nonce not hashed", sign(apple, "apple-1", &|c| c["nonce"] = json!("raw-nonce-sent-as-is"))),
        ("no nonce", sign(apple, "apple-1", &|c| c.as_object_mut().expect("claims").retain(|k, _| k != "nonce"))),
        ("signed by a key claiming Apple's kid", sign(stranger, "apple-1", &|_| {})),
        ("signed by an unpublished key", sign(stranger, "stranger", &|_| {})),
    ];
    for (why, body) in refused {
        let reply = app.post("/v1/auth/apple", None, body).await;
        assert_eq!((reply.status, reply.code()), (401, "invalid_provider_token"), "{why}: {}", reply.body);
    }
    // Another nonce than the one hashed into the token.
    let mut body = apple_body("001.forger");
    body["nonce"] = json!("another-raw-nonce-0123456789");
    app.post("/v1/auth/apple", None, body).await.expect_error(401, "invalid_provider_token");
    // Apple's token at Google's door: the audience and issuer are not Google's.
    app.post("/v1/auth/google", None, apple_body("001.forger")).await.expect_error(401, "invalid_provider_token");
    // Tampered claims under a valid signature.
    let body = apple_body("001.forger");
    let token = body["id_token"].as_str().expect("token");
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(
        json!({"iss": iss, "aud": APPLE_CLIENT, "sub": "001.victim", "iat": now(), "exp": now() + 600, "nonce": platform::digest::sha256_hex(body["nonce"].as_str().expect("nonce"))})
            .to_string(),
    );
    app.post("/v1/auth/apple", None, json!({"id_token": parts.join("."), "nonce": body["nonce"]}))
        .await
        .expect_error(401, "invalid_provider_token");
    for body in [json!({"id_token": "not.a.jwt", "nonce": "short"}), json!({"id_token": "x"}), json!({"ticket": "00"})] {
        app.post("/v1/auth/apple", None, body).await.expect_error(400, "invalid_request");
    }
    app.post("/v1/accounts/me/identities/myspace", Some(&guest(&app, "forger").await.1), json!({"device_id": "device-x"}))
        .await
        .expect_error(404, "not_found");
    // No account came of any of it.
    let db = app.database().await;
    let identities: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM account_identities WHERE provider <> 'device'").fetch_one(db.pool()).await.expect("count");
    assert_eq!(identities, 0);
}

/// A token naming a kid the held set lacks fetches the set again, but not more than once a
/// minute: made-up kids cannot make Guildhall hammer the provider. A provider that cannot be
/// reached gives 503, and a provider not configured 404.
async fn unknown_key_ids_refetch_the_keys_at_most_once_a_minute(backend: Backend) {
    let (app, fakes) = start(backend).await;
    app.post("/v1/auth/apple", None, apple_body("001.kid")).await.expect(201);
    assert_eq!(fakes.fetches("apple"), 1);
    for _ in 0..3 {
        let (nonce, claims) = token_claims("https://appleid.apple.com", APPLE_CLIENT, "001.kid");
        let body = json!({"id_token": keys().0.sign("rotated-in-later", &claims), "nonce": nonce});
        app.post("/v1/auth/apple", None, body).await.expect_error(401, "invalid_provider_token");
    }
    assert_eq!(fakes.fetches("apple"), 1, "fetched under a minute ago: no fetch for an unknown kid");

    // Keys at an address nobody answers: 503 at once, not a hang.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead = format!("http://{}/keys", closed.local_addr().expect("addr"));
    drop(closed);
    let down = TestApp::start_with(backend, |env| {
        env.set("GOOGLE_CLIENT_IDS", GOOGLE_CLIENT).set("GOOGLE_KEYS_URL", dead).set("PROVIDER_TIMEOUT_SECS", "2");
    })
    .await;
    let (nonce, claims) = token_claims("https://accounts.google.com", GOOGLE_CLIENT, "1");
    let started = std::time::Instant::now();
    down.post("/v1/auth/google", None, json!({"id_token": keys().1.sign("google-1", &claims), "nonce": nonce}))
        .await
        .expect_error(503, "unavailable");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    down.post("/v1/auth/apple", None, apple_body("001")).await.expect_error(404, "provider_disabled");
    down.post("/v1/auth/steam", None, json!({"ticket": "0123456789abcdef"})).await.expect_error(404, "provider_disabled");
}

/// Steam: a ticket of this game signs in by its SteamID64; one of another game, or unknown, is
/// refused; publisher and VAC bans are refused.
async fn steam_tickets_are_checked_for_this_game_and_bans(backend: Backend) {
    let (app, fakes) = start(backend).await;
    let ticket = |steam_id: &str, app_id: u32, vac: bool, publisher: bool| Ticket { app_id, steam_id: steam_id.to_owned(), vac, publisher };
    fakes.ticket("14000000aaaa0001", ticket("76561197960287930", STEAM_APP, false, false));
    fakes.ticket("14000000aaaa0002", ticket("76561197960287930", STEAM_APP, false, false));
    fakes.ticket("14000000bbbb0001", ticket("76561197960287931", 570, false, false));
    fakes.ticket("14000000cccc0001", ticket("76561197960287932", STEAM_APP, false, true));
    fakes.ticket("14000000dddd0001", ticket("76561197960287933", STEAM_APP, true, false));

    let first = app.post("/v1/auth/steam", None, json!({"ticket": "14000000aaaa0001"})).await.expect(201);
    let again = app.post("/v1/auth/steam", None, json!({"ticket": "14000000AAAA0002".to_lowercase()})).await.expect(200);
    assert_eq!(account_id(&app, &access(&first)).await, account_id(&app, &access(&again)).await);
    let list = app.get("/v1/accounts/me/identities", Some(&access(&first))).await.expect(200).body;
    assert_eq!(list["identities"][0]["subject"], "76561197960287930");
    assert_eq!(list["password"], false);

    app.post("/v1/auth/steam", None, json!({"ticket": "14000000bbbb0001"})).await.expect_error(401, "invalid_provider_token");
    app.post("/v1/auth/steam", None, json!({"ticket": "14000000eeee0001"})).await.expect_error(401, "invalid_provider_token");
    app.post("/v1/auth/steam", None, json!({"ticket": "14000000cccc0001"})).await.expect_error(403, "provider_banned");
    app.post("/v1/auth/steam", None, json!({"ticket": "14000000dddd0001"})).await.expect_error(403, "provider_banned");
    for bad in ["xyz", "123", "", "0"] {
        app.post("/v1/auth/steam", None, json!({"ticket": bad})).await.expect_error(400, "invalid_request");
    }

    // A wrong publisher key is the deployment's fault: 503, and the key is in no answer.
    let misconfigured = TestApp::start_with(backend, |env| {
        fakes.configure(env);
        env.set("STEAM_WEB_API_KEY", "wrong-key");
    })
    .await;
    let reply = misconfigured.post("/v1/auth/steam", None, json!({"ticket": "14000000aaaa0001"})).await.expect_error(503, "unavailable");
    assert!(!reply.body.to_string().contains("wrong-key"));

    // With VAC bans accepted, only the publisher's ban refuses.
    let lenient = TestApp::start_with(backend, |env| {
        fakes.configure(env);
        env.set("STEAM_REFUSE_VAC_BANNED", "false");
    })
    .await;
    lenient.post("/v1/auth/steam", None, json!({"ticket": "14000000dddd0001"})).await.expect(201);
    lenient.post("/v1/auth/steam", None, json!({"ticket": "14000000cccc0001"})).await.expect_error(403, "provider_banned");
}

/// Discord: the code is exchanged with the verifier and the client secret; a wrong verifier, a
/// used code, or a redirect URI not configured is refused.
async fn discord_codes_are_exchanged_with_pkce(backend: Backend) {
    let (app, fakes) = start(backend).await;
    let verifier = "v".repeat(43) + "-._~0123456789";
    fakes.grant("code-1", &verifier, "80351110224678912");
    let body = json!({"code": "code-1", "code_verifier": verifier, "redirect_uri": DISCORD_REDIRECT});
    let first = app.post("/v1/auth/discord", None, body.clone()).await.expect(201);
    // The access token Guildhall got for it is revoked once read with.
    eventually(Duration::from_secs(10), "the Discord token revoked", || async {
        let (revoked, live) = fakes.discord_revocations();
        revoked.len() == 1 && live == 0
    })
    .await;
    // The code was used: Discord says invalid_grant.
    app.post("/v1/auth/discord", None, body).await.expect_error(401, "invalid_provider_token");

    fakes.grant("code-2", &verifier, "80351110224678912");
    let wrong = json!({"code": "code-2", "code_verifier": "w".repeat(43), "redirect_uri": DISCORD_REDIRECT});
    app.post("/v1/auth/discord", None, wrong).await.expect_error(401, "invalid_provider_token");
    fakes.grant("code-3", &verifier, "80351110224678912");
    let again = app
        .post("/v1/auth/discord", None, json!({"code": "code-3", "code_verifier": verifier, "redirect_uri": DISCORD_REDIRECT}))
        .await
        .expect(200);
    assert_eq!(account_id(&app, &access(&first)).await, account_id(&app, &access(&again)).await);

    for (field, body) in [
        ("redirect_uri", json!({"code": "c", "code_verifier": verifier, "redirect_uri": "https://evil.example/cb"})),
        ("code_verifier", json!({"code": "c", "code_verifier": "short", "redirect_uri": DISCORD_REDIRECT})),
        ("code", json!({"code": "has space", "code_verifier": verifier, "redirect_uri": DISCORD_REDIRECT})),
    ] {
        let reply = app.post("/v1/auth/discord", None, body).await.expect_error(400, "invalid_request");
        assert_eq!(reply.body["error"]["field"], field);
    }
}

/// A guest links Apple and Discord, drops its device, and signs in with either; an identity of
/// another account is refused; the last way to sign in stays; a guest upgrade still retires the
/// device.
async fn identities_link_and_unlink_but_never_the_last(backend: Backend) {
    let (app, fakes) = start(backend).await;
    let (gus, token) = guest(&app, "gus").await;
    let list = app.get("/v1/accounts/me/identities", Some(&token)).await.expect(200).body;
    assert_eq!(list["identities"].as_array().map(Vec::len), Some(1));
    assert_eq!((list["identities"][0]["provider"].as_str(), list["identities"][0]["subject"].as_str()), (Some("device"), None));

    let linked = app.post("/v1/accounts/me/identities/apple", Some(&token), apple_body("001.gus")).await.expect(201).body;
    assert_eq!((linked["provider"].as_str(), linked["subject"].as_str()), (Some("apple"), Some("001.gus")));
    // Again with a new token of the same Apple account: already this account's.
    app.post("/v1/accounts/me/identities/apple", Some(&token), apple_body("001.gus")).await.expect(200);
    // Another Apple account on top: one per provider.
    app.post("/v1/accounts/me/identities/apple", Some(&token), apple_body("001.other")).await.expect_error(409, "provider_already_linked");
    // A proof of another provider's kind.
    app.post("/v1/accounts/me/identities/steam", Some(&token), apple_body("001.gus")).await.expect_error(400, "invalid_request");

    // Someone else cannot take it.
    let (_, other) = guest(&app, "other").await;
    app.post("/v1/accounts/me/identities/apple", Some(&other), apple_body("001.gus")).await.expect_error(409, "identity_linked_elsewhere");
    app.post("/v1/accounts/me/identities/device", Some(&other), json!({"device_id": "device-gus"}))
        .await
        .expect_error(409, "identity_linked_elsewhere");

    let verifier = "k".repeat(50);
    fakes.grant("link-code", &verifier, "1111");
    app.post(
        "/v1/accounts/me/identities/discord",
        Some(&token),
        json!({"code": "link-code", "code_verifier": verifier, "redirect_uri": DISCORD_REDIRECT}),
    )
    .await
    .expect(201);

    app.delete("/v1/accounts/me/identities/device", Some(&token)).await.expect(204);
    app.delete("/v1/accounts/me/identities/device", Some(&token)).await.expect_error(404, "not_found");
    // The device now makes a new guest; Apple signs in to gus.
    let fresh = app.post("/v1/auth/guest", None, json!({"device_id": "device-gus"})).await.expect(201);
    assert_ne!(account_id(&app, &access(&fresh)).await, gus);
    let apple = app.post("/v1/auth/apple", None, apple_body("001.gus")).await.expect(200);
    assert_eq!(account_id(&app, &access(&apple)).await, gus);

    app.delete("/v1/accounts/me/identities/discord", Some(&token)).await.expect(204);
    app.delete("/v1/accounts/me/identities/apple", Some(&token)).await.expect_error(409, "last_sign_in_method");
    let list = app.get("/v1/accounts/me/identities", Some(&token)).await.expect(200).body;
    assert_eq!(list["identities"].as_array().map(Vec::len), Some(1));

    // With a password, the last identity can go.
    app.post(
        "/v1/accounts/me/credentials",
        Some(&token),
        json!({"email": "gus@example.com", "password": "correct-horse-battery", "username": "gus"}),
    )
    .await
    .expect(200);
    app.delete("/v1/accounts/me/identities/apple", Some(&token)).await.expect(204);
    let list = app.get("/v1/accounts/me/identities", Some(&token)).await.expect(200).body;
    assert_eq!((list["identities"].as_array().map(Vec::len), list["password"].as_bool()), (Some(0), Some(true)));

    // A guest upgrade retires the device identity, as it did the device key.
    let (hal, hal_token) = guest(&app, "hal").await;
    app.post("/v1/accounts/me/credentials", Some(&hal_token), json!({"email": "hal@example.com", "password": "correct-horse-battery"}))
        .await
        .expect(200);
    let list = app.get("/v1/accounts/me/identities", Some(&hal_token)).await.expect(200).body;
    assert_eq!(list["identities"], json!([]));
    let new_guest = app.post("/v1/auth/guest", None, json!({"device_id": "device-hal"})).await.expect(201);
    assert_ne!(account_id(&app, &access(&new_guest)).await, hal);
}

/// With sign-up closed, an unknown identity is refused (403 `sign_up_closed`) but a linked one
/// signs in; a banned account is refused; erasing the account removes its identities.
async fn closed_sign_up_bans_and_erasure(backend: Backend) {
    let fakes = Fakes::start().await;
    let app = TestApp::start_with(backend, |env| {
        fakes.configure(env);
        env.set("PROVIDER_SIGN_UP", "false");
    })
    .await;
    app.post("/v1/auth/apple", None, apple_body("001.ivy")).await.expect_error(403, "sign_up_closed");
    // Guests are not providers: their sign-up stays open.
    let (ivy, token) = guest(&app, "ivy").await;
    app.post("/v1/accounts/me/identities/apple", Some(&token), apple_body("001.ivy")).await.expect(201);
    app.post("/v1/auth/apple", None, apple_body("001.ivy")).await.expect(200);

    app.post(&format!("/v1/admin/accounts/{ivy}/ban"), Some(ADMIN_KEY), json!({})).await.expect(200);
    app.post("/v1/auth/apple", None, apple_body("001.ivy")).await.expect_error(403, "account_banned");
    app.delete(&format!("/v1/admin/accounts/{ivy}/ban"), Some(ADMIN_KEY)).await.expect(204);

    let signed_in = app.post("/v1/auth/apple", None, apple_body("001.ivy")).await.expect(200);
    app.delete("/v1/accounts/me", Some(&access(&signed_in))).await.expect(204);
    let db = app.database().await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM account_identities WHERE account_id = $1")
        .bind(&ivy)
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(left, 0, "erasure removes the identities");
    app.post("/v1/auth/apple", None, apple_body("001.ivy")).await.expect_error(403, "sign_up_closed");
    app.post("/v1/auth/guest", None, json!({"device_id": "device-ivy"})).await.expect(201);
}

/// Migration 0016 makes every guest's device key its device identity: a guest made before it
/// signs in to the same account after. (The migration is run again here on a guest written as the
/// previous version wrote them.)
async fn guests_from_before_identities_keep_their_accounts(backend: Backend) {
    let app = TestApp::start(backend).await;
    let db = app.database().await;
    let legacy = uuid::Uuid::now_v7().to_string();
    for statement in ["DROP TABLE account_identities", "DELETE FROM _sqlx_migrations WHERE version = 16"] {
        sqlx::query(statement).execute(db.pool()).await.expect(statement);
    }
    sqlx::query(
        "INSERT INTO accounts (id, username, username_key, device_key, created_at, updated_at) VALUES ($1, 'guest_legacy', 'guest_legacy', $2, 1, 1)",
    )
    .bind(&legacy)
    .bind(platform::digest::sha256_hex("device-legacy"))
    .execute(db.pool())
    .await
    .expect("a guest as the previous version stored it");
    db.migrate().await.expect("migration 0016 again");

    let signed_in = app.post("/v1/auth/guest", None, json!({"device_id": "device-legacy"})).await.expect(200);
    assert_eq!(account_id(&app, &access(&signed_in)).await, legacy);
    let list = app.get("/v1/accounts/me/identities", Some(&access(&signed_in))).await.expect(200).body;
    assert_eq!(list["identities"][0]["provider"], "device");
}

/// Provider sign-ins count against the address's sign-in budget with guest and login, refused or
/// not, before the provider is called.
async fn provider_sign_ins_share_the_address_limit(backend: Backend) {
    let (app, fakes) = start_with(backend, |env| {
        env.set("RATE_LIMIT_AUTH_PER_IP_PER_MINUTE", "3");
    })
    .await;
    fakes.ticket("15000000aaaa0001", Ticket { app_id: STEAM_APP, steam_id: "76561197960287940".into(), vac: false, publisher: false });
    app.post("/v1/auth/steam", None, json!({"ticket": "15000000aaaa0001"})).await.expect(201);
    app.post("/v1/auth/apple", None, apple_body("001.spent")).await.expect(201);
    app.post("/v1/auth/guest", None, json!({"device_id": "device-spent"})).await.expect(201);
    let refused = app.post("/v1/auth/steam", None, json!({"ticket": "15000000aaaa0001"})).await.expect_error(429, "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));
    app.post("/v1/auth/discord", None, json!({"code": "c", "code_verifier": "v".repeat(43), "redirect_uri": DISCORD_REDIRECT}))
        .await
        .expect_error(429, "rate_limited");
}
