-- Friends and blocks (accounts), and the copies the consumers keep of them: chat's blocks (DMs
-- and presence between blocked players) and leaderboard's friendships (`records?friends=true`),
-- since services never read each other's tables.

-- One row per direction of a relation: the pair (a, b) has a row for a (state as a sees it) and
-- one for b, written together, so that each player's lists are one indexed range.
CREATE TABLE friend_links (
    account_id TEXT NOT NULL,
    other_id   TEXT NOT NULL,
    -- 'friends', 'outgoing' (account_id asked other_id) or 'incoming' (other_id asked)
    state      TEXT NOT NULL,
    -- Unix ms: when the request was made, or when it was accepted
    since      BIGINT NOT NULL,
    PRIMARY KEY (account_id, other_id)
);
CREATE INDEX friend_links_by_state ON friend_links (account_id, state, other_id);
CREATE INDEX friend_links_other ON friend_links (other_id);

-- Who blocked whom (one direction per row; two players may block each other).
CREATE TABLE blocks (
    blocker_id TEXT NOT NULL,
    blocked_id TEXT NOT NULL,
    -- Unix ms
    created_at BIGINT NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
);
CREATE INDEX blocks_blocked ON blocks (blocked_id);

-- chat's copy, from social.block_added / social.block_removed. A row stays after an unblock
-- (active = 0) with the time of the last change, so that events delivered out of order (SQS
-- does not keep order) never bring back an older state.
CREATE TABLE chat_blocks (
    blocker_id TEXT NOT NULL,
    blocked_id TEXT NOT NULL,
    active     BIGINT NOT NULL,
    -- Unix ms of the event that set `active`
    changed_at BIGINT NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
);
CREATE INDEX chat_blocks_blocked ON chat_blocks (blocked_id);

-- leaderboard's copy of friendships, both directions, from social.friend_accepted /
-- social.friend_removed, kept like chat_blocks (active, changed_at) against reordering.
CREATE TABLE leaderboard_friends (
    account_id TEXT NOT NULL,
    friend_id  TEXT NOT NULL,
    active     BIGINT NOT NULL,
    changed_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, friend_id)
);
CREATE INDEX leaderboard_friends_friend ON leaderboard_friends (friend_id);
