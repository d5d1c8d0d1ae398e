//! Typed configuration, read from the environment in one place (twelve-factor).
//!
//! Backends are chosen by URL scheme (see `ARCHITECTURE.md`): with nothing set, Guildhall runs on
//! its embedded defaults (a SQLite file and an in-memory cache under `DATA_DIR`).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};

mod providers;
pub use providers::{AppleSettings, DiscordSettings, GoogleSettings, ProviderSettings, SteamSettings};

/// A value that must never reach a log line: `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that needs it (a connect call, a key parser).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The services this binary can run. `SERVICES` picks a subset; the default is all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Sign-up, login, sessions, profiles.
    Accounts,
    /// Boards, scores, ranks, seasons.
    Leaderboard,
    /// Player and game assets in blob storage.
    Uploads,
    /// Channels over WebSocket.
    Chat,
    /// Operators' webhooks: the admin API that registers them, and the delivery of events to
    /// them (where the event workers run).
    Webhooks,
}

impl Service {
    /// Every service, in the order they are mounted.
    pub const ALL: &'static [Service] = &[Service::Accounts, Service::Leaderboard, Service::Uploads, Service::Chat, Service::Webhooks];

    /// The name used in `SERVICES` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Accounts => "accounts",
            Service::Leaderboard => "leaderboard",
            Service::Uploads => "uploads",
            Service::Chat => "chat",
            Service::Webhooks => "webhooks",
        }
    }
}

impl FromStr for Service {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::ALL.iter().copied().find(|service| service.name() == s).with_context(|| {
            let known: Vec<_> = Service::ALL.iter().map(|s| s.name()).collect();
            format!("unknown service {s:?} in SERVICES; known: {}", known.join(", "))
        })
    }
}

/// Where the relational data lives.
#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    /// `postgres://` (Aurora PostgreSQL in production).
    Postgres {
        /// Connection URL: host, database, user (and maybe its password), TLS options.
        url: Secret<String>,
        /// Upper bound of the pool (of each pool, with `service_roles`).
        max_connections: u32,
        /// How connections prove who they are.
        auth: DatabaseAuth,
        /// `DATABASE_SERVICE_ROLES`: each part of the process connects as its own role
        /// (`crate::db::Role`) instead of as the URL's user, which then only migrates.
        service_roles: bool,
    },
    /// A SQLite file (embedded default: `DATA_DIR/guildhall.db`).
    Sqlite {
        /// Path of the database file.
        path: PathBuf,
    },
}

/// The reader that lag-tolerant reads go to (`crate::replica`).
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// `DATABASE_READ_URL`: host, database and options of the reader; the user, the pool's size,
    /// its timeouts and how it authenticates are the writer's (`DATABASE_URL`'s).
    pub url: Secret<String>,
    /// `DATABASE_READ_MAX_LAG_MS` (default 5000): while the reader is measured further behind the
    /// writer than this, its reads go to the writer.
    pub max_lag: Duration,
}

impl DatabaseConfig {
    /// The same database settings with the reader's URL: its pools log in as the writer's do.
    pub fn for_reader(&self, reader: &ReaderConfig) -> DatabaseConfig {
        match self {
            DatabaseConfig::Postgres { max_connections, auth, service_roles, .. } => DatabaseConfig::Postgres {
                url: reader.url.clone(),
                max_connections: *max_connections,
                auth: auth.clone(),
                service_roles: *service_roles,
            },
            DatabaseConfig::Sqlite { path } => DatabaseConfig::Sqlite { path: path.clone() },
        }
    }
}

/// How PostgreSQL connections authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseAuth {
    /// With the password in `DATABASE_URL`, or none (trust, as in the tests).
    Url,
    /// `DATABASE_PASSWORD`, in place of the URL's: the migrate task's master password, which ECS
    /// injects from the secret RDS manages (a JSON document, so no URL can embed it).
    Password(Secret<String>),
    /// `DATABASE_IAM_AUTH=true`: each connection logs in with an IAM authentication token that
    /// the AWS credentials (the ECS task role) sign for `region`; no password exists.
    Iam {
        /// The database's region (`AWS_REGION`), part of what the token signs.
        region: String,
    },
}

impl DatabaseConfig {
    /// True for the embedded default, which separate processes cannot share.
    pub fn is_embedded(&self) -> bool {
        matches!(self, DatabaseConfig::Sqlite { .. })
    }
}

/// Where the cache (sessions, rate limits, later leaderboards and fan-out) lives.
#[derive(Debug, Clone)]
pub enum CacheConfig {
    /// `redis://` or `rediss://` (ElastiCache in production).
    Redis {
        /// Connection URL, possibly with a password.
        url: Secret<String>,
        /// Prepended to every key, so that environments can share one Redis.
        key_prefix: String,
    },
    /// In process memory (embedded default).
    Memory,
}

/// Where uploaded files live.
#[derive(Debug, Clone)]
pub enum BlobConfig {
    /// `s3://bucket/optional/prefix`: S3, with presigned URLs.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Prepended to every object key (empty, or ending in `/`).
        prefix: String,
    },
    /// `file://path` (embedded default: `DATA_DIR/blobs`), served by Guildhall with signed URLs.
    Local {
        /// Folder of the files.
        dir: PathBuf,
    },
}

/// How events travel between services.
#[derive(Debug, Clone)]
pub enum QueueConfig {
    /// SQS: one queue per consuming service. `url_template` is a queue URL containing
    /// `{consumer}`, e.g. `https://sqs.eu-west-1.amazonaws.com/123456789012/guildhall-{consumer}`.
    Sqs {
        /// `QUEUE_URL`.
        url_template: String,
        /// `QUEUE_WAIT_SECS`: long-poll wait of a receive (0-20).
        wait: Duration,
        /// `QUEUE_VISIBILITY_SECS`: how long a received message stays hidden; a handler that
        /// runs longer has it extended every half of this.
        visibility: Duration,
    },
    /// In process, from the outbox straight to the consumers (embedded default; monolith only).
    InProcess,
}

/// Where the AWS SDK sends its calls and as which region; credentials come from the SDK's
/// default chain (environment, ECS task role, ...).
#[derive(Debug, Clone, Default)]
pub struct AwsConfig {
    /// `AWS_ENDPOINT_URL`: an emulator (moto, LocalStack) instead of AWS.
    pub endpoint_url: Option<String>,
    /// `AWS_REGION`.
    pub region: Option<String>,
    /// `BLOB_PUBLIC_ENDPOINT_URL`: the S3 endpoint as players reach it, when it differs from
    /// `AWS_ENDPOINT_URL` (compose: `http://localhost:5000` for moto, which containers reach
    /// as `http://moto:5000`). Presigned URLs are signed for it.
    pub public_endpoint_url: Option<String>,
    /// `AWS_MAX_ATTEMPTS`: tries per AWS call, the first included (1 to 10; unset: the SDK's
    /// standard retry mode, 3). The SDK reads the same variable from the process; read here it is
    /// checked, and a configuration built from a map (the tests') carries it too.
    pub max_attempts: Option<u32>,
}

/// Limits on uploads.
#[derive(Debug, Clone)]
pub struct UploadLimits {
    /// `UPLOAD_QUOTA_COUNT`: assets a player may hold (pending ones count).
    pub quota_count: u32,
    /// `UPLOAD_QUOTA_BYTES`: total declared bytes a player may hold.
    pub quota_bytes: u64,
    /// `UPLOAD_URL_TTL_SECS`: how long an upload URL is valid.
    pub upload_url_ttl: Duration,
    /// `DOWNLOAD_URL_TTL_SECS`: how long a signed download URL is valid.
    pub download_url_ttl: Duration,
}

