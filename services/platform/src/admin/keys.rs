//! Server keys: the bootstrap key (`GUILDHALL_ADMIN_KEY`, every scope) and named keys made through
//! the API (`POST /v1/admin/keys`), each with its own scopes, stored hashed and revocable.
//!
//! A named key is `ghk_` and 43 base64url characters (256 random bits). Only its SHA-256 is
//! stored (like refresh tokens: a key that random has nothing to brute-force, so a slow hash
//! would buy nothing), beside its first 12 characters (`prefix`), which lists show so that an
//! operator can tell keys apart. The key itself is answered once, at creation.
//!
//! Each process remembers what it looked up for [`CACHE_TTL`], so that an admin or game-server
//! request costs no database read most of the time; a revoked key therefore stops working on
//! every instance within that time, and at once on the instance that revoked it (which forgets
//! everything it remembered).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{FromRef, FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::{IntoParams, ToSchema};

use super::AdminState;
use crate::auth::bearer_token;
use crate::config::Secret;
use crate::db::{Database, now_millis};
use crate::error::{ApiError, ErrorBody};
use crate::http::{Json, Query};

/// What a server key may do. Every admin route requires one (`Admin::require`); the bootstrap key
/// holds them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Make, list and revoke server keys (`/v1/admin/keys`). A key grants only scopes it holds.
    Admin,
    /// Search and view accounts, ban and unban them, end their sessions, delete them.
    Accounts,
    /// Create, change and delete boards, delete records, close seasons.
    Leaderboards,
    /// List any player's assets and take them down.
    Uploads,
    /// Chat moderation: sanctions everywhere, reports, messages.
    Chat,
    /// Read the audit log.
    Audit,
    /// Manage webhooks.
    Webhooks,
    /// What a game server does for its players: submit scores on their behalf (and onto
    /// authoritative boards).
    GameServer,
}

impl Scope {
    /// Every scope, in the order lists show them.
    pub const ALL: [Scope; 8] =
        [Scope::Admin, Scope::Accounts, Scope::Leaderboards, Scope::Uploads, Scope::Chat, Scope::Audit, Scope::Webhooks, Scope::GameServer];

    /// The scope's name, as the API and the database write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Accounts => "accounts",
            Scope::Leaderboards => "leaderboards",
            Scope::Uploads => "uploads",
            Scope::Chat => "chat",
            Scope::Audit => "audit",
            Scope::Webhooks => "webhooks",
            Scope::GameServer => "game_server",
        }
    }

    /// The scope named `name`.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u16);

impl Scopes {
    /// Every scope (the bootstrap key's).
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether every scope of `other` is in the set.
    pub fn covers(self, other: Scopes) -> bool {
        other.0 & !self.0 == 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes in the set, in `Scope::ALL`'s order.
    pub fn to_vec(self) -> Vec<Scope> {
        Scope::ALL.into_iter().filter(|s| self.contains(*s)).collect()
    }

    /// As the database stores it: the names, space-separated.
    fn stored(self) -> String {
        self.to_vec().iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
    }

    /// From the stored form; unknown names (from a later release) are left out.
    fn parse_stored(text: &str) -> Self {
        text.split_whitespace().filter_map(Scope::parse).collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

/// The key id the bootstrap key is recorded under (audit entries, bans, keys it made).
pub const BOOTSTRAP: &str = "bootstrap";
/// What every named key starts with, so that a leaked one is recognisable to secret scanners and
/// tells itself from an access token (a JWT starts `eyJ`) without a lookup.
pub const KEY_PREFIX: &str = "ghk_";
/// Random bytes in a named key.
const KEY_BYTES: usize = 32;
/// Characters of a key kept and shown as its public prefix: `ghk_` and 8 more.
const SHOWN_PREFIX: usize = 12;
/// How long a process trusts what it looked up about a named key (found, or unknown).
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Most keys remembered at once; past it the memory starts over (refilled within seconds).
const CACHE_CAPACITY: usize = 10_000;

/// A request made with a server key: which key, and what it may do. Handlers call
/// [`Admin::require`] first, and hand it to `crate::audit::record` with what they did.
#[derive(Debug, Clone)]
pub struct Admin {
    key_id: String,
    key_name: String,
    scopes: Scopes,
    request_id: Option<String>,
}

impl Admin {
    /// 403 `insufficient_scope` unless the key holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(scope) {
            return Ok(());
        }
        Err(insufficient_scope(format!("this key lacks the `{}` scope", scope.as_str())))
    }

    /// Whether the key holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// `bootstrap`, or the named key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// `bootstrap`, or the named key's name.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// What the key may do.
    pub fn scopes(&self) -> Scopes {
        self.scopes
    }

    /// The request's `x-request-id`, for the audit log.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    fn bootstrap() -> Self {
        Admin { key_id: BOOTSTRAP.to_owned(), key_name: BOOTSTRAP.to_owned(), scopes: Scopes::all(), request_id: None }
    }
}

