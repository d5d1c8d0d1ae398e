-- SQLite twin of migrations/postgres/0009_sanction_authority.sql: chat sanctions record the
-- authority they were issued with ('server', 'owner' or 'moderator'), so that a moderator
-- cannot replace or lift a sanction from someone they do not outrank.

ALTER TABLE chat_sanctions ADD COLUMN authority TEXT NOT NULL DEFAULT 'moderator';

-- Existing rows: the server key wrote 'server' into created_by; a group's owner is known. Any
-- other issuer was a moderator.
UPDATE chat_sanctions SET authority = 'server' WHERE created_by = 'server';
UPDATE chat_sanctions SET authority = 'owner'
WHERE created_by <> 'server'
  AND EXISTS (SELECT 1 FROM chat_groups g WHERE 'group:' || g.id = chat_sanctions.scope AND g.owner_id = chat_sanctions.created_by);
