-- Accounts, sessions and refresh tokens (accounts service), and the transactional outbox that
-- carries events to other services. Times are Unix milliseconds (BIGINT) and ids are UUIDv7 text,
-- so that the same queries run on PostgreSQL and on the embedded SQLite file.

CREATE TABLE accounts (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL,
    -- lower-cased username: uniqueness is case-insensitive
    username_key    TEXT NOT NULL,
    -- normalised (trimmed, lower-cased) email; NULL for a guest without credentials
    email           TEXT,
    -- Argon2id PHC string
    password_hash   TEXT,
    -- SHA-256 of the device id a guest signed in with
    device_key      TEXT,
    display_name    TEXT,
    avatar_asset_id TEXT,
    locale          TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE UNIQUE INDEX accounts_username_key ON accounts (username_key);
CREATE UNIQUE INDEX accounts_email ON accounts (email);
CREATE UNIQUE INDEX accounts_device_key ON accounts (device_key);

CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at     BIGINT NOT NULL,
    refreshed_at   BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT
);
CREATE INDEX sessions_account ON sessions (account_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

CREATE TABLE refresh_tokens (
    -- SHA-256 of the opaque token: the token itself is never stored
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE outbox (
    id            TEXT PRIMARY KEY,
    event_type    TEXT NOT NULL,
    payload       TEXT NOT NULL,
    -- W3C traceparent of the request that wrote the event, when traced
    trace_context TEXT,
    created_at    BIGINT NOT NULL,
    sent_at       BIGINT
);
CREATE INDEX outbox_unsent ON outbox (created_at) WHERE sent_at IS NULL;