/// 403 `insufficient_scope`.
fn insufficient_scope(message: String) -> ApiError {
    ApiError::client(StatusCode::FORBIDDEN, "insufficient_scope", message)
}

/// A named key as a lookup finds it.
#[derive(Debug)]
struct NamedKey {
    id: String,
    name: String,
    scopes: Scopes,
}

/// The server keys: the bootstrap key and, through the database, the named ones. Cheap to clone
/// (every service's state holds one, and extractors take it from there on every request).
#[derive(Clone, Debug, Default)]
pub struct AdminKey(Arc<AdminKeyInner>);

#[derive(Debug, Default)]
struct AdminKeyInner {
    bootstrap: Option<Secret<String>>,
    /// Where named keys live; none in unit tests of other crates, where only the bootstrap key is.
    db: Option<Database>,
    /// Named keys looked up lately, by hash.
    remembered: Mutex<HashMap<String, Remembered>>,
}

/// When a named key was looked up, and what was found: the live key, or nothing.
type Remembered = (Instant, Option<Arc<NamedKey>>);

impl AdminKey {
    /// The bootstrap key (none: only named keys work) and the database of named keys.
    pub fn new(bootstrap: Option<Secret<String>>, db: Option<Database>) -> Self {
        Self(Arc::new(AdminKeyInner { bootstrap, db, remembered: Mutex::default() }))
    }

    /// Whether `presented` is the bootstrap key, compared in constant time (over SHA-256
    /// digests, so the lengths do not leak either).
    pub fn matches(&self, presented: &str) -> bool {
        let Some(key) = &self.0.bootstrap else { return false };
        let expected = Sha256::digest(key.expose().as_bytes());
        let given = Sha256::digest(presented.as_bytes());
        expected.iter().zip(given.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Whether `token` is meant as a server key (the bootstrap key, or shaped as a named key)
    /// rather than a player's access token.
    pub fn is_server_key(&self, token: &str) -> bool {
        token.starts_with(KEY_PREFIX) || self.matches(token)
    }

    /// The key `presented` is: the bootstrap key, or a live named key. 401 `invalid_token` for
    /// anything else; 403 while no key can exist (no bootstrap key and not a named key's shape).
    pub async fn authenticate(&self, presented: &str) -> Result<Admin, ApiError> {
        if self.matches(presented) {
            return Ok(Admin::bootstrap());
        }
        if !well_formed(presented) {
            if self.0.bootstrap.is_none() {
                return Err(ApiError::Forbidden(
                    "the admin API takes a named server key (ghk_...) or the bootstrap key, and GUILDHALL_ADMIN_KEY is not set".into(),
                ));
            }
            return Err(ApiError::invalid_token("not a server key"));
        }
        match self.lookup(&hash_key(presented)).await? {
            Some(key) => Ok(Admin { key_id: key.id.clone(), key_name: key.name.clone(), scopes: key.scopes, request_id: None }),
            None => Err(ApiError::invalid_token("unknown or revoked server key")),
        }
    }

    /// The live named key with `hash`, from memory when looked up within `CACHE_TTL`.
    async fn lookup(&self, hash: &str) -> Result<Option<Arc<NamedKey>>, ApiError> {
        {
            let remembered = self.0.remembered.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, key)) = remembered.get(hash)
                && at.elapsed() < CACHE_TTL
            {
                return Ok(key.clone());
            }
        }
        let Some(db) = &self.0.db else { return Ok(None) };
        let found = live_key_by_hash(db, hash).await?.map(Arc::new);
        let mut remembered = self.0.remembered.lock().unwrap_or_else(|p| p.into_inner());
        if remembered.len() >= CACHE_CAPACITY {
            remembered.clear();
        }
        remembered.insert(hash.to_owned(), (Instant::now(), found.clone()));
        Ok(found)
    }

