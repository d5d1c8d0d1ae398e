//! The WebSocket at `GET /v1/chat/ws`.
//!
//! Authentication: the first frame, `{"type":"auth","token":"<access token>"}`, within 10 seconds
//! (or an `Authorization: Bearer` header on the upgrade, for clients that can set one). Not a
//! query parameter: URLs end up in proxy and load-balancer access logs, and a token there is a
//! token leaked. Browsers cannot set headers on a WebSocket, hence the first frame.
//!
//! Frames are JSON with a client-chosen `id` echoed in the `ack` or `error` that answers them:
//! `join`, `leave`, `send` (`body`), `typing`; the server pushes `message`, `presence` and
//! `typing` events. The server pings every 20 s and closes a connection silent for 60 s (the
//! ALB's idle timeout is longer), closes a client too slow to read its queue (1008), and sends
//! every socket a going-away close (1001) on shutdown so clients reconnect elsewhere.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse as _, Response};
use futures_util::SinkExt;
use platform::ApiError;
use platform::auth::Player;
use platform::db::now_millis;
use platform::error::ErrorBody;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ChatState;
use crate::channel::Channel;
use crate::hub::{Member, QUEUE};
use crate::store::{self, MessageRow};

/// Largest frame a client may send.
pub const MAX_FRAME: usize = 16 * 1024;
/// Initial read buffer of a socket.
const READ_BUFFER: usize = 4096;
/// Largest message body, in bytes.
pub const MAX_BODY: usize = 2048;
/// Most channels one connection may be in.
pub const MAX_JOINS: usize = 50;
const AUTH_WITHIN: Duration = Duration::from_secs(10);
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENT_FOR: Duration = Duration::from_secs(60);

/// Upgrades to a chat WebSocket.
#[utoipa::path(get, path = "/v1/chat/ws", tag = "chat",
    description = "A WebSocket upgrade (`Connection: Upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`); the player authenticates in the first frame, or with `Authorization: Bearer` on the upgrade. See the chat protocol in README.md.",
    responses((status = 101, description = "Switched to the WebSocket protocol"), (status = 400, body = ErrorBody, description = "`invalid_request`: not a WebSocket upgrade request")))]
pub async fn socket(
    State(state): State<ChatState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    // axum's own refusal is plain text; the API's errors are JSON.
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            let message = format!("open the chat with a WebSocket upgrade: {}", rejection.body_text());
            return ApiError::InvalidRequest { field: None, message }.into_response();
        }
    };
    let header_token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::to_owned);
    // A 4 KiB read buffer instead of the library's 128 KiB, which it zero-fills up front: that
    // default made a connection cost ~140 KiB of server memory (measured with loadtest/chat.sh);
    // chat frames are small and the buffer still grows for a large one.
    upgrade.read_buffer_size(READ_BUFFER).max_message_size(MAX_FRAME).on_upgrade(move |socket| connection(state, socket, header_token))
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    body: Option<String>,
}

fn error_frame(id: &Option<serde_json::Value>, code: &str, message: &str) -> String {
    json!({"type": "error", "id": id, "code": code, "message": message}).to_string()
}

/// The error frame answering a client frame: the HTTP API's code and public message (a dependency
/// that is down is `unavailable`; an internal error's detail is logged, never sent).
fn api_error_frame(id: &Option<serde_json::Value>, err: &ApiError) -> String {
    err.log();
    let mut frame = json!({"type": "error", "id": id, "code": err.code(), "message": err.public_message()});
    if let ApiError::RateLimited { retry_after } = err {
        frame["retry_after_ms"] = json!(retry_after.as_millis() as u64);
    }
    frame.to_string()
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))).await;
}

/// Waits for the auth frame (unless the upgrade carried a token) and verifies it.
async fn authenticate(state: &ChatState, socket: &mut WebSocket, header_token: Option<String>) -> Option<Player> {
    if let Some(token) = header_token {
        return state.auth.authenticate(&token).await.ok();
    }
    let first = tokio::time::timeout(AUTH_WITHIN, socket.recv()).await.ok()??.ok()?;
    let Message::Text(text) = first else { return None };
    let incoming: Incoming = serde_json::from_str(&text).ok()?;
    if incoming.kind != "auth" {
        let _ = socket
            .send(Message::Text(error_frame(&incoming.id, "unauthenticated", "send {\"type\":\"auth\",\"token\":...} first").into()))
            .await;
        return None;
    }
    match state.auth.authenticate(incoming.token.as_deref().unwrap_or_default()).await {
        Ok(player) => {
            let ack = json!({"type": "ack", "id": incoming.id, "account_id": player.account_id});
            socket.send(Message::Text(ack.to_string().into())).await.ok()?;
            Some(player)
        }
        Err(err) => {
            let _ = socket.send(Message::Text(api_error_frame(&incoming.id, &err).into())).await;
            None
        }
    }
}

