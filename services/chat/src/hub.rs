//! Fan-out: which local connections are in which channel, and how an event published on one
//! instance reaches the members connected to every other.
//!
//! Across instances the hub uses Redis pub/sub, one Redis channel per chat channel, subscribed
//! while at least one local connection is in it. Pub/sub rather than streams: chat events are
//! delivered live and already stored durably in the database before they are published, so a
//! client that missed some (a reconnect, a Redis failover) refills from history; streams would
//! add per-reader offsets and trimming for a guarantee the database already gives. Every
//! event, local members' included, goes through Redis, so all instances see one order per channel.
//! On embedded defaults the hub delivers in process.
//!
//! The hub also knows every authenticated connection of this instance by account and session, so
//! that a `Notice` (a session revoked, a ban, a removal from a group) published on any instance
//! reaches the connections it concerns on all of them: through one Redis channel every instance
//! subscribes to, plus the accounts service's revocation channel (`platform::auth`).
//!
//! Each connection has a bounded queue (`crate::queue`). A client that does not read fast enough
//! fills it and is disconnected instead of growing an unbounded buffer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use platform::cache::RedisCache;
use platform::shutdown::Shutdown;

use crate::queue::Queue;

/// The players hidden from one connection's player, and it from them: those it blocked or was
/// blocked by. Shared by the connection's memberships and its entry for notices, which keep it
/// current as blocks change.
pub type Hidden = Arc<std::sync::RwLock<HashSet<String>>>;

/// A connection's membership: where to send its frames.
#[derive(Clone, Debug)]
pub struct Member {
    /// Account id.
    pub account_id: String,
    /// Name shown.
    pub name: String,
    /// The connection's outgoing queue; a full one disconnects the client.
    pub queue: Queue,
    /// Whose presence frames it does not get.
    pub hidden: Hidden,
}

/// What a connection is told to do by a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Close the socket with this code and reason (see `ws` for the codes).
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason: a stable code.
        reason: &'static str,
    },
    /// Leave `channel` and tell the client why.
    Leave {
        /// Channel id.
        channel: String,
        /// `banned` or `removed`.
        reason: String,
    },
    /// The tokens' cut-off moved (a database restore, `platform::restore`): close if this
    /// socket's token was issued before it.
    CutoffMoved,
}

/// Something that ends an account's or a session's right to (part of) chat, announced to every
/// instance.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    /// The session ended (logout, refresh-token reuse, account deletion).
    SessionEnded {
        /// Session id.
        session_id: String,
    },
    /// The account was banned from chat everywhere.
    BannedEverywhere {
        /// Account id.
        account_id: String,
    },
    /// The account may no longer use a channel.
    LeaveChannel {
        /// Account id.
        account_id: String,
        /// Channel id.
        channel: String,
        /// `banned` or `removed`.
        reason: String,
    },
    /// A frame for every socket of the account, wherever it is connected (a notification).
    Deliver {
        /// Account id.
        account_id: String,
        /// The frame, as sent to the client.
        frame: String,
    },
    /// Whether `a` and `b` are hidden from each other now (a block between them was added, or
    /// lifted with none left).
    Blocks {
        /// One player.
        a: String,
        /// The other.
        b: String,
        /// True while either blocks the other.
        hidden: bool,
    },
    /// The account's mutes or bans changed: what instances know of them is to be read again
    /// (`crate::known_sanctions`).
    SanctionsChanged {
        /// Account id.
        account_id: String,
    },
}

/// An authenticated connection of this instance, as notices find it.
struct Connected {
    account_id: String,
    session_id: String,
    /// The connection's outgoing queue: its notices, and its channels' frames.
    queue: Queue,
    hidden: Hidden,
}

/// How the hub reaches one connection (`Hub::connect`).
pub struct Reach {
    /// Its outgoing queue, the one its channels' frames go to: notices about its account or
    /// session, and notifications for its account.
    pub queue: Queue,
    /// The players hidden from it (blocks), kept current by `Notice::Blocks`.
    pub hidden: Hidden,
}

/// The fan-out hub of this instance. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    /// Identifies this instance in envelopes, so it can skip the sending connection.
    instance: String,
    next_connection: AtomicU64,
    local: Mutex<HashMap<String, HashMap<u64, Member>>>,
    connected: Mutex<HashMap<u64, Connected>>,
    redis: Option<Bridge>,
    metrics: HubMetrics,
    /// Kept right by `Notice::SanctionsChanged` and forgotten on each connection to Redis.
    known_sanctions: crate::known_sanctions::KnownSanctions,
}