/// How events are delivered to operators' webhooks.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `WEBHOOK_ALLOW_LOCAL_TARGETS`: accept `http://` URLs and receivers on loopback and private
    /// addresses. For tests and local development only: in production it would let whoever holds
    /// the admin key make Guildhall call into its own network.
    pub allow_local_targets: bool,
    /// `WEBHOOK_TIMEOUT_SECS`: how long one delivery may take, connecting included (1-60).
    pub timeout: Duration,
    /// `WEBHOOK_MAX_ATTEMPTS`: attempts before a delivery is parked as failed (1-30).
    pub max_attempts: u32,
    /// `WEBHOOK_RETRY_FIRST_SECS`: the wait after the first failed attempt, doubling after each
    /// further one up to an hour (1-3600).
    pub retry_first: Duration,
    /// `WEBHOOK_CONCURRENCY`: deliveries in flight at once per process (1-256).
    pub concurrency: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_local_targets: false,
            timeout: Duration::from_secs(10),
            max_attempts: 12,
            retry_first: Duration::from_secs(10),
            concurrency: 16,
        }
    }
}

/// How access and refresh tokens are made.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// PKCS#8 PEM of the Ed25519 key that signs (`TOKEN_SIGNING_KEY`). Without it, and without
    /// verify keys, a key is generated once and kept under `DATA_DIR`.
    pub signing_key: Option<Secret<String>>,
    /// SPKI PEM blocks of every public key accepted (`TOKEN_VERIFY_KEYS`): the previous key
    /// during a rotation, the next one before it signs. Beside a signing key, they must include
    /// its public half.
    pub verify_keys: Option<String>,
    /// The older single-key spelling (`TOKEN_VERIFY_KEY`), still read; added to `verify_keys`.
    pub verify_key: Option<String>,
    /// `iss` claim written and required.
    pub issuer: String,
    /// Lifetime of an access token.
    pub access_ttl: Duration,
    /// Lifetime of a refresh token (and so of an idle session).
    pub refresh_ttl: Duration,
}

/// Limits on the authentication endpoints, counted in the cache so that every instance shares them.
#[derive(Debug, Clone)]
pub struct AuthRateLimits {
    /// Register, login and guest attempts per client IP per minute.
    pub per_ip_per_minute: u32,
    /// Failed logins to one account from one address before each further attempt from that
    /// address waits (1 s, doubling with each failure, up to 15 minutes).
    pub login_failures_per_account_and_ip: u32,
    /// Failed logins to one account from all addresses in 15 minutes before only the addresses
    /// that signed in to it before may try, until those 15 minutes end.
    pub login_failures_per_account_per_15_minutes: u32,
    /// `email_taken` answers (register, guest upgrade) per client IP per hour: each tells that an
    /// email has an account, so they are few.
    pub email_taken_per_ip_per_hour: u32,
    /// Refresh attempts per client IP per minute.
    pub refresh_per_ip_per_minute: u32,
}

/// Password reset by email (`PASSWORD_RESET_*`).
#[derive(Debug, Clone)]
pub struct PasswordResetConfig {
    /// `PASSWORD_RESET_URL`: the link mailed, with `{token}` where the token goes
    /// (`https://game.example/reset?token={token}`). Without it, the mail gives the token as a
    /// code to paste into the game.
    pub url_template: Option<String>,
    /// `PASSWORD_RESET_TTL_SECS`: how long a mailed token works (default 30 minutes).
    pub token_ttl: Duration,
    /// `RATE_LIMIT_PASSWORD_RESET_PER_IP_PER_HOUR`: forgot-password requests per client IP.
    pub per_ip_per_hour: u32,
    /// `RATE_LIMIT_PASSWORD_RESET_PER_EMAIL_PER_HOUR`: reset mails per email address; requests
    /// past it are answered as usual and mail nothing.
    pub per_email_per_hour: u32,
}

impl PasswordResetConfig {
    fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let url_template = get("PASSWORD_RESET_URL");
        if let Some(url) = &url_template
            && (!url.contains("://") || url.matches("{token}").count() != 1 || url.len() > 900 || url.chars().any(char::is_whitespace))
        {
            // A game's own scheme (`mygame://reset?token={token}`) is fine: the link opens the game.
            bail!("PASSWORD_RESET_URL must be a URL holding {{token}} once, e.g. https://game.example/reset?token={{token}}");
        }
        let number = |key: &str, default: u64, range: std::ops::RangeInclusive<u64>| -> anyhow::Result<u64> {
            let value = match get(key) {
                Some(v) => v.parse().with_context(|| format!("{key} must be a whole number, got {v:?}"))?,
                None => default,
            };
            if !range.contains(&value) {
                bail!("{key} must be between {} and {}, got {value}", range.start(), range.end());
            }
            Ok(value)
        };
        Ok(PasswordResetConfig {
            url_template,
            token_ttl: Duration::from_secs(number("PASSWORD_RESET_TTL_SECS", 1800, 60..=86_400)?),
            per_ip_per_hour: u32::try_from(number("RATE_LIMIT_PASSWORD_RESET_PER_IP_PER_HOUR", 20, 1..=100_000)?).unwrap_or(20),
            per_email_per_hour: u32::try_from(number("RATE_LIMIT_PASSWORD_RESET_PER_EMAIL_PER_HOUR", 3, 1..=1000)?).unwrap_or(3),
        })
    }
}

/// The limits of friends and blocks (accounts), and the bound of a friends leaderboard query.
#[derive(Debug, Clone, Copy)]
pub struct SocialLimits {
    /// `SOCIAL_MAX_FRIENDS`: friends one player may have (and so the most accounts a
    /// `records?friends=true` query reads).
    pub max_friends: u32,
    /// `SOCIAL_MAX_PENDING_REQUESTS`: requests one player may have waiting for an answer, sent and
    /// received alike (received: so that nobody can flood a player with requests).
    pub max_pending_requests: u32,
    /// `SOCIAL_FRIEND_REQUESTS_PER_HOUR`: new friend requests one player may send per hour.
    pub friend_requests_per_hour: u32,
    /// `SOCIAL_MAX_BLOCKS`: players one player may block.
    pub max_blocks: u32,
}

impl SocialLimits {
    /// The highest `SOCIAL_MAX_FRIENDS` accepted: a friends leaderboard reads one rank per friend.
    pub const FRIENDS_CEILING: u32 = 1000;
}

impl Default for SocialLimits {
    fn default() -> Self {
        SocialLimits { max_friends: 250, max_pending_requests: 100, friend_requests_per_hour: 30, max_blocks: 1000 }
    }
}

/// Output format of the log lines on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (production, awslogs).
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

