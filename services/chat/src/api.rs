//! The chat REST API: groups and members, history, presence, moderation and reports.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use platform::auth::{Admin, Caller, Player, Scope};
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::events::{MessageReported, SanctionIssued};
use platform::http::{Json, Query};
use platform::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ChatState;
use crate::admin::{AdminAction, ChatAdmin, audit};
use crate::channel::Channel;
use crate::hub::Notice;
use crate::store::{self, MessageRow, SanctionRecord};

/// Most members a group may have.
pub const MAX_GROUP_MEMBERS: i64 = 500;

/// The chat routes.
pub fn routes() -> Router<ChatState> {
    Router::new()
        .route("/v1/chat/ws", get(crate::ws::socket))
        .route("/v1/chat/groups", post(create_group))
        .route("/v1/chat/groups/{id}", get(show_group))
        .route("/v1/chat/groups/{id}/members", post(add_member))
        .route("/v1/chat/groups/{id}/members/{account_id}", delete(remove_member))
        .route("/v1/chat/channels/{id}/messages", get(history))
        .route("/v1/chat/channels/{id}/presence", get(presence))
        .route("/v1/chat/channels/{id}/sanctions", post(moderate))
        .route("/v1/chat/channels/{id}/sanctions/{account_id}/{kind}", delete(lift))
        .route("/v1/chat/me/sanctions", get(my_sanctions))
        .route("/v1/admin/accounts/{id}/sanctions", get(account_sanctions))
        .route("/v1/chat/messages/{id}/report", post(report))
        .merge(crate::admin::routes())
}

/// A stored message as clients see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessageView {
    /// Server-assigned id (UUIDv7, time-ordered).
    pub id: String,
    /// Channel id.
    pub channel: String,
    /// Sender's account id; null once that account was deleted.
    pub sender_id: Option<String>,
    /// Sender's name.
    pub sender_name: String,
    /// Text.
    pub body: String,
    /// RFC 3339, server time.
    pub sent_at: String,
}

impl From<MessageRow> for MessageView {
    fn from(m: MessageRow) -> Self {
        MessageView {
            id: m.id,
            channel: m.channel_id,
            sender_id: m.sender_id,
            sender_name: m.sender_name,
            body: m.body,
            sent_at: platform::time::rfc3339(m.created_at),
        }
    }
}

impl ChatState {
    /// Has every instance read `account`'s sanctions again (`crate::known_sanctions`): this one
    /// at once, the others through a notice. A notice that cannot be published is logged; the
    /// others then take the change within `known_sanctions::FRESH_FOR`.
    pub(crate) async fn sanctions_changed(&self, account: &str) {
        self.hub.known_sanctions().forget(account);
        if let Err(err) = self.hub.notify(&Notice::SanctionsChanged { account_id: account.to_owned() }).await {
            tracing::warn!(error = format!("{err:#}"), account_id = account, "announcing a sanction change failed");
        }
    }

    /// Whether `account` may use `channel`: not banned, and a member of a group, a party of a
    /// direct conversation. With `sending`, also not muted. The sanctions as this instance knows
    /// them (`crate::known_sanctions`).
    pub async fn authorize(&self, account: &str, channel: &Channel, sending: bool) -> ApiResult<()> {
        match channel {
            Channel::Room(_) => {}
            Channel::Group(group) => {
                if store::role(self.db.pool(), group, account).await?.is_none() {
                    return Err(ApiError::Forbidden("only the group's members may use it".into()));
                }
            }
            Channel::Direct(a, b) => {
                if account != a && account != b {
                    return Err(ApiError::Forbidden("this conversation is between two other players".into()));
                }
            }
        }
        let (id, now) = (channel.id(), now_millis());
        // Async blocks, so that a read (and its span) is made only when the verdict needs it.
        let read_all = async { store::sanctions_in_force(self.db.pool(), account, now, crate::known_sanctions::MOST_READ + 1).await };
        let read_here = async { store::sanctions(self.db.pool(), account, &id, now).await };
        let verdict = self.hub.known_sanctions().verdict((account, &id), now, sending, (read_all, read_here)).await?;
        if verdict.banned {
            return Err(ApiError::Forbidden("you are banned from this channel".into()));
        }
        if sending && verdict.muted {
            return Err(ApiError::Forbidden("you are muted in this channel".into()));
        }
        Ok(())
    }
}

