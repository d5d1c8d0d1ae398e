-- A refresh token's exchange keeps the random salt its successor was derived from (the successor
-- is HMAC-SHA256 keyed by the exchanged token, over this salt), so that the same token presented
-- again within REFRESH_REUSE_GRACE_SECS (a retry after a lost response) gets the same new pair.
-- Only a holder of the exchanged token can derive the successor: the table keeps its hash alone.
ALTER TABLE refresh_tokens ADD COLUMN successor_salt TEXT;
