//! What the accounts API reads and writes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::store::AccountRow;

/// `POST /v1/auth/register`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Any case; stored trimmed and lower-cased.
    #[schema(
        pattern = r"^[^@\s\x00-\x1f\x7f-\x9f]{1,64}@[^@.\s\x00-\x1f\x7f-\x9f]{1,63}(\.[^@.\s\x00-\x1f\x7f-\x9f]{1,63})+$",
        max_length = 254
    )]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// 3 to 24 of `[A-Za-z0-9_]`, unique regardless of case.
    #[schema(pattern = r"^[A-Za-z0-9_]{3,24}$")]
    pub username: String,
}

/// `POST /v1/auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The account's email.
    #[schema(
        pattern = r"^[^@\s\x00-\x1f\x7f-\x9f]{1,64}@[^@.\s\x00-\x1f\x7f-\x9f]{1,63}(\.[^@.\s\x00-\x1f\x7f-\x9f]{1,63})+$",
        max_length = 254
    )]
    pub email: String,
    /// The account's password.
    #[schema(min_length = 1, max_length = 256)]
    pub password: String,
}

/// `POST /v1/auth/guest`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestRequest {
    /// A stable id of the device (8 to 128 printable ASCII characters, no spaces); stored only
    /// hashed.
    #[schema(pattern = r"^[!-~]{8,128}$")]
    pub device_id: String,
}

/// `POST /v1/auth/refresh`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token of the last pair; it stops working once exchanged.
    pub refresh_token: String,
}

/// `POST /v1/accounts/me/credentials`: turns a guest into a full account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsRequest {
    /// Email to sign in with from now on.
    #[schema(
        pattern = r"^[^@\s\x00-\x1f\x7f-\x9f]{1,64}@[^@.\s\x00-\x1f\x7f-\x9f]{1,63}(\.[^@.\s\x00-\x1f\x7f-\x9f]{1,63})+$",
        max_length = 254
    )]
    pub email: String,
    /// Password to sign in with from now on, 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// Replaces the generated guest username when given.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_]{3,24}$")]
    pub username: Option<String>,
}

/// `PATCH /v1/accounts/me`: absent fields are kept, `null` clears a field.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    /// 1 to 32 characters, shown instead of the username; no control characters, and no space
    /// at either end (it is trimmed).
    #[serde(default, deserialize_with = "platform::http::present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 32,
        pattern = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$")]
    pub display_name: Option<Option<String>>,
    /// Id of an uploaded asset to use as avatar.
    #[serde(default, deserialize_with = "platform::http::present")]
    #[schema(value_type = Option<String>, pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub avatar_asset_id: Option<Option<String>>,
    /// BCP 47 language tag, e.g. `pt-BR`.
    #[serde(default, deserialize_with = "platform::http::present")]
    #[schema(value_type = Option<String>, pattern = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")]
    pub locale: Option<Option<String>>,
}

/// An access token and the refresh token to renew it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// EdDSA-signed JWT, sent as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Opaque; exchange it at `/v1/auth/refresh` for a new pair. Single use.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// The caller's own account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Account {
    /// Account id (UUID).
    pub id: String,
    /// Unique username.
    pub username: String,
    /// Normalised email; absent for a guest.
    pub email: Option<String>,
    /// True until the account has an email and password.
    pub guest: bool,
    /// Display name, if set.
    pub display_name: Option<String>,
    /// Avatar asset id, if set.
    pub avatar_asset_id: Option<String>,
    /// Locale, if set.
    pub locale: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<AccountRow> for Account {
    fn from(row: AccountRow) -> Self {
        Account {
            guest: row.email.is_none(),
            id: row.id,
            username: row.username,
            email: row.email,
            display_name: row.display_name,
            avatar_asset_id: row.avatar_asset_id,
            locale: row.locale,
            created_at: platform::time::rfc3339(row.created_at),
            updated_at: platform::time::rfc3339(row.updated_at),
        }
    }
}

/// What any player may see of another: no email.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicProfile {
    /// Account id (UUID).
    pub id: String,
    /// Unique username.
    pub username: String,
    /// Display name, if set.
    pub display_name: Option<String>,
    /// Avatar asset id, if set.
    pub avatar_asset_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<AccountRow> for PublicProfile {
    fn from(row: AccountRow) -> Self {
        PublicProfile {
            id: row.id,
            username: row.username,
            display_name: row.display_name,
            avatar_asset_id: row.avatar_asset_id,
            created_at: platform::time::rfc3339(row.created_at),
        }
    }
}

/// Answer to a registration (and a guest's first sign-in).
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    /// The new account.
    pub account: Account,
    /// Tokens for its first session.
    pub tokens: TokenPair,
}