/// `POST /v1/chat/groups`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// 1 to 64 characters, without control characters; trimmed.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$")]
    pub name: String,
}

/// A group and its members.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    /// Group id; its channel is `group:<id>`.
    pub id: String,
    /// Channel id to join.
    pub channel: String,
    /// Name.
    pub name: String,
    /// Owner's account id.
    pub owner_id: String,
    /// Members and roles (`owner`, `moderator`, `member`).
    pub members: Vec<MemberView>,
    /// RFC 3339.
    pub created_at: String,
}

/// A group member.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    /// Account id.
    pub account_id: String,
    /// `owner`, `moderator` or `member`.
    pub role: String,
}

/// The channel in a path, for the OpenAPI document: the shape `Channel::parse` accepts, but for
/// the order of a `dm`'s ids, which a pattern cannot say.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ChannelPath {
    /// `room:<name>`, `group:<id>` or `dm:<account>:<account>` (the two ids in ascending order).
    #[param(
        pattern = r"^(room:[a-z0-9_-]{1,32}|group:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|dm:[A-Za-z0-9-]{1,64}:[A-Za-z0-9-]{1,64})$"
    )]
    pub id: String,
}

/// Account ids as requests name them: UUIDs, or any 1 to 64 letters, digits and dashes.
pub(crate) fn valid_account_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn group_id(id: &str) -> ApiResult<String> {
    uuid::Uuid::try_parse(id).map(|u| u.hyphenated().to_string()).map_err(|_| ApiError::NotFound("no such group".into()))
}

async fn group_view(state: &ChatState, id: &str) -> ApiResult<GroupView> {
    let (name, owner_id, created_at) =
        store::group(state.db.pool(), id).await?.ok_or_else(|| ApiError::NotFound("no such group".into()))?;
    let members = store::members(state.db.pool(), id, MAX_GROUP_MEMBERS).await?;
    Ok(GroupView {
        id: id.to_owned(),
        channel: format!("group:{id}"),
        name,
        owner_id,
        members: members.into_iter().map(|(account_id, role)| MemberView { account_id, role }).collect(),
        created_at: platform::time::rfc3339(created_at),
    })
}

/// Creates a group owned by the caller.
#[utoipa::path(post, path = "/v1/chat/groups", tag = "chat", security(("bearer" = [])), request_body = CreateGroup,
    responses((status = 201, body = GroupView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn create_group(State(state): State<ChatState>, player: Player, Json(req): Json<CreateGroup>) -> ApiResult<impl IntoResponse> {
    let name = req.name.trim();
    if !(1..=64).contains(&name.chars().count()) || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name", "name must be 1 to 64 characters"));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let mut tx = state.db.begin().await?;
    store::insert_group(&mut tx, &id, name, &player.account_id, now_millis()).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(group_view(&state, &id).await?)))
}

/// A group and its members (members only).
#[utoipa::path(get, path = "/v1/chat/groups/{id}", tag = "chat", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = GroupView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show_group(State(state): State<ChatState>, player: Player, Path(id): Path<String>) -> ApiResult<Json<GroupView>> {
    let id = group_id(&id)?;
    let view = group_view(&state, &id).await?;
    if !view.members.iter().any(|m| m.account_id == player.account_id) {
        return Err(ApiError::Forbidden("only the group's members may see it".into()));
    }
    Ok(Json(view))
}

/// `POST /v1/chat/groups/{id}/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// Account to add (or whose role to change).
    #[schema(pattern = "^[A-Za-z0-9-]{1,64}$")]
    pub account_id: String,
    /// `member` (default) or `moderator` (owner only).
    #[serde(default)]
    #[schema(pattern = "^(member|moderator)$")]
    pub role: Option<String>,
}

