//! Test helpers: a Guildhall server on port 0 (in this process, or as a child process of the real
//! binary), typed calls, and players.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform::db::Database;
pub use platform::testing::{Backend, TestEnv};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod browser;
pub mod smtp;

/// Runs each named `async fn name(backend: Backend)` once per backend set, as
/// `embedded::name` and `real::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Embedded).await
                }
            )*
        }
        mod real {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if platform::testing::real_backends_skipped() {
                        eprintln!("GUILDHALL_SKIP_REAL_BACKENDS=1: not running on PostgreSQL + Redis");
                        return;
                    }
                    super::$name($crate::common::Backend::Real).await
                }
            )*
        }
    };
}

/// The server key the tests configure (`GUILDHALL_ADMIN_KEY`).
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

/// A guest player (no password hashing, so tests can make many): (account id, access token).
pub async fn guest(api: &Api, device: &str) -> (String, String) {
    let pair = api.post("/v1/auth/guest", None, json!({"device_id": format!("device-{device}")})).await.expect(201);
    let token = pair.body["access_token"].as_str().expect("token").to_owned();
    let me = api.get("/v1/accounts/me", Some(&token)).await.expect(200);
    (me.body["id"].as_str().expect("id").to_owned(), token)
}

/// A guest's whole token pair: (account id, access token, refresh token). Each call signs the
/// device in again: a new session of the same account.
pub async fn guest_session(api: &Api, device: &str) -> (String, String, String) {
    let pair = api.post("/v1/auth/guest", None, json!({"device_id": format!("device-{device}")})).await;
    assert!(pair.status == 201 || pair.status == 200, "guest sign-in: {} {}", pair.status, pair.body);
    let access = pair.body["access_token"].as_str().expect("token").to_owned();
    let refresh = pair.body["refresh_token"].as_str().expect("refresh token").to_owned();
    let me = api.get("/v1/accounts/me", Some(&access)).await.expect(200);
    (me.body["id"].as_str().expect("id").to_owned(), access, refresh)
}

/// A named server key with `scopes`, made with the bootstrap key: (key id, key).
pub async fn server_key(api: &Api, name: &str, scopes: &[&str]) -> (String, String) {
    let made = api.post("/v1/admin/keys", Some(ADMIN_KEY), json!({"name": name, "scopes": scopes})).await.expect(201).body;
    (made["id"].as_str().expect("key id").to_owned(), made["key"].as_str().expect("key").to_owned())
}

/// The audit log's entries matching `filter` (`action=accounts.ban&key=…`, or empty), newest first.
pub async fn audit(api: &Api, filter: &str) -> Vec<Value> {
    api.pages(&format!("/v1/admin/audit?limit=100&{filter}"), ADMIN_KEY, "entries").await
}

/// Two processes of the real binary on one fresh PostgreSQL database and Redis prefix, with the
/// server key set and `adjust` applied to their environment.
pub async fn two_processes(adjust: impl FnOnce(&mut TestEnv)) -> (TestEnv, Process, Process) {
    let mut env = TestEnv::new(Backend::Real).await.expect("env");
    env.set("GUILDHALL_ADMIN_KEY", ADMIN_KEY);
    adjust(&mut env);
    let a = Process::start(&env).await;
    let b = Process::start(&env).await;
    (env, a, b)
}

/// `two_processes` with the chat send limit's burst raised to 100, for tests that send freely.
pub async fn two_chat_processes() -> (TestEnv, Process, Process) {
    two_processes(|env| {
        env.set("CHAT_SEND_BURST", "100");
    })
    .await
}

/// `env` as one ECS task of `role` sees it: `DATABASE_URL` names the role as its user (an ECS
/// task's own URL; here trusted, there an IAM token), no pool per role, no migrations (ECS's
/// migrate task, as the owner, made the schema and the roles).
pub fn as_role(env: &TestEnv, role: platform::db::Role) -> TestEnv {
    let mut env = env.clone();
    let url = env.vars["DATABASE_URL"].clone();
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (_owner, address) = rest.split_once('@').expect("a URL with a user");
    env.set("DATABASE_URL", format!("{scheme}://{}@{address}", role.name()));
    env.set("DATABASE_SERVICE_ROLES", "false").set("RUN_MIGRATIONS", "false");
    env
}

