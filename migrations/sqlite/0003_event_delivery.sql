-- SQLite twin of migrations/postgres/0003_event_delivery.sql: the same tables, INTEGER for BIGINT.

ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN next_attempt_at INTEGER;
ALTER TABLE outbox ADD COLUMN claimed_until INTEGER;
ALTER TABLE outbox ADD COLUMN last_error TEXT;
ALTER TABLE outbox ADD COLUMN dead_at INTEGER;

CREATE TABLE consumed_events (
    consumer    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    consumed_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
