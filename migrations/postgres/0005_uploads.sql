-- Uploads: asset metadata and state (the bytes live in S3 or under DATA_DIR/blobs), and each
-- player's usage, updated in the same transaction as the assets so that the quota holds under
-- concurrent requests.

CREATE TABLE assets (
    id                TEXT PRIMARY KEY,
    owner_id          TEXT NOT NULL,
    purpose           TEXT NOT NULL,
    content_type      TEXT NOT NULL,
    size_bytes        BIGINT NOT NULL,
    object_key        TEXT NOT NULL UNIQUE,
    state             TEXT NOT NULL,
    reject_reason     TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    upload_expires_at BIGINT NOT NULL
);
CREATE INDEX assets_owner ON assets (owner_id, id);
CREATE INDEX assets_pending ON assets (upload_expires_at) WHERE state = 'pending';

CREATE TABLE asset_usage (
    owner_id    TEXT PRIMARY KEY,
    asset_count BIGINT NOT NULL,
    total_bytes BIGINT NOT NULL
);