/// The `kid` in an access token's header: which key signed it.
pub fn kid_of(token: &str) -> String {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').next().expect("header")).expect("base64url header");
    let header: Value = serde_json::from_slice(&raw).expect("JSON header");
    header["kid"].as_str().expect("kid").to_owned()
}

/// The `kid`s a JWKS document lists, in order.
pub async fn published_kids(api: &Api) -> Vec<String> {
    let jwks = api.get("/.well-known/jwks.json", None).await.expect(200).body;
    jwks["keys"].as_array().expect("keys").iter().map(|k| k["kid"].as_str().expect("kid").to_owned()).collect()
}

/// Opens a chat socket on `base` with `token` in the auth frame, expecting a refusal: the error
/// frame's code and the close code.
pub async fn chat_refusal(base: &str, token: &str) -> (String, Option<u16>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("{}/v1/chat/ws", base.replacen("http://", "ws://", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
    socket.send(Message::Text(json!({"type": "auth", "id": 1, "token": token}).to_string().into())).await.expect("auth sent");
    let (mut code, mut closed) = (String::new(), None);
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                assert_ne!(frame["type"], "ack", "the socket was authenticated: {frame}");
                code = frame["code"].as_str().unwrap_or_default().to_owned();
            }
            Message::Close(frame) => {
                closed = Some(frame.map_or(1005, |f| u16::from(f.code)));
                break;
            }
            _ => {}
        }
    }
    (code, closed)
}

/// A response: status, headers and the JSON body (Null when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Panics unless the status is `status`, showing the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.body);
        self
    }

    /// Panics unless this is an error with `status` and `code`.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Self {
        assert_eq!((self.status, self.code()), (status, code), "body: {}", self.body);
        self
    }
}

/// A signed-up player and their current tokens.
#[derive(Debug, Clone)]
pub struct Player {
    pub id: String,
    pub username: String,
    pub email: String,
    pub password: String,
    pub access: String,
    pub refresh: String,
}

/// Somewhere to send requests: a base URL and a client.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(base: String) -> Self {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        Api { base, client }
    }

    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::reply(request.send().await.expect("request sent")).await
    }

    pub async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body read");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply { status, headers, body }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(Method::DELETE, path, token, None).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(Method::PATCH, path, token, Some(body)).await
    }

    /// Every item of a paginated list: follows `next_cursor` from `path` (which has a query
    /// string already) and collects the array under `field`.
    pub async fn pages(&self, path: &str, token: &str, field: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self.get(&format!("{path}{cursor}"), Some(token)).await.expect(200).body;
            out.extend(page[field].as_array().expect("list").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return out,
            }
        }
    }

    /// Registers `username` (email `username@example.com`, a fixed password).
    pub async fn register(&self, username: &str) -> Player {
        let email = format!("{username}@example.com");
        let password = format!("pw-{username}-correct-horse");
        let reply =
            self.post("/v1/auth/register", None, json!({"email": email, "password": password, "username": username})).await.expect(201);
        Player {
            id: reply.body["account"]["id"].as_str().expect("id").to_owned(),
            username: username.to_owned(),
            email,
            password,
            access: reply.body["tokens"]["access_token"].as_str().expect("access").to_owned(),
            refresh: reply.body["tokens"]["refresh_token"].as_str().expect("refresh").to_owned(),
        }
    }

    /// Signs `player` in again, returning the new session's access and refresh tokens.
    pub async fn login(&self, player: &Player) -> (String, String) {
        let reply = self.post("/v1/auth/login", None, json!({"email": player.email, "password": player.password})).await.expect(200);
        (reply.body["access_token"].as_str().expect("access").to_owned(), reply.body["refresh_token"].as_str().expect("refresh").to_owned())
    }
}

