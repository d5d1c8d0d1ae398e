-- What each database role (made by migrations/postgres/0012_service_roles.sql) may do to each
-- table: only what its part of the code does, read from each service's `store` module and the
-- event code (`services/platform/src/events`, `revocations`). `guildhall migrate` applies this
-- file whole, in one transaction, after every run of the migrations: every grant is taken back
-- and these given again, so the roles hold exactly what is written here, whatever order the
-- migrations made the tables in, and a line removed here is a privilege gone. Other sessions see
-- the old grants or the new, never neither (the transaction commits them at once).
--
-- A migration that creates a table adds its lines here. The integration tests run every service
-- as its role and the consumers as the worker's (DATABASE_SERVICE_ROLES), so a missing grant
-- fails the test whose query needs it; and a test fails while any table is no role's.

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM guildhall_accounts, guildhall_leaderboard, guildhall_uploads, guildhall_chat, guildhall_worker;

-- Every service writes its events to the outbox in the transaction of its change, and so do
-- the worker's consumers (an upload checked is `upload.ready` or `upload.rejected`); the relay
-- (the worker) reads, leases, marks and purges them, and re-drives dead ones (`guildhall
-- events`). The consumers remember what they handled; the relay purges that too.
GRANT INSERT ON outbox TO guildhall_accounts, guildhall_leaderboard, guildhall_uploads, guildhall_chat;
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO guildhall_worker;
GRANT SELECT, INSERT, DELETE ON consumed_events TO guildhall_worker;

-- Ended sessions: accounts records them in the transaction that ends them and prunes them; every
-- service's token check reads them while the cache cannot vouch (and loads them back into it).
GRANT SELECT, INSERT, DELETE ON session_revocations TO guildhall_accounts;
GRANT SELECT ON session_revocations TO guildhall_leaderboard, guildhall_uploads, guildhall_chat;

-- Server keys (`platform::admin`): every service's admin routes check the key presented and
-- write what they did to the audit log; the keys' and the audit's own routes are served with
-- accounts (made, listed, revoked; the log read).
GRANT SELECT, INSERT, UPDATE ON admin_keys TO guildhall_accounts;
GRANT SELECT ON admin_keys TO guildhall_leaderboard, guildhall_uploads, guildhall_chat;
GRANT SELECT, INSERT ON admin_audit TO guildhall_accounts;
GRANT INSERT ON admin_audit TO guildhall_leaderboard, guildhall_uploads, guildhall_chat;

-- accounts: sign-up, sign-in, profiles, erasure; sessions and refresh tokens (and their purge);
-- account-wide bans (issued, replaced, lifted, read at sign-in and refresh).
GRANT SELECT, INSERT, UPDATE, DELETE ON accounts, sessions, refresh_tokens, account_bans TO guildhall_accounts;
-- Password resets: tokens (as hashes) written, replaced, taken and purged; the mails to send,
-- queued by the forgot-password route and leased, retried and deleted by the accounts worker.
GRANT SELECT, INSERT, UPDATE, DELETE ON password_resets, password_reset_mails TO guildhall_accounts;
-- Friends and blocks: requests, accepts, removals and blocks (each locks the two accounts' rows
-- by an UPDATE that changes nothing), their lists, and erasure.
GRANT SELECT, INSERT, UPDATE, DELETE ON friend_links, blocks TO guildhall_accounts;
-- Identities (devices, Apple, Google, Steam, Discord): read at every provider and guest sign-in,
-- linked and unlinked by their player, deleted with the account.
GRANT SELECT, INSERT, DELETE ON account_identities TO guildhall_accounts;

-- webhooks' admin API, which runs with accounts (SERVICES=accounts,webhooks on ECS: one process,
-- one login): webhooks made, listed and deleted with their deliveries; deliveries listed and
-- sent again.
GRANT SELECT, INSERT, DELETE ON webhooks TO guildhall_accounts;
GRANT SELECT, UPDATE, DELETE ON webhook_deliveries TO guildhall_accounts;

-- leaderboard: boards (made, changed, their season advanced, deleted by operators with all
-- theirs), records written in group commits (upserts under FOR UPDATE) and deleted by operators,
-- archived seasons (counted down when an operator deletes a record), idempotency keys (and their
-- purge), index checks (written, claimed, finished).
GRANT SELECT, INSERT, UPDATE, DELETE ON leaderboards, leaderboard_records TO guildhall_leaderboard;
GRANT SELECT, INSERT, UPDATE, DELETE ON leaderboard_seasons TO guildhall_leaderboard;
GRANT SELECT, INSERT, DELETE ON leaderboard_submission_keys TO guildhall_leaderboard;
GRANT SELECT, INSERT, UPDATE, DELETE ON leaderboard_index_checks TO guildhall_leaderboard;
-- leaderboard reads its copy of the friendships (`records?friends=true`); the worker's consumer
-- writes it.
GRANT SELECT ON leaderboard_friends TO guildhall_leaderboard;

