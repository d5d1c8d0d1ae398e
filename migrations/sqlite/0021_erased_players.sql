-- The players chat erased (on account.deleted): a direct conversation with one of them, or a
-- group membership, is refused, so that nothing of theirs is made again after the erasure (a
-- partner's socket still in the conversation, an old group invite). Only the id and when.
CREATE TABLE chat_erased_players (
    account_id TEXT PRIMARY KEY,
    erased_at  BIGINT NOT NULL
);
