-- Operators' webhooks (webhooks service): the receivers, each event to deliver (its body signed
-- and sent as is on every attempt), and one delivery per (webhook, event) with its attempts, so
-- that a slow or dead receiver holds up only its own rows.

CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    -- JSON array of event types, or ["*"] for every one
    events      TEXT NOT NULL,
    -- the HMAC key, given by the operator; never answered nor logged
    secret      TEXT NOT NULL,
    description TEXT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE webhook_events (
    -- the outbox event id: receivers recognise duplicates by it
    id         TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    -- the exact JSON body every attempt sends
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id            TEXT PRIMARY KEY,
    webhook_id    TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    -- pending, delivered, failed (parked after the last attempt)
    state         TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    next_at       BIGINT NOT NULL,
    -- a worker's lease: other workers leave the row alone until then
    claimed_until BIGINT,
    last_status   BIGINT,
    last_error    TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    delivered_at  BIGINT
);
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (webhook_id, event_id);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_state ON webhook_deliveries (webhook_id, state, id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
