//! Chat moderation for operators: the reports queue (filed by chat's own consumer of
//! `chat.message_reported`), sanctions across every player, deleting messages, and reading any
//! channel.
//!
//! Every route here takes a `ChatAdmin` (a server key with the `chat` scope). A change writes its
//! audit entry with `audit` in the change's own transaction, so that the entry exists exactly
//! when the change does; a read of a case or of a private conversation writes its entry with
//! `audit_read` before it answers, so that nothing is read without a trace (a read whose entry
//! cannot be written is refused, 503 while the database is down).

use axum::Router;
use axum::extract::{FromRef, FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use platform::auth::{Admin, AdminKey, Scope};
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::events::MessageReported;
use platform::http::{Json, Query};
use platform::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::ChatState;
use crate::api::{ChannelPath, HistoryPage, HistoryQuery, SanctionView};
use crate::channel::Channel;
use crate::store::{self, CaseCursor, NewReport, ReportCaseRow, ReportEntryRow, SanctionCursor, SanctionFilter};

/// A server key with the `chat` scope: who may call the chat admin routes (403
/// `insufficient_scope` for a key without it).
#[derive(Debug, Clone)]
pub struct ChatAdmin(pub Admin);

impl<S> FromRequestParts<S> for ChatAdmin
where
    AdminKey: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let admin = Admin::from_request_parts(parts, state).await?;
        admin.require(Scope::Chat)?;
        Ok(ChatAdmin(admin))
    }
}

impl std::ops::Deref for ChatAdmin {
    type Target = Admin;
    fn deref(&self) -> &Admin {
        &self.0
    }
}

/// The issuer recorded for what a `ChatAdmin` does (`resolved_by`, a sanction's `created_by`):
/// every server key is the same authority, so that one operator's key may lift a sanction another
/// operator's issued; which key did it is in the audit log.
pub fn issuer(_admin: &ChatAdmin) -> &'static str {
    "server"
}

/// What an operator did through the chat admin API, for the audit log.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AdminAction<'a> {
    /// Read one case and its reporters.
    ReadReport {
        /// Case id.
        report_id: &'a str,
    },
    /// Resolved a case.
    ResolveReport {
        /// Case id.
        report_id: &'a str,
        /// `dismissed`, `message_deleted` or `sender_sanctioned`.
        resolution: &'a str,
    },
    /// Muted or banned a player.
    IssueSanction {
        /// The player.
        account_id: &'a str,
        /// `mute` or `ban`.
        kind: &'a str,
        /// `global` or a channel id.
        scope: &'a str,
    },
    /// Lifted a mute or ban.
    LiftSanction {
        /// The player.
        account_id: &'a str,
        /// `mute` or `ban`.
        kind: &'a str,
        /// `global` or a channel id.
        scope: &'a str,
    },
    /// Deleted one message.
    DeleteMessage {
        /// Message id.
        message_id: &'a str,
        /// Its channel.
        channel: &'a str,
    },
    /// Deleted every message of one sender in one channel.
    DeleteSenderMessages {
        /// Channel id.
        channel: &'a str,
        /// The sender.
        sender_id: &'a str,
        /// How many went.
        deleted: u64,
    },
    /// Read a channel's history (groups' and direct messages' included: private conversations).
    ReadHistory {
        /// Channel id.
        channel: &'a str,
    },
}

impl AdminAction<'_> {
    /// The audit log's action (`chat.<verb>`) and target (`kind:id`).
    fn entry(&self) -> (&'static str, String) {
        match self {
            AdminAction::ReadReport { report_id } => ("chat.read_report", format!("report:{report_id}")),
            AdminAction::ResolveReport { report_id, .. } => ("chat.resolve_report", format!("report:{report_id}")),
            AdminAction::IssueSanction { account_id, .. } => ("chat.sanction", format!("account:{account_id}")),
            AdminAction::LiftSanction { account_id, .. } => ("chat.lift_sanction", format!("account:{account_id}")),
            AdminAction::DeleteMessage { message_id, .. } => ("chat.delete_message", format!("message:{message_id}")),
            AdminAction::DeleteSenderMessages { channel, .. } => ("chat.delete_sender_messages", format!("channel:{channel}")),
            AdminAction::ReadHistory { channel } => ("chat.read_history", format!("channel:{channel}")),
        }
    }
}