    /// Forgets every key looked up, so that a revocation takes effect in this process at once.
    fn forget(&self) {
        self.0.remembered.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Whether `key` has a named key's shape: the prefix and 43 base64url characters.
fn well_formed(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX)
        .is_some_and(|rest| rest.len() == 43 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// The stored form of a named key: its SHA-256 in hex.
fn hash_key(key: &str) -> String {
    crate::digest::sha256_hex(key)
}

/// A fresh named key.
fn new_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a server key: {e}"))?;
    Ok(format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The request's `x-request-id` (set by `crate::http`'s layer, or kept from the ALB or client),
/// when it is a sensible length.
fn request_id(parts: &Parts) -> Option<String> {
    let id = parts.headers.get("x-request-id")?.to_str().ok()?;
    (!id.is_empty() && id.len() <= 128).then(|| id.to_owned())
}

impl<S> FromRequestParts<S> for Admin
where
    AdminKey: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Some(token) = bearer_token(parts) else {
            return Err(ApiError::Unauthenticated {
                code: "missing_token",
                message: "send a server key as `Authorization: Bearer <key>`".into(),
            });
        };
        let mut admin = AdminKey::from_ref(state).authenticate(token).await?;
        admin.request_id = request_id(parts);
        Ok(admin)
    }
}

// ---------------------------------------------------------------------------------------- store

const KEY_COLUMNS: &str = "id, name, prefix, scopes, created_at, created_by, revoked_at";

/// A named key as stored (without its hash).
#[derive(Debug, Clone)]
struct KeyRow {
    id: String,
    name: String,
    prefix: String,
    scopes: Scopes,
    created_at: i64,
    created_by: String,
    revoked_at: Option<i64>,
}

fn key_row(row: &AnyRow) -> Result<KeyRow, sqlx::Error> {
    Ok(KeyRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        scopes: Scopes::parse_stored(&row.try_get::<String, _>("scopes")?),
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db admin.live_key_by_hash", skip_all)]
async fn live_key_by_hash(db: &Database, hash: &str) -> anyhow::Result<Option<NamedKey>> {
    let row = sqlx::query("SELECT id, name, scopes FROM admin_keys WHERE key_hash = $1 AND revoked_at IS NULL")
        .bind(hash)
        .fetch_optional(db.pool())
        .await
        .context("looking a server key up")?;
    row.map(|row| {
        Ok(NamedKey {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            scopes: Scopes::parse_stored(&row.try_get::<String, _>("scopes")?),
        })
    })
    .transpose()
}

#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db admin.insert_key", skip_all)]
async fn insert_key(conn: &mut sqlx::AnyConnection, key: &KeyRow, hash: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO admin_keys (id, name, prefix, key_hash, scopes, created_at, created_by, revoked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
    )
    .bind(&key.id)
    .bind(&key.name)
    .bind(&key.prefix)
    .bind(hash)
    .bind(key.scopes.stored())
    .bind(key.created_at)
    .bind(&key.created_by)
    .execute(conn)
    .await
    .context("inserting a server key")?;
    Ok(())
}

#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db admin.list_keys", skip_all)]
async fn list_keys(db: &Database, include_revoked: bool, before: Option<&str>, limit: i64) -> anyhow::Result<Vec<KeyRow>> {
    // Fixed fragments only; every value is bound.
    let live = if include_revoked { "" } else { " AND revoked_at IS NULL" };
    let sql = format!("SELECT {KEY_COLUMNS} FROM admin_keys WHERE id < $1{live} ORDER BY id DESC LIMIT $2");
    // UUIDv7 text sorts by time; 'z' sorts after every id.
    let rows = sqlx::query(&sql).bind(before.unwrap_or("z")).bind(limit).fetch_all(db.pool()).await.context("listing server keys")?;
    rows.iter().map(|r| key_row(r).context("decoding a server key")).collect()
}

#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db admin.revoke_key", skip_all)]
async fn revoke_key(conn: &mut sqlx::AnyConnection, id: &str, now: i64) -> anyhow::Result<Option<KeyRow>> {
    let sql = format!("UPDATE admin_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING {KEY_COLUMNS}");
    let row = sqlx::query(&sql).bind(id).bind(now).fetch_optional(conn).await.context("revoking a server key")?;
    row.as_ref().map(key_row).transpose().context("decoding a server key")
}

// ----------------------------------------------------------------------------------------- HTTP

/// `POST /v1/admin/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// What the key is for, 1 to 64 characters without control characters (trimmed), e.g.
    /// `eu game servers` or `support: ana`.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$")]
    pub name: String,
    /// What it may do: one or more scopes, each of which the calling key holds itself.
    #[schema(min_items = 1, max_items = 8)]
    pub scopes: Vec<Scope>,
}

/// A named key as lists show it.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    /// Key id (UUID).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// The key's first characters, to tell it apart (`ghk_` and 8 more).
    pub prefix: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// RFC 3339.
    pub created_at: String,
    /// The key that made it: `bootstrap` or a key id.
    pub created_by: String,
    /// RFC 3339, once revoked.
    pub revoked_at: Option<String>,
}

impl From<KeyRow> for KeyView {
    fn from(k: KeyRow) -> Self {
        KeyView {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            scopes: k.scopes.to_vec(),
            created_at: crate::time::rfc3339(k.created_at),
            created_by: k.created_by,
            revoked_at: k.revoked_at.map(crate::time::rfc3339),
        }
    }
}

/// Answer of `POST /v1/admin/keys`: the key itself, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The server key, `ghk_…`: send it as `Authorization: Bearer <key>`. Not stored; it cannot
    /// be shown again.
    pub key: String,
    /// The key as lists show it.
    #[serde(flatten)]
    pub view: KeyView,
}

