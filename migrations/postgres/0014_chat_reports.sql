-- Chat moderation (chat service): players' reports of messages, filed by chat's consumer of
-- `chat.message_reported` as one case per reported message while it is open (further reports
-- join it; once resolved, a new report opens a new case); each report, keyed by its event's id;
-- and who reported which message, written with the event, so that nobody reports one twice.

CREATE TABLE chat_reports (
    -- UUIDv7: orders by when the case opened, and is the newest-first cursor
    id                TEXT PRIMARY KEY,
    message_id        TEXT NOT NULL,
    channel_id        TEXT NOT NULL,
    -- the message as it was when first reported: it may be deleted since. sender_id is NULL
    -- once the sender's account was erased (sender_name then 'deleted player').
    sender_id         TEXT,
    sender_name       TEXT NOT NULL,
    body              TEXT NOT NULL,
    -- Unix ms; NULL for reports recorded before events carried it
    sent_at           BIGINT,
    -- 'open' or 'resolved'
    status            TEXT NOT NULL,
    report_count      BIGINT NOT NULL,
    first_reported_at BIGINT NOT NULL,
    last_reported_at  BIGINT NOT NULL,
    -- 'dismissed', 'message_deleted' or 'sender_sanctioned', with the moderator's note
    resolution        TEXT,
    resolution_note   TEXT,
    -- who resolved it ('server': the server key)
    resolved_by       TEXT,
    resolved_at       BIGINT
);
CREATE UNIQUE INDEX chat_reports_open_message ON chat_reports (message_id) WHERE status = 'open';
CREATE INDEX chat_reports_newest ON chat_reports (status, id);
CREATE INDEX chat_reports_most_reported ON chat_reports (status, report_count, id);
CREATE INDEX chat_reports_sender ON chat_reports (sender_id);

CREATE TABLE chat_report_entries (
    -- the chat.message_reported event's id: a redelivered event finds its row and stores nothing
    event_id    TEXT PRIMARY KEY,
    report_id   TEXT NOT NULL REFERENCES chat_reports (id),
    message_id  TEXT NOT NULL,
    -- NULL once the reporter's account was erased
    reported_by TEXT,
    reason      TEXT NOT NULL,
    reported_at BIGINT NOT NULL
);
-- A player's report of a message counts once, whatever events carried it.
CREATE UNIQUE INDEX chat_report_entries_reporter ON chat_report_entries (message_id, reported_by);
CREATE INDEX chat_report_entries_case ON chat_report_entries (report_id, reported_at, event_id);
CREATE INDEX chat_report_entries_account ON chat_report_entries (reported_by);

-- Written in the transaction that records the event: the report route's answer (409
-- already_reported) cannot wait for the consumer.
CREATE TABLE chat_message_reporters (
    message_id  TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    reported_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, account_id)
);
CREATE INDEX chat_message_reporters_account ON chat_message_reporters (account_id);

-- The admin list of sanctions, newest first.
CREATE INDEX chat_sanctions_created ON chat_sanctions (created_at);