/// Records what `admin` did in the audit log, inside the transaction of the change it describes
/// (`conn`): should the entry fail to be written, so does the change.
pub async fn audit<'e>(conn: impl sqlx::Executor<'e, Database = sqlx::Any>, admin: &Admin, action: &AdminAction<'_>) -> ApiResult<()> {
    let (name, target) = action.entry();
    platform::audit::record(conn, admin, name, &target, action).await?;
    Ok(())
}

/// Records that `admin` is reading what `action` names (a case, a private conversation), before
/// the read: a read whose entry cannot be written does not happen. The queues' lists are routine
/// (the console reads them on every view) and are not recorded.
pub async fn audit_read(state: &ChatState, admin: &Admin, action: &AdminAction<'_>) -> ApiResult<()> {
    audit(state.db.pool(), admin, action).await
}

/// The chat admin routes.
pub fn routes() -> Router<ChatState> {
    Router::new()
        .route("/v1/admin/chat/reports", get(list_reports))
        .route("/v1/admin/chat/reports/{id}", get(show_report))
        .route("/v1/admin/chat/reports/{id}/reporters", get(list_reporters))
        .route("/v1/admin/chat/reports/{id}/resolve", post(resolve_report))
        .route("/v1/admin/chat/sanctions", get(list_sanctions).post(crate::api::admin_sanction))
        .route("/v1/admin/chat/sanctions/{account_id}/{kind}", delete(crate::api::admin_lift))
        .route("/v1/admin/chat/messages/{id}", delete(delete_message))
        .route("/v1/admin/chat/channels/{id}/messages", get(channel_history))
        .route("/v1/admin/chat/channels/{id}/senders/{account_id}/messages", delete(delete_sender_messages))
}

// ------------------------------------------------------------------------- the reports queue

impl ChatState {
    /// Files the report an event carries (chat's consumer of `chat.message_reported`): into the
    /// open case of its message, with the copy of the message the event took when it was
    /// reported. Idempotent on the event's id, and on the reporter: a redelivered event, even two
    /// copies handled at once by two instances, files nothing twice.
    pub async fn file_report(&self, event_id: &str, event: MessageReported) -> anyhow::Result<bool> {
        let reported_at = platform::time::parse_rfc3339(&event.reported_at)
            .ok_or_else(|| anyhow::anyhow!("chat.message_reported {event_id} has an unreadable reported_at"))?;
        // The message now, while it is there: a sender erased since the report (whose erasure
        // ran before this filing, and so could not anonymise it) shows in it as anonymised.
        let stored = match &event.sender_id {
            Some(_) => store::message_by_id(self.db.pool(), &event.message_id).await?,
            None => None,
        };
        let (sender_id, sender_name) = match (event.sender_id, event.sender_name, stored) {
            (None, _, _) => (None, "deleted player".to_owned()),
            (Some(_), _, Some(now)) if now.sender_id.is_none() => (None, now.sender_name),
            (Some(id), Some(name), _) => (Some(id), name),
            // Events recorded before they carried the name.
            (Some(id), None, now) => (Some(id), now.map_or_else(|| "unknown".to_owned(), |m| m.sender_name)),
        };
        let report = NewReport {
            message_id: event.message_id,
            channel_id: event.channel,
            sender_id,
            sender_name,
            body: event.body,
            sent_at: event.sent_at.as_deref().and_then(platform::time::parse_rfc3339),
            reported_by: event.reported_by,
            reason: event.reason,
            reported_at,
        };
        let mut tx = self.db.begin().await?;
        if !store::file_report(&mut tx, event_id, &report).await? {
            // Filed before: dropping the transaction takes back the count it raised.
            tracing::info!(event_id, message_id = report.message_id, "report already filed");
            return Ok(false);
        }
        tx.commit().await?;
        tracing::info!(event_id, message_id = report.message_id, "report filed");
        Ok(true)
    }
}