/// A Guildhall server running in this process on 127.0.0.1:0.
pub struct TestApp {
    pub api: Api,
    pub env: TestEnv,
    /// The metrics listener's base URL, when started with `start_with_metrics`.
    pub metrics_base: Option<String>,
    shutdown: platform::shutdown::Shutdown,
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestApp {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server after `adjust` changed the environment.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut TestEnv)) -> Self {
        let mut env = TestEnv::new(backend).await.expect("test environment");
        adjust(&mut env);
        Self::start_on(env).await
    }

    /// Starts a server on an existing environment (a second instance on the same backends).
    pub async fn start_on(env: TestEnv) -> Self {
        Self::start_serving(env, false).await
    }

    /// Starts a server on an existing environment, with its metrics listener (`metric`).
    pub async fn start_on_with_metrics(env: TestEnv) -> Self {
        Self::start_serving(env, true).await
    }

    /// The sum of the samples of `series` (a name, or a name and the start of its labels) on the
    /// metrics listener, or None when it has none.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let base = self.metrics_base.as_deref().expect("a metrics listener");
        let text = reqwest::get(format!("{base}/metrics")).await.expect("metrics").text().await.expect("text");
        let values: Vec<f64> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Starts a server after `adjust`, with its metrics listener on a port of its own
    /// (`metrics_base`), as `METRICS_ADDR` gives it.
    pub async fn start_with_metrics(backend: Backend, adjust: impl FnOnce(&mut TestEnv)) -> Self {
        let mut env = TestEnv::new(backend).await.expect("test environment");
        adjust(&mut env);
        Self::start_serving(env, true).await
    }

    async fn start_serving(env: TestEnv, metrics: bool) -> Self {
        let config = env.config().expect("config");
        let shutdown = platform::shutdown::Shutdown::new();
        let app = guildhall::App::build(config, shutdown.clone()).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (metrics_listener, metrics_base) = if metrics {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind metrics");
            let base = format!("http://{}", listener.local_addr().expect("metrics addr"));
            (Some(listener), Some(base))
        } else {
            (None, None)
        };
        tokio::spawn(app.serve_with_metrics(listener, metrics_listener));
        TestApp { api: Api::new(base), env, metrics_base, shutdown }
    }

    /// The test's database, for checks the API cannot make (no row left behind), as the user
    /// that owns every table.
    pub async fn database(&self) -> Database {
        let config = self.env.config().expect("config");
        Database::connect(&config.database).await.expect("database")
    }

    /// The test's database as `role` sees it (on PostgreSQL), for calling a service's store
    /// directly with only that service's grants.
    pub async fn database_as(&self, role: platform::db::Role) -> Database {
        let config = self.env.config().expect("config");
        Database::connect_for(&config.database, role).await.expect("database")
    }

    pub fn stop(&self) {
        self.shutdown.trigger();
    }

    /// Begins shutdown as SIGTERM does, with a drain period of `secs` before the listener closes.
    pub fn drain(&self, secs: u64) {
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move { shutdown.begin(Duration::from_secs(secs)).await });
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The real `guildhall` binary running as a child process.
pub struct Process {
    pub api: Api,
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl std::ops::Deref for Process {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Process {
    /// Starts `guildhall serve` with exactly `env`'s variables and waits for its "listening" line.
    pub async fn start(env: &TestEnv) -> Self {
        Self::start_as(env, "serve").await
    }

    /// Starts `guildhall <command>` (`serve`, `worker`) with exactly `env`'s variables and waits
    /// for its "listening" line.
    pub async fn start_as(env: &TestEnv, command: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_guildhall"))
            .arg(command)
            .env_clear()
            .envs(&env.vars)
            .current_dir(&env.dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("guildhall starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout).lines();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = reader.next_line().await.expect("stdout line") {
                lines.lock().expect("lines").push(line.clone());
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && event["message"] == "listening"
                {
                    return event["addr"].as_str().expect("addr").to_owned();
                }
            }
            panic!("guildhall exited before listening: {:?}", lines.lock().expect("lines"));
        })
        .await
        .expect("guildhall listens within a minute");
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().expect("lines").push(line);
            }
        });
        Process { api: Api::new(format!("http://{addr}")), child, lines }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill runs");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("exits in time").expect("exit status")
    }
}

/// A chat WebSocket client: requests wait for their ack (or error), events received meanwhile
/// are kept in order for `event`.
pub struct Chat {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
    events: std::collections::VecDeque<Value>,
    /// The close frame's code, once the server closed the socket.
    pub closed: Option<u16>,
}

impl Chat {
    /// Connects to `base` and authenticates with `token` in the first frame.
    pub async fn connect(base: &str, token: &str) -> Chat {
        let url = format!("{}/v1/chat/ws", base.replacen("http://", "ws://", 1));
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        let mut chat = Chat { socket, next_id: 0, events: Default::default(), closed: None };
        let ack = chat.request(json!({"type": "auth", "token": token})).await;
        assert_eq!(ack["type"], "ack", "auth refused: {ack}");
        chat
    }

