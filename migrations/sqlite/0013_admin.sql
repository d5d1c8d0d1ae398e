-- SQLite twin of migrations/postgres/0013_admin.sql: named server keys with scopes (platform), the
-- audit log of admin actions (platform), and account-wide bans (accounts service).

-- Server keys made through `POST /v1/admin/keys`. The key itself is shown once, at creation, and
-- never stored: 256 random bits, so its SHA-256 is enough (nothing to brute-force). The
-- bootstrap key (GUILDHALL_ADMIN_KEY) is configuration, not a row.
CREATE TABLE admin_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    -- the key's first characters ('ghk_' and 8 more), shown in lists to tell keys apart
    prefix     TEXT NOT NULL,
    -- SHA-256 of the whole key, hex
    key_hash   TEXT NOT NULL UNIQUE,
    -- space-separated scope names, e.g. 'accounts leaderboards'
    scopes     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    -- the key that made it: 'bootstrap' or another key's id
    created_by TEXT NOT NULL,
    revoked_at INTEGER
);

-- One row per admin action, written in the action's own transaction where it has one.
CREATE TABLE admin_audit (
    -- UUIDv7: time-ordered, the list's cursor
    id         TEXT PRIMARY KEY,
    at         INTEGER NOT NULL,
    -- 'bootstrap' or the key's id, and its name then (kept after the key is revoked)
    key_id     TEXT NOT NULL,
    key_name   TEXT NOT NULL,
    -- e.g. 'accounts.ban', 'leaderboards.record_delete'
    action     TEXT NOT NULL,
    -- what it acted on, e.g. 'account:<id>', 'leaderboard:<id>', 'asset:<id>', 'key:<id>'
    target     TEXT NOT NULL,
    -- JSON object: the action's parameters and what it changed
    detail     TEXT NOT NULL,
    -- the request's x-request-id
    request_id TEXT
);
CREATE INDEX admin_audit_key ON admin_audit (key_id, id);
CREATE INDEX admin_audit_action ON admin_audit (action, id);
CREATE INDEX admin_audit_target ON admin_audit (target, id);

-- Account-wide bans (accounts service): sign-in and refresh are refused while one is in force.
CREATE TABLE account_bans (
    account_id TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    reason     TEXT,
    -- Unix ms; NULL for good
    until      INTEGER,
    -- the key that issued it: 'bootstrap' or a key id, and its name
    issued_by  TEXT NOT NULL,
    issued_by_name TEXT NOT NULL,
    issued_at  INTEGER NOT NULL
);

-- Admin search by username or email prefix uses LIKE; SQLite's LIKE is case-insensitive and can
-- use an index only on NOCASE columns, and the embedded tier's few accounts scan quickly.