/// Adds a member or changes a role: owner and moderators add members; only the owner makes
/// moderators.
#[utoipa::path(post, path = "/v1/chat/groups/{id}/members", tag = "chat", security(("bearer" = [])), request_body = AddMember,
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, description = "no such group, or account_deleted: the player was erased", body = ErrorBody)))]
pub async fn add_member(
    State(state): State<ChatState>,
    player: Player,
    Path(id): Path<String>,
    Json(req): Json<AddMember>,
) -> ApiResult<Json<GroupView>> {
    let id = group_id(&id)?;
    store::group(state.db.pool(), &id).await?.ok_or_else(|| ApiError::NotFound("no such group".into()))?;
    let role = req.role.as_deref().unwrap_or("member");
    if !matches!(role, "member" | "moderator") {
        return Err(ApiError::invalid("role", "role must be member or moderator"));
    }
    if !valid_account_id(&req.account_id) {
        return Err(ApiError::invalid("account_id", "account_id must be an account id"));
    }
    if store::erased(state.db.pool(), &req.account_id).await? {
        return Err(crate::blocks::account_deleted());
    }
    let mine = store::role(state.db.pool(), &id, &player.account_id).await?;
    match (mine.as_deref(), role) {
        (Some("owner"), _) | (Some("moderator"), "member") => {}
        _ => return Err(ApiError::Forbidden("only the owner adds moderators; owner and moderators add members".into())),
    }
    if store::role(state.db.pool(), &id, &req.account_id).await?.as_deref() == Some("owner") {
        return Err(ApiError::invalid("account_id", "the owner's role cannot change"));
    }
    if store::member_count(state.db.pool(), &id).await? >= MAX_GROUP_MEMBERS {
        return Err(ApiError::Conflict { code: "group_full", message: format!("a group has {MAX_GROUP_MEMBERS} members at most") });
    }
    store::set_member(state.db.pool(), &id, &req.account_id, role, now_millis()).await?;
    Ok(Json(group_view(&state, &id).await?))
}