/// Reports shown with each case; the rest page through `/reporters`.
const REPORTERS_SHOWN: i64 = 5;

/// A message as it was when it was reported.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportedMessage {
    /// Message id.
    pub id: String,
    /// Channel id.
    pub channel: String,
    /// Sender's account id; null once that account was deleted.
    pub sender_id: Option<String>,
    /// Sender's name then.
    pub sender_name: String,
    /// Its text when first reported.
    pub body: String,
    /// RFC 3339; absent for reports filed before it was recorded.
    pub sent_at: Option<String>,
}

/// One player's report of the message.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reporter {
    /// The reporter; null once that account was deleted.
    pub account_id: Option<String>,
    /// Why, in their words.
    pub reason: String,
    /// RFC 3339.
    pub reported_at: String,
}

impl From<ReportEntryRow> for Reporter {
    fn from(row: ReportEntryRow) -> Self {
        Reporter { account_id: row.reported_by, reason: row.reason, reported_at: platform::time::rfc3339(row.reported_at) }
    }
}

/// What a moderator did about a case.
#[derive(Debug, Serialize, ToSchema)]
pub struct Resolution {
    /// `dismissed`, `message_deleted` or `sender_sanctioned`.
    pub action: String,
    /// Their note.
    pub note: Option<String>,
    /// Who resolved it: `server` for the server key.
    pub resolved_by: String,
    /// RFC 3339.
    pub resolved_at: String,
}

/// A report case: one message, everyone who reported it while the case was open, and what was
/// done.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportCase {
    /// Case id (UUIDv7).
    pub id: String,
    /// `open` or `resolved`.
    pub status: String,
    /// The message as reported.
    pub message: ReportedMessage,
    /// Whether the message has been deleted from the channel since.
    pub message_deleted: bool,
    /// How many players reported it in this case.
    pub report_count: i64,
    /// RFC 3339.
    pub first_reported_at: String,
    /// RFC 3339.
    pub last_reported_at: String,
    /// The latest reports, latest first (up to 5; all of them: `GET .../reporters`).
    pub reporters: Vec<Reporter>,
    /// Absent while open.
    pub resolution: Option<Resolution>,
}

fn case_view(row: ReportCaseRow, reporters: Vec<Reporter>) -> ReportCase {
    let resolution = match (row.resolution, row.resolved_at) {
        (Some(action), Some(at)) => Some(Resolution {
            action,
            note: row.resolution_note,
            resolved_by: row.resolved_by.unwrap_or_default(),
            resolved_at: platform::time::rfc3339(at),
        }),
        _ => None,
    };
    ReportCase {
        id: row.id,
        status: row.status,
        message: ReportedMessage {
            id: row.message_id,
            channel: row.channel_id,
            sender_id: row.sender_id,
            sender_name: row.sender_name,
            body: row.body,
            sent_at: row.sent_at.map(platform::time::rfc3339),
        },
        message_deleted: !row.message_present,
        report_count: row.report_count,
        first_reported_at: platform::time::rfc3339(row.first_reported_at),
        last_reported_at: platform::time::rfc3339(row.last_reported_at),
        reporters,
        resolution,
    }
}

/// Cases with their latest reporters, read in one query.
async fn case_views(state: &ChatState, rows: Vec<ReportCaseRow>) -> ApiResult<Vec<ReportCase>> {
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let mut latest = store::latest_reports(state.db.pool(), &ids, REPORTERS_SHOWN).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut latest).into_iter().partition(|e| e.report_id == row.id);
            latest = rest;
            case_view(row, mine.into_iter().map(Reporter::from).collect())
        })
        .collect())
}

/// An opaque cursor: its parts (none holds a newline), base64url.
fn encode_cursor(parts: &[&str]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(parts.join("\n"))
}

