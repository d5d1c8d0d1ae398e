-- Identities an account signs in with besides email and password (accounts service): a guest's
-- device, Sign in with Apple, Google, Steam, Discord. One row per (provider, subject), the
-- provider's stable id of the player (for a device, the SHA-256 of its device id, as
-- accounts.device_key held it); at most one identity per provider on an account.
CREATE TABLE account_identities (
    provider   TEXT NOT NULL,
    subject    TEXT NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE UNIQUE INDEX account_identities_one_per_provider ON account_identities (account_id, provider);

-- Every guest's device becomes its device identity. accounts.device_key stays, unread by this
-- version, so that tasks of the previous version still running during a deploy keep signing
-- guests in; a later migration drops it.
INSERT INTO account_identities (provider, subject, account_id, created_at)
SELECT 'device', device_key, id, created_at FROM accounts WHERE device_key IS NOT NULL;
