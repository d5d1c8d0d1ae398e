//! The limits of the sign-in endpoints, counted in the cache so that every instance shares them.
//!
//! Login is throttled by account and address together: failed logins (never successful ones, and
//! never before the password was checked) count for the pair, and past a few each further attempt
//! from that address must wait, twice as long after each failure. One address can therefore slow
//! down only its own attempts at an account, never lock the account's owner out. Against guessing
//! spread over many addresses, an account that collects many failures in 15 minutes is closed to
//! addresses that have not signed in to it before; the addresses its owner used stay open.

use std::time::Duration;

use platform::ApiError;
use platform::config::AuthRateLimits;
use platform::db::now_millis;
use platform::http::ClientIp;
use platform::ratelimit::Limit;

use crate::AccountsState;

/// The rate limits of the sign-in endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Register, login and guest attempts per client IP.
    pub per_ip: Limit,
    /// Failed logins to one account from one address before backoff.
    pub login_failures_free: u32,
    /// Failed logins to one account from all addresses per `ACCOUNT_WINDOW` before only known
    /// addresses may try.
    pub login_failures_per_account: u32,
    /// `email_taken` answers per client IP.
    pub email_taken_per_ip: Limit,
    /// Refreshes per client IP.
    pub refresh_per_ip: Limit,
}

impl From<&AuthRateLimits> for Limits {
    fn from(config: &AuthRateLimits) -> Self {
        Limits {
            per_ip: Limit::new(config.per_ip_per_minute, Duration::from_secs(60)),
            login_failures_free: config.login_failures_per_account_and_ip,
            login_failures_per_account: config.login_failures_per_account_per_15_minutes,
            email_taken_per_ip: Limit::new(config.email_taken_per_ip_per_hour, Duration::from_secs(3600)),
            refresh_per_ip: Limit::new(config.refresh_per_ip_per_minute, Duration::from_secs(60)),
        }
    }
}

