-- Delivery state of the outbox (a relay claims rows with a lease, retries with backoff, and
-- parks an event that keeps failing as dead), and the ids of events each consumer has handled,
-- so that a redelivered event is handled once.

ALTER TABLE outbox ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN next_attempt_at BIGINT;
ALTER TABLE outbox ADD COLUMN claimed_until BIGINT;
ALTER TABLE outbox ADD COLUMN last_error TEXT;
ALTER TABLE outbox ADD COLUMN dead_at BIGINT;

CREATE TABLE consumed_events (
    consumer    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    consumed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
