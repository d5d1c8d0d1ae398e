//! The WebSocket at `GET /v1/chat/ws`.
//!
//! Authentication: the first frame, `{"type":"auth","token":"<access token>"}`, within 10 seconds
//! (or an `Authorization: Bearer` header on the upgrade, for clients that can set one). Not a
//! query parameter: URLs end up in proxy and load-balancer access logs, and a token there is a
//! token leaked. Browsers cannot set headers on a WebSocket, hence the first frame.
//!
//! Frames are JSON with a client-chosen `id` echoed in the `ack` or `error` that answers them:
//! `join`, `leave`, `send` (`body`), `typing`, and `auth` again with a fresh token of the same
//! account, which keeps the socket past the first token's expiry; the server pushes `message`,
//! `presence`, `typing`, `removed` and `message_deleted` (an operator deleted a message, or all of
//! one sender's messages in the channel: `message_id` or `sender_id`) events, and the player's
//! `notification`s (`crate::notifications`), whatever channels the socket is in. The server pings
//! every 20 s and closes a connection silent for 60 s (the ALB's idle timeout is longer), closes a
//! client too slow to read its queue (1008 `too slow to read`) or sending more frames than its
//! budget (1008 `too_many_frames`: `frame_budget`), drops one that reads nothing for so long
//! that a frame cannot go out within 10 s (`socket::WRITE_WITHIN`), and sends every socket a
//! going-away close (1001) on shutdown so clients reconnect elsewhere.
//!
//! A socket lives no longer than the right that opened it: it closes when its token expires
//! without a new `auth` (4001), when its session ends (logout, refresh-token reuse, account
//! deletion: 4002) or its account is banned from chat (4003), on every instance at once through
//! the hub's notices; a ban from a channel or removal from a group takes it out of that channel
//! with a `removed` event. The codes are in the 4000-4999 range RFC 6455 §7.4.2 leaves to
//! applications; each close's reason is a stable snake_case code.
//!
//! Blocks (`crate::blocks`): a `dm:` channel between two players one of whom blocked the other
//! refuses `join` and `send` (`dm_blocked`), and neither player's `presence` reaches the other;
//! one with an erased player refuses them for good (`account_deleted`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use platform::ApiError;
use platform::auth::Player;
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::http::ClientIp;
use serde::Deserialize;
use serde_json::json;

use crate::ChatState;
use crate::channel::Channel;
use crate::hub::{Control, Hidden, Member, Reach};
use crate::queue::{Next, Queue};
use crate::socket::{ChatSocket as Socket, ReadError, Received};
use crate::store::MessageRow;

/// Close code: the access token expired; refresh it and reconnect (or send `auth` before expiry).
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code: the session ended (logout, refresh-token reuse, account deletion); sign in again.
pub const CLOSE_SESSION_ENDED: u16 = 4002;
/// Close code: the account is banned from chat.
pub const CLOSE_BANNED: u16 = 4003;
/// Close code: the account has `CHAT_MAX_SOCKETS_PER_ACCOUNT` sockets open on this instance.
pub const CLOSE_TOO_MANY_SOCKETS: u16 = 4029;
/// The going-away close (1001) every socket gets at shutdown, so that clients reconnect elsewhere.
pub const GOING_AWAY: Control = Control::Close { code: 1001, reason: "server going away; reconnect" };
/// Largest message body, in bytes.
pub const MAX_BODY: usize = 2048;
/// Most channels one connection may be in.
pub const MAX_JOINS: usize = 50;
const AUTH_WITHIN: Duration = Duration::from_secs(10);
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENT_FOR: Duration = Duration::from_secs(60);
/// How long a closing socket waits for the client to end the connection (`Socket::linger`).
const LINGER: Duration = Duration::from_secs(1);
/// Close code and reason for a socket past its frame budget (`frame_budget`): policy violation.
const TOO_MANY_FRAMES: (u16, &str) = (1008, "too_many_frames");