/// Everything the binary reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR`, default `0.0.0.0:8080`.
    pub listen_addr: SocketAddr,
    /// `METRICS_ADDR`: where `/metrics` (Prometheus text) is served, apart from the API so that
    /// the load balancer never routes to it; none (the default) serves no metrics listener.
    pub metrics_addr: Option<SocketAddr>,
    /// `DATA_DIR`, default `./data`: the SQLite file, the generated signing key, later blobs.
    pub data_dir: PathBuf,
    /// `DATABASE_URL`.
    pub database: DatabaseConfig,
    /// `DATABASE_READ_URL` and `DATABASE_READ_MAX_LAG_MS`: a reader (Aurora's reader endpoint)
    /// for reads that tolerate a little lag (`crate::replica`); none sends every read to the writer.
    pub database_read: Option<ReaderConfig>,
    /// `REDIS_URL` and `REDIS_KEY_PREFIX`.
    pub cache: CacheConfig,
    /// `SERVICES`, comma-separated; default all.
    pub services: Vec<Service>,
    /// Token keys and lifetimes.
    pub tokens: TokenConfig,
    /// Limits on login and sign-up.
    pub auth_rate_limits: AuthRateLimits,
    /// `REFRESH_REUSE_GRACE_SECS`: for this long after a refresh token was exchanged, presenting
    /// it again (a retry after a lost response) returns the same new pair instead of ending the
    /// session as reuse. 0 turns the grace off.
    pub refresh_reuse_grace: Duration,
    /// `TRUST_FORWARDED_FOR`: take the client IP from the last `X-Forwarded-For` hop, as set by
    /// the ALB. Only safe behind a proxy that overwrites or appends that header.
    pub trust_forwarded_for: bool,
    /// `REQUEST_TIMEOUT_SECS`: an HTTP request that takes longer gets 408.
    pub request_timeout: Duration,
    /// `HTTP_HEADER_READ_TIMEOUT_SECS`: a request's line and headers must arrive within this
    /// (from the connection's opening, or from the first byte of a later request on it).
    pub header_read_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT_SECS`: how long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: connections served at once (WebSockets included).
    pub max_connections: usize,
    /// `SHUTDOWN_DRAIN_SECS`: on SIGTERM, how long readiness fails before the listener closes,
    /// so that the load balancer stops routing here first.
    pub shutdown_drain: Duration,
    /// `SHUTDOWN_GRACE_SECS`: how long in-flight work may take after the listener closed.
    pub shutdown_grace: Duration,
    /// `LOG_FORMAT`: `json` (default) or `pretty`.
    pub log_format: LogFormat,
    /// `RUN_MIGRATIONS`: apply migrations at start-up (default true; sqlx takes a lock).
    pub run_migrations: bool,
    /// `CHAT_SEND_BURST` and `CHAT_SEND_PER_SECOND`: each player's chat send limit (a token
    /// bucket shared by every instance).
    pub chat_send_burst: u32,
    /// See `chat_send_burst`.
    pub chat_send_per_second: f64,
    /// `CHAT_MAX_SOCKETS_PER_ACCOUNT`: authenticated chat sockets one account may hold open on an
    /// instance (default 5: a few devices or tabs).
    pub chat_max_sockets_per_account: u32,
    /// `CHAT_MAX_SOCKETS_PER_IP`: chat sockets one client IP may hold open on an instance,
    /// authenticated or not (default 100: players behind one NAT share an address).
    pub chat_max_sockets_per_ip: u32,
    /// `LEADERBOARD_WRITER_LANES` (1 to 16, default 1): score submissions committed at once
    /// (`leaderboard::writer`). One lane writes everything queued during a commit in the next one
    /// (up to 64); more lanes only help once batches reach that size.
    pub leaderboard_writer_lanes: usize,
    /// `BLOB_URL`.
    pub blobs: BlobConfig,
    /// `QUEUE_URL` and its tuning.
    pub queue: QueueConfig,
    /// `AWS_ENDPOINT_URL`, `AWS_REGION`.
    pub aws: AwsConfig,
    /// `PUBLIC_URL`: the base URL players reach this deployment at, for the URLs Guildhall signs
    /// itself (local blobs). Without it, the `Host` of the request is used.
    pub public_url: Option<String>,
    /// `CDN_BASE_URL`: download URLs of ready assets are this plus the object key (CloudFront).
    pub cdn_base_url: Option<String>,
    /// `BLOB_SIGNING_KEY`: the key of Guildhall's own signed blob URLs; generated once under
    /// `DATA_DIR` when unset.
    pub blob_signing_key: Option<Secret<String>>,
    /// Upload quotas and URL lifetimes.
    pub upload_limits: UploadLimits,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` and
    /// `OTEL_TRACES_SAMPLER_ARG`: where traces go and which; none when no endpoint is set.
    pub traces: Option<crate::telemetry::TraceExport>,
    /// `RUN_EVENT_WORKERS`: `serve` also runs the outbox relay and the queue consumers of its
    /// services (default true; `guildhall worker` runs only them).
    pub run_event_workers: bool,
    /// `GUILDHALL_ADMIN_KEY`: the server key of game servers and operators for `/v1/admin/...`
    /// and authoritative submissions. Without it those are refused.
    pub admin_key: Option<Secret<String>>,
    /// `CORS_ALLOWED_ORIGINS`: the browser origins (`scheme://host[:port]`, compared exactly)
    /// allowed to call the API from another origin, e.g. a WebGL build of a game. Empty: no CORS
    /// headers at all, so browsers refuse cross-origin calls.
    pub cors_allowed_origins: Vec<String>,
    /// `WEBHOOK_*`: delivery of events to operators' webhooks.
    pub webhooks: WebhookSettings,
    /// `SMTP_URL`, `MAIL_FROM` and the rest of `crate::mail::MailConfig`: how mail is sent.
    pub mail: crate::mail::MailConfig,
    /// `PASSWORD_RESET_*`: the reset mails' link, their tokens' lifetime and their limits.
    pub password_reset: PasswordResetConfig,
    /// `REGION_ROLE` and `REGION_CHECK_INTERVAL_MS`: whether this region writes
    /// (`crate::region`).
    pub region: crate::region::RegionSettings,
    /// `SOCIAL_*`: limits of friends and blocks.
    pub social: SocialLimits,
    /// `APPLE_*`, `GOOGLE_*`, `STEAM_*`, `DISCORD_*`, `PROVIDER_*`: sign-in with identity providers.
    pub providers: ProviderSettings,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads configuration from a map, as tests do instead of touching the process environment.
    pub fn from_map(map: &HashMap<String, String>) -> anyhow::Result<Self> {
        Self::from_lookup(|key| map.get(key).cloned())
    }

    /// Reads configuration through `lookup`, which answers one variable at a time.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |key: &str| lookup(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let parse = |key: &str, default: u64| -> anyhow::Result<u64> {
            match get(key) {
                Some(v) => v.parse().with_context(|| format!("{key} must be a whole number, got {v:?}")),
                None => Ok(default),
            }
        };
        let flag = |key: &str, default: bool| -> anyhow::Result<bool> {
            match get(key).as_deref() {
                None => Ok(default),
                Some("1" | "true" | "yes" | "on") => Ok(true),
                Some("0" | "false" | "no" | "off") => Ok(false),
                Some(other) => bail!("{key} must be true or false, got {other:?}"),
            }
        };

        let data_dir = PathBuf::from(get("DATA_DIR").unwrap_or_else(|| "data".into()));
        let listen_addr: SocketAddr = get("LISTEN_ADDR")
            .unwrap_or_else(|| "0.0.0.0:8080".into())
            .parse()
            .context("LISTEN_ADDR must be an address such as 0.0.0.0:8080")?;
        let metrics_addr: Option<SocketAddr> = get("METRICS_ADDR")
            .map(|addr| addr.parse().with_context(|| format!("METRICS_ADDR must be an address such as 0.0.0.0:9464, got {addr:?}")))
            .transpose()?;
        if let Some(metrics) = metrics_addr
            && metrics.port() != 0
            && metrics.port() == listen_addr.port()
        {
            bail!("METRICS_ADDR and LISTEN_ADDR must use different ports (both {}): metrics are served apart from the API", metrics.port());
        }

        let database = match get("DATABASE_URL") {
            None => DatabaseConfig::Sqlite { path: data_dir.join("guildhall.db") },
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => DatabaseConfig::Postgres {
                auth: database_auth(
                    &url,
                    get("DATABASE_PASSWORD"),
                    flag("DATABASE_IAM_AUTH", false)?,
                    get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
                )?,
                url: Secret::new(url),
                max_connections: u32::try_from(parse("DATABASE_MAX_CONNECTIONS", 16)?).context("DATABASE_MAX_CONNECTIONS is too large")?,
                service_roles: flag("DATABASE_SERVICE_ROLES", false)?,
            },
            Some(url) if url.starts_with("sqlite:") => {
                let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
                let path = path.split('?').next().unwrap_or_default();
                if path.is_empty() {
                    bail!("DATABASE_URL sqlite: needs a file path, e.g. sqlite://data/guildhall.db");
                }
                DatabaseConfig::Sqlite { path: PathBuf::from(path) }
            }
            Some(_) => bail!("DATABASE_URL must start with postgres:// or sqlite:"),
        };

        let database_read = match get("DATABASE_READ_URL") {
            None => None,
            // A SQLite file has no replica; a reader URL beside it is a configuration mistake.
            Some(_) if database.is_embedded() => bail!("DATABASE_READ_URL needs DATABASE_URL=postgres://: embedded SQLite has no reader"),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Some(ReaderConfig {
                url: Secret::new(url),
                // At least 100 ms: the lag is measured by a heartbeat a second apart (`crate::replica`).
                max_lag: Duration::from_millis(parse("DATABASE_READ_MAX_LAG_MS", 5000)?.clamp(100, 600_000)),
            }),
            Some(_) => bail!("DATABASE_READ_URL must start with postgres://"),
        };

        let cache = match get("REDIS_URL") {
            None => CacheConfig::Memory,
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                CacheConfig::Redis { url: Secret::new(url), key_prefix: get("REDIS_KEY_PREFIX").unwrap_or_else(|| "gh:".into()) }
            }
            Some(_) => bail!("REDIS_URL must start with redis:// or rediss://"),
        };

        let services = match get("SERVICES") {
            None => Service::ALL.to_vec(),
            Some(list) => {
                let mut services = Vec::new();
                for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let service: Service = name.parse()?;
                    if !services.contains(&service) {
                        services.push(service);
                    }
                }
                if services.is_empty() {
                    bail!("SERVICES names no service");
                }
                services
            }
        };

        let tokens = TokenConfig {
            signing_key: get("TOKEN_SIGNING_KEY").map(Secret::new),
            verify_keys: get("TOKEN_VERIFY_KEYS"),
            verify_key: get("TOKEN_VERIFY_KEY"),
            issuer: get("TOKEN_ISSUER").unwrap_or_else(|| "guildhall".into()),
            access_ttl: Duration::from_secs(parse("ACCESS_TOKEN_TTL_SECS", 15 * 60)?),
            refresh_ttl: Duration::from_secs(parse("REFRESH_TOKEN_TTL_SECS", 30 * 24 * 3600)?),
        };
        if tokens.access_ttl.is_zero() || tokens.refresh_ttl < tokens.access_ttl {
            bail!("ACCESS_TOKEN_TTL_SECS must be positive and at most REFRESH_TOKEN_TTL_SECS");
        }

        let limit = |key: &str, default: u64| -> anyhow::Result<u32> {
            let value = parse(key, default)?;
            u32::try_from(value).ok().filter(|v| *v > 0).with_context(|| format!("{key} must be between 1 and {}", u32::MAX))
        };
        if get("RATE_LIMIT_LOGIN_PER_ACCOUNT_PER_15_MINUTES").is_some() {
            // Its meaning changed (it let anyone lock any account out): refuse it rather than
            // silently ignore a limit an operator believes is in force.
            bail!(
                "RATE_LIMIT_LOGIN_PER_ACCOUNT_PER_15_MINUTES is gone: set RATE_LIMIT_LOGIN_FAILURES_PER_ACCOUNT_AND_IP and RATE_LIMIT_LOGIN_FAILURES_PER_ACCOUNT_PER_15_MINUTES instead (README, Configuration)"
            );
        }
        let auth_rate_limits = AuthRateLimits {
            per_ip_per_minute: limit("RATE_LIMIT_AUTH_PER_IP_PER_MINUTE", 30)?,
            login_failures_per_account_and_ip: limit("RATE_LIMIT_LOGIN_FAILURES_PER_ACCOUNT_AND_IP", 5)?,
            login_failures_per_account_per_15_minutes: limit("RATE_LIMIT_LOGIN_FAILURES_PER_ACCOUNT_PER_15_MINUTES", 100)?,
            email_taken_per_ip_per_hour: limit("RATE_LIMIT_EMAIL_TAKEN_PER_IP_PER_HOUR", 5)?,
            refresh_per_ip_per_minute: limit("RATE_LIMIT_REFRESH_PER_IP_PER_MINUTE", 120)?,
        };
        let social_defaults = SocialLimits::default();
        let social = SocialLimits {
            max_friends: limit("SOCIAL_MAX_FRIENDS", social_defaults.max_friends.into())?,
            max_pending_requests: limit("SOCIAL_MAX_PENDING_REQUESTS", social_defaults.max_pending_requests.into())?,
            friend_requests_per_hour: limit("SOCIAL_FRIEND_REQUESTS_PER_HOUR", social_defaults.friend_requests_per_hour.into())?,
            max_blocks: limit("SOCIAL_MAX_BLOCKS", social_defaults.max_blocks.into())?,
        };
        if social.max_friends > SocialLimits::FRIENDS_CEILING {
            bail!("SOCIAL_MAX_FRIENDS must be at most {}: a friends leaderboard reads one rank per friend", SocialLimits::FRIENDS_CEILING);
        }
        let leaderboard_writer_lanes = limit("LEADERBOARD_WRITER_LANES", 1)? as usize;
        if leaderboard_writer_lanes > 16 {
            bail!("LEADERBOARD_WRITER_LANES must be between 1 and 16: each lane holds a database connection while it commits");
        }
        let refresh_reuse_grace = parse("REFRESH_REUSE_GRACE_SECS", 20)?;
        if refresh_reuse_grace > 60 {
            bail!("REFRESH_REUSE_GRACE_SECS must be between 0 and 60: a longer grace gives a stolen refresh token longer to go unnoticed");
        }

        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => bail!("LOG_FORMAT must be json or pretty, got {other:?}"),
        };

        let admin_key = get("GUILDHALL_ADMIN_KEY").map(Secret::new);
        if admin_key.as_ref().is_some_and(|key| key.expose().len() < 24) {
            bail!("GUILDHALL_ADMIN_KEY must be at least 24 characters (e.g. `openssl rand -hex 32`)");
        }

        let blobs = match get("BLOB_URL") {
            None => BlobConfig::Local { dir: data_dir.join("blobs") },
            Some(url) if url.starts_with("s3://") => {
                let rest = &url["s3://".len()..];
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.len() < 3 {
                    bail!("BLOB_URL must name a bucket, e.g. s3://my-game-assets");
                }
                let prefix = prefix.trim_matches('/');
                let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
                BlobConfig::S3 { bucket: bucket.to_owned(), prefix }
            }
            Some(url) if url.starts_with("file://") => {
                let path = &url["file://".len()..];
                if path.is_empty() {
                    bail!("BLOB_URL file:// needs a folder, e.g. file://data/blobs");
                }
                BlobConfig::Local { dir: PathBuf::from(path) }
            }
            Some(_) => bail!("BLOB_URL must start with s3:// or file://"),
        };

        let queue = match get("QUEUE_URL") {
            None => QueueConfig::InProcess,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                if !url.contains("{consumer}") {
                    bail!(
                        "QUEUE_URL must contain {{consumer}}, e.g. https://sqs.eu-west-1.amazonaws.com/123456789012/guildhall-{{consumer}}"
                    );
                }
                let wait = parse("QUEUE_WAIT_SECS", 20)?;
                if wait > 20 {
                    bail!("QUEUE_WAIT_SECS must be between 0 and 20 (SQS's long-poll limit)");
                }
                let visibility = parse("QUEUE_VISIBILITY_SECS", 60)?;
                if !(2..=43_200).contains(&visibility) {
                    bail!("QUEUE_VISIBILITY_SECS must be between 2 and 43200");
                }
                QueueConfig::Sqs { url_template: url, wait: Duration::from_secs(wait), visibility: Duration::from_secs(visibility) }
            }
            Some(_) => bail!("QUEUE_URL must be an SQS queue URL (https://...) containing {{consumer}}"),
        };

        let base_url = |key: &str| -> anyhow::Result<Option<String>> {
            match get(key) {
                None => Ok(None),
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => Ok(Some(url.trim_end_matches('/').to_owned())),
                Some(_) => bail!("{key} must start with http:// or https://"),
            }
        };

        let upload_limits = UploadLimits {
            quota_count: limit("UPLOAD_QUOTA_COUNT", 100)?,
            quota_bytes: parse("UPLOAD_QUOTA_BYTES", 500 * 1024 * 1024)?.max(1),
            // At most 12 hours: the bucket's lifecycle removes uploads a day after they land, and
            // a URL must expire before that, or it could create its object again.
            upload_url_ttl: Duration::from_secs(parse("UPLOAD_URL_TTL_SECS", 900)?.clamp(60, 12 * 3600)),
            download_url_ttl: Duration::from_secs(parse("DOWNLOAD_URL_TTL_SECS", 3600)?.clamp(60, 7 * 24 * 3600)),
        };

        // Checked even when traces are off, so a typo shows before the day they are turned on.
        let sampling = trace_sampling(get("OTEL_TRACES_SAMPLER").as_deref(), get("OTEL_TRACES_SAMPLER_ARG").as_deref())?;
        let traces = base_url("OTEL_EXPORTER_OTLP_ENDPOINT")?.map(|endpoint| crate::telemetry::TraceExport {
            endpoint,
            sampling,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| {
                if services.len() == Service::ALL.len() {
                    "guildhall".to_owned()
                } else {
                    format!("guildhall-{}", services.iter().map(|s| s.name()).collect::<Vec<_>>().join("-"))
                }
            }),
        });

        let cors_allowed_origins = match get("CORS_ALLOWED_ORIGINS") {
            None => Vec::new(),
            Some(list) => list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(cors_origin).collect::<anyhow::Result<_>>()?,
        };

        let bounded = |key: &str, default: u64, range: std::ops::RangeInclusive<u64>| -> anyhow::Result<u64> {
            let value = parse(key, default)?;
            if !range.contains(&value) {
                bail!("{key} must be between {} and {}, got {value}", range.start(), range.end());
            }
            Ok(value)
        };
        let webhooks = WebhookSettings {
            allow_local_targets: flag("WEBHOOK_ALLOW_LOCAL_TARGETS", false)?,
            timeout: Duration::from_secs(bounded("WEBHOOK_TIMEOUT_SECS", 10, 1..=60)?),
            max_attempts: u32::try_from(bounded("WEBHOOK_MAX_ATTEMPTS", 12, 1..=30)?).unwrap_or(12),
            retry_first: Duration::from_secs(bounded("WEBHOOK_RETRY_FIRST_SECS", 10, 1..=3600)?),
            concurrency: usize::try_from(bounded("WEBHOOK_CONCURRENCY", 16, 1..=256)?).unwrap_or(16),
        };

        let data_dir_for_mail = data_dir.clone();
        let providers = ProviderSettings::read(&get, &flag)?;

        let config = Config {
            listen_addr,
            metrics_addr,
            data_dir,
            database,
            database_read,
            cache,
            services,
            tokens,
            auth_rate_limits,
            refresh_reuse_grace: Duration::from_secs(refresh_reuse_grace),
            trust_forwarded_for: flag("TRUST_FORWARDED_FOR", false)?,
            request_timeout: Duration::from_secs(parse("REQUEST_TIMEOUT_SECS", 30)?.max(1)),
            header_read_timeout: Duration::from_secs(parse("HTTP_HEADER_READ_TIMEOUT_SECS", 10)?.clamp(1, 300)),
            // Above the ALB's idle timeout (350 s in ecs/cloudformation), so that the ALB closes an
            // idle connection first, never sending a request on one this side is closing.
            idle_timeout: Duration::from_secs(parse("HTTP_IDLE_TIMEOUT_SECS", 400)?.clamp(1, 86_400)),
            max_connections: usize::try_from(limit("HTTP_MAX_CONNECTIONS", 10_000)?).context("HTTP_MAX_CONNECTIONS is too large")?,
            shutdown_drain: Duration::from_secs(parse("SHUTDOWN_DRAIN_SECS", 0)?),
            shutdown_grace: Duration::from_secs(parse("SHUTDOWN_GRACE_SECS", 20)?),
            log_format,
            run_migrations: flag("RUN_MIGRATIONS", true)?,
            admin_key,
            blobs,
            queue,
            aws: AwsConfig {
                endpoint_url: base_url("AWS_ENDPOINT_URL")?,
                region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
                public_endpoint_url: base_url("BLOB_PUBLIC_ENDPOINT_URL")?,
                max_attempts: get("AWS_MAX_ATTEMPTS")
                    .map(|value| value.parse::<u32>().ok().filter(|n| (1..=10).contains(n)).context("AWS_MAX_ATTEMPTS must be 1 to 10"))
                    .transpose()?,
            },
            public_url: base_url("PUBLIC_URL")?,
            cdn_base_url: base_url("CDN_BASE_URL")?,
            blob_signing_key: get("BLOB_SIGNING_KEY").map(Secret::new),
            upload_limits,
            run_event_workers: flag("RUN_EVENT_WORKERS", true)?,
            traces,
            chat_send_burst: limit("CHAT_SEND_BURST", 10)?,
            chat_send_per_second: f64::from(limit("CHAT_SEND_PER_SECOND", 2)?),
            chat_max_sockets_per_account: limit("CHAT_MAX_SOCKETS_PER_ACCOUNT", 5)?,
            chat_max_sockets_per_ip: limit("CHAT_MAX_SOCKETS_PER_IP", 100)?,
            leaderboard_writer_lanes,
            cors_allowed_origins,
            webhooks,
            providers,
            mail: crate::mail::MailConfig::from_lookup(&get, &data_dir_for_mail)?,
            password_reset: PasswordResetConfig::from_lookup(&get)?,
            region: crate::region::RegionSettings::from_lookup(get)?,
            social,
        };
        config.check_deployment()?;
        Ok(config)
    }

    /// True when every service of the product runs in this process.
    pub fn is_monolith(&self) -> bool {
        Service::ALL.iter().all(|s| self.services.contains(s))
    }

    /// Refuses combinations that cannot work: separate processes cannot share an in-memory cache
    /// or a local SQLite file, so a subset of services needs the real backends.
    fn check_deployment(&self) -> anyhow::Result<()> {
        if !self.is_monolith() {
            let names: Vec<_> = self.services.iter().map(|s| s.name()).collect();
            if self.database.is_embedded() {
                bail!(
                    "SERVICES={} runs part of Guildhall, so the other parts run elsewhere and cannot share a local SQLite file: set DATABASE_URL=postgres://...",
                    names.join(",")
                );
            }
            if matches!(self.cache, CacheConfig::Memory) {
                bail!(
                    "SERVICES={} runs part of Guildhall, so the other parts run elsewhere and cannot share an in-memory cache: set REDIS_URL=redis://...",
                    names.join(",")
                );
            }
            if matches!(self.blobs, BlobConfig::Local { .. }) && self.services.contains(&Service::Uploads) {
                bail!("SERVICES={} runs uploads apart from the rest, so the files must be shared: set BLOB_URL=s3://...", names.join(","));
            }
        }
        Ok(())
    }
}