/// A page of keys, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPage {
    /// The keys.
    pub keys: Vec<KeyView>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/admin/keys`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyQuery {
    /// Also list revoked keys (default false).
    pub include_revoked: Option<bool>,
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
}

/// A key's name, trimmed: 1 to 64 characters without control characters.
fn key_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if !(1..=64).contains(&name.chars().count()) || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name", "name must be 1 to 64 characters without control characters"));
    }
    Ok(name.to_owned())
}

/// Makes a named server key with `scopes`; answers the key itself, once. A key may grant only
/// scopes it holds itself (the bootstrap key holds all), so no key can make a stronger one.
#[utoipa::path(post, path = "/v1/admin/keys", tag = "admin", security(("bearer" = [])), request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `admin`, or one of the scopes it would grant", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn create_key(State(state): State<AdminState>, admin: Admin, Json(req): Json<CreateKey>) -> Result<impl IntoResponse, ApiError> {
    admin.require(Scope::Admin)?;
    let name = key_name(&req.name)?;
    let scopes: Scopes = req.scopes.iter().copied().collect();
    if scopes.is_empty() || req.scopes.len() > Scope::ALL.len() {
        return Err(ApiError::invalid("scopes", "scopes must name 1 to 8 scopes"));
    }
    if !admin.scopes().covers(scopes) {
        return Err(insufficient_scope("a key may grant only scopes it holds itself".into()));
    }
    let key = new_key()?;
    let row = KeyRow {
        id: uuid::Uuid::now_v7().to_string(),
        name,
        prefix: key[..SHOWN_PREFIX].to_owned(),
        scopes,
        created_at: now_millis(),
        created_by: admin.key_id().to_owned(),
        revoked_at: None,
    };
    let mut tx = state.db.begin().await?;
    insert_key(&mut tx, &row, &hash_key(&key)).await?;
    let detail = serde_json::json!({ "name": row.name, "prefix": row.prefix, "scopes": scopes.to_vec() });
    crate::audit::record(&mut *tx, &admin, "keys.create", &format!("key:{}", row.id), &detail).await?;
    tx.commit().await.context("committing a new server key")?;
    tracing::info!(key_id = row.id, prefix = row.prefix, by = admin.key_id(), "server key created");
    Ok((StatusCode::CREATED, Json(CreatedKey { key, view: row.into() })))
}

/// The named server keys, newest first; revoked ones too with `include_revoked=true`. Never the
/// keys themselves.
#[utoipa::path(get, path = "/v1/admin/keys", tag = "admin", security(("bearer" = [])), params(KeyQuery),
    responses((status = 200, body = KeyPage), (status = 400, body = ErrorBody), (status = 403, description = "`insufficient_scope`", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn list(State(state): State<AdminState>, admin: Admin, Query(query): Query<KeyQuery>) -> Result<Json<KeyPage>, ApiError> {
    admin.require(Scope::Admin)?;
    let limit = super::page_limit(query.limit)?;
    let cursor = query.cursor.as_deref().map(super::uuid_cursor).transpose()?;
    let mut rows = list_keys(&state.db, query.include_revoked.unwrap_or(false), cursor, limit + 1).await?;
    let next_cursor = super::next_cursor(&mut rows, limit, |k| k.id.clone());
    Ok(Json(KeyPage { keys: rows.into_iter().map(KeyView::from).collect(), next_cursor }))
}

/// The key a request is signed with, as the server knows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyIdentity {
    /// `bootstrap`, or the named key's id.
    pub id: String,
    /// Its name (`bootstrap` for `GUILDHALL_ADMIN_KEY`).
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

/// Which key this is and what it may do, for any valid key whatever its scopes: how a client
/// (the console's sign-in) checks a key and learns which pages to offer.
#[utoipa::path(get, path = "/v1/admin/keys/me", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = KeyIdentity), (status = 401, body = ErrorBody)))]
pub async fn me(admin: Admin) -> Json<KeyIdentity> {
    Json(KeyIdentity { id: admin.key_id().to_owned(), name: admin.key_name().to_owned(), scopes: admin.scopes().to_vec() })
}

/// Revokes a named key: it stops working at once on this instance and within 5 seconds on every
/// other. The bootstrap key is configuration: change `GUILDHALL_ADMIN_KEY` to replace it.
#[utoipa::path(delete, path = "/v1/admin/keys/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses((status = 204), (status = 403, description = "`insufficient_scope`", body = ErrorBody),
        (status = 404, description = "no such key, or revoked already", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(key_id = id))]
pub async fn revoke(State(state): State<AdminState>, admin: Admin, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    admin.require(Scope::Admin)?;
    let not_found = || ApiError::NotFound("no such live key".into());
    if uuid::Uuid::try_parse(&id).is_err() {
        return Err(not_found());
    }
    let mut tx = state.db.begin().await?;
    let revoked = revoke_key(&mut tx, &id, now_millis()).await?.ok_or_else(not_found)?;
    let detail = serde_json::json!({ "name": revoked.name, "prefix": revoked.prefix });
    crate::audit::record(&mut *tx, &admin, "keys.revoke", &format!("key:{id}"), &detail).await?;
    tx.commit().await.context("committing a key's revocation")?;
    state.keys.forget();
    tracing::info!(by = admin.key_id(), "server key revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_well_formed_and_hashed() {
        let a = new_key().expect("key");
        let b = new_key().expect("key");
        assert_ne!(a, b);
        assert!(well_formed(&a) && well_formed(&b), "{a}");
        assert_eq!(hash_key(&a).len(), 64);
        assert!(!well_formed("ghk_short") && !well_formed("eyJhbGciOiJFZERTQSJ9.e30.sig") && !well_formed(&format!("{a}x")));
    }

    #[test]
    fn scopes_round_trip_and_cover() {
        let some: Scopes = [Scope::Chat, Scope::GameServer].into_iter().collect();
        assert_eq!(Scopes::parse_stored(&some.stored()), some);
        assert_eq!(some.stored(), "chat game_server");
        assert!(Scopes::all().covers(some) && some.covers(some) && !some.covers(Scopes::all()));
        assert!(some.contains(Scope::Chat) && !some.contains(Scope::Admin));
        assert_eq!(Scopes::parse_stored("chat unknown"), [Scope::Chat].into_iter().collect());
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
            assert_eq!(serde_json::to_value(scope).expect("json"), scope.as_str());
        }
    }

    #[tokio::test]
    async fn the_bootstrap_key_holds_every_scope_and_others_are_refused() {
        let keys = AdminKey::new(Some(Secret::new("a-bootstrap-key-of-24-chars!".into())), None);
        let admin = keys.authenticate("a-bootstrap-key-of-24-chars!").await.expect("bootstrap");
        assert!(Scope::ALL.into_iter().all(|s| admin.has(s)));
        assert_eq!(admin.key_id(), BOOTSTRAP);
        assert_eq!(keys.authenticate("nope").await.expect_err("refused").code(), "invalid_token");
        let named = new_key().expect("key");
        assert!(keys.is_server_key(&named) && !keys.is_server_key("eyJ.x.y"));
        assert_eq!(keys.authenticate(&named).await.expect_err("unknown").code(), "invalid_token");
        let without = AdminKey::new(None, None);
        assert_eq!(without.authenticate("anything").await.expect_err("off").code(), "forbidden");
    }

    #[test]
    fn a_missing_scope_is_a_403() {
        let admin = Admin { key_id: "k".into(), key_name: "k".into(), scopes: [Scope::Audit].into_iter().collect(), request_id: None };
        assert!(admin.require(Scope::Audit).is_ok());
        let err = admin.require(Scope::Chat).expect_err("refused");
        assert_eq!((err.status(), err.code()), (StatusCode::FORBIDDEN, "insufficient_scope"));
    }
}