/// Frames of any kind one socket may send in one ping period (`PING_EVERY`): twice what the send
/// limit lets through in that time (sends and typing, which it limits alike), and 100 more for
/// joins, leaves, pings and re-authentication. 200 with the default limit. Past it the socket
/// closes (`TOO_MANY_FRAMES`): the send limit refuses a flood of sends one by one, each refusal
/// a cache round trip, and every ping is answered with a pong, so without a budget one client
/// could keep the instance and the cache busy at the rate its connection carries frames.
fn frame_budget(limit: &crate::SendLimit) -> u32 {
    let per_period = f64::from(limit.burst) + limit.per_second * PING_EVERY.as_secs_f64();
    // Saturates for absurd settings rather than wrapping.
    (2.0 * per_period + 100.0).min(f64::from(u32::MAX)) as u32
}

/// Upgrades to a chat WebSocket: 400 `invalid_request` for a request that is not an upgrade, 429
/// `too_many_connections` when the client's IP already holds `CHAT_MAX_SOCKETS_PER_IP` sockets on
/// this instance.
#[utoipa::path(get, path = "/v1/chat/ws", tag = "chat",
    description = "A WebSocket upgrade (`Connection: Upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`); the player authenticates in the first frame, or with `Authorization: Bearer` on the upgrade. See the chat protocol in README.md.",
    responses((status = 101, description = "Switched to the WebSocket protocol"),
        (status = 400, body = ErrorBody, description = "`invalid_request`: not a WebSocket upgrade request"),
        (status = 429, body = ErrorBody, description = "`too_many_connections`: this address has too many chat sockets open")))]
pub async fn socket(State(state): State<ChatState>, ClientIp(ip): ClientIp, mut request: Request) -> Result<Response, ApiError> {
    // Refused as JSON, like the API's other errors.
    let not_an_upgrade =
        |why: &str| ApiError::InvalidRequest { field: None, message: format!("open the chat with a WebSocket upgrade: {why}") };
    let accept = crate::upgrade::accept_key(request.method(), request.headers()).map_err(not_an_upgrade)?;
    let on_upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| not_an_upgrade("this connection cannot be upgraded"))?;
    let cap = state.socket_limits.per_ip;
    let slot = state.sockets_by_ip.take(ip, cap).ok_or_else(|| ApiError::Client {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "too_many_connections",
        message: format!("at most {cap} chat sockets per address; close one first"),
        field: None,
    })?;
    let header_token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::to_owned);
    tokio::spawn(connection(state, Box::new(Opening { on_upgrade, header_token }), slot));
    Ok(crate::upgrade::switching_protocols(accept))
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

/// Sends the close `code` with `reason`, then lingers until the client ends the connection (at
/// most `LINGER`), so that the close reaches it.
async fn close(socket: &mut Socket, code: u16, reason: &'static str) {
    if socket.close(code, reason).await.is_ok() {
        socket.linger(LINGER).await;
    }
}

