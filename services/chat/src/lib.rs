//! Guildhall chat: rooms, groups and direct messages over WebSocket, stored durably, fanned out
//! across any number of stateless instances through Redis; each player's notifications and DM
//! inbox.

pub mod admin;
pub mod api;
pub mod blocks;
pub mod caps;
pub mod channel;
pub mod hub;
pub mod inbox;
pub mod known_sanctions;
pub mod notifications;
pub mod presence;
pub mod queue;
pub mod socket;
pub mod store;
pub mod upgrade;
pub mod writer;
pub mod ws;

use axum::Router;
use axum::extract::FromRef;
use platform::auth::{AdminKey, Authenticator};
use platform::cache::Cache;
use platform::db::Database;
use platform::events::{
    AccountDeleted, BlockAdded, BlockRemoved, FriendAccepted, FriendRequested, MessageReported, SeasonClosed, Subscription,
};
use platform::shutdown::Shutdown;
use utoipa::OpenApi;

use crate::hub::Hub;
use crate::presence::Presence;
use crate::writer::MessageWriter;

/// The per-player send limit: a burst, then a steady rate.
#[derive(Debug, Clone, Copy)]
pub struct SendLimit {
    /// Messages that may be sent at once.
    pub burst: u32,
    /// Messages per second after the burst.
    pub per_second: f64,
}

/// Everything the chat handlers need: one shared copy (`Parts`), so that a clone is a pointer's
/// worth. Each socket's task holds one for its whole life, and a copy of the parts was 216 bytes.
#[derive(Clone)]
pub struct ChatState(std::sync::Arc<Parts>);

impl std::ops::Deref for ChatState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// What the chat state holds.
#[derive(Clone)]
pub struct Parts {
    /// Groups, messages, sanctions.
    pub db: Database,
    /// Stores sent messages in group commits over `db`.
    pub messages: MessageWriter,
    /// Rate limits.
    pub cache: Cache,
    /// Fan-out.
    pub hub: Hub,
    /// Who is where.
    pub presence: Presence,
    /// Verifies tokens.
    pub auth: Authenticator,
    /// The server key.
    pub admin_key: AdminKey,
    /// Per-player send limit.
    pub send_limit: SendLimit,
    /// Socket caps per account and per IP.
    pub socket_limits: caps::SocketLimits,
    /// Open sockets by client IP.
    pub sockets_by_ip: caps::SocketsByIp,
    /// Sockets close with going-away when it stops.
    pub shutdown: Shutdown,
    /// Open sockets, so that shutdown waits for their close frames to go out.
    pub sockets: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Sockets opened since the start (the metrics).
    pub sockets_opened: platform::metrics::Counter,
}

impl ChatState {
    /// Chat over `cache`: Redis fan-out and presence when it is Redis, in process otherwise.
    /// Starts the message writer's lanes (on the current Tokio runtime).
    pub fn new(
        db: Database,
        cache: Cache,
        auth: Authenticator,
        admin_key: AdminKey,
        send_limit: SendLimit,
        socket_limits: caps::SocketLimits,
        shutdown: Shutdown,
    ) -> Self {
        let hub = Hub::new(cache.redis().cloned());
        let presence = match cache.redis() {
            Some(redis) => Presence::Redis(redis.clone(), hub.clone()),
            None => Presence::Memory(hub.clone()),
        };
        ChatState(std::sync::Arc::new(Parts {
            messages: MessageWriter::start(db.clone()),
            db,
            cache,
            hub,
            presence,
            auth,
            admin_key,
            send_limit,
            socket_limits,
            sockets_by_ip: Default::default(),
            shutdown,
            sockets: Default::default(),
            sockets_opened: Default::default(),
        }))
    }

    /// The same state over another database handle (the event consumers' own pool); everything
    /// else, the message writer among it, is shared.
    pub fn with_db(&self, db: Database) -> ChatState {
        ChatState(std::sync::Arc::new(Parts { db, ..Parts::clone(&self.0) }))
    }

