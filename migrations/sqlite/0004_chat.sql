-- SQLite twin of migrations/postgres/0004_chat.sql: the same tables, INTEGER for BIGINT.

CREATE TABLE chat_groups (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    owner_id   TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE chat_group_members (
    group_id   TEXT NOT NULL REFERENCES chat_groups (id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    -- 'owner', 'moderator' or 'member'
    role       TEXT NOT NULL,
    joined_at  INTEGER NOT NULL,
    PRIMARY KEY (group_id, account_id)
);
CREATE INDEX chat_group_members_account ON chat_group_members (account_id);

CREATE TABLE chat_messages (
    -- UUIDv7: orders by time, and is the history cursor
    id          TEXT PRIMARY KEY,
    channel_id  TEXT NOT NULL,
    -- NULL once the sender's account was deleted (the message stays, anonymised)
    sender_id   TEXT,
    sender_name TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX chat_messages_channel ON chat_messages (channel_id, id);
CREATE INDEX chat_messages_sender ON chat_messages (sender_id);

CREATE TABLE chat_sanctions (
    account_id TEXT NOT NULL,
    -- 'global' or a channel id
    scope      TEXT NOT NULL,
    -- 'mute' (cannot send) or 'ban' (cannot join or send)
    kind       TEXT NOT NULL,
    -- Unix ms; NULL for a permanent sanction
    until      INTEGER,
    reason     TEXT,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, scope, kind)
);