/// How a socket ends that cannot go on: a close code and its reason.
type Refusal = (u16, &'static str);

const AUTHENTICATION_REQUIRED: Refusal = (1008, "authentication required");

/// The close that answers a failed read, if any (`socket::ReadError::close`): 1009 for a frame or
/// message over `socket::MAX_MESSAGE`, 1002 for a breach of the protocol, 1007 for text that is
/// not UTF-8; none for a connection that broke (nothing would read a close frame).
fn read_failure(err: ReadError) -> Option<Refusal> {
    tracing::debug!(error = %err, "a chat socket's read failed");
    err.close()
}

/// Verifies `token`: its player and when it expires (Unix seconds).
async fn verify_token(state: &ChatState, token: &str) -> Result<(Player, Validity), ApiError> {
    let unconfirmed = state.auth.verify(token)?;
    let validity = Validity { expires_at: unconfirmed.expires_at(), issued_at: unconfirmed.issued_at() };
    Ok((state.auth.confirm(unconfirmed).await?, validity))
}

/// When a socket's current token was issued and expires, Unix seconds.
#[derive(Debug, Clone, Copy)]
struct Validity {
    expires_at: i64,
    /// Held against a database restore's cut-off (`platform::restore`).
    issued_at: i64,
}

/// Waits for the auth frame (unless the upgrade carried a token) and verifies it.
async fn authenticate(state: &ChatState, socket: &mut Socket, header_token: Option<String>) -> Result<(Player, Validity), Option<Refusal>> {
    if let Some(token) = header_token {
        return verify_token(state, &token).await.map_err(|_| Some(AUTHENTICATION_REQUIRED));
    }
    let first = match tokio::time::timeout(AUTH_WITHIN, socket.receive()).await {
        Ok(Some(Ok(first))) => first,
        Ok(Some(Err(err))) => return Err(read_failure(err)),
        Ok(None) => return Err(None),
        Err(_) => return Err(Some(AUTHENTICATION_REQUIRED)),
    };
    let Received::Text(text) = first else { return Err(Some(AUTHENTICATION_REQUIRED)) };
    let Ok(incoming) = serde_json::from_str::<Incoming>(&text) else { return Err(Some(AUTHENTICATION_REQUIRED)) };
    if incoming.kind != "auth" {
        let _ = socket.send_text(&error_frame(&incoming.id, "unauthenticated", "send {\"type\":\"auth\",\"token\":...} first")).await;
        return Err(Some(AUTHENTICATION_REQUIRED));
    }
    match verify_token(state, incoming.token.as_deref().unwrap_or_default()).await {
        Ok((player, validity)) => {
            let ack = json!({"type": "ack", "id": incoming.id, "account_id": player.account_id});
            socket.send_text(&ack.to_string()).await.map_err(|_| None)?;
            Ok((player, validity))
        }
        Err(err) => {
            let _ = socket.send_text(&api_error_frame(&incoming.id, &err)).await;
            Err(Some(AUTHENTICATION_REQUIRED))
        }
    }
}

/// The instant a token expiring at `expires_at` (Unix seconds) stops being valid.
fn expiry(expires_at: i64) -> tokio::time::Instant {
    let left = expires_at.saturating_mul(1000).saturating_sub(now_millis()).max(0);
    tokio::time::Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0))
}

/// One connected player.
struct Session<'a> {
    /// Borrowed from the connection's future, which owns the one copy (`connection`).
    state: &'a ChatState,
    player: Player,
    /// When the current token was issued and expires.
    validity: Validity,
    connection: u64,
    joined: HashSet<String>,
    /// Its outgoing queue: channels' frames, notices, notifications.
    queue: Queue,
    /// The players this one blocked or was blocked by: hidden from each other in presence.
    hidden: Hidden,
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

/// Keeps a connection known to the hub's notices for as long as it lives.
struct Registered(crate::hub::Hub, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.disconnect(self.1);
    }
}

/// What only the opening of a socket needs. Boxed, and consumed by a boxed step: what a task
/// captures it keeps for the socket's whole life.
struct Opening {
    on_upgrade: hyper::upgrade::OnUpgrade,
    /// The token of an upgrade that carried one (`Authorization: Bearer`).
    header_token: Option<String>,
}

/// hyper's hand-over of the upgraded connection, as a socket, and the upgrade's token if any.
async fn open(opening: Box<Opening>) -> Option<(Socket, Option<String>)> {
    let Opening { on_upgrade, header_token } = *opening;
    match on_upgrade.await {
        Ok(upgraded) => Some((Socket::new(hyper_util::rt::TokioIo::new(upgraded)), header_token)),
        Err(err) => {
            tracing::debug!(error = %err, "a chat upgrade failed");
            None
        }
    }
}

