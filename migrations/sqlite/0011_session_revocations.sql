-- Ended sessions whose access tokens could still be unexpired, written in the same transaction
-- as the logout, refresh-token reuse, deletion or guest upgrade that ends them. Redis holds the
-- same set for the per-request check; when Redis has lost it (a flush, a failover to an empty
-- replica, a restart of the in-memory cache) verifiers read this table instead, and one
-- instance loads it back into Redis. A row outlives the longest-lived token of its session
-- (`expires_at`, Unix milliseconds), then the accounts service prunes it.
CREATE TABLE session_revocations (
    session_id TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX session_revocations_by_expiry ON session_revocations (expires_at);