/// The `count` parts of a cursor `encode_cursor` made; 400 for anything else.
fn decode_cursor(cursor: &str, count: usize) -> ApiResult<Vec<String>> {
    use base64::Engine;
    let bad = || ApiError::invalid("cursor", "cursor must be a next_cursor of this list");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let parts: Vec<String> = String::from_utf8(bytes).map_err(|_| bad())?.split('\n').map(str::to_owned).collect();
    if parts.len() != count {
        return Err(bad());
    }
    Ok(parts)
}

fn check_limit(limit: Option<i64>) -> ApiResult<i64> {
    let limit = limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 100"));
    }
    Ok(limit)
}

/// A case id from a path: 404 for what cannot be one.
fn case_id(id: &str) -> ApiResult<String> {
    uuid::Uuid::try_parse(id).map(|u| u.hyphenated().to_string()).map_err(|_| ApiError::NotFound("no such report".into()))
}

/// Which cases, in which order.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportsQuery {
    /// `open` (default) or `resolved`.
    #[param(pattern = "^(open|resolved)$")]
    pub status: Option<String>,
    /// `newest` (default: the latest opened first) or `most_reported`.
    #[param(pattern = "^(newest|most_reported)$")]
    pub order: Option<String>,
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (of the same order).
    pub cursor: Option<String>,
}

/// A page of report cases.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportCasePage {
    /// In the order asked for.
    pub reports: Vec<ReportCase>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The reports queue: cases of reported messages, open or resolved, newest or most reported