/// A socket's whole life, from hyper's hand-over to its close: the task each socket is.
///
/// A plain function returning an `async` block rather than an `async fn` called from the spawned
/// block: an `async fn`'s arguments are stored in its future and again in the future awaiting it,
/// and the task is as large as all of it for the socket's whole life (mostly spent idle in the
/// `select!`); so `state` is held once and the session borrows it.
#[allow(clippy::manual_async_fn, reason = "an async fn would store its arguments twice, as said above")]
fn connection(state: ChatState, opening: Box<Opening>, slot: crate::caps::IpSlot) -> impl Future<Output = ()> + Send {
    async move {
        // Counts the socket against its address until the task ends.
        let _slot = &slot;
        // The futures of the rare or one-off steps are boxed (here and below): a task's future is as
        // large as its largest step, and it stays that large for the connection's whole life, which is
        // mostly spent idle in the `select!`.
        let Some((mut socket, header_token)) = Box::pin(open(opening)).await else { return };
        let _open = Open::new(&state.sockets);
        state.sockets_opened.inc();
        let Some((mut session, _registered)) = Box::pin(start(&state, &mut socket, header_token)).await else { return };
        tracing::debug!(account_id = session.player.account_id, connection = session.connection, "chat connected");
        let mut last_heard = Instant::now();
        // One timer for the pings and the token's expiry, whichever comes first: each timer is
        // held by every idle socket.
        let mut next_ping = tokio::time::Instant::now() + PING_EVERY;
        let mut expires = expiry(session.validity.expires_at);
        let timer = tokio::time::sleep_until(next_ping.min(expires));
        tokio::pin!(timer);
        // Frames received since the last ping, against the budget; the count restarts at each ping.
        let budget = frame_budget(&state.send_limit);
        let mut frames: u32 = 0;
        // Shutdown and a restore's cut-off reach the sockets through the hub (`ChatState::run`
        // tells every registered socket); this one may have registered after either, so it
        // checks both once for itself.
        session.queue.push_notice(if state.shutdown.is_stopped() { GOING_AWAY } else { Control::CutoffMoved });
        loop {
            tokio::select! {
                next = session.queue.next() => match next {
                    Next::TooSlow => {
                        close(&mut socket, 1008, "too slow to read").await;
                        break;
                    }
                    Next::Notice(Control::Close { code, reason }) => {
                        close(&mut socket, code, reason).await;
                        break;
                    }
                    // A restore of the database ends every session issued before its cut-off.
                    Next::Notice(Control::CutoffMoved) => {
                        if state.auth.issued_before_cutoff(session.validity.issued_at) {
                            close(&mut socket, CLOSE_SESSION_ENDED, "session_revoked").await;
                            break;
                        }
                    }
                    Next::Notice(Control::Leave { channel, reason }) => {
                        if Box::pin(session.removed(&mut socket, channel, reason)).await.is_err() {
                            break;
                        }
                    }
                    Next::Frame(frame) => {
                        if socket.send_text(&frame).await.is_err() {
                            break;
                        }
                    }
                },
                () = &mut timer => {
                    if tokio::time::Instant::now() >= expires {
                        close(&mut socket, CLOSE_TOKEN_EXPIRED, "token_expired").await;
                        break;
                    }
                    next_ping = tokio::time::Instant::now() + PING_EVERY;
                    timer.as_mut().reset(next_ping.min(expires));
                    frames = 0;
                    if last_heard.elapsed() > SILENT_FOR {
                        close(&mut socket, 1001, "idle").await;
                        break;
                    }
                    // The notices end a session's sockets at once; this check is for one whose
                    // notice was lost (pub/sub delivers at most once, and not while the fan-out is
                    // reconnecting). A cache that cannot answer keeps the socket: an outage must not
                    // disconnect everyone.
                    if let Ok(true) = Box::pin(session.state.auth.is_revoked(&session.player.session_id)).await {
                        close(&mut socket, CLOSE_SESSION_ENDED, "session_revoked").await;
                        break;
                    }
                    if socket.ping().await.is_err() {
                        break;
                    }
                }
                incoming = socket.receive() => {
                    let message = match incoming {
                        Some(Ok(message)) => message,
                        Some(Err(err)) => {
                            if let Some((code, reason)) = read_failure(err) {
                                close(&mut socket, code, reason).await;
                            }
                            break;
                        }
                        None => break,
                    };
                    last_heard = Instant::now();
                    frames += 1;
                    if frames > budget {
                        let (code, reason) = TOO_MANY_FRAMES;
                        tracing::info!(account_id = session.player.account_id, frames, "a chat socket over its frame budget closed");
                        close(&mut socket, code, reason).await;
                        break;
                    }
                    match message {
                        Received::Text(text) => {
                            let answered = Box::pin(session.answer(&mut socket, text)).await;
                            // A re-authentication moves the expiry (and only then the timer, so
                            // that an ordinary frame costs no timer update).
                            let renewed = expiry(session.validity.expires_at);
                            if renewed != expires {
                                expires = renewed;
                                timer.as_mut().reset(next_ping.min(expires));
                            }
                            if answered.is_err() {
                                break;
                            }
                        }
                        // The answering close (RFC 6455 §5.5.1) echoes the client's code; the
                        // socket is dropped once it is out.
                        Received::Close(code) => {
                            let _ = socket.close(code.unwrap_or(1000), "").await;
                            break;
                        }
                        Received::Ping(payload) => {
                            if socket.pong(&payload).await.is_err() {
                                break;
                            }
                        }
                        Received::Pong => {}
                        Received::Binary => {
                            let reply = error_frame(&None, "invalid_request", "frames are JSON text");
                            if socket.send_text(&reply).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        }
        Box::pin(session.leave_all()).await;
        // Another socket of the player's on another instance sets the marker again at its next refresh.
        if !state.hub.has_other_connection(&session.player.account_id, session.connection)
            && let Err(err) = Box::pin(platform::online::clear(&state.cache, &session.player.account_id)).await
        {
            tracing::warn!(error = format!("{err:#}"), "marking a player offline failed");
        }
        tracing::debug!(account_id = session.player.account_id, "chat disconnected");
    }
}

/// Authenticates the socket and registers it with the hub: the session it starts, and its
/// registration (which ends with it). None once the socket is closed (refused, or a dependency
/// failed) or broken.
async fn start<'a>(state: &'a ChatState, socket: &mut Socket, header_token: Option<String>) -> Option<(Session<'a>, Registered)> {
    let (player, validity) = match authenticate(state, socket, header_token).await {
        Ok(authenticated) => authenticated,
        Err(refusal) => {
            if let Some((code, reason)) = refusal {
                close(socket, code, reason).await;
            }
            return None;
        }
    };
    let queue = Queue::default();
    let connection = state.hub.connection_id();
    // Registered before the blocks are read, so that a block notice that comes meanwhile is
    // applied to the set rather than missed; what is read is then added to it. (An unblock in
    // that moment may stay hidden until the next socket: the safe side.)
    let hidden = Hidden::default();
    let reach = Reach { queue: queue.clone(), hidden: hidden.clone() };
    if !state.hub.connect(connection, &player, reach, state.socket_limits.per_account) {
        close(socket, CLOSE_TOO_MANY_SOCKETS, "too_many_connections").await;
        return None;
    }
    let registered = Registered(state.hub.clone(), connection);
    match state.hidden_for(&player.account_id).await {
        Ok(read) => hidden.write().unwrap_or_else(|p| p.into_inner()).extend(read),
        Err(err) => {
            tracing::warn!(error = format!("{err:#}"), "loading a player's blocks failed");
            close(socket, 1011, "unavailable").await;
            return None;
        }
    }
    // Friends lists show the player online; a cache that cannot answer does not keep them out of chat.
    if let Err(err) = platform::online::mark(&state.cache, &[&player.account_id]).await {
        tracing::warn!(error = format!("{err:#}"), "marking a player online failed");
    }
    Some((Session { connection, state, player, validity, joined: HashSet::new(), queue, hidden }, registered))
}

impl Session<'_> {
    /// Handles one client frame and sends its answer.
    async fn answer(&mut self, socket: &mut Socket, text: String) -> std::io::Result<()> {
        let reply = self.handle(&text).await;
        socket.send_text(&reply).await
    }

    /// Takes the socket out of `channel` on a notice (a ban from it, a removal from its group)
    /// and tells the client why.
    async fn removed(&mut self, socket: &mut Socket, channel: String, reason: String) -> std::io::Result<()> {
        if !self.joined.contains(&channel) {
            return Ok(());
        }
        self.leave_channel(&channel).await;
        let event = json!({"type": "removed", "channel": channel, "reason": reason});
        socket.send_text(&event.to_string()).await
    }

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
            "auth" => self.reauthenticate(&incoming).await,
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
        let rejoin = self.joined.contains(&id);
        if !rejoin && self.joined.len() >= MAX_JOINS {
            return Err(ApiError::invalid("channel", format!("a connection may be in {MAX_JOINS} channels at most")));
        }
        // Each join fans a presence event out: joins get a bucket too, five times the sends'. A
        // re-join spends a token as well, or it would be a free way to make the server work.
        self.take_token("join", 5).await?;
        if rejoin {
            // Nothing changes, so nothing is read: the presence list costs a read of the whole
            // channel's set in Redis, and `GET .../presence` is there for a client that wants it.
            return Ok(json!({"channel": id, "already_joined": true}));
        }
        self.state.authorize(&self.player.account_id, &channel, false).await?;
        self.state.refuse_dm(&channel).await?;
        let member = Member {
            account_id: self.player.account_id.clone(),
            name: self.player.name.clone(),
            queue: self.queue.clone(),
            hidden: self.hidden.clone(),
        };
        self.state.hub.join(&id, self.connection, member).await?;
        self.joined.insert(id.clone());
        self.state.presence.enter(&id, self.connection, &self.player.account_id, &self.player.name).await?;
        let event = json!({"type": "presence", "channel": id, "joined": {"account_id": self.player.account_id, "name": self.player.name}});
        self.state.hub.publish_about(&id, &event.to_string(), Some(self.connection), Some(&self.player.account_id)).await?;
        let hidden = self.hidden.read().unwrap_or_else(|p| p.into_inner()).clone();
        let (count, players) = self.state.presence.list(&id, 100, &hidden).await?;
        let players: Vec<_> = players.into_iter().map(|(account_id, name)| json!({"account_id": account_id, "name": name})).collect();
        Ok(json!({"channel": id, "presence": {"count": count, "players": players}}))
    }

    /// `auth` on an open socket: a fresh token of the same account (another session of it, too)
    /// replaces the first, so the socket outlives the first token's expiry. The name shown stays
    /// the one the socket opened with, as its presence entries carry it.
    async fn reauthenticate(&mut self, incoming: &Incoming) -> Result<serde_json::Value, ApiError> {
        let token = incoming.token.as_deref().ok_or_else(|| ApiError::invalid("token", "token is required"))?;
        let (player, validity) = verify_token(self.state, token).await?;
        if player.account_id != self.player.account_id {
            return Err(ApiError::Forbidden("that token is another account's; open another socket for it".into()));
        }
        if player.session_id != self.player.session_id {
            self.state.hub.change_session(self.connection, &player.session_id);
            self.player.session_id = player.session_id;
        }
        self.validity = validity;
        Ok(json!({"account_id": self.player.account_id}))
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
        if let Err(err) = self.state.hub.publish_about(id, &event.to_string(), Some(self.connection), Some(&player.account_id)).await {
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
        // Membership, sanctions and blocks can change after a join: check them on every send.
        self.state.authorize(&self.player.account_id, &channel, true).await?;
        self.state.refuse_dm(&channel).await?;
        let row = MessageRow {
            id: uuid::Uuid::now_v7().to_string(),
            channel_id: id.clone(),
            sender_id: Some(self.player.account_id.clone()),
            sender_name: self.player.name.clone(),
            body: body.to_owned(),
            created_at: now_millis(),
        };
        // Stored durably before it is acknowledged or delivered: the writer answers once the group
        // commit holding it is done (a batch that failed stored none of its messages); a direct
        // message in the same batch transaction as its conversation's state and the recipient's
        // notification (`inbox`).
        let row = match &channel {
            Channel::Direct(..) => crate::inbox::send_direct(self.state, &channel, row).await?,
            _ => self.state.messages.store(row).await?,
        };
        // The sender's next history read comes from the writer (a socket's writes pass no
        // HTTP layer to mark them: `platform::replica`).
        self.state.db.note_write(&self.player.account_id).await;
        let message = crate::api::MessageView::from(row);
        let event = json!({"type": "message", "channel": id, "message": message});
        // Stored is sent: an error answer here would have the client send it again, and store it
        // twice (a publish that timed out may even have gone out).
        self.state.hub.publish_stored(&id, &event.to_string(), Some(self.connection)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_budget_follows_the_send_limit() {
        assert_eq!(frame_budget(&crate::SendLimit { burst: 10, per_second: 2.0 }), 200, "the default limit");
        assert_eq!(frame_budget(&crate::SendLimit { burst: 100, per_second: 1.0 }), 340);
        assert_eq!(frame_budget(&crate::SendLimit { burst: u32::MAX, per_second: f64::MAX }), u32::MAX);
    }
}