/// Removes a member: owner and moderators remove members, anyone leaves; the owner stays.
#[utoipa::path(delete, path = "/v1/chat/groups/{id}/members/{account_id}", tag = "chat", security(("bearer" = [])),
    params(("id" = String, Path, description = "Group id"), ("account_id" = String, Path, description = "Member")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_member(
    State(state): State<ChatState>,
    player: Player,
    Path((id, account)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = group_id(&id)?;
    let mine = store::role(state.db.pool(), &id, &player.account_id).await?;
    let theirs = store::role(state.db.pool(), &id, &account).await?.ok_or_else(|| ApiError::NotFound("not a member".into()))?;
    let allowed = match (mine.as_deref(), theirs.as_str()) {
        (_, "owner") => false,
        _ if account == player.account_id => true,
        (Some("owner"), _) | (Some("moderator"), "member") => true,
        _ => false,
    };
    if !allowed {
        return Err(ApiError::Forbidden("you may not remove this member".into()));
    }
    if store::remove_member(state.db.pool(), &id, &account).await? {
        // Their sockets leave the group's channel now, on every instance, instead of hearing it
        // until they next try to send.
        let notice = Notice::LeaveChannel { account_id: account, channel: format!("group:{id}"), reason: "removed".into() };
        state.hub.notify(&notice).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Paging of history.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// A message id: only older messages. Absent: the newest.
    pub before: Option<String>,
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// A page of history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    /// Newest first.
    pub messages: Vec<MessageView>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<String>,
}

/// A channel's stored messages, newest first, for those who may use the channel.
#[utoipa::path(get, path = "/v1/chat/channels/{id}/messages", tag = "chat", security(("bearer" = [])),
    params(ChannelPath, HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn history(
    State(state): State<ChatState>,
    player: Player,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Json<HistoryPage>> {
    let channel = Channel::parse(&id)?;
    state.authorize(&player.account_id, &channel, false).await?;
    Ok(Json(history_page(&state, &channel, &query, Some(&player.account_id)).await?))
}

/// A page of `channel`'s history, for whoever was allowed to read it (`viewer`, a player; none,
/// a moderator). History tolerates lag and comes from the reader (`platform::replica`), unless
/// the viewer wrote lately; the permission to read it was checked on the writer.
pub(crate) async fn history_page(
    state: &ChatState,
    channel: &Channel,
    query: &HistoryQuery,
    viewer: Option<&str>,
) -> ApiResult<HistoryPage> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 100"));
    }
    if let Some(before) = &query.before
        && uuid::Uuid::try_parse(before).is_err()
    {
        return Err(ApiError::invalid("before", "before must be a message id"));
    }
    let reads = state.db.reads_for(viewer).await?;
    let rows = store::history(&*reads, &channel.id(), query.before.as_deref(), limit).await?;
    let next_before = (rows.len() as i64 == limit).then(|| rows.last().map(|m| m.id.clone())).flatten();
    Ok(HistoryPage { messages: rows.into_iter().map(MessageView::from).collect(), next_before })
}

/// Who is in a channel now.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceView {
    /// Distinct players connected to the channel, on every instance.
    pub count: usize,
    /// Up to 100 of them.
    pub players: Vec<PresentPlayer>,
}

/// A present player.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresentPlayer {
    /// Account id.
    pub account_id: String,
    /// Name shown.
    pub name: String,
}

/// The players in a channel now, across instances.
#[utoipa::path(get, path = "/v1/chat/channels/{id}/presence", tag = "chat", security(("bearer" = [])),
    params(ChannelPath),
    responses((status = 200, body = PresenceView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn presence(State(state): State<ChatState>, player: Player, Path(id): Path<String>) -> ApiResult<Json<PresenceView>> {
    let channel = Channel::parse(&id)?;
    state.authorize(&player.account_id, &channel, false).await?;
    let hidden = state.hidden_for(&player.account_id).await?;
    let (count, players) = state.presence.list(&channel.id(), 100, &hidden).await?;
    Ok(Json(PresenceView { count, players: players.into_iter().map(|(account_id, name)| PresentPlayer { account_id, name }).collect() }))
}

/// A mute or ban in the channel the path names (`POST /v1/chat/channels/{id}/sanctions`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSanction {
    /// Who.
    #[schema(pattern = "^[A-Za-z0-9-]{1,64}$")]
    pub account_id: String,
    /// `mute` (cannot send) or `ban` (cannot join, read or send).
    #[schema(pattern = "^(mute|ban)$")]
    pub kind: String,
    /// How long, 1 to 525600 (a year); absent for good.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 525_600)]
    pub minutes: Option<i64>,
    /// Why, for the record; 500 characters at most.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

impl From<ChannelSanction> for Sanction {
    fn from(s: ChannelSanction) -> Self {
        Sanction { account_id: s.account_id, kind: s.kind, minutes: s.minutes, reason: s.reason, scope: None }
    }
}

/// A mute or ban with the server key (`POST /v1/admin/chat/sanctions`), everywhere or in one
/// channel.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sanction {
    /// Who.
    #[schema(pattern = "^[A-Za-z0-9-]{1,64}$")]
    pub account_id: String,
    /// `mute` (cannot send) or `ban` (cannot join, read or send).
    #[schema(pattern = "^(mute|ban)$")]
    pub kind: String,
    /// How long, 1 to 525600 (a year); absent for good.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 525_600)]
    pub minutes: Option<i64>,
    /// Why, for the record; 500 characters at most.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
    /// Admin API only: `global` or a channel id.
    #[serde(default)]
    #[schema(
        pattern = r"^(global|room:[a-z0-9_-]{1,32}|group:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|dm:[A-Za-z0-9-]{1,64}:[A-Za-z0-9-]{1,64})$"
    )]
    pub scope: Option<String>,
}

fn check_sanction(req: &Sanction) -> ApiResult<Option<i64>> {
    if !matches!(req.kind.as_str(), "mute" | "ban") {
        return Err(ApiError::invalid("kind", "kind must be mute or ban"));
    }
    if !valid_account_id(&req.account_id) {
        return Err(ApiError::invalid("account_id", "account_id must be an account id"));
    }
    if req.reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::invalid("reason", "reason must be at most 500 characters"));
    }
    match req.minutes {
        None => Ok(None),
        Some(m) if (1..=525_600).contains(&m) => Ok(Some(now_millis() + m * 60_000)),
        Some(_) => Err(ApiError::invalid("minutes", "minutes must be between 1 and 525600")),
    }
}

/// Who issues and lifts sanctions, from the lowest authority to the highest. A sanction may be
/// replaced or lifted only by its issuer or by a higher authority (or by anyone allowed to
/// sanction there, once it has expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Authority {
    /// A group's moderator, in their group.
    Moderator,
    /// A group's owner, in their group.
    Owner,
    /// The server key (game servers and operators), anywhere.
    Server,
}

