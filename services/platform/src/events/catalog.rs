//! Every event the services exchange, each a struct with its wire name. They live here, in the
//! crate every service depends on, because a producer and its consumers are different crates;
//! a field added or renamed changes both sides at once. Times are RFC 3339 strings, as the API
//! writes them, so that an event read by a person or another language needs no conversion.

use serde::{Deserialize, Serialize};

use super::EventType;

/// A player erased their account (accounts). Every service erases what it holds of them:
/// records and the rank index (leaderboard), files (uploads), messages and memberships (chat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDeleted {
    /// The erased account.
    pub account_id: String,
    /// When it was erased.
    pub deleted_at: String,
}

impl EventType for AccountDeleted {
    const NAME: &'static str = "account.deleted";
}

/// An account was created (accounts): a registration with email and password, or a guest's first
/// sign-in from a device. No email or other personal detail: a receiver that needs more asks the
/// admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountCreated {
    /// The new account.
    pub account_id: String,
    /// Its username (`guest_…` for a guest).
    pub username: String,
    /// True for a guest account (signed in by device id alone).
    pub guest: bool,
    /// When.
    pub created_at: String,
}

impl EventType for AccountCreated {
    const NAME: &'static str = "account.created";
}

/// A player said an upload finished (uploads); uploads checks the stored object off the
/// request path and marks the asset ready or rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadCompleted {
    /// The asset to check.
    pub asset_id: String,
}

impl EventType for UploadCompleted {
    const NAME: &'static str = "upload.completed";
}

/// A completed upload passed its check and can be downloaded (uploads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadReady {
    /// The asset.
    pub asset_id: String,
    /// Its owner.
    pub owner_id: String,
    /// `avatar`, `screenshot`, `replay` or `ugc`.
    pub purpose: String,
    /// Its declared and checked type.
    pub content_type: String,
    /// Its size.
    pub size_bytes: i64,
    /// When it became ready.
    pub ready_at: String,
}

impl EventType for UploadReady {
    const NAME: &'static str = "upload.ready";
}

/// A completed upload failed its check, or could not be checked for a day (uploads); its bytes
/// are deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRejected {
    /// The asset.
    pub asset_id: String,
    /// Its owner.
    pub owner_id: String,
    /// `avatar`, `screenshot`, `replay` or `ugc`.
    pub purpose: String,
    /// Why, e.g. `size_mismatch: the stored size differs from the declared size`; the part
    /// before the colon is a stable code.
    pub reason: String,
    /// When.
    pub rejected_at: String,
}

impl EventType for UploadRejected {
    const NAME: &'static str = "upload.rejected";
}

/// A player reported a chat message to moderators (chat). The message as it was then is
/// included, since its sender may erase their account, or a moderator the message, later. Chat's
/// own consumer files it in the moderators' reports queue (`GET /v1/admin/chat/reports`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageReported {
    /// The reported message.
    pub message_id: String,
    /// Its channel.
    pub channel: String,
    /// Who sent it; `None` once the sender erased their account.
    pub sender_id: Option<String>,
    /// The sender's name as the message showed it. Absent from events recorded before it was
    /// added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// When the message was sent. Absent from events recorded before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// Its text when reported.
    pub body: String,
    /// Who reported it.
    pub reported_by: String,
    /// Why, in the reporter's words.
    pub reason: String,
    /// When.
    pub reported_at: String,
}

impl EventType for MessageReported {
    const NAME: &'static str = "chat.message_reported";
}

/// A player was muted or banned in chat, in one channel or everywhere (chat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SanctionIssued {
    /// The sanctioned player.
    pub account_id: String,
    /// `mute` or `ban`.
    pub kind: String,
    /// `global` or a channel id.
    pub scope: String,
    /// When it ends; `None` for good.
    pub until: Option<String>,
    /// Why, as the issuer wrote it.
    pub reason: Option<String>,
    /// The authority it was issued with: `server`, `owner` or `moderator`.
    pub issued_by: String,
    /// The owner's or moderator's account; `None` for the server key.
    pub issuer_id: Option<String>,
    /// When.
    pub issued_at: String,
}

impl EventType for SanctionIssued {
    const NAME: &'static str = "chat.sanction_issued";
}

/// A board's season ended (leaderboard), with its final standings' top, for rewards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeasonClosed {
    /// The board.
    pub board_id: String,
    /// The number of the season that ended.
    pub season: i64,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    pub ended_at: String,
    /// How many records it held.
    pub record_count: i64,
    /// Its best records, best first.
    pub top: Vec<SeasonPlacing>,
}

impl EventType for SeasonClosed {
    const NAME: &'static str = "leaderboard.season_closed";
}

/// One record of a closed season's standings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeasonPlacing {
    /// 1 for the best.
    pub rank: u64,
    /// The player.
    pub owner_id: String,
    /// Their display name then.
    pub name: String,
    /// Score.
    pub score: i64,
    /// Subscore.
    pub subscore: i64,
}

/// A player asked another to be friends (accounts, `POST /v1/friends/{id}`). Chat notifies the
/// recipient. Not recorded when either has blocked the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendRequested {
    /// Who asked.
    pub from_id: String,
    /// Who was asked.
    pub to_id: String,
    /// When.
    pub requested_at: String,
}

impl EventType for FriendRequested {
    const NAME: &'static str = "social.friend_requested";
}

/// A friend request was accepted (accounts): the two are friends now. Leaderboard keeps friend
/// lists for `records?friends=true`; chat notifies the one who asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendAccepted {
    /// Who asked first.
    pub requester_id: String,
    /// Who accepted.
    pub accepter_id: String,
    /// When.
    pub accepted_at: String,
}

impl EventType for FriendAccepted {
    const NAME: &'static str = "social.friend_accepted";
}

/// Two players are no longer friends, or a pending request between them is gone (declined,
/// withdrawn, or ended by a block) (accounts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendRemoved {
    /// Who ended it.
    pub account_id: String,
    /// The other player.
    pub other_id: String,
    /// When.
    pub removed_at: String,
}

impl EventType for FriendRemoved {
    const NAME: &'static str = "social.friend_removed";
}

/// A player blocked another (accounts). Chat refuses DMs between them and hides each one's
/// presence from the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockAdded {
    /// Who blocked.
    pub blocker_id: String,
    /// Who was blocked.
    pub blocked_id: String,
    /// When.
    pub blocked_at: String,
}

impl EventType for BlockAdded {
    const NAME: &'static str = "social.block_added";
}

/// A player lifted a block (accounts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRemoved {
    /// Who had blocked.
    pub blocker_id: String,
    /// Who had been blocked.
    pub blocked_id: String,
    /// When.
    pub unblocked_at: String,
}

impl EventType for BlockRemoved {
    const NAME: &'static str = "social.block_removed";
}
