-- The uncontended release: removes the live entry of lease $2 from key $1
-- when it is the key's only entry, in one small statement (fencing on:
-- the key row stays, with its counter).
--
-- One row: found (the snapshot saw the entry live) and removed. Found but
-- not removed: the key has other entries, or changed since the snapshot
-- (its counter or version moved, read on its latest version under its
-- lock); nothing changed, and release.sql, which also tells the entries it
-- promotes, decides.
WITH head AS MATERIALIZED (
    SELECT token, version FROM {table} WHERE key = $1
),
seen AS MATERIALIZED (
    SELECT e.seq, e.lease_id, e.expires_at > clock_timestamp() AS live
    FROM {entries} AS e
    WHERE e.key = $1
    ORDER BY e.seq
),
kept AS (
    UPDATE {table} AS h
    SET version = h.version + 1, entry_count = 0, exclusive_count = 0
    WHERE h.key = $1
      AND h.token = (SELECT token FROM head)
      AND h.version = (SELECT version FROM head)
      AND (SELECT count(*) FROM seen) = 1
      AND EXISTS (SELECT 1 FROM seen WHERE live AND lease_id = $2)
    RETURNING h.key
),
removed AS (
    DELETE FROM {entries} AS e
    WHERE e.key = $1
      AND e.seq = (SELECT seq FROM seen)
      AND EXISTS (SELECT 1 FROM kept)
    RETURNING e.seq
)
SELECT EXISTS (SELECT 1 FROM seen WHERE live AND lease_id = $2) AS found,
       EXISTS (SELECT 1 FROM removed) AS removed