impl Authority {
    /// As stored and shown: `moderator`, `owner`, `server`.
    pub fn as_str(self) -> &'static str {
        match self {
            Authority::Moderator => "moderator",
            Authority::Owner => "owner",
            Authority::Server => "server",
        }
    }

    /// From its stored form; anything unknown counts as the lowest.
    pub fn parse(stored: &str) -> Self {
        match stored {
            "server" => Authority::Server,
            "owner" => Authority::Owner,
            _ => Authority::Moderator,
        }
    }
}

/// 403 `sanction_outranked`.
fn outranked() -> ApiError {
    ApiError::Client {
        status: StatusCode::FORBIDDEN,
        code: "sanction_outranked",
        message:
            "a sanction of this kind is in force from an issuer you do not outrank; only they or a higher authority may change or lift it"
                .into(),
        field: None,
    }
}

/// The caller's authority over `channel` and the issuer id recorded for them: the server key
/// anywhere; a player only as owner or moderator of the group that is the channel.
async fn authority_over(state: &ChatState, caller: &Caller, channel: &Channel) -> ApiResult<(Authority, String)> {
    match caller {
        Caller::Server(admin) => {
            admin.require(Scope::Chat)?;
            Ok((Authority::Server, "server".to_owned()))
        }
        Caller::Player(player) => {
            let Channel::Group(group) = channel else {
                return Err(ApiError::Forbidden("rooms and direct messages are moderated with the server key".into()));
            };
            match store::role(state.db.pool(), group, &player.account_id).await?.as_deref() {
                Some("owner") => Ok((Authority::Owner, player.account_id.clone())),
                Some("moderator") => Ok((Authority::Moderator, player.account_id.clone())),
                _ => Err(ApiError::Forbidden("only the group's owner and moderators moderate it".into())),
            }
        }
    }
}

/// Records a sanction with the issuer's authority (403 `sanction_outranked` when it would replace
/// one the issuer does not outrank), then has a ban take effect on open sockets at once.
async fn record_sanction(
    state: &ChatState,
    req: &Sanction,
    scope: &str,
    authority: Authority,
    by: &str,
    admin: Option<&Admin>,
) -> ApiResult<()> {
    let until = check_sanction(req)?;
    let row = store::SanctionRow {
        account_id: &req.account_id,
        scope,
        kind: &req.kind,
        until,
        reason: req.reason.as_deref(),
        by,
        authority: authority.as_str(),
    };
    let now = now_millis();
    let mut tx = state.db.begin().await?;
    if !store::sanction(&mut *tx, &row, now).await? {
        tx.rollback().await.ok();
        return Err(outranked());
    }
    let event = SanctionIssued {
        account_id: req.account_id.clone(),
        kind: req.kind.clone(),
        scope: scope.to_owned(),
        until: until.map(platform::time::rfc3339),
        reason: req.reason.clone(),
        issued_by: authority.as_str().to_owned(),
        issuer_id: (authority != Authority::Server).then(|| by.to_owned()),
        issued_at: platform::time::rfc3339(now),
    };
    platform::events::record(&mut *tx, &event).await?;
    if let Some(admin) = admin {
        audit(&mut *tx, admin, &AdminAction::IssueSanction { account_id: &req.account_id, kind: &req.kind, scope }).await?;
    }
    tx.commit().await?;
    state.sanctions_changed(&req.account_id).await;
    tracing::info!(account_id = req.account_id, scope, kind = req.kind, by, authority = authority.as_str(), "chat sanction");
    if req.kind == "ban" {
        let notice = match scope {
            "global" => Notice::BannedEverywhere { account_id: req.account_id.clone() },
            channel => Notice::LeaveChannel { account_id: req.account_id.clone(), channel: channel.to_owned(), reason: "banned".into() },
        };
        state.hub.notify(&notice).await?;
    }
    Ok(())
}

fn check_kind(kind: &str) -> ApiResult<()> {
    if !matches!(kind, "mute" | "ban") {
        return Err(ApiError::invalid("kind", "kind must be mute or ban"));
    }
    Ok(())
}