/// What the fan-out counts (`Hub::register_metrics`).
struct HubMetrics {
    /// Frames handed to local connections' queues.
    deliveries: platform::metrics::Counter,
    /// Connections closed because their queue was full.
    too_slow: platform::metrics::Counter,
    /// From a publish (on any instance) to the hand-off to this instance's connections.
    fanout: platform::metrics::Histogram,
    /// Events about a stored change whose publish failed (`Hub::publish_stored`).
    unpublished: platform::metrics::Counter,
}

/// The Redis channel (under the prefix) that carries notices between instances. Not a chat
/// channel id (those have a kind before a colon), so it cannot collide with one.
const NOTICES: &str = "chat-notices";

struct Bridge {
    cache: RedisCache,
    sink: tokio::sync::Mutex<Option<redis::aio::PubSubSink>>,
}

/// What travels through Redis: the event and the connection that caused it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope {
    /// `<instance>:<connection>` of the sender, whose own connection does not get the echo.
    o: String,
    /// The event frame, as sent to clients.
    e: Box<serde_json::value::RawValue>,
    /// When it was published, Unix microseconds, for the fan-out latency. Optional, so that
    /// instances of a build without it and with it can share Redis during a rolling deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<u64>,
    /// The player a presence frame is about: members who cannot see them (`Hidden`) skip it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<String>,
}

