-- Converts a table of the previous layout (one row per key holding its
-- lease: owner, lease_id, expires_ms, token, previous_owner) in place,
-- inside the opening's write transaction, after schema.sql created the
-- entries table: every live lease becomes a holding entry with its token
-- as sequence number, the token counter stays, and the lease columns go,
-- so that a process of the previous version still running fails its
-- statements instead of granting beside this one. Tokens keep increasing:
-- the next grant of a key gets its counter + 1.
INSERT INTO {entries} (key, seq, lease_id, owner, shared, lim, expires_ms, holding)
SELECT key, max(token, 1), lease_id, coalesce(owner, ''), 0, 1, expires_ms, 1
FROM {table}
WHERE lease_id IS NOT NULL AND expires_ms > {now};

ALTER TABLE {table} DROP COLUMN owner;
ALTER TABLE {table} DROP COLUMN lease_id;
ALTER TABLE {table} DROP COLUMN expires_ms;
ALTER TABLE {table} DROP COLUMN previous_owner;