/// first. Reports of one message while its case is open are one case with a count; a report
/// after the case was resolved opens a new one. Filed from `chat.message_reported` events
/// moments after players report (in process, or through the chat queue on SQS).
#[utoipa::path(get, path = "/v1/admin/chat/reports", tag = "chat admin", security(("bearer" = [])), params(ReportsQuery),
    responses((status = 200, body = ReportCasePage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_reports(
    State(state): State<ChatState>,
    // The key's check; a list is not recorded (`audit_read`).
    _admin: ChatAdmin,
    Query(query): Query<ReportsQuery>,
) -> ApiResult<Json<ReportCasePage>> {
    let status = match query.status.as_deref() {
        None | Some("open") => "open",
        Some("resolved") => "resolved",
        Some(_) => return Err(ApiError::invalid("status", "status must be open or resolved")),
    };
    let most_reported = match query.order.as_deref() {
        None | Some("newest") => false,
        Some("most_reported") => true,
        Some(_) => return Err(ApiError::invalid("order", "order must be newest or most_reported")),
    };
    let limit = check_limit(query.limit)?;
    let after = match &query.cursor {
        None => None,
        Some(cursor) if most_reported => {
            let parts = decode_cursor(cursor, 3)?;
            let count = parts[1].parse().ok().filter(|_| parts[0] == "c");
            let count = count.ok_or_else(|| ApiError::invalid("cursor", "cursor must be a next_cursor of this list"))?;
            Some(CaseCursor::MostReported { count, id: parts[2].clone() })
        }
        Some(cursor) => {
            let parts = decode_cursor(cursor, 2)?;
            if parts[0] != "n" {
                return Err(ApiError::invalid("cursor", "cursor must be a next_cursor of this list"));
            }
            Some(CaseCursor::Newest { id: parts[1].clone() })
        }
    };
    let rows = store::report_cases(state.db.pool(), status, most_reported, after.as_ref(), limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last()).flatten().map(|last| {
        if most_reported { encode_cursor(&["c", &last.report_count.to_string(), &last.id]) } else { encode_cursor(&["n", &last.id]) }
    });
    let reports = case_views(&state, rows).await?;
    Ok(Json(ReportCasePage { reports, next_cursor }))
}

/// One report case, with its latest reporters.
#[utoipa::path(get, path = "/v1/admin/chat/reports/{id}", tag = "chat admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Case id")),
    responses((status = 200, body = ReportCase), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show_report(State(state): State<ChatState>, admin: ChatAdmin, Path(id): Path<String>) -> ApiResult<Json<ReportCase>> {
    let id = case_id(&id)?;
    let row = store::report_case_by_id(state.db.pool(), &id).await?.ok_or_else(|| ApiError::NotFound("no such report".into()))?;
    audit_read(&state, &admin, &AdminAction::ReadReport { report_id: &id }).await?;
    let case = case_views(&state, vec![row]).await?.pop().ok_or_else(|| ApiError::NotFound("no such report".into()))?;
    Ok(Json(case))
}

/// Paging of a case's reporters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of a case's reporters.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReporterPage {
    /// Latest first.
    pub reporters: Vec<Reporter>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Everyone who reported the message in this case, latest first.
#[utoipa::path(get, path = "/v1/admin/chat/reports/{id}/reporters", tag = "chat admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Case id"), PageQuery),
    responses((status = 200, body = ReporterPage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list_reporters(
    State(state): State<ChatState>,
    admin: ChatAdmin,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<ReporterPage>> {
    let id = case_id(&id)?;
    let limit = check_limit(query.limit)?;
    let before = match &query.cursor {
        None => None,
        Some(cursor) => {
            let parts = decode_cursor(cursor, 2)?;
            let at = parts[0].parse::<i64>().map_err(|_| ApiError::invalid("cursor", "cursor must be a next_cursor of this list"))?;
            Some((at, parts[1].clone()))
        }
    };
    store::report_case_by_id(state.db.pool(), &id).await?.ok_or_else(|| ApiError::NotFound("no such report".into()))?;
    audit_read(&state, &admin, &AdminAction::ReadReport { report_id: &id }).await?;
    let rows = store::case_reports(state.db.pool(), &id, before.as_ref().map(|(at, e)| (*at, e.as_str())), limit).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last())
        .flatten()
        .map(|last| encode_cursor(&[&last.reported_at.to_string(), &last.event_id]));
    Ok(Json(ReporterPage { reporters: rows.into_iter().map(Reporter::from).collect(), next_cursor }))
}

/// `POST /v1/admin/chat/reports/{id}/resolve`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolve {
    /// What was done: `dismissed` (nothing wrong), `message_deleted` or `sender_sanctioned`
    /// (each done with its own route; this records it on the case).
    #[schema(pattern = "^(dismissed|message_deleted|sender_sanctioned)$")]
    pub action: String,
    /// A note for the record, 500 characters at most.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub note: Option<String>,
}

/// Closes an open case with what was done about it. A later report of the same message opens a
/// new case. 409 `already_resolved` for a closed one.
#[utoipa::path(post, path = "/v1/admin/chat/reports/{id}/resolve", tag = "chat admin", security(("bearer" = [])),
    request_body = Resolve, params(("id" = String, Path, description = "Case id")),
    responses((status = 200, body = ReportCase), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "already_resolved", body = ErrorBody)))]
pub async fn resolve_report(
    State(state): State<ChatState>,
    admin: ChatAdmin,
    Path(id): Path<String>,
    Json(req): Json<Resolve>,
) -> ApiResult<Json<ReportCase>> {
    if !matches!(req.action.as_str(), "dismissed" | "message_deleted" | "sender_sanctioned") {
        return Err(ApiError::invalid("action", "action must be dismissed, message_deleted or sender_sanctioned"));
    }
    let note = req.note.as_deref().map(str::trim).filter(|n| !n.is_empty());
    if note.is_some_and(|n| n.chars().count() > 500 || n.chars().any(|c| c.is_control() && c != '\n')) {
        return Err(ApiError::invalid("note", "note must be at most 500 characters, without control characters"));
    }
    let id = case_id(&id)?;
    let mut tx = state.db.begin().await?;
    if !store::resolve_report(&mut *tx, &id, &req.action, note, issuer(&admin), now_millis()).await? {
        drop(tx);
        return match store::report_case_by_id(state.db.pool(), &id).await? {
            Some(_) => Err(ApiError::Conflict { code: "already_resolved", message: "this report was resolved already".into() }),
            None => Err(ApiError::NotFound("no such report".into())),
        };
    }
    audit(&mut *tx, &admin, &AdminAction::ResolveReport { report_id: &id, resolution: &req.action }).await?;
    tx.commit().await?;
    let row = store::report_case_by_id(state.db.pool(), &id).await?.ok_or_else(|| ApiError::NotFound("no such report".into()))?;
    Ok(Json(case_views(&state, vec![row]).await?.pop().ok_or_else(|| ApiError::NotFound("no such report".into()))?))
}

// ---------------------------------------------------------------------------------- sanctions

/// Which sanctions.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SanctionsFilter {
    /// One player's.
    #[param(pattern = "^[A-Za-z0-9-]{1,64}$")]
    pub account_id: Option<String>,
    /// `global` or a channel id.
    #[param(
        pattern = r"^(global|room:[a-z0-9_-]{1,32}|group:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|dm:[A-Za-z0-9-]{1,64}:[A-Za-z0-9-]{1,64})$"
    )]
    pub scope: Option<String>,
    /// `mute` or `ban`.
    #[param(pattern = "^(mute|ban)$")]
    pub kind: Option<String>,
    /// `in_force` or `expired`; absent: both.
    #[param(pattern = "^(in_force|expired)$")]
    pub state: Option<String>,
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A sanction as operators see it: the player's view, with the player and the issuer's account.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminSanctionView {
    /// The sanctioned player.
    pub account_id: String,
    /// Who issued it: a moderator's or owner's account id, or `server`.
    pub issuer_id: String,
    /// The rest, as the player sees it.
    #[serde(flatten)]
    pub sanction: SanctionView,
}