/// How a PostgreSQL `url` authenticates: `DATABASE_PASSWORD` (`password`) or IAM tokens (`iam`),
/// each refused beside a password in the URL, so that no setting is silently ignored. IAM needs
/// the region its tokens are signed for, and `sslmode=verify-full`: a token is a password valid
/// for 15 minutes, which must reach no one but the database.
fn database_auth(url: &str, password: Option<String>, iam: bool, region: Option<String>) -> anyhow::Result<DatabaseAuth> {
    let url_has_password = url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or_default())
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    match (password, iam) {
        (Some(_), true) => bail!("DATABASE_PASSWORD and DATABASE_IAM_AUTH=true exclude each other: IAM authentication uses no password"),
        (Some(_), false) if url_has_password => bail!("DATABASE_URL has a password and DATABASE_PASSWORD is set: give it once"),
        (Some(password), false) => Ok(DatabaseAuth::Password(Secret::new(password))),
        (None, true) => {
            if url_has_password {
                bail!("DATABASE_IAM_AUTH=true: DATABASE_URL must name the user without a password (postgres://guildhall_chat@host/db)");
            }
            if !url.contains("sslmode=verify-full") {
                bail!(
                    "DATABASE_IAM_AUTH=true needs sslmode=verify-full (and sslrootcert, the RDS CA bundle) in DATABASE_URL: a token is a password for 15 minutes"
                );
            }
            let region =
                region.context("DATABASE_IAM_AUTH=true needs AWS_REGION, the database's region, which its tokens are signed for")?;
            Ok(DatabaseAuth::Iam { region })
        }
        (None, false) => Ok(DatabaseAuth::Url),
    }
}