/// Lifts the sanction of `kind` on `account` in `scope`, if the caller's authority (`by`)
/// allows; recorded in the audit log in the same transaction when a server key (`admin`) does it.
async fn lift_sanction(
    state: &ChatState,
    account: &str,
    scope: &str,
    kind: &str,
    (authority, by): (Authority, &str),
    admin: Option<&Admin>,
) -> ApiResult<StatusCode> {
    check_kind(kind)?;
    let existing =
        store::sanction_of(state.db.pool(), account, scope, kind).await?.ok_or_else(|| ApiError::NotFound("no such sanction".into()))?;
    let in_force = existing.until.is_none_or(|until| until > now_millis());
    if in_force && existing.created_by != by && Authority::parse(&existing.authority) >= authority {
        return Err(outranked());
    }
    let mut tx = state.db.begin().await?;
    if !store::lift_sanction(&mut *tx, account, scope, kind, &existing).await? {
        return Err(ApiError::Conflict { code: "sanction_changed", message: "the sanction changed meanwhile; look again".into() });
    }
    if let Some(admin) = admin {
        audit(&mut *tx, admin, &AdminAction::LiftSanction { account_id: account, kind, scope }).await?;
    }
    tx.commit().await?;
    state.sanctions_changed(account).await;
    tracing::info!(account_id = account, scope, kind, by, authority = authority.as_str(), "chat sanction lifted");
    Ok(StatusCode::NO_CONTENT)
}

/// Mutes or bans a player in a channel: a group's owner or moderators in their group, the server
/// key anywhere. A sanction of the same kind already in force there is replaced only by its
/// issuer or a higher authority (server key, then owner, then moderators): 403
/// `sanction_outranked` otherwise. A ban takes the player's open sockets out of the channel.
#[utoipa::path(post, path = "/v1/chat/channels/{id}/sanctions", tag = "chat", security(("bearer" = [])), request_body = ChannelSanction,
    params(ChannelPath),
    responses((status = 204), (status = 400, body = ErrorBody),
        (status = 403, description = "forbidden, or sanction_outranked", body = ErrorBody)))]
pub async fn moderate(
    State(state): State<ChatState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<ChannelSanction>,
) -> ApiResult<StatusCode> {
    let channel = Channel::parse(&id)?;
    // The channel is in the path; a `scope` in the body is refused as an unknown field.
    let req = Sanction::from(req);
    check_sanction(&req)?;
    let (authority, by) = authority_over(&state, &caller, &channel).await?;
    if let Channel::Group(group) = &channel
        && matches!(store::role(state.db.pool(), group, &req.account_id).await?.as_deref(), Some("owner"))
    {
        return Err(ApiError::Forbidden("the owner cannot be sanctioned".into()));
    }
    record_sanction(&state, &req, &channel.id(), authority, &by, caller.admin()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lifts a mute or ban in a channel: its issuer, or a higher authority (a group's owner over its
/// moderators' sanctions, the server key over all); anyone who may sanction there once it has
/// expired.
#[utoipa::path(delete, path = "/v1/chat/channels/{id}/sanctions/{account_id}/{kind}", tag = "chat", security(("bearer" = [])),
    params(("id" = String, Path, description = "Channel id"), ("account_id" = String, Path, description = "Sanctioned player"),
        ("kind" = String, Path, description = "`mute` or `ban`", pattern = "^(mute|ban)$")),
    responses((status = 204), (status = 400, body = ErrorBody),
        (status = 403, description = "forbidden, or sanction_outranked", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "sanction_changed: replaced while being lifted", body = ErrorBody)))]
pub async fn lift(
    State(state): State<ChatState>,
    caller: Caller,
    Path((id, account, kind)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let channel = Channel::parse(&id)?;
    let (authority, by) = authority_over(&state, &caller, &channel).await?;
    lift_sanction(&state, &account, &channel.id(), &kind, (authority, &by), caller.admin()).await
}

/// Mutes or bans a player everywhere (`scope: "global"`) or in one channel (server key). A
/// global ban closes the player's open sockets (close code 4003).
#[utoipa::path(post, path = "/v1/admin/chat/sanctions", tag = "chat admin", security(("bearer" = [])), request_body = Sanction,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `chat`", body = ErrorBody)))]
pub async fn admin_sanction(State(state): State<ChatState>, admin: ChatAdmin, Json(req): Json<Sanction>) -> ApiResult<StatusCode> {
    check_sanction(&req)?;
    let scope = admin_scope(req.scope.as_deref())?;
    record_sanction(&state, &req, &scope, Authority::Server, crate::admin::issuer(&admin), Some(&admin)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `global`, or the channel a scope names.
pub(crate) fn admin_scope(scope: Option<&str>) -> ApiResult<String> {
    match scope {
        None | Some("global") => Ok("global".to_owned()),
        Some(channel) => Ok(Channel::parse(channel).map_err(|_| ApiError::invalid("scope", "scope must be global or a channel id"))?.id()),
    }
}

/// `?scope=` of the admin lift.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScopeQuery {
    /// `global` (default) or a channel id.
    #[param(
        pattern = r"^(global|room:[a-z0-9_-]{1,32}|group:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|dm:[A-Za-z0-9-]{1,64}:[A-Za-z0-9-]{1,64})$"
    )]
    pub scope: Option<String>,
}

/// Lifts a mute or ban, everywhere or in one channel (server key, which outranks every issuer).
#[utoipa::path(delete, path = "/v1/admin/chat/sanctions/{account_id}/{kind}", tag = "chat admin", security(("bearer" = [])),
    params(("account_id" = String, Path, description = "Sanctioned player"), ("kind" = String, Path, description = "`mute` or `ban`", pattern = "^(mute|ban)$"),
        ScopeQuery),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `chat`", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "sanction_changed: replaced while being lifted", body = ErrorBody)))]
pub async fn admin_lift(
    State(state): State<ChatState>,
    admin: ChatAdmin,
    Path((account, kind)): Path<(String, String)>,
    Query(query): Query<ScopeQuery>,
) -> ApiResult<StatusCode> {
    let scope = admin_scope(query.scope.as_deref())?;
    lift_sanction(&state, &account, &scope, &kind, (Authority::Server, crate::admin::issuer(&admin)), Some(&admin)).await
}

/// A sanction on the caller, as they see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SanctionView {
    /// `global` or a channel id.
    pub scope: String,
    /// `mute` or `ban`.
    pub kind: String,
    /// RFC 3339; absent for good.
    pub until: Option<String>,
    /// Whether it still applies (false once `until` has passed).
    pub in_force: bool,
    /// Why, if the issuer said.
    pub reason: Option<String>,
    /// `server`, `owner` or `moderator`: the authority that issued it. Not the moderator's
    /// account, which a sanctioned player has no need of and could retaliate against.
    pub issued_by: String,
    /// RFC 3339.
    pub issued_at: String,
}

