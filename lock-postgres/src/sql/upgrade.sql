-- Converts a table of the previous layout (one row per key holding its
-- lease) in place, inside the migration's transaction: every live lease
-- becomes a holding entry with its token as sequence number, the token
-- counter stays, and the lease columns go, so that a process of the
-- previous version still running fails its statements instead of granting
-- beside this one. Tokens keep increasing: the next grant of a key gets
-- its counter + 1.
INSERT INTO {entries} (key, seq, lease_id, owner, shared, expires_at, holding)
SELECT key, greatest(token, 1), lease_id, coalesce(owner, ''), false, expires_at, true
FROM {table}
WHERE lease_id IS NOT NULL AND expires_at > clock_timestamp();

-- A live lease granted without fencing had token 0: its entry took 1.
UPDATE {table} AS t
SET token = e.seq
FROM {entries} AS e
WHERE e.key = t.key AND e.seq > t.token;

ALTER TABLE {table}
    DROP COLUMN IF EXISTS owner,
    DROP COLUMN IF EXISTS lease_id,
    DROP COLUMN IF EXISTS expires_at,
    DROP COLUMN IF EXISTS previous_owner,
    DROP COLUMN IF EXISTS wanted_until,
    ADD COLUMN holder_limit integer NOT NULL DEFAULT 1,
    ADD COLUMN entry_count integer NOT NULL DEFAULT 0,
    ADD COLUMN exclusive_count integer NOT NULL DEFAULT 0,
    ADD COLUMN version bigint NOT NULL DEFAULT 0;

UPDATE {table} AS t
SET entry_count = 1, exclusive_count = 1
FROM {entries} AS e
WHERE e.key = t.key;