/// A page of sanctions.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminSanctionPage {
    /// Newest first.
    pub sanctions: Vec<AdminSanctionView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Every mute and ban, by anyone (the server key, groups' owners and moderators), newest first,
/// filtered by player, scope, kind and whether in force. Lift one with
/// `DELETE /v1/admin/chat/sanctions/{account_id}/{kind}?scope=`.
#[utoipa::path(get, path = "/v1/admin/chat/sanctions", tag = "chat admin", security(("bearer" = [])), params(SanctionsFilter),
    responses((status = 200, body = AdminSanctionPage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_sanctions(
    State(state): State<ChatState>,
    // The key's check; a list is not recorded (`audit_read`).
    _admin: ChatAdmin,
    Query(query): Query<SanctionsFilter>,
) -> ApiResult<Json<AdminSanctionPage>> {
    if query.account_id.as_deref().is_some_and(|a| !crate::api::valid_account_id(a)) {
        return Err(ApiError::invalid("account_id", "account_id must be an account id"));
    }
    let scope = query.scope.as_deref().map(|s| crate::api::admin_scope(Some(s))).transpose()?;
    if query.kind.as_deref().is_some_and(|k| !matches!(k, "mute" | "ban")) {
        return Err(ApiError::invalid("kind", "kind must be mute or ban"));
    }
    let in_force = match query.state.as_deref() {
        None => None,
        Some("in_force") => Some(true),
        Some("expired") => Some(false),
        Some(_) => return Err(ApiError::invalid("state", "state must be in_force or expired")),
    };
    let limit = check_limit(query.limit)?;
    let after = match &query.cursor {
        None => None,
        Some(cursor) => {
            let mut parts = decode_cursor(cursor, 4)?.into_iter();
            let created_at = parts.next().and_then(|p| p.parse().ok());
            let created_at = created_at.ok_or_else(|| ApiError::invalid("cursor", "cursor must be a next_cursor of this list"))?;
            let (account_id, scope, kind) =
                (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            Some(SanctionCursor { created_at, account_id, scope, kind })
        }
    };
    let filter = SanctionFilter { account_id: query.account_id.as_deref(), scope: scope.as_deref(), kind: query.kind.as_deref(), in_force };
    let now = now_millis();
    let rows = store::all_sanctions(state.db.pool(), &filter, after.as_ref(), now, limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last()).flatten().map(|last| {
        let r = &last.record;
        encode_cursor(&[&r.created_at.to_string(), &last.account_id, &r.scope, &r.kind])
    });
    let sanctions = rows
        .into_iter()
        .map(|row| AdminSanctionView {
            account_id: row.account_id,
            issuer_id: row.record.created_by.clone(),
            sanction: SanctionView::new(row.record, now),
        })
        .collect();
    Ok(Json(AdminSanctionPage { sanctions, next_cursor }))
}

// ----------------------------------------------------------------------------------- messages

/// Tells the channel's connected members, on every instance (through the fan-out), that
/// messages are gone. A fan-out that cannot publish (Redis down) is logged and counted, not
/// failed: the deletion is done, and clients that missed the event find the messages gone from
/// history.
async fn announce_deleted(state: &ChatState, channel: &str, frame: serde_json::Value) {
    state.hub.publish_stored(channel, &frame.to_string(), None).await;
}

/// Deletes a message from its channel's history. Members connected to the channel get
/// `{"type": "message_deleted", "channel", "message_id"}`. Reports of it keep their copy.
#[utoipa::path(delete, path = "/v1/admin/chat/messages/{id}", tag = "chat admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Message id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_message(State(state): State<ChatState>, admin: ChatAdmin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let not_found = || ApiError::NotFound("no such message".into());
    let id = uuid::Uuid::try_parse(&id).map_err(|_| not_found())?.hyphenated().to_string();
    let mut tx = state.db.begin().await?;
    let channel = store::delete_message(&mut tx, &id).await?.ok_or_else(not_found)?;
    audit(&mut *tx, &admin, &AdminAction::DeleteMessage { message_id: &id, channel: &channel }).await?;
    tx.commit().await?;
    announce_deleted(&state, &channel, json!({"type": "message_deleted", "channel": channel, "message_id": id})).await;
    Ok(StatusCode::NO_CONTENT)
}

/// How many messages went.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedMessages {
    /// Messages deleted.
    pub deleted: u64,
}

/// Deletes every message one player sent in one channel (0 when there were none). Members
/// connected to the channel get `{"type": "message_deleted", "channel", "sender_id"}`: drop
/// every message of that sender in the channel.
#[utoipa::path(delete, path = "/v1/admin/chat/channels/{id}/senders/{account_id}/messages", tag = "chat admin",
    security(("bearer" = [])),
    params(ChannelPath, ("account_id" = String, Path, description = "The sender", pattern = "^[A-Za-z0-9-]{1,64}$")),
    responses((status = 200, body = DeletedMessages), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn delete_sender_messages(
    State(state): State<ChatState>,
    admin: ChatAdmin,
    Path((id, sender)): Path<(String, String)>,
) -> ApiResult<Json<DeletedMessages>> {
    let channel = Channel::parse(&id)?.id();
    if !crate::api::valid_account_id(&sender) {
        return Err(ApiError::invalid("account_id", "account_id must be an account id"));
    }
    let mut tx = state.db.begin().await?;
    let deleted = store::delete_sender_messages(&mut tx, &channel, &sender).await?;
    audit(&mut *tx, &admin, &AdminAction::DeleteSenderMessages { channel: &channel, sender_id: &sender, deleted }).await?;
    tx.commit().await?;
    if deleted > 0 {
        announce_deleted(&state, &channel, json!({"type": "message_deleted", "channel": channel, "sender_id": sender})).await;
    }
    Ok(Json(DeletedMessages { deleted }))
}

/// Any channel's history, newest first: rooms, groups and direct messages alike.
#[utoipa::path(get, path = "/v1/admin/chat/channels/{id}/messages", tag = "chat admin", security(("bearer" = [])),
    params(ChannelPath, HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn channel_history(
    State(state): State<ChatState>,
    admin: ChatAdmin,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Json<HistoryPage>> {
    let channel = Channel::parse(&id)?;
    audit_read(&state, &admin, &AdminAction::ReadHistory { channel: &channel.id() }).await?;
    let page = crate::api::history_page(&state, &channel, &query, None).await?;
    Ok(Json(page))
}