    /// Two players' sockets, connected, then joined to `channel` in their order (the first sees
    /// the second's presence event).
    pub async fn pair_in(base: &str, channel: &str, first_token: &str, second_token: &str) -> (Chat, Chat) {
        let mut first = Chat::connect(base, first_token).await;
        let mut second = Chat::connect(base, second_token).await;
        first.join(channel).await;
        second.join(channel).await;
        (first, second)
    }

    async fn read(&mut self) -> Option<Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.socket.next()).await.ok()?? {
                Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).expect("JSON frame")),
                Ok(Message::Close(frame)) => {
                    self.closed = Some(frame.map_or(1005, |f| u16::from(f.code)));
                    return None;
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Sends a frame with a fresh id and returns its ack or error.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        use futures_util::SinkExt;
        self.next_id += 1;
        let id = self.next_id;
        frame["id"] = json!(id);
        self.socket.send(tokio_tungstenite::tungstenite::Message::Text(frame.to_string().into())).await.expect("frame sent");
        loop {
            let reply = self.read().await.expect("an answer before the socket closed");
            if reply["id"] == id && (reply["type"] == "ack" || reply["type"] == "error") {
                return reply;
            }
            self.events.push_back(reply);
        }
    }

    /// The next pushed event (of any type), waiting up to 10 s.
    pub async fn event(&mut self) -> Option<Value> {
        match self.events.pop_front() {
            Some(event) => Some(event),
            None => self.read().await,
        }
    }

    /// The next event of `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let event = self.event().await.unwrap_or_else(|| panic!("no {kind} event came"));
            if event["type"] == kind {
                return event;
            }
        }
    }

    /// Joins `channel`, panicking on refusal.
    pub async fn join(&mut self, channel: &str) -> Value {
        let ack = self.request(json!({"type": "join", "channel": channel})).await;
        assert_eq!(ack["type"], "ack", "join {channel} refused: {ack}");
        ack
    }

    /// Sends `body` to `channel`, returning the ack or error.
    pub async fn send(&mut self, channel: &str, body: &str) -> Value {
        self.request(json!({"type": "send", "channel": channel, "body": body})).await
    }

    /// Closes the socket as a client leaving does (close frame 1000), and returns the code of the
    /// close frame the server answers with, or None when the connection ended without one (what
    /// a client reports as 1006).
    pub async fn close(mut self) -> Option<u16> {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
        let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
        self.socket.send(Message::Close(Some(frame))).await.expect("close sent");
        while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(5), self.socket.next()).await {
            if let Message::Close(frame) = message {
                return Some(frame.map_or(1005, |f| u16::from(f.code)));
            }
        }
        None
    }

    /// Reads until the server closes the socket, at most `within`, keeping the events that come
    /// first; the close code, or None when it did not close in time.
    pub async fn closed_within(&mut self, within: Duration) -> Option<u16> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + within;
        while self.closed.is_none() {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => self.events.push_back(serde_json::from_str(&text).expect("JSON frame")),
                Ok(Some(Ok(Message::Close(frame)))) => self.closed = Some(frame.map_or(1005, |f| u16::from(f.code))),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) | Err(_) => break,
            }
        }
        self.closed
    }

    /// Pings with `payload` and waits up to 10 s for the server's pong, keeping the events that
    /// come first: whether a pong with that payload came.
    pub async fn ping(&mut self, payload: &[u8]) -> bool {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        self.socket.send(Message::Ping(payload.to_vec().into())).await.expect("ping sent");
        while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), self.socket.next()).await {
            match message {
                Message::Pong(got) => return got == payload,
                Message::Text(text) => self.events.push_back(serde_json::from_str(&text).expect("JSON frame")),
                _ => {}
            }
        }
        false
    }

    /// Whether anything arrives within `wait` (to show that nothing more does).
    pub async fn quiet_for(&mut self, wait: Duration) -> Option<Value> {
        use futures_util::StreamExt;
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        match tokio::time::timeout(wait, self.socket.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => Some(serde_json::from_str(&text).expect("JSON")),
            _ => None,
        }
    }
}

/// A WebSocket spoken byte by byte over TCP, for what a well-behaved client library will not
/// send (a frame header announcing more than the server accepts).
pub struct RawSocket {
    stream: tokio::net::TcpStream,
}

