-- SQLite twin of migrations/postgres/0019_notifications.sql: the same tables and indexes,
-- INTEGER for BIGINT.

-- Notifications and the DM inbox (chat service): each player's stream of notifications (friend
-- requests and acceptances, direct messages in conversations they had not joined, season
-- results), kept for offline players and pruned by a cap per player and an age; and each
-- player's state of each direct conversation (last message, unread count, read mark), updated in
-- the transaction of every direct message so that the inbox never scans the messages.

CREATE TABLE chat_notifications (
    -- UUIDv7: orders by time, and is the newest-first cursor
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    -- 'friend_request', 'friend_accepted', 'dm' or 'season_result'
    kind       TEXT NOT NULL,
    -- what made it, unique per player: the event's id for the kinds an event brings (a copy of
    -- the event handled again finds its row and adds nothing), the first message's id for 'dm'
    source     TEXT NOT NULL,
    -- 'dm': the conversation's channel; while unread, later messages in it update this row
    thread     TEXT,
    -- the other player it is about, if any (removed with them when their account is erased)
    actor_id   TEXT,
    -- JSON object, by kind (README, Notifications)
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    -- Unix ms; NULL while unread
    read_at    INTEGER
);
CREATE UNIQUE INDEX chat_notifications_source ON chat_notifications (account_id, source);
-- At most one unread 'dm' notification per conversation.
CREATE UNIQUE INDEX chat_notifications_thread ON chat_notifications (account_id, thread) WHERE read_at IS NULL AND thread IS NOT NULL;
CREATE INDEX chat_notifications_account ON chat_notifications (account_id, id);
CREATE INDEX chat_notifications_actor ON chat_notifications (actor_id);
CREATE INDEX chat_notifications_created ON chat_notifications (created_at);

CREATE TABLE chat_conversations (
    -- the player whose inbox this row is in
    account_id      TEXT NOT NULL,
    -- 'dm:<a>:<b>'
    channel_id      TEXT NOT NULL,
    -- the other player of the conversation
    other_id        TEXT NOT NULL,
    -- their name as their last message here showed it; NULL until they wrote
    other_name      TEXT,
    -- the newest message (UUIDv7): orders the inbox, newest first, and is its cursor
    last_message_id TEXT NOT NULL,
    -- messages from the other player after the read mark
    unread_count    INTEGER NOT NULL,
    -- the newest message read (a message id); NULL when none was
    read_up_to      TEXT,
    PRIMARY KEY (account_id, channel_id)
);
CREATE INDEX chat_conversations_newest ON chat_conversations (account_id, last_message_id);
CREATE INDEX chat_conversations_other ON chat_conversations (other_id);