-- uploads: assets through their states, deleted by their owner or purged when stale; quotas.
GRANT SELECT, INSERT, UPDATE, DELETE ON assets TO guildhall_uploads;
GRANT SELECT, INSERT, UPDATE ON asset_usage TO guildhall_uploads;

-- chat: groups (never deleted) and their members, messages (deleted by operators), sanctions
-- (replaced and lifted); a player's report marks the message as reported by them, in the
-- transaction of its event; operators read the report cases and resolve them.
GRANT SELECT, INSERT ON chat_groups TO guildhall_chat;
GRANT SELECT, INSERT, DELETE ON chat_messages, chat_message_reporters TO guildhall_chat;
GRANT SELECT, INSERT, UPDATE, DELETE ON chat_group_members, chat_sanctions TO guildhall_chat;
GRANT SELECT, UPDATE ON chat_reports TO guildhall_chat;
GRANT SELECT ON chat_report_entries TO guildhall_chat;
-- Notifications and the DM inbox: a direct message writes the conversation's rows and, for a
-- recipient not in the conversation, their notification, in its own transaction; players list
-- theirs and mark them read; each instance prunes the notifications past their age.
GRANT SELECT, INSERT, UPDATE, DELETE ON chat_notifications, chat_conversations TO guildhall_chat;
-- chat reads its copy of the blocks (DMs and presence between blocked players); the worker's
-- consumer writes it.
GRANT SELECT ON chat_blocks TO guildhall_chat;
-- chat refuses direct messages with, and group memberships of, the players it erased.
GRANT SELECT ON chat_erased_players TO guildhall_chat;

-- The worker's consumers (on `account.deleted`, `upload.completed`, `chat.message_reported`, and
-- every event a webhook may subscribe to) and the webhook deliveries:
-- leaderboard erases the player's records and keys, counts them off archived seasons, and
-- leaves an index check (then reads the records and boards it names to fix the ranks);
GRANT SELECT ON leaderboards TO guildhall_worker;
GRANT SELECT, DELETE ON leaderboard_records, leaderboard_submission_keys TO guildhall_worker;
GRANT SELECT, UPDATE ON leaderboard_seasons TO guildhall_worker;
GRANT SELECT, INSERT, UPDATE ON leaderboard_index_checks TO guildhall_worker;
-- leaderboard keeps its copy of the friendships (social.friend_accepted, social.friend_removed)
-- and forgets an erased player's; chat does the same with the blocks (social.block_added,
-- social.block_removed).
GRANT SELECT, INSERT, UPDATE, DELETE ON leaderboard_friends, chat_blocks TO guildhall_worker;
-- uploads checks a completed upload (ready or rejected), and deletes a deleted player's assets
-- and quota;
GRANT SELECT, UPDATE, DELETE ON assets, asset_usage TO guildhall_worker;
-- chat anonymises the player's messages, reports and report entries, takes them out of every
-- group and forgets what they reported; and files reports into their cases (reading the message).
GRANT SELECT, UPDATE ON chat_messages TO guildhall_worker;
GRANT SELECT, DELETE ON chat_group_members, chat_message_reporters TO guildhall_worker;
GRANT SELECT, INSERT, UPDATE ON chat_reports, chat_report_entries TO guildhall_worker;
-- chat notifies players of friend requests and acceptances and of season results (inserting and
-- capping their notifications), and erases a deleted player's notifications and conversations
-- (and the name their partners' conversations show).
GRANT SELECT, INSERT, UPDATE, DELETE ON chat_notifications, chat_conversations TO guildhall_worker;
-- and remembers that it erased the player (chat_erased_players).
GRANT SELECT, INSERT ON chat_erased_players TO guildhall_worker;
-- webhooks records each event for the webhooks subscribed to it, delivers them (leases, results,
-- retries) and purges what is done.
GRANT SELECT ON webhooks TO guildhall_worker;
GRANT SELECT, INSERT, DELETE ON webhook_events TO guildhall_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_deliveries TO guildhall_worker;

-- Every instance beats the replica heartbeat and advances the database's history, whatever its
-- role (platform::replica, platform::restore).
GRANT SELECT, UPDATE ON replica_heartbeat TO guildhall_accounts, guildhall_leaderboard, guildhall_uploads, guildhall_chat, guildhall_worker;
GRANT SELECT, UPDATE ON database_history TO guildhall_accounts, guildhall_leaderboard, guildhall_uploads, guildhall_chat, guildhall_worker;