/// One origin of `CORS_ALLOWED_ORIGINS`, checked to be what a browser sends in `Origin` (RFC 6454:
/// scheme, host and optional port, lower case, nothing after), since the comparison is exact and
/// a trailing slash or a path would never match.
fn cors_origin(origin: &str) -> anyhow::Result<String> {
    let problem = |why: &str| anyhow::anyhow!("CORS_ALLOWED_ORIGINS: {origin:?} {why}; give origins such as https://play.example.com");
    if origin == "*" || origin == "null" {
        return Err(problem("is not allowed: list exact origins"));
    }
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| problem("must start with https:// or http://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '*']) {
        return Err(problem("must be scheme://host[:port] with no path, query, user or wildcard"));
    }
    if origin.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii_graphic()) {
        return Err(problem("must be lower case ASCII, as browsers send it"));
    }
    // An IPv6 host is bracketed ("[::1]:8080"), so its port follows the closing bracket.
    let after_host = match rest.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map(|(_, after)| after).ok_or_else(|| problem("has an unclosed [ in its host"))?,
        None => rest.find(':').map_or("", |colon| &rest[colon..]),
    };
    if !after_host.is_empty() && after_host.strip_prefix(':').and_then(|port| port.parse::<u16>().ok()).is_none() {
        return Err(problem("has a port that is not a number"));
    }
    Ok(origin.to_owned())
}