/// One connected player.
struct Session {
    state: ChatState,
    player: Player,
    connection: u64,
    joined: HashSet<String>,
    tx: mpsc::Sender<Arc<str>>,
    kick: CancellationToken,
}

/// Counts a socket as open for as long as it lives.
struct Open(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Open {
    fn new(counter: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Open(counter.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn connection(state: ChatState, mut socket: WebSocket, header_token: Option<String>) {
    let _open = Open::new(&state.sockets);
    let Some(player) = authenticate(&state, &mut socket, header_token).await else {
        close(&mut socket, 1008, "authentication required").await;
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Arc<str>>(QUEUE);
    let mut session = Session {
        connection: state.hub.connection_id(),
        state: state.clone(),
        player,
        joined: HashSet::new(),
        tx,
        kick: CancellationToken::new(),
    };
    tracing::debug!(account_id = session.player.account_id, connection = session.connection, "chat connected");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    let mut last_heard = Instant::now();
    let shutdown = state.shutdown.clone();
    let kick = session.kick.clone();
    loop {
        tokio::select! {
            () = shutdown.stopped() => {
                close(&mut socket, 1001, "server going away; reconnect").await;
                break;
            }
            () = kick.cancelled() => {
                close(&mut socket, 1008, "too slow to read").await;
                break;
            }
            Some(frame) = rx.recv() => {
                if socket.send(Message::Text(Utf8Bytes::from(frame.as_ref()))).await.is_err() {
                    break;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENT_FOR {
                    close(&mut socket, 1001, "idle").await;
                    break;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => {
                let Some(Ok(message)) = incoming else { break };
                last_heard = Instant::now();
                match message {
                    Message::Text(text) => {
                        let reply = session.handle(&text).await;
                        if socket.send(Message::Text(reply.into())).await.is_err() {
                            break;
                        }
                    }
                    Message::Close(_) => {
                        // tungstenite only queues its answering close frame (RFC 6455 §5.5.1);
                        // it goes out on the next read or flush. Flush it before dropping the
                        // socket, or the client sees the connection end without one (1006).
                        let _ = socket.flush().await;
                        break;
                    }
                    Message::Binary(_) => {
                        let reply = error_frame(&None, "invalid_request", "frames are JSON text");
                        if socket.send(Message::Text(reply.into())).await.is_err() {
                            break;
                        }
                    }
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
        }
    }
    session.leave_all().await;
    tracing::debug!(account_id = session.player.account_id, "chat disconnected");
}

impl Session {
    /// Handles one client frame and returns the answer frame.
    async fn handle(&mut self, text: &str) -> String {
        let incoming: Incoming = match serde_json::from_str(text) {
            Ok(incoming) => incoming,
            Err(err) => return error_frame(&None, "invalid_request", &format!("not a chat frame: {err}")),
        };
        let id = incoming.id.clone();
        let result = match incoming.kind.as_str() {
            "join" => self.join(&incoming).await,
            "leave" => self.leave(&incoming).await,
            "send" => self.send(&incoming).await,
            "typing" => self.typing(&incoming).await,
            "auth" => Err(ApiError::invalid("type", "already authenticated")),
            other => Err(ApiError::invalid("type", format!("unknown frame type {other:?}"))),
        };
        match result {
            Ok(mut ack) => {
                ack["type"] = json!("ack");
                ack["id"] = id.unwrap_or(serde_json::Value::Null);
                ack.to_string()
            }
            Err(err) => api_error_frame(&id, &err),
        }
    }

    fn channel(incoming: &Incoming) -> Result<(Channel, String), ApiError> {
        let id = incoming.channel.as_deref().ok_or_else(|| ApiError::invalid("channel", "channel is required"))?;
        let channel = Channel::parse(id)?;
        let id = channel.id();
        Ok((channel, id))
    }

    fn joined(&self, id: &str) -> Result<(), ApiError> {
        if !self.joined.contains(id) {
            return Err(ApiError::Forbidden("join the channel first".into()));
        }
        Ok(())
    }

    async fn join(&mut self, incoming: &Incoming) -> Result<serde_json::Value, ApiError> {
        let (channel, id) = Self::channel(incoming)?;
        if !self.joined.contains(&id) {
            if self.joined.len() >= MAX_JOINS {
                return Err(ApiError::invalid("channel", format!("a connection may be in {MAX_JOINS} channels at most")));
            }
            // Each join fans a presence event out: joins get a bucket too, five times the sends'.
            self.take_token("join", 5).await?;
            self.state.authorize(&self.player.account_id, &channel, false).await?;
            let member = Member {
                account_id: self.player.account_id.clone(),
                name: self.player.name.clone(),
                tx: self.tx.clone(),
                kick: self.kick.clone(),
            };
            self.state.hub.join(&id, self.connection, member).await?;
            self.joined.insert(id.clone());
            self.state.presence.enter(&id, self.connection, &self.player.account_id, &self.player.name).await?;
            let event =
                json!({"type": "presence", "channel": id, "joined": {"account_id": self.player.account_id, "name": self.player.name}});
            self.state.hub.publish(&id, &event.to_string(), Some(self.connection)).await?;
        }
        let (count, players) = self.state.presence.list(&id, 100).await?;
        let players: Vec<_> = players.into_iter().map(|(account_id, name)| json!({"account_id": account_id, "name": name})).collect();
        Ok(json!({"channel": id, "presence": {"count": count, "players": players}}))
    }

    async fn leave(&mut self, incoming: &Incoming) -> Result<serde_json::Value, ApiError> {
        let (_, id) = Self::channel(incoming)?;
        self.joined(&id)?;
        self.leave_channel(&id).await;
        Ok(json!({"channel": id}))
    }

    async fn leave_channel(&mut self, id: &str) {
        self.joined.remove(id);
        self.state.hub.leave(id, self.connection).await;
        let player = &self.player;
        if let Err(err) = self.state.presence.exit(id, self.connection, &player.account_id, &player.name).await {
            tracing::warn!(error = format!("{err:#}"), "presence exit failed");
        }
        let event = json!({"type": "presence", "channel": id, "left": {"account_id": player.account_id, "name": player.name}});
        if let Err(err) = self.state.hub.publish(id, &event.to_string(), Some(self.connection)).await {
            tracing::warn!(error = format!("{err:#}"), "presence event failed");
        }
    }

    async fn leave_all(&mut self) {
        let joined: Vec<String> = self.joined.iter().cloned().collect();
        for id in joined {
            self.leave_channel(&id).await;
        }
    }

    /// Takes a token from the player's `what` bucket (shared by every instance: a burst, then a
    /// steady rate; `scale` times the send limit), or answers `rate_limited`.
    async fn take_token(&self, what: &str, scale: u32) -> Result<(), ApiError> {
        let limit = self.state.send_limit;
        let key = format!("chat:{what}:{}", self.player.account_id);
        match self.state.cache.take_token(&key, limit.burst.saturating_mul(scale), limit.per_second * f64::from(scale)).await? {
            Some(retry_after) => Err(ApiError::RateLimited { retry_after }),
            None => Ok(()),
        }
    }

    async fn send(&mut self, incoming: &Incoming) -> Result<serde_json::Value, ApiError> {
        let (channel, id) = Self::channel(incoming)?;
        self.joined(&id)?;
        let body = incoming.body.as_deref().unwrap_or_default();
        if body.trim().is_empty() || body.len() > MAX_BODY {
            return Err(ApiError::invalid("body", format!("body must be 1 to {MAX_BODY} bytes of text")));
        }
        if body.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(ApiError::invalid("body", "body must not contain control characters"));
        }
        self.take_token("send", 1).await?;
        // Membership and sanctions can change after a join: check them on every send.
        self.state.authorize(&self.player.account_id, &channel, true).await?;
        let row = MessageRow {
            id: uuid::Uuid::now_v7().to_string(),
            channel_id: id.clone(),
            sender_id: Some(self.player.account_id.clone()),
            sender_name: self.player.name.clone(),
            body: body.to_owned(),
            created_at: now_millis(),
        };
        // Stored durably before it is acknowledged or delivered.
        store::insert_message(self.state.db.pool(), &row).await?;
        let message = crate::api::MessageView::from(row);
        let event = json!({"type": "message", "channel": id, "message": message});
        self.state.hub.publish(&id, &event.to_string(), Some(self.connection)).await?;
        Ok(json!({"channel": id, "message": message}))
    }

    async fn typing(&mut self, incoming: &Incoming) -> Result<serde_json::Value, ApiError> {
        let (_, id) = Self::channel(incoming)?;
        self.joined(&id)?;
        // Typing events fan out like messages, so they are limited like them.
        self.take_token("typing", 1).await?;
        let event = json!({"type": "typing", "channel": id, "account_id": self.player.account_id, "name": self.player.name});
        self.state.hub.publish(&id, &event.to_string(), Some(self.connection)).await?;
        Ok(json!({"channel": id}))
    }
}