/// How long an address's failures at an account are remembered (from the first of them).
const PAIR_WINDOW: Duration = Duration::from_secs(3600);
/// The longest an address waits between attempts at one account.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// The window of an account's failures from all addresses.
const ACCOUNT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long an address that signed in to an account stays known to it.
const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// The wait after the `over`-th failure past the free ones: 1 s, 2 s, 4 s, … up to `MAX_BACKOFF`.
fn backoff(over: u64) -> Duration {
    let exponent = u32::try_from(over.saturating_sub(1)).unwrap_or(u32::MAX).min(20);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

/// The cache keys of one login attempt. The email is the normalised one, whether or not an
/// account has it, so that unknown and known emails are throttled alike, and hashed: a cache
/// dump or a `KEYS` listing should not be a list of players' emails.
struct LoginKeys {
    pair_failures: String,
    pair_wait: String,
    account_failures: String,
    account_closed: String,
    known: String,
}

impl LoginKeys {
    fn new(email: &str, ip: ClientIp) -> Self {
        let ip = ip.0;
        let email = platform::digest::sha256_hex(email);
        LoginKeys {
            pair_failures: format!("login:failures:{email}:{ip}"),
            pair_wait: format!("login:wait:{email}:{ip}"),
            account_failures: format!("login:failures:{email}"),
            account_closed: format!("login:closed:{email}"),
            known: format!("login:known:{email}:{ip}"),
        }
    }
}

fn cache_error(err: anyhow::Error) -> ApiError {
    ApiError::Internal(err.context("reading the login limits"))
}

impl AccountsState {
    /// Counts one sign-in attempt from `ip` (register, login, guest share the budget).
    pub(crate) async fn limit_ip(&self, ip: ClientIp) -> Result<(), ApiError> {
        self.limits.per_ip.hit(&self.cache, &format!("auth:ip:{}", ip.0)).await
    }

    /// Refuses a login from `ip` to `email` with 429 while that address must wait, or while the
    /// account is closed to addresses that never signed in to it.
    pub(crate) async fn login_allowed(&self, email: &str, ip: ClientIp) -> Result<(), ApiError> {
        let keys = LoginKeys::new(email, ip);
        if let Some(retry_after) = self.deadline_left(&keys.pair_wait).await? {
            return Err(ApiError::RateLimited { retry_after });
        }
        if let Some(retry_after) = self.deadline_left(&keys.account_closed).await?
            && !self.cache.exists(&keys.known).await.map_err(cache_error)?
        {
            return Err(ApiError::RateLimited { retry_after });
        }
        Ok(())
    }

    /// Records a failed login from `ip` to `email`: past the free failures, that address waits
    /// before its next attempt; past the account's limit, the account closes to unknown addresses.
    pub(crate) async fn login_failed(&self, email: &str, ip: ClientIp) -> Result<(), ApiError> {
        let keys = LoginKeys::new(email, ip);
        let (failures, _) = self.cache.hit(&keys.pair_failures, PAIR_WINDOW).await.map_err(cache_error)?;
        let free = u64::from(self.limits.login_failures_free);
        if failures >= free {
            let wait = backoff(failures + 1 - free);
            self.set_deadline(&keys.pair_wait, wait).await?;
            tracing::info!(wait_secs = wait.as_secs(), "login failures from one address; it waits");
        }
        let (failures, left) = self.cache.hit(&keys.account_failures, ACCOUNT_WINDOW).await.map_err(cache_error)?;
        if failures == u64::from(self.limits.login_failures_per_account) {
            self.set_deadline(&keys.account_closed, left).await?;
            tracing::warn!(closed_secs = left.as_secs(), "many failed logins to one account; closed to unknown addresses");
        }
        Ok(())
    }

    /// Records a successful login: the address's failures are forgotten and it becomes known to
    /// the account.
    pub(crate) async fn login_succeeded(&self, email: &str, ip: ClientIp) -> Result<(), ApiError> {
        let keys = LoginKeys::new(email, ip);
        self.cache.delete(&keys.pair_failures).await.map_err(cache_error)?;
        self.cache.delete(&keys.pair_wait).await.map_err(cache_error)?;
        self.cache.set_ex(&keys.known, "1", KNOWN_FOR).await.map_err(cache_error)
    }

    /// Refuses with 429 while `ip` has spent its `email_taken` answers. Checked before a register
    /// or a guest upgrade does anything, so the refusal says nothing about the email in hand.
    pub(crate) async fn email_answers_allowed(&self, ip: ClientIp) -> Result<(), ApiError> {
        match self.deadline_left(&format!("email-taken:closed:{}", ip.0)).await? {
            Some(retry_after) => Err(ApiError::RateLimited { retry_after }),
            None => Ok(()),
        }
    }

    /// Counts an `email_taken` answer to `ip`; the last one of its budget closes the address to
    /// register and upgrade attempts until the window ends.
    pub(crate) async fn email_taken_answered(&self, ip: ClientIp) -> Result<(), ApiError> {
        let limit = self.limits.email_taken_per_ip;
        let (count, left) = self.cache.hit(&format!("email-taken:count:{}", ip.0), limit.window).await.map_err(cache_error)?;
        if count >= u64::from(limit.max) {
            self.set_deadline(&format!("email-taken:closed:{}", ip.0), left).await?;
            tracing::warn!(closed_secs = left.as_secs(), "an address spent its email_taken answers");
        }
        Ok(())
    }

    /// Stores under `key` the moment `wait` from now (Unix ms), expiring then.
    async fn set_deadline(&self, key: &str, wait: Duration) -> Result<(), ApiError> {
        let until = now_millis().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        self.cache.set_ex(key, &until.to_string(), wait).await.map_err(cache_error)
    }

    /// The time left until the deadline under `key`, if one is set and not passed.
    async fn deadline_left(&self, key: &str) -> Result<Option<Duration>, ApiError> {
        let until = self.cache.get(key).await.map_err(cache_error)?.and_then(|v| v.parse::<i64>().ok());
        Ok(until.map(|until| until - now_millis()).filter(|left| *left > 0).map(|left| Duration::from_millis(left.unsigned_abs())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_fifteen_minutes() {
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]);
        assert_eq!(backoff(u64::MAX), MAX_BACKOFF);
    }
}