/// The time now in Unix microseconds. Instances compare each other's: their clocks are kept
/// within a millisecond of each other by NTP (ECS: the Amazon Time Sync Service).
fn unix_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Hub {
    /// A hub delivering through `redis`, or in process when `None`.
    pub fn new(redis: Option<RedisCache>) -> Self {
        Hub {
            inner: Arc::new(Inner {
                instance: uuid::Uuid::now_v7().simple().to_string(),
                next_connection: AtomicU64::new(1),
                local: Mutex::new(HashMap::new()),
                connected: Mutex::new(HashMap::new()),
                redis: redis.map(|cache| Bridge { cache, sink: tokio::sync::Mutex::new(None) }),
                metrics: HubMetrics {
                    deliveries: Default::default(),
                    too_slow: Default::default(),
                    fanout: platform::metrics::Histogram::seconds(platform::metrics::FAST_BUCKETS),
                    unpublished: Default::default(),
                },
                known_sanctions: Default::default(),
            }),
        }
    }

    /// The players' sanctions as this instance knows them.
    pub fn known_sanctions(&self) -> &crate::known_sanctions::KnownSanctions {
        &self.inner.known_sanctions
    }

    /// Registers the fan-out's figures, and the players connected here (read at scrape time).
    pub fn register_metrics(&self, metrics: &platform::metrics::Metrics) {
        let m = &self.inner.metrics;
        metrics.register_counter(
            "guildhall_chat_deliveries_total",
            "Chat frames handed to the sockets of this instance.",
            &[],
            &m.deliveries,
        );
        metrics.register_counter(
            "guildhall_chat_slow_disconnects_total",
            "Chat sockets closed because they did not read their queue fast enough (1008).",
            &[],
            &m.too_slow,
        );
        metrics.register_counter(
            "guildhall_chat_unpublished_total",
            "Chat events about a stored change (a message sent, messages deleted) whose publish failed: members connected then missed them live and read the change from history.",
            &[],
            &m.unpublished,
        );
        metrics.register_histogram(
            "guildhall_chat_fanout_seconds",
            "From a chat event's publish (on any instance) to its hand-off to this instance's sockets.",
            &[],
            &m.fanout,
        );
        let hub = self.clone();
        metrics.gauge_fn(
            "guildhall_chat_players_connected",
            "Players (distinct accounts) with an authenticated chat socket on this instance.",
            &[],
            move || Some(hub.players_connected() as f64),
        );
    }

    /// Distinct accounts with an authenticated connection here.
    pub fn players_connected(&self) -> usize {
        let connected = self.inner.connected.lock().unwrap_or_else(|p| p.into_inner());
        connected.values().map(|c| c.account_id.as_str()).collect::<HashSet<_>>().len()
    }

    /// A new id for a connection of this instance.
    pub fn connection_id(&self) -> u64 {
        self.inner.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    fn redis_channel(bridge: &Bridge, channel: &str) -> String {
        bridge.cache.key(&format!("chat:{channel}"))
    }

    /// Records an authenticated connection, so that notices about its account or session reach
    /// it (`Reach`); false, recording nothing, when its account already has `cap` connections
    /// here. Counted and recorded under one lock, so that simultaneous connections cannot all
    /// pass the cap.
    pub fn connect(&self, connection: u64, player: &platform::auth::Player, reach: Reach, cap: usize) -> bool {
        let mut connected = self.inner.connected.lock().unwrap_or_else(|p| p.into_inner());
        if connected.values().filter(|c| c.account_id == player.account_id).count() >= cap {
            return false;
        }
        let Reach { queue, hidden } = reach;
        let entry = Connected { account_id: player.account_id.clone(), session_id: player.session_id.clone(), queue, hidden };
        connected.insert(connection, entry);
        true
    }

    /// A connection re-authenticated with a token of another session of the same account.
    pub fn change_session(&self, connection: u64, session_id: &str) {
        if let Some(entry) = self.inner.connected.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&connection) {
            entry.session_id = session_id.to_owned();
        }
    }

    /// Every account with an authenticated connection here, once each (the online markers).
    pub fn connected_accounts(&self) -> Vec<String> {
        let connected = self.inner.connected.lock().unwrap_or_else(|p| p.into_inner());
        let accounts: HashSet<&str> = connected.values().map(|c| c.account_id.as_str()).collect();
        accounts.into_iter().map(str::to_owned).collect()
    }

    /// Whether `account_id` has an authenticated connection here other than `connection`.
    pub fn has_other_connection(&self, account_id: &str, connection: u64) -> bool {
        let connected = self.inner.connected.lock().unwrap_or_else(|p| p.into_inner());
        connected.iter().any(|(id, c)| *id != connection && c.account_id == account_id)
    }

    /// Forgets a connection that closed.
    pub fn disconnect(&self, connection: u64) {
        self.inner.connected.lock().unwrap_or_else(|p| p.into_inner()).remove(&connection);
    }

    /// Announces `notice` to every instance (this one included).
    pub async fn notify(&self, notice: &Notice) -> anyhow::Result<()> {
        match &self.inner.redis {
            Some(bridge) => {
                let mut conn = bridge.cache.connection();
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(bridge.cache.key(NOTICES))
                    .arg(serde_json::to_string(notice)?)
                    .query_async(&mut conn)
                    .await
                    .map_err(anyhow::Error::new)
                    .map_err(|err| err.context("publishing a chat notice"))?;
            }
            None => self.apply(notice),
        }
        Ok(())
    }

    /// Tells every connection of this instance to do `control` (shutdown's going-away close, a
    /// moved cut-off): one task tells them all, rather than each socket's task waiting on every
    /// such event itself, which made each idle socket larger.
    pub fn tell_all(&self, control: &Control) {
        let connected = self.inner.connected.lock().unwrap_or_else(|p| p.into_inner());
        for entry in connected.values() {
            entry.queue.push_notice(control.clone());
        }
    }

    /// Tells the connections of this instance that `notice` concerns what to do.
    pub fn apply(&self, notice: &Notice) {
        if let Notice::SanctionsChanged { account_id } = notice {
            self.inner.known_sanctions.forget(account_id);
            return;
        }
        let connected = self.inner.connected.lock().unwrap_or_else(|p| p.into_inner());
        if let Notice::Deliver { account_id, frame } = notice {
            let frame: Arc<str> = Arc::from(frame.as_str());
            for entry in connected.values().filter(|entry| entry.account_id == *account_id) {
                // Like a channel's frames: a queue that is full is a client not keeping up, and
                // the push marks it so.
                entry.queue.push_frame(frame.clone());
            }
            return;
        }
        for entry in connected.values() {
            if let Notice::Blocks { a, b, hidden } = notice {
                let other = if *a == entry.account_id {
                    b
                } else if *b == entry.account_id {
                    a
                } else {
                    continue;
                };
                let mut set = entry.hidden.write().unwrap_or_else(|p| p.into_inner());
                if *hidden {
                    set.insert(other.clone());
                } else {
                    set.remove(other);
                }
                continue;
            }
            let control = match notice {
                Notice::SessionEnded { session_id } if *session_id == entry.session_id => {
                    Control::Close { code: crate::ws::CLOSE_SESSION_ENDED, reason: "session_revoked" }
                }
                Notice::BannedEverywhere { account_id } if *account_id == entry.account_id => {
                    Control::Close { code: crate::ws::CLOSE_BANNED, reason: "banned" }
                }
                Notice::LeaveChannel { account_id, channel, reason } if *account_id == entry.account_id => {
                    Control::Leave { channel: channel.clone(), reason: reason.clone() }
                }
                _ => continue,
            };
            // A connection that has not taken its last notices is not keeping up: the push marks
            // it too slow, and it closes rather than keep what a notice meant to take away.
            entry.queue.push_notice(control);
        }
    }

    /// Adds a connection to a channel; subscribes this instance when it is the first.
    pub async fn join(&self, channel: &str, connection: u64, member: Member) -> anyhow::Result<()> {
        let first = {
            let mut local = self.inner.local.lock().unwrap_or_else(|p| p.into_inner());
            let members = local.entry(channel.to_owned()).or_default();
            members.insert(connection, member);
            members.len() == 1
        };
        if first && let Some(bridge) = &self.inner.redis {
            let mut sink = bridge.sink.lock().await;
            if let Some(sink) = sink.as_mut()
                && let Err(err) = bridge.cache.bounded(sink.subscribe(Self::redis_channel(bridge, channel))).await
            {
                // Not subscribed: take the member out again, so that the next join subscribes.
                self.remove_local(channel, connection);
                return Err(anyhow::Error::new(err).context("subscribing to a chat channel"));
            }
        }
        Ok(())
    }

    /// Takes a connection out of a channel's local members; true when it was the last.
    fn remove_local(&self, channel: &str, connection: u64) -> bool {
        let mut local = self.inner.local.lock().unwrap_or_else(|p| p.into_inner());
        match local.get_mut(channel) {
            Some(members) => {
                members.remove(&connection);
                let empty = members.is_empty();
                if empty {
                    local.remove(channel);
                }
                empty
            }
            None => false,
        }
    }

    /// Removes a connection from a channel; unsubscribes when it was the last here.
    pub async fn leave(&self, channel: &str, connection: u64) {
        let last = self.remove_local(channel, connection);
        if last && let Some(bridge) = &self.inner.redis {
            let mut sink = bridge.sink.lock().await;
            if let Some(sink) = sink.as_mut()
                && let Err(err) = bridge.cache.bounded(sink.unsubscribe(Self::redis_channel(bridge, channel))).await
            {
                tracing::warn!(error = %err, channel, "unsubscribing failed");
            }
        }
    }

    /// The members of a channel connected here.
    pub fn local_members(&self, channel: &str) -> Vec<Member> {
        let local = self.inner.local.lock().unwrap_or_else(|p| p.into_inner());
        local.get(channel).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Every (channel, member) pair connected here (presence refresh).
    pub fn memberships(&self) -> Vec<(String, u64, String, String)> {
        let local = self.inner.local.lock().unwrap_or_else(|p| p.into_inner());
        local
            .iter()
            .flat_map(|(channel, members)| members.iter().map(move |(id, m)| (channel.clone(), *id, m.account_id.clone(), m.name.clone())))
            .collect()
    }

    /// Publishes an event about a change already stored (a message sent, messages deleted). A
    /// publish that fails is logged and counted (`guildhall_chat_unpublished_total`) rather than
    /// returned: the change stands, and an error would have a sender store its message again.
    /// Members who missed the event live read the change from the channel's history, as after
    /// any gap in the fan-out.
    pub async fn publish_stored(&self, channel: &str, frame: &str, origin: Option<u64>) {
        if let Err(err) = self.publish(channel, frame, origin).await {
            self.inner.metrics.unpublished.inc();
            tracing::warn!(channel, error = format!("{err:#}"), "an event about a stored change was not published");
        }
    }

    /// Publishes `frame` (a JSON event) to every member of `channel` on every instance, except
    /// connection `origin` of this instance.
    pub async fn publish(&self, channel: &str, frame: &str, origin: Option<u64>) -> anyhow::Result<()> {
        self.publish_about(channel, frame, origin, None).await
    }

    /// `publish`, for a frame about player `about` (a presence change): members hidden from them
    /// (blocks) do not get it.
    pub async fn publish_about(&self, channel: &str, frame: &str, origin: Option<u64>, about: Option<&str>) -> anyhow::Result<()> {
        let origin = format!("{}:{}", self.inner.instance, origin.unwrap_or(0));
        let now = unix_micros();
        match &self.inner.redis {
            Some(bridge) => {
                let envelope = Envelope {
                    o: origin,
                    e: serde_json::value::RawValue::from_string(frame.to_owned())?,
                    t: Some(now),
                    a: about.map(str::to_owned),
                };
                let mut conn = bridge.cache.connection();
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(Self::redis_channel(bridge, channel))
                    .arg(serde_json::to_string(&envelope)?)
                    .query_async(&mut conn)
                    .await?;
            }
            None => self.deliver(channel, Arc::from(frame), &origin, Some(now), about),
        }
        Ok(())
    }

    /// Hands a frame published at `published` (Unix microseconds) to the local members of a
    /// channel; a member whose queue is full is kicked.
    fn deliver(&self, channel: &str, frame: Arc<str>, origin: &str, published: Option<u64>, about: Option<&str>) {
        let skip =
            origin.strip_prefix(self.inner.instance.as_str()).and_then(|rest| rest.strip_prefix(':')).and_then(|id| id.parse::<u64>().ok());
        let (mut delivered, mut too_slow) = (0, 0);
        for (id, member) in self.local_members_with_ids(channel) {
            if Some(id) == skip || about.is_some_and(|about| member.hidden.read().unwrap_or_else(|p| p.into_inner()).contains(about)) {
                continue;
            }
            if !member.queue.push_frame(frame.clone()) {
                tracing::info!(account_id = member.account_id, channel, "client too slow; disconnecting");
                too_slow += 1;
            } else {
                delivered += 1;
            }
        }
        // Counted once per frame, not per member: the hot path adds, it does not count one by one.
        let m = &self.inner.metrics;
        m.deliveries.add(delivered);
        m.too_slow.add(too_slow);
        if let Some(published) = published {
            m.fanout.observe_duration(std::time::Duration::from_micros(unix_micros().saturating_sub(published)));
        }
    }

    fn local_members_with_ids(&self, channel: &str) -> Vec<(u64, Member)> {
        let local = self.inner.local.lock().unwrap_or_else(|p| p.into_inner());
        local.get(channel).map(|m| m.iter().map(|(id, m)| (*id, m.clone())).collect()).unwrap_or_default()
    }

    /// Runs the Redis side until shutdown: keeps one pub/sub connection, resubscribes after a
    /// reconnect, and delivers what arrives. Does nothing on embedded defaults.
    pub async fn run(self, shutdown: Shutdown) {
        let Some(bridge) = &self.inner.redis else { return };
        let prefix_len = bridge.cache.key("chat:").len();
        let notices = bridge.cache.key(NOTICES);
        let revocations = bridge.cache.key(platform::auth::REVOCATION_CHANNEL);
        while !shutdown.is_stopped() {
            let pubsub = match bridge.cache.bounded(bridge.cache.client().get_async_pubsub()).await {
                Ok(pubsub) => pubsub,
                Err(err) => {
                    tracing::warn!(error = %err, "chat fan-out cannot reach Redis; retrying");
                    tokio::select! {
                        () = shutdown.stopped() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let resubscribed = {
                // Collect and subscribe under the sink lock: a join that lands after the
                // collection waits for the lock and then subscribes through the new sink.
                let mut guard = bridge.sink.lock().await;
                let channels: HashSet<String> = self.inner.local.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
                let mut resubscribed = Ok(channels.len());
                // Notices and revocations always, whether or not anyone here is in a channel: a
                // socket outside every channel still has a session that can end.
                for always in [&notices, &revocations] {
                    if let Err(err) = bridge.cache.bounded(sink.subscribe(always)).await {
                        resubscribed = Err(err);
                        break;
                    }
                }
                for channel in &channels {
                    if resubscribed.is_err() {
                        break;
                    }
                    if let Err(err) = bridge.cache.bounded(sink.subscribe(Self::redis_channel(bridge, channel))).await {
                        resubscribed = Err(err);
                        break;
                    }
                }
                if resubscribed.is_ok() {
                    *guard = Some(sink);
                }
                resubscribed
            };
            let channels = match resubscribed {
                Ok(channels) => channels,
                Err(err) => {
                    // A channel left unsubscribed would miss every event: start over.
                    tracing::warn!(error = %err, "chat fan-out could not resubscribe; reconnecting");
                    tokio::select! {
                        () = shutdown.stopped() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            // Notices published while this instance was not subscribed are lost to it.
            self.inner.known_sanctions.forget_all();
            tracing::info!(channels, "chat fan-out connected to Redis");
            loop {
                tokio::select! {
                    () = shutdown.stopped() => return,
                    message = stream.next() => {
                        let Some(message) = message else { break };
                        let channel_name = message.get_channel_name();
                        let Ok(payload) = message.get_payload::<String>() else { continue };
                        if channel_name == revocations {
                            self.apply(&Notice::SessionEnded { session_id: payload });
                            continue;
                        }
                        if channel_name == notices {
                            match serde_json::from_str::<Notice>(&payload) {
                                Ok(notice) => self.apply(&notice),
                                Err(err) => tracing::warn!(error = %err, "undecodable chat notice"),
                            }
                            continue;
                        }
                        let Some(channel) = channel_name.get(prefix_len..) else { continue };
                        match serde_json::from_str::<Envelope>(&payload) {
                            Ok(envelope) => self.deliver(channel, Arc::from(envelope.e.get()), &envelope.o, envelope.t, envelope.a.as_deref()),
                            Err(err) => tracing::warn!(error = %err, "undecodable chat envelope"),
                        }
                    }
                }
            }
            *bridge.sink.lock().await = None;
            tracing::warn!("chat fan-out lost Redis; reconnecting");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Next;

    #[tokio::test]
    async fn a_member_that_does_not_read_is_kicked_not_buffered() {
        let hub = Hub::new(None);
        let slow = Member { account_id: "slow".into(), name: "slow".into(), queue: Queue::bounded(2), hidden: Hidden::default() };
        let fast = Member { account_id: "fast".into(), name: "fast".into(), queue: Queue::default(), hidden: Hidden::default() };
        let (slow_queue, fast_queue) = (slow.queue.clone(), fast.queue.clone());
        hub.join("room:r", 1, slow).await.expect("join");
        hub.join("room:r", 2, fast).await.expect("join");
        for i in 0..3 {
            hub.publish("room:r", &format!("{{\"n\":{i}}}"), None).await.expect("publish");
        }
        assert!(slow_queue.is_too_slow(), "the third frame overflowed the slow member's queue");
        assert_eq!(slow_queue.next().await, Next::TooSlow);
        assert!(!fast_queue.is_too_slow());
        for i in 0..3 {
            assert_eq!(fast_queue.next().await, Next::Frame(format!("{{\"n\":{i}}}").into()));
        }
        // The sender's own connection does not get its echo.
        hub.publish("room:r", "{\"n\":9}", Some(2)).await.expect("publish");
        hub.publish("room:r", "{\"n\":10}", None).await.expect("publish");
        assert_eq!(fast_queue.next().await, Next::Frame("{\"n\":10}".into()));
        hub.leave("room:r", 1).await;
        hub.leave("room:r", 2).await;
        assert!(hub.memberships().is_empty());
    }

    #[tokio::test]
    async fn presence_frames_skip_members_hidden_from_their_player_as_notices_say() {
        let hub = Hub::new(None);
        let queue = Queue::default();
        let hidden = Hidden::default();
        let ana = platform::auth::Player { account_id: "ana".into(), session_id: "s".into(), name: "Ana".into() };
        let reach = Reach { queue: queue.clone(), hidden: hidden.clone() };
        assert!(hub.connect(1, &ana, reach, 5));
        let member = Member { account_id: "ana".into(), name: "Ana".into(), queue: queue.clone(), hidden };
        hub.join("room:r", 1, member).await.expect("join");

        hub.apply(&Notice::Blocks { a: "bob".into(), b: "ana".into(), hidden: true });
        hub.publish_about("room:r", "{\"about\":\"bob\"}", None, Some("bob")).await.expect("publish");
        hub.publish_about("room:r", "{\"about\":\"cy\"}", None, Some("cy")).await.expect("publish");
        assert_eq!(queue.next().await, Next::Frame("{\"about\":\"cy\"}".into()), "Bob's frame skipped, Cy's delivered");

        hub.apply(&Notice::Blocks { a: "ana".into(), b: "bob".into(), hidden: false });
        hub.publish_about("room:r", "{\"about\":\"bob\"}", None, Some("bob")).await.expect("publish");
        assert_eq!(queue.next().await, Next::Frame("{\"about\":\"bob\"}".into()), "unhidden again");
        assert!(hub.has_other_connection("ana", 2) && !hub.has_other_connection("ana", 1));
        assert_eq!(hub.connected_accounts(), ["ana"]);
    }
}