impl RawSocket {
    /// Opens `GET /v1/chat/ws` on `base` and completes the upgrade.
    pub async fn connect(base: &str) -> RawSocket {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(host).await.expect("connects");
        let request = format!(
            "GET /v1/chat/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("upgrade sent");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(stream.read(&mut byte).await.expect("upgrade answer"), 1, "closed during the upgrade: {head:?}");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "not upgraded: {}", String::from_utf8_lossy(&head));
        RawSocket { stream }
    }

    /// Sends a masked text frame (mask key zero, so the payload goes as is).
    pub async fn send_text(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt;
        let mut frame = vec![0x81];
        match text.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(text.as_bytes());
        self.stream.write_all(&frame).await.expect("frame sent");
    }

    /// Sends `bytes` as they are: a frame the test wrote out itself.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("bytes sent");
    }

    /// Sends only the header of a binary frame announcing `len` bytes, and none of them.
    pub async fn send_header_of(&mut self, len: u64) {
        use tokio::io::AsyncWriteExt;
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&[0, 0, 0, 0]);
        self.stream.write_all(&header).await.expect("header sent");
    }

    /// Reads server frames until a close frame (its code) or `within` passes (None).
    pub async fn close_code_within(&mut self, within: Duration) -> Option<u16> {
        self.pongs_then_close_within(within).await.1
    }

    /// Reads server frames until a close frame or `within` passes: the pongs read before it, and
    /// the close's code (None without one).
    pub async fn pongs_then_close_within(&mut self, within: Duration) -> (usize, Option<u16>) {
        use tokio::io::AsyncReadExt;
        let mut pongs = 0;
        let read = async {
            loop {
                let mut head = [0u8; 2];
                self.stream.read_exact(&mut head).await.ok()?;
                let len = match head[1] & 0x7f {
                    126 => {
                        let mut n = [0u8; 2];
                        self.stream.read_exact(&mut n).await.ok()?;
                        u64::from(u16::from_be_bytes(n))
                    }
                    127 => {
                        let mut n = [0u8; 8];
                        self.stream.read_exact(&mut n).await.ok()?;
                        u64::from_be_bytes(n)
                    }
                    n => u64::from(n),
                };
                let mut payload = vec![0u8; usize::try_from(len).ok()?];
                self.stream.read_exact(&mut payload).await.ok()?;
                match head[0] & 0x0f {
                    0x8 => return Some(payload.get(..2).map_or(1005, |code| u16::from_be_bytes([code[0], code[1]]))),
                    0xA => pongs += 1,
                    _ => {}
                }
            }
        };
        let code = tokio::time::timeout(within, read).await.ok().flatten();
        (pongs, code)
    }
}

/// A TCP proxy in front of the test Redis, for one process's `REDIS_URL`: a real network fault on
/// that process's connection to Redis while other processes keep theirs. `cut` closes every
/// connection through it and drops new ones until `restore`; `delay` holds the bytes going each
/// way that long (latency, not a limit on throughput). Bytes still held when their sender closes
/// the connection (it died) are dropped, as if it had died before sending them: the delay
/// stretches the moments between a process deciding to write to Redis and the write leaving it.
pub struct RedisProxy {
    /// `redis://` URL of the proxy.
    pub url: String,
    state: Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    down: std::sync::atomic::AtomicBool,
    delay_ms: std::sync::atomic::AtomicU64,
    cuts: tokio::sync::watch::Sender<u64>,
}