impl SanctionView {
    /// The view of `record` at `now`.
    pub fn new(record: SanctionRecord, now: i64) -> Self {
        SanctionView {
            in_force: record.until.is_none_or(|until| until > now),
            until: record.until.map(platform::time::rfc3339),
            scope: record.scope,
            kind: record.kind,
            reason: record.reason,
            issued_by: Authority::parse(&record.authority).as_str().to_owned(),
            issued_at: platform::time::rfc3339(record.created_at),
        }
    }
}

/// Paging of the caller's sanctions.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SanctionsQuery {
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of the caller's sanctions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SanctionPage {
    /// By scope, then kind.
    pub sanctions: Vec<SanctionView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The cursor after a sanction: its scope and kind (neither holds a newline), base64url.
fn sanction_cursor(record: &SanctionRecord) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}\n{}", record.scope, record.kind))
}

fn parse_sanction_cursor(cursor: &str) -> ApiResult<(String, String)> {
    use base64::Engine;
    let bad = || ApiError::invalid("cursor", "cursor must be a next_cursor of this list");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (scope, kind) = text.split_once('\n').ok_or_else(bad)?;
    Ok((scope.to_owned(), kind.to_owned()))
}

/// The caller's own mutes and bans, in force or expired, everywhere and per channel.
#[utoipa::path(get, path = "/v1/chat/me/sanctions", tag = "chat", security(("bearer" = [])), params(SanctionsQuery),
    responses((status = 200, body = SanctionPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn my_sanctions(
    State(state): State<ChatState>,
    player: Player,
    Query(query): Query<SanctionsQuery>,
) -> ApiResult<Json<SanctionPage>> {
    Ok(Json(sanctions_page(&state, &player.account_id, query).await?))
}

/// A player's mutes and bans, in force or expired, everywhere and per channel: chat's part of the
/// account view (`GET /v1/admin/accounts/{id}`), which each service serves from its own tables.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/sanctions", tag = "chat", security(("bearer" = [])),
    params(("id" = String, Path, description = "Account id"), SanctionsQuery),
    responses((status = 200, body = SanctionPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `accounts`", body = ErrorBody)))]
pub async fn account_sanctions(
    State(state): State<ChatState>,
    admin: Admin,
    Path(account_id): Path<String>,
    Query(query): Query<SanctionsQuery>,
) -> ApiResult<Json<SanctionPage>> {
    admin.require(Scope::Accounts)?;
    Ok(Json(sanctions_page(&state, &account_id, query).await?))
}

async fn sanctions_page(state: &ChatState, account_id: &str, query: SanctionsQuery) -> ApiResult<SanctionPage> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 100"));
    }
    let after = query.cursor.as_deref().map(parse_sanction_cursor).transpose()?;
    let rows = store::sanctions_of(state.db.pool(), account_id, after.as_ref().map(|(s, k)| (s.as_str(), k.as_str())), limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(sanction_cursor)).flatten();
    let now = now_millis();
    Ok(SanctionPage { sanctions: rows.into_iter().map(|r| SanctionView::new(r, now)).collect(), next_cursor })
}

/// `POST /v1/chat/messages/{id}/report`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Why, 1 to 500 characters, not only spaces (it is trimmed).
    #[schema(min_length = 1, max_length = 500, pattern = r"\S")]
    pub reason: String,
}

/// Reports each player may file, per `REPORT_WINDOW`: enough for any honest use, too few to
/// bury the moderators' queue.
pub const REPORTS_PER_WINDOW: u32 = 10;
/// The window of `REPORTS_PER_WINDOW`.
pub const REPORT_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// Reports a message to moderators: records `chat.message_reported`, which chat's consumer files
/// in the reports queue (`GET /v1/admin/chat/reports`) with a copy of the message as it is now.
/// Each player reports a message once (409 `already_reported`), and files at most 10 reports
/// in 10 minutes (429 `rate_limited`).
#[utoipa::path(post, path = "/v1/chat/messages/{id}/report", tag = "chat", security(("bearer" = [])), request_body = Report,
    params(("id" = String, Path, description = "Message id")),
    responses((status = 202), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "already_reported: the caller reported this message before", body = ErrorBody),
        (status = 429, description = "rate_limited: too many reports; `Retry-After` says when to retry", body = ErrorBody)))]
