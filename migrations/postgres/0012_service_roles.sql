-- A database role per service (issue 13): each service connects as its own role, holding only
-- the privileges its queries use on the tables it uses, so that a flaw in one can neither read
-- nor change another's tables, and none can change the schema. The tables stay owned by the
-- user that runs the migrations (Aurora's master user, used by `guildhall migrate` alone).
-- Which role uses what comes from each service's `store` module and the event code in
-- `services/platform/src/events`; the integration tests run every service as its role
-- (DATABASE_SERVICE_ROLES), so a missing grant fails a test. A migration that creates a table
-- grants it here too, to the roles that use it.
--
-- Roles belong to the cluster, not to one database, and several databases of a cluster may
-- migrate at once (the tests make one per test): a role that another migration made meanwhile
-- is no error, and a role that exists is left as it is (its password, its attributes).
DO $$
DECLARE
    name TEXT;
BEGIN
    FOREACH name IN ARRAY ARRAY['guildhall_accounts', 'guildhall_leaderboard', 'guildhall_uploads', 'guildhall_chat', 'guildhall_worker'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- made meanwhile by the migration of another database
            END;
        END IF;
        -- Aurora and RDS: the role logs in with IAM authentication tokens, never a password
        -- (rds_iam exists only there).
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam') THEN
            EXECUTE format('GRANT rds_iam TO %I', name);
        END IF;
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), name);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO guildhall_accounts, guildhall_leaderboard, guildhall_uploads, guildhall_chat, guildhall_worker;

-- Every service writes its events to the outbox in the transaction of its change; the relay
-- (the worker) reads, leases, marks and purges them, and re-drives dead ones (`guildhall
-- events`). The consumers remember what they handled; the relay purges that too.
GRANT INSERT ON outbox TO guildhall_accounts, guildhall_leaderboard, guildhall_uploads, guildhall_chat;
GRANT SELECT, UPDATE, DELETE ON outbox TO guildhall_worker;
GRANT SELECT, INSERT, DELETE ON consumed_events TO guildhall_worker;

-- accounts: sign-up, sign-in, profiles, erasure; sessions and refresh tokens (and their purge).
GRANT SELECT, INSERT, UPDATE, DELETE ON accounts, sessions, refresh_tokens TO guildhall_accounts;

-- leaderboard: boards (made, their season advanced, never deleted), records written in group
-- commits (upserts under FOR UPDATE), archived seasons, idempotency keys (and their purge),
-- index checks (written, claimed, finished). Records leave only by erasure (the worker).
GRANT SELECT, INSERT, UPDATE ON leaderboards, leaderboard_records TO guildhall_leaderboard;
GRANT SELECT, INSERT ON leaderboard_seasons TO guildhall_leaderboard;
GRANT SELECT, INSERT, DELETE ON leaderboard_submission_keys TO guildhall_leaderboard;
GRANT SELECT, INSERT, UPDATE, DELETE ON leaderboard_index_checks TO guildhall_leaderboard;

-- uploads: assets through their states, deleted by their owner or purged when stale; quotas.
GRANT SELECT, INSERT, UPDATE, DELETE ON assets TO guildhall_uploads;
GRANT SELECT, INSERT, UPDATE ON asset_usage TO guildhall_uploads;

-- chat: groups (never deleted) and their members, messages (never edited by the API),
-- sanctions (replaced and lifted).
GRANT SELECT, INSERT ON chat_groups, chat_messages TO guildhall_chat;
GRANT SELECT, INSERT, UPDATE, DELETE ON chat_group_members, chat_sanctions TO guildhall_chat;

-- The worker's consumers, on `account.deleted` and `upload.completed`:
-- leaderboard erases the player's records and keys, counts them off archived seasons, and
-- leaves an index check (then reads the records and boards it names to fix the ranks);
GRANT SELECT ON leaderboards TO guildhall_worker;
GRANT SELECT, DELETE ON leaderboard_records, leaderboard_submission_keys TO guildhall_worker;
GRANT SELECT, UPDATE ON leaderboard_seasons TO guildhall_worker;
GRANT SELECT, INSERT, UPDATE ON leaderboard_index_checks TO guildhall_worker;
-- uploads checks a completed upload (ready or rejected), and deletes a deleted player's assets
-- and quota;
GRANT SELECT, UPDATE, DELETE ON assets, asset_usage TO guildhall_worker;
-- chat anonymises the player's messages and takes them out of every group.
GRANT SELECT, UPDATE ON chat_messages TO guildhall_worker;
GRANT SELECT, DELETE ON chat_group_members TO guildhall_worker;