impl RedisProxy {
    /// A proxy on a free loopback port in front of `upstream` (`redis://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let target = upstream.trim_start_matches("redis://").trim_end_matches('/').to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let url = format!("redis://{}", listener.local_addr().expect("proxy address"));
        let state = Arc::new(ProxyState { down: Default::default(), delay_ms: Default::default(), cuts: tokio::sync::watch::channel(0).0 });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if shared.down.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let mut cut = shared.cuts.subscribe();
                let state = shared.clone();
                tokio::spawn(async move {
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        () = async { tokio::join!(forward(client_read, server_write, &state), forward(server_read, client_write, &state)); } => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        RedisProxy { url, state, accept }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.state.down.store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.cuts.send_modify(|n| *n += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds the bytes going each way for `delay` from now on.
    pub fn delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies `from` to `to`, each chunk held for the proxy's delay after it arrived, until `from`
/// closes (dropping what is still held) or `to` fails.
async fn forward(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, state: &ProxyState) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (chunks, mut due) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buffer).await {
            let delay = Duration::from_millis(state.delay_ms.load(std::sync::atomic::Ordering::SeqCst));
            if chunks.send((tokio::time::Instant::now() + delay, buffer[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = read => {}
        () = write => {}
    }
}

/// Longer than any answer may take while a dependency is down: a hang detector, not a
/// performance figure (the breakers answer in well under a second once they know).
pub const HANG: Duration = Duration::from_secs(3);

/// GETs `path` and fails if the answer took `HANG` or longer.
pub async fn timed_get(api: &Api, path: &str, token: Option<&str>) -> Reply {
    let started = Instant::now();
    let reply = api.get(path, token).await;
    assert!(started.elapsed() < HANG, "GET {path} took {:?} (status {})", started.elapsed(), reply.status);
    reply
}

/// Waits up to `within` until `path` answers 200, as it must once a dependency that was down is
/// back; meanwhile only 503 `unavailable` may come, each within `HANG`.
pub async fn until_ok(api: &Api, path: &str, token: Option<&str>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let reply = timed_get(api, path, token).await;
        if reply.status == 200 {
            return;
        }
        assert_eq!(reply.code(), "unavailable", "only 503s while recovering: {}", reply.body);
        assert!(Instant::now() < deadline, "{path} still answers {} after the dependency came back: {}", reply.status, reply.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Makes two players friends: `a` asks, `b` accepts.
pub async fn make_friends(api: &Api, a: (&str, &str), b: (&str, &str)) {
    let (a_id, a_token) = a;
    let (b_id, b_token) = b;
    api.post(&format!("/v1/friends/{b_id}"), Some(a_token), json!({})).await.expect(201);
    let accepted = api.post(&format!("/v1/friends/{a_id}"), Some(b_token), json!({})).await.expect(200).body;
    assert_eq!(accepted["state"], "friends", "{accepted}");
}

/// Polls `check` every 100 ms until it answers true, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records `event` in the app's outbox as a service would, and waits (at most 20 s) until
/// `consumer` handled it: what a late, out-of-order delivery looks like to a consumer.
pub async fn deliver_late<E: platform::events::EventType>(app: &TestApp, consumer: &str, event: &E) {
    let db = app.database().await;
    let mut tx = db.begin().await.expect("transaction");
    let id = platform::events::record(&mut *tx, event).await.expect("recorded");
    tx.commit().await.expect("committed");
    eventually(Duration::from_secs(20), "the late event handled", || handled(&db, consumer, &id)).await;
}

/// Whether `consumer` has handled the event `event_id` (its row in `consumed_events`).
pub async fn handled(db: &Database, consumer: &str, event_id: &str) -> bool {
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM consumed_events WHERE consumer = $1 AND event_id = $2")
        .bind(consumer)
        .bind(event_id)
        .fetch_one(db.pool())
        .await
        .expect("consumed events");
    rows == 1
}

/// Delivers the event `event_id` to `consumer` again, as a redelivery after a lost
/// acknowledgement would: waits (at most 20 s) until the consumer handled it and the relay marked
/// it sent, forgets the consumption, makes the outbox row due again and waits until it is handled
/// once more. The relay marks an event sent after its handlers ran, so making the row due before
/// that mark would be undone by it.
pub async fn deliver_again(db: &Database, consumer: &str, event_id: &str) {
    let sent = || async {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE id = $1 AND sent_at IS NOT NULL")
            .bind(event_id)
            .fetch_one(db.pool())
            .await
            .expect("outbox");
        rows == 1
    };
    eventually(Duration::from_secs(20), "the event handled and marked sent", || async {
        handled(db, consumer, event_id).await && sent().await
    })
    .await;
    sqlx::query("DELETE FROM consumed_events WHERE consumer = $1 AND event_id = $2")
        .bind(consumer)
        .bind(event_id)
        .execute(db.pool())
        .await
        .expect("forget");
    sqlx::query("UPDATE outbox SET sent_at = NULL, next_attempt_at = NULL, claimed_until = NULL WHERE id = $1")
        .bind(event_id)
        .execute(db.pool())
        .await
        .expect("due again");
    eventually(Duration::from_secs(20), "the event delivered again", || handled(db, consumer, event_id)).await;
}