/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, by the names and defaults of the
/// OpenTelemetry specification's SDK environment variables. The samplers that need a remote
/// service (`jaeger_remote`, `xray`) are not offered: X-Ray's sampling rules would need the X-Ray
/// API on every task.
fn trace_sampling(name: Option<&str>, arg: Option<&str>) -> anyhow::Result<crate::telemetry::Sampling> {
    let ratio = || -> anyhow::Result<f64> {
        match arg {
            None => Ok(1.0),
            Some(value) => value
                .parse::<f64>()
                .ok()
                .filter(|ratio| (0.0..=1.0).contains(ratio))
                .with_context(|| format!("OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1, got {value:?}")),
        }
    };
    let name = name.unwrap_or("parentbased_always_on");
    let (parent_based, ratio) = match name {
        "always_on" => (false, 1.0),
        "always_off" => (false, 0.0),
        "traceidratio" => (false, ratio()?),
        "parentbased_always_on" => (true, 1.0),
        "parentbased_always_off" => (true, 0.0),
        "parentbased_traceidratio" => (true, ratio()?),
        other => bail!(
            "OTEL_TRACES_SAMPLER must be always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio, got {other:?}"
        ),
    };
    // The specification ignores the argument of the other samplers; a ratio set beside one of
    // them is more likely a mistake than a wish.
    if arg.is_some() && !name.ends_with("traceidratio") {
        bail!("OTEL_TRACES_SAMPLER_ARG is the ratio of traceidratio and parentbased_traceidratio, not of {name}");
    }
    Ok(crate::telemetry::Sampling { parent_based, ratio })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_map(&map)
    }

    #[test]
    fn nothing_set_means_embedded_defaults() {
        let config = config(&[]).expect("defaults are valid");
        assert!(matches!(config.database, DatabaseConfig::Sqlite { ref path } if path == &PathBuf::from("data/guildhall.db")));
        assert!(matches!(config.cache, CacheConfig::Memory));
        assert_eq!(config.services, Service::ALL);
        assert_eq!(config.tokens.access_ttl, Duration::from_secs(900));
        assert_eq!(config.listen_addr.port(), 8080);
        assert_eq!(config.metrics_addr, None, "no metrics listener unless asked for");
    }

    #[test]
    fn social_limits_have_defaults_and_a_ceiling() {
        let defaults = config(&[]).expect("defaults").social;
        assert_eq!(
            (defaults.max_friends, defaults.max_pending_requests, defaults.friend_requests_per_hour, defaults.max_blocks),
            (250, 100, 30, 1000)
        );
        let set = config(&[("SOCIAL_MAX_FRIENDS", "1000"), ("SOCIAL_MAX_BLOCKS", "5")]).expect("valid").social;
        assert_eq!((set.max_friends, set.max_blocks), (1000, 5));
        let err = config(&[("SOCIAL_MAX_FRIENDS", "1001")]).expect_err("above the ceiling");
        assert!(err.to_string().contains("SOCIAL_MAX_FRIENDS"), "{err}");
        assert!(config(&[("SOCIAL_FRIEND_REQUESTS_PER_HOUR", "0")]).is_err(), "a limit of 0 is refused");
    }

    #[test]
    fn the_score_writer_takes_one_to_sixteen_lanes() {
        assert_eq!(config(&[]).expect("defaults").leaderboard_writer_lanes, 1);
        assert_eq!(config(&[("LEADERBOARD_WRITER_LANES", "16")]).expect("valid").leaderboard_writer_lanes, 16);
        for bad in ["0", "17", "two"] {
            let err = config(&[("LEADERBOARD_WRITER_LANES", bad)]).expect_err(bad);
            assert!(err.to_string().contains("LEADERBOARD_WRITER_LANES"), "{bad}: {err}");
        }
    }

    #[test]
    fn metrics_are_served_apart_from_the_api() {
        let set = config(&[("METRICS_ADDR", "0.0.0.0:9464")]).expect("valid");
        assert_eq!(set.metrics_addr, Some("0.0.0.0:9464".parse().expect("addr")));
        assert!(config(&[("METRICS_ADDR", "9464")]).is_err(), "an address, not a port");
        let err = config(&[("METRICS_ADDR", "127.0.0.1:8080")]).expect_err("the API's port");
        assert!(err.to_string().contains("different ports"), "{err}");
        assert!(config(&[("METRICS_ADDR", "127.0.0.1:0"), ("LISTEN_ADDR", "127.0.0.1:0")]).is_ok(), "two free ports");
    }

    #[test]
    fn a_reader_needs_postgres_and_takes_the_writers_login() {
        assert!(config(&[]).expect("defaults").database_read.is_none());
        let err = config(&[("DATABASE_READ_URL", "postgres://db-ro/g")]).expect_err("SQLite has no reader");
        assert!(err.to_string().contains("embedded SQLite"), "{err}");
        let writer = ("DATABASE_URL", "postgres://u@db/g");
        assert!(config(&[writer, ("DATABASE_READ_URL", "mysql://x")]).is_err());
        let set = config(&[writer, ("DATABASE_READ_URL", "postgres://u@db-ro/g"), ("DATABASE_MAX_CONNECTIONS", "7")]).expect("valid");
        let reader = set.database_read.clone().expect("a reader");
        assert_eq!(reader.max_lag, Duration::from_secs(5), "the default");
        assert_eq!(reader.url.expose(), "postgres://u@db-ro/g");
        match set.database.for_reader(&reader) {
            DatabaseConfig::Postgres { url, max_connections, .. } => {
                assert_eq!(url.expose(), "postgres://u@db-ro/g");
                assert_eq!(max_connections, 7, "sized like the writer's pool");
            }
            DatabaseConfig::Sqlite { .. } => panic!("not PostgreSQL"),
        }
        let tiny = config(&[writer, ("DATABASE_READ_URL", "postgres://u@db-ro/g"), ("DATABASE_READ_MAX_LAG_MS", "1")]).expect("valid");
        assert_eq!(tiny.database_read.expect("reader").max_lag, Duration::from_millis(100), "at least a tenth of a second");
    }

    #[test]
    fn backends_are_chosen_by_scheme() {
        let real = config(&[("DATABASE_URL", "postgres://u:p@db/g"), ("REDIS_URL", "redis://cache:6379")]).expect("valid");
        assert!(matches!(real.database, DatabaseConfig::Postgres { .. }));
        assert!(matches!(real.cache, CacheConfig::Redis { .. }));
        assert!(config(&[("DATABASE_URL", "mysql://x")]).is_err());
        assert!(config(&[("REDIS_URL", "memcached://x")]).is_err());
    }

    #[test]
    fn a_subset_of_services_needs_shared_backends() {
        let err = config(&[("SERVICES", "accounts")]).expect_err("accounts alone on SQLite");
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
        let err = config(&[("SERVICES", "leaderboard"), ("DATABASE_URL", "postgres://db/g")]).expect_err("no Redis");
        assert!(err.to_string().contains("REDIS_URL"), "{err}");
        let alone = config(&[("SERVICES", "leaderboard"), ("DATABASE_URL", "postgres://db/g"), ("REDIS_URL", "redis://r")]);
        assert_eq!(alone.expect("real backends").services, [Service::Leaderboard]);
        assert!(config(&[("SERVICES", "chat,leaderboard,uploads,webhooks,accounts")]).is_ok(), "every service is a monolith");
        let shared = [("DATABASE_URL", "postgres://db/g"), ("REDIS_URL", "redis://r")];
        let err = config(&[shared[0], shared[1], ("SERVICES", "uploads")]).expect_err("local files");
        assert!(err.to_string().contains("BLOB_URL"), "{err}");
        assert!(config(&[shared[0], shared[1], ("SERVICES", "uploads"), ("BLOB_URL", "s3://assets")]).is_ok());
        let err = config(&[("SERVICES", "accounts,nonsense")]).expect_err("unknown service");
        assert!(err.to_string().contains("unknown service"), "{err}");
    }

    #[test]
    fn blobs_and_queues_are_chosen_by_url() {
        let defaults = config(&[("DATA_DIR", "/srv/gh")]).expect("defaults");
        assert!(matches!(defaults.blobs, BlobConfig::Local { ref dir } if dir == &PathBuf::from("/srv/gh/blobs")));
        assert!(matches!(defaults.queue, QueueConfig::InProcess));
        let s3 = config(&[("BLOB_URL", "s3://game-assets/prod/")]).expect("s3");
        assert!(matches!(s3.blobs, BlobConfig::S3 { ref bucket, ref prefix } if bucket == "game-assets" && prefix == "prod/"));
        let sqs = config(&[("QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/1/gh-{consumer}")]).expect("sqs");
        assert!(
            matches!(sqs.queue, QueueConfig::Sqs { ref url_template, wait, visibility }
                if url_template == "https://sqs.eu-west-1.amazonaws.com/1/gh-{consumer}" && wait.as_secs() == 20 && visibility.as_secs() == 60),
            "{:?}",
            sqs.queue
        );
        assert!(config(&[("QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/1/gh")]).is_err(), "no {{consumer}}");
        assert!(config(&[("QUEUE_URL", "https://q/{consumer}"), ("QUEUE_WAIT_SECS", "21")]).is_err());
        assert!(config(&[("BLOB_URL", "gs://x")]).is_err());
        assert!(config(&[("BLOB_URL", "s3://")]).is_err());
        assert!(config(&[("CDN_BASE_URL", "cdn.example.com")]).is_err());
    }

    #[test]
    fn webhook_settings_are_bounded() {
        let defaults = config(&[]).expect("defaults").webhooks;
        assert!(!defaults.allow_local_targets, "local targets only when asked for");
        assert_eq!((defaults.timeout.as_secs(), defaults.max_attempts, defaults.concurrency), (10, 12, 16));
        let set = config(&[("WEBHOOK_ALLOW_LOCAL_TARGETS", "true"), ("WEBHOOK_RETRY_FIRST_SECS", "1"), ("WEBHOOK_MAX_ATTEMPTS", "2")])
            .expect("valid")
            .webhooks;
        assert!(set.allow_local_targets);
        assert_eq!((set.retry_first.as_secs(), set.max_attempts), (1, 2));
        for (key, bad) in
            [("WEBHOOK_TIMEOUT_SECS", "0"), ("WEBHOOK_TIMEOUT_SECS", "61"), ("WEBHOOK_MAX_ATTEMPTS", "0"), ("WEBHOOK_CONCURRENCY", "1000")]
        {
            let err = config(&[(key, bad)]).expect_err(bad);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn aws_attempts_are_the_sdks_unless_set_within_bounds() {
        assert_eq!(config(&[]).expect("valid").aws.max_attempts, None);
        assert_eq!(config(&[("AWS_MAX_ATTEMPTS", "1")]).expect("valid").aws.max_attempts, Some(1));
        for bad in ["0", "11", "three"] {
            let err = config(&[("AWS_MAX_ATTEMPTS", bad)]).expect_err(bad);
            assert!(err.to_string().contains("AWS_MAX_ATTEMPTS"), "{err}");
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let config = config(&[
            ("DATABASE_URL", "postgres://u:hunter2@db/g"),
            ("TOKEN_SIGNING_KEY", "PRIVATE"),
            ("SMTP_URL", "smtp://AKIASMTPUSER:hunter3@email-smtp.eu-west-1.amazonaws.com:587"),
            ("MAIL_FROM", "Guildhall <no-reply@game.example>"),
        ])
        .expect("valid");
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("hunter3") && !printed.contains("AKIASMTPUSER"), "{printed}");
        assert!(!printed.contains("PRIVATE"), "{printed}");
    }

    #[test]
    fn database_authentication_is_one_of_url_password_or_iam() {
        let auth = |vars: &[(&str, &str)]| {
            config(vars).map(|c| match c.database {
                DatabaseConfig::Postgres { auth, service_roles, .. } => (auth, service_roles),
                DatabaseConfig::Sqlite { .. } => panic!("not PostgreSQL"),
            })
        };
        assert_eq!(auth(&[("DATABASE_URL", "postgres://u:p@db/g")]).expect("url"), (DatabaseAuth::Url, false));
        assert_eq!(
            auth(&[("DATABASE_URL", "postgres://guildhall@db/g"), ("DATABASE_PASSWORD", "s3cret"), ("DATABASE_SERVICE_ROLES", "true")])
                .expect("password"),
            (DatabaseAuth::Password(Secret::new("s3cret".into())), true)
        );
        let iam = "postgres://guildhall_chat@db.example.com:5432/g?sslmode=verify-full&sslrootcert=/etc/ssl/certs/rds-global-bundle.pem";
        assert_eq!(
            auth(&[("DATABASE_URL", iam), ("DATABASE_IAM_AUTH", "true"), ("AWS_REGION", "eu-west-1")]).expect("iam"),
            (DatabaseAuth::Iam { region: "eu-west-1".into() }, false)
        );
        for (bad, why) in [
            (vec![("DATABASE_URL", "postgres://u:p@db/g"), ("DATABASE_PASSWORD", "x")], "DATABASE_PASSWORD"),
            (vec![("DATABASE_URL", iam), ("DATABASE_PASSWORD", "x"), ("DATABASE_IAM_AUTH", "true"), ("AWS_REGION", "r")], "exclude"),
            (vec![("DATABASE_URL", iam), ("DATABASE_IAM_AUTH", "true")], "AWS_REGION"),
            (
                vec![("DATABASE_URL", "postgres://u@db/g?sslmode=require"), ("DATABASE_IAM_AUTH", "true"), ("AWS_REGION", "r")],
                "verify-full",
            ),
            (
                vec![("DATABASE_URL", "postgres://u:p@db/g?sslmode=verify-full"), ("DATABASE_IAM_AUTH", "true"), ("AWS_REGION", "r")],
                "without a password",
            ),
        ] {
            let err = auth(&bad).expect_err(why);
            assert!(err.to_string().contains(why), "{err}");
        }
        let printed = format!("{:?}", auth(&[("DATABASE_URL", "postgres://u@db/g"), ("DATABASE_PASSWORD", "hunter2")]).expect("valid"));
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn cors_origins_are_exact_and_checked() {
        assert!(config(&[]).expect("defaults").cors_allowed_origins.is_empty(), "no CORS unless configured");
        let ok = config(&[("CORS_ALLOWED_ORIGINS", "https://play.example.com, http://localhost:5173,")]).expect("valid");
        assert_eq!(ok.cors_allowed_origins, ["https://play.example.com", "http://localhost:5173"]);
        for bad in [
            "*",
            "null",
            "play.example.com",
            "https://play.example.com/",
            "https://x.com/game",
            "https://X.com",
            "ftp://x.com",
            "https://x.com:port",
            "https://[::1",
        ] {
            let err = config(&[("CORS_ALLOWED_ORIGINS", bad)]).expect_err(bad);
            assert!(err.to_string().contains("CORS_ALLOWED_ORIGINS"), "{err}");
        }
    }

    #[test]
    fn bad_numbers_are_refused_with_the_variable_name() {
        let err = config(&[("ACCESS_TOKEN_TTL_SECS", "soon")]).expect_err("not a number");
        assert!(err.to_string().contains("ACCESS_TOKEN_TTL_SECS"));
        assert!(config(&[("RATE_LIMIT_AUTH_PER_IP_PER_MINUTE", "0")]).is_err());
        assert!(config(&[("REFRESH_REUSE_GRACE_SECS", "61")]).is_err());
        let err = config(&[("RATE_LIMIT_LOGIN_PER_ACCOUNT_PER_15_MINUTES", "10")]).expect_err("replaced variable");
        assert!(err.to_string().contains("RATE_LIMIT_LOGIN_FAILURES_PER_ACCOUNT_AND_IP"), "{err}");
    }

    #[test]
    fn traces_are_sampled_as_the_opentelemetry_variables_say() {
        use crate::telemetry::Sampling;
        let sampling = |vars: &[(&str, &str)]| {
            let mut vars = vars.to_vec();
            vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"));
            config(&vars).map(|c| c.traces.expect("traces on").sampling)
        };
        assert_eq!(sampling(&[]).expect("default"), Sampling { parent_based: true, ratio: 1.0 });
        assert_eq!(
            sampling(&[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")]).expect("ratio"),
            Sampling { parent_based: true, ratio: 0.25 }
        );
        assert_eq!(sampling(&[("OTEL_TRACES_SAMPLER", "traceidratio")]).expect("ratio"), Sampling { parent_based: false, ratio: 1.0 });
        assert_eq!(sampling(&[("OTEL_TRACES_SAMPLER", "always_off")]).expect("off"), Sampling { parent_based: false, ratio: 0.0 });
        assert_eq!(
            sampling(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]).expect("off"),
            Sampling { parent_based: true, ratio: 0.0 }
        );
        for bad in [
            vec![("OTEL_TRACES_SAMPLER", "xray")],
            vec![("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "1.5")],
            vec![("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "NaN")],
            vec![("OTEL_TRACES_SAMPLER_ARG", "0.1")],
        ] {
            let err = sampling(&bad).expect_err("refused");
            assert!(err.to_string().contains("OTEL_TRACES_SAMPLER"), "{err}");
        }
        // Refused even while traces are off.
        assert!(config(&[("OTEL_TRACES_SAMPLER", "sometimes")]).is_err());
    }
}