pub async fn report(
    State(state): State<ChatState>,
    player: Player,
    Path(id): Path<String>,
    Json(req): Json<Report>,
) -> ApiResult<StatusCode> {
    let reason = req.reason.trim();
    if !(1..=500).contains(&reason.chars().count()) {
        return Err(ApiError::invalid("reason", "reason must be 1 to 500 characters"));
    }
    let not_found = || ApiError::NotFound("no such message".into());
    let id = uuid::Uuid::try_parse(&id).map_err(|_| not_found())?.hyphenated().to_string();
    // Counted before the database is read, to shield it as the send limit does.
    platform::ratelimit::Limit::new(REPORTS_PER_WINDOW, REPORT_WINDOW)
        .hit(&state.cache, &format!("chat:report:{}", player.account_id))
        .await?;
    let message = store::message_by_id(state.db.pool(), &id).await?.ok_or_else(not_found)?;
    // Only someone who can read the channel can report from it.
    state.authorize(&player.account_id, &Channel::parse(&message.channel_id)?, false).await?;
    let now = now_millis();
    let event = MessageReported {
        message_id: message.id,
        channel: message.channel_id,
        sender_id: message.sender_id,
        sender_name: Some(message.sender_name),
        sent_at: Some(platform::time::rfc3339(message.created_at)),
        body: message.body,
        reported_by: player.account_id,
        reason: reason.to_owned(),
        reported_at: platform::time::rfc3339(now),
    };
    // The mark and the event together: a second report is refused here and now, not dropped
    // later by the consumer after a 202.
    let mut tx = state.db.begin().await?;
    if !store::mark_reporter(&mut *tx, &event.message_id, &event.reported_by, now).await? {
        return Err(ApiError::Conflict { code: "already_reported", message: "you reported this message already".into() });
    }
    platform::events::record(&mut *tx, &event).await?;
    tx.commit().await?;
    Ok(StatusCode::ACCEPTED)
}
