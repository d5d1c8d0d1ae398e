-- SQLite twin of migrations/postgres/0005_uploads.sql: the same tables, INTEGER for BIGINT.

CREATE TABLE assets (
    id                TEXT PRIMARY KEY,
    owner_id          TEXT NOT NULL,
    purpose           TEXT NOT NULL,
    content_type      TEXT NOT NULL,
    size_bytes        INTEGER NOT NULL,
    object_key        TEXT NOT NULL UNIQUE,
    state             TEXT NOT NULL,
    reject_reason     TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    upload_expires_at INTEGER NOT NULL
);
CREATE INDEX assets_owner ON assets (owner_id, id);
CREATE INDEX assets_pending ON assets (upload_expires_at) WHERE state = 'pending';

CREATE TABLE asset_usage (
    owner_id    TEXT PRIMARY KEY,
    asset_count INTEGER NOT NULL,
    total_bytes INTEGER NOT NULL
);