    /// Registers chat's figures: the fan-out's (`Hub::register_metrics`), the message writer's
    /// (`MessageWriter::register_metrics`) and the sockets open
    /// here (read at scrape time).
    pub fn register_metrics(&self, metrics: &platform::metrics::Metrics) {
        self.hub.register_metrics(metrics);
        self.messages.register_metrics(metrics);
        let sockets = self.sockets.clone();
        metrics.gauge_fn("guildhall_chat_sockets", "Chat WebSockets open on this instance, authenticated or not yet.", &[], move || {
            Some(sockets.load(std::sync::atomic::Ordering::Relaxed) as f64)
        });
        metrics.register_counter(
            "guildhall_chat_sockets_opened_total",
            "Chat WebSockets opened on this instance.",
            &[],
            &self.sockets_opened,
        );
    }

    /// The work that writes to the database off the request path: pruning old notifications.
    /// Started apart from `run`, so that it idles while the region is read-only.
    pub async fn run_workers(self, phase: Shutdown) {
        self.prune_notifications(&phase).await;
    }

    /// Background work: the Redis fan-out and the presence refresh, until shutdown; then waits
    /// (up to 5 s) for every socket to have sent its going-away close.
    pub async fn run(self) {
        tokio::join!(
            self.hub.clone().run(self.shutdown.clone()),
            self.presence.clone().run(self.shutdown.clone()),
            self.relay_local_revocations(),
            self.refresh_online(),
            self.tell_sockets()
        );
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.sockets.load(std::sync::atomic::Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Tells every socket of this instance, through the hub, when the tokens' cut-off moves (a
    /// database restore) and, at shutdown, to close with going-away (1001) so that clients
    /// reconnect elsewhere. A socket that registers with the hub after either checks for itself
    /// (`ws::connection`).
    async fn tell_sockets(&self) {
        let mut cutoff = self.auth.tokens_not_before();
        loop {
            tokio::select! {
                () = self.shutdown.stopped() => {
                    self.hub.tell_all(&ws::GOING_AWAY);
                    return;
                }
                changed = cutoff.changed() => match changed {
                    Ok(()) => {
                        // A restored database may hold other sanctions than were known.
                        self.hub.known_sanctions().forget_all();
                        self.hub.tell_all(&hub::Control::CutoffMoved);
                    }
                    Err(_) => return,
                },
            }
        }
    }

    /// On embedded defaults, hands the sessions revoked in this process to the hub (with Redis
    /// the hub hears every instance's revocations on their channel instead).
    async fn relay_local_revocations(&self) {
        if self.cache.redis().is_some() {
            return;
        }
        let mut revocations = self.auth.revocations();
        loop {
            tokio::select! {
                () = self.shutdown.stopped() => return,
                revoked = revocations.recv() => match revoked {
                    Ok(session_id) => self.hub.apply(&hub::Notice::SessionEnded { session_id }),
                    // Missed some: each socket's periodic check of its session catches them.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "chat fell behind on revoked sessions");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Anonymises a deleted player's messages and reports (as sender and as reporter), removes
    /// them from groups, erases their notifications (and those about them) and conversation
    /// rows (and their name in their partners'), and remembers them as erased (so that no direct
    /// message or group membership makes any of it again), in one transaction:
    /// an attempt that fails leaves nothing half done, and the event's retry does it all.
    pub async fn erase_player(&self, account_id: &str) -> anyhow::Result<u64> {
        let mut tx = self.db.begin().await?;
        let anonymised = store::anonymise_sender(&mut *tx, account_id).await?;
        store::leave_all_groups(&mut *tx, account_id).await?;
        store::anonymise_reports(&mut tx, account_id).await?;
        store::erase_inbox(&mut tx, account_id).await?;
        store::forget_blocks(&mut *tx, account_id).await?;
        store::remember_erased(&mut *tx, account_id, platform::db::now_millis()).await?;
        tx.commit().await?;
        Ok(anonymised)
    }
}

impl FromRef<ChatState> for Authenticator {
    fn from_ref(state: &ChatState) -> Self {
        state.auth.clone()
    }
}

impl FromRef<ChatState> for AdminKey {
    fn from_ref(state: &ChatState) -> Self {
        state.admin_key.clone()
    }
}

/// The chat router.
pub fn router(state: ChatState) -> Router {
    api::routes().merge(inbox::routes()).merge(notifications::routes()).with_state(state)
}

/// What chat consumes: `account.deleted` anonymises that player's messages (and forgets their
/// blocks); `chat.message_reported` files the report in the moderators' queue;
/// `social.block_added` and `social.block_removed` keep chat's copy of the blocks (`blocks`);
/// `social.friend_requested`, `social.friend_accepted` and `leaderboard.season_closed` notify
/// players (keyed by the event's id, so a copy handled twice notifies once).
pub fn subscriptions(state: ChatState) -> Vec<Subscription> {
    let reports = state.clone();
    let (blocking, unblocking) = (state.clone(), state.clone());
    let (requests, acceptances, seasons) = (state.clone(), state.clone(), state.clone());
    vec![
        Subscription::on("chat", move |event: BlockAdded| {
            let state = blocking.clone();
            async move { state.record_block(&event.blocker_id, &event.blocked_id, true, &event.blocked_at).await }
        }),
        Subscription::on("chat", move |event: BlockRemoved| {
            let state = unblocking.clone();
            async move { state.record_block(&event.blocker_id, &event.blocked_id, false, &event.unblocked_at).await }
        }),
        Subscription::on("chat", move |event: AccountDeleted| {
            let state = state.clone();
            async move {
                let messages = state.erase_player(&event.account_id).await?;
                tracing::info!(account_id = event.account_id, messages, "anonymised a deleted player's messages");
                Ok(())
            }
        }),
        Subscription::on_with_id("chat", move |event_id, event: MessageReported| {
            let state = reports.clone();
            async move { state.file_report(&event_id, event).await.map(drop) }
        }),
        Subscription::on_with_id("chat", move |event_id, event: FriendRequested| {
            let state = requests.clone();
            async move { notifications::friend_requested(&state, &event_id, &event).await }
        }),
        Subscription::on_with_id("chat", move |event_id, event: FriendAccepted| {
            let state = acceptances.clone();
            async move { notifications::friend_accepted(&state, &event_id, &event).await }
        }),
        Subscription::on_with_id("chat", move |event_id, event: SeasonClosed| {
            let state = seasons.clone();
            async move {
                let notified = notifications::season_closed(&state, &event_id, &event).await?;
                tracing::info!(board_id = event.board_id, season = event.season, notified, "notified a season's placed players");
                Ok(())
            }
        }),
    ]
}

/// The OpenAPI description of the chat API.
#[derive(OpenApi)]
#[openapi(
    paths(
        ws::socket, api::create_group, api::show_group, api::add_member, api::remove_member, api::history, api::presence,
        api::moderate, api::lift, api::my_sanctions, api::account_sanctions, api::admin_sanction, api::admin_lift, api::report,
        admin::list_reports, admin::show_report, admin::list_reporters, admin::resolve_report, admin::list_sanctions,
        admin::delete_message, admin::delete_sender_messages, admin::channel_history,
        inbox::conversations, inbox::mark_read, notifications::list, notifications::mark_read
    ),
    components(schemas(
        api::MessageView, api::CreateGroup, api::GroupView, api::MemberView, api::AddMember, api::HistoryPage,
        api::PresenceView, api::PresentPlayer, api::ChannelSanction, api::Sanction, api::SanctionView, api::SanctionPage,
        api::Report, admin::ReportCase, admin::ReportedMessage, admin::Reporter, admin::Resolution, admin::ReportCasePage,
        admin::ReporterPage, admin::Resolve, admin::AdminSanctionView, admin::AdminSanctionPage, admin::DeletedMessages,
        inbox::ConversationView, inbox::ConversationPage, inbox::ReadConversation,
        notifications::NotificationView, notifications::NotificationPage, notifications::MarkRead, notifications::MarkedRead,
        platform::error::ErrorBody
    )),
    tags((name = "chat", description = "Channels, history, moderation, the DM inbox"),
        (name = "notifications", description = "Each player's notifications, also pushed on the chat WebSocket"),
        (name = "chat admin", description = "Operators' chat moderation with the server key: reports, sanctions, messages, any channel"))
)]
pub struct ApiDoc;
