-- The heartbeat that measures a reader's lag (platform::replica): every instance writes its clock
-- here each second and reads the row back from the reader (DATABASE_READ_URL).
CREATE TABLE replica_heartbeat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    beat_ms BIGINT NOT NULL
);
INSERT INTO replica_heartbeat (id, beat_ms) VALUES (1, 0);

-- The database's history as Guildhall saw it advance (platform::restore): `position` only grows
-- while this database lives on; Redis remembers the highest it has seen, so a database that
-- comes back with a lower one was restored to an earlier point. `tokens_not_before_ms`: access
-- tokens issued before it are refused (set when a restore is detected or declared).
CREATE TABLE database_history (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    position BIGINT NOT NULL,
    tokens_not_before_ms BIGINT NOT NULL
);
INSERT INTO database_history (id, position, tokens_not_before_ms) VALUES (1, 0, 0);
