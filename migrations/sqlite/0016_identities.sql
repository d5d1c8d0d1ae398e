-- SQLite twin of migrations/postgres/0016_identities.sql: the same table, INTEGER for BIGINT.
--
-- Identities an account signs in with besides email and password: a guest's device, Apple,
-- Google, Steam, Discord; (provider, subject) unique, one identity per provider on an account.
CREATE TABLE account_identities (
    provider   TEXT NOT NULL,
    subject    TEXT NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE UNIQUE INDEX account_identities_one_per_provider ON account_identities (account_id, provider);

-- Every guest's device becomes its device identity. accounts.device_key stays, unread by this
-- version, so that tasks of the previous version still running during a deploy keep signing
-- guests in; a later migration drops it.
INSERT INTO account_identities (provider, subject, account_id, created_at)
SELECT 'device', device_key, id, created_at FROM accounts WHERE device_key IS NOT NULL;
