-- The uncontended acquisition: grants key $1 to lease $3 of owner $2 for
-- $4 microseconds ($5: shared, $6: the key's limit) when the key has no
-- entry at all, in one small statement. No row comes back otherwise, and
-- nothing changes: acquire.sql then decides.
--
-- The key row's count of entries is read on its latest version, under its
-- lock (an entry added or released since the snapshot is counted); the
-- snapshot must agree that the key has no entry, so a count that drifted
-- low grants nothing. A key never seen gets its row here.
WITH claimed AS (
    UPDATE {table} AS h
    SET token = h.token + 1,
        entry_count = 1,
        exclusive_count = CASE WHEN $5 THEN 0 ELSE 1 END,
        holder_limit = $6
    WHERE h.key = $1
      AND h.entry_count = 0
      AND NOT EXISTS (SELECT 1 FROM {entries} AS e WHERE e.key = $1)
    RETURNING h.token
),
created AS (
    INSERT INTO {table} AS h (key, token, holder_limit, entry_count, exclusive_count)
    SELECT $1, 1, $6, 1, CASE WHEN $5 THEN 0 ELSE 1 END
    WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE key = $1)
    ON CONFLICT (key) DO NOTHING
    RETURNING h.token
)
INSERT INTO {entries} (key, seq, lease_id, owner, shared, expires_at, holding)
SELECT $1, s.token, $3, $2, $5,
       clock_timestamp() + $4::bigint::float8 * interval '1 microsecond', true
FROM (SELECT token FROM claimed UNION ALL SELECT token FROM created) AS s
RETURNING seq
