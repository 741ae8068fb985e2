-- The uncontended release: removes the live entry of lease $2 from key $1
-- when it is the key's only entry, in one small statement (fencing on:
-- the key row stays, with its counter).
--
-- One row: found (the snapshot saw the entry live) and removed. Found but
-- not removed: the key row, on its latest version and under its lock,
-- counts other entries (added since the snapshot, too); nothing changed,
-- and release.sql, which also tells the entries it promotes, decides.
WITH mine AS MATERIALIZED (
    SELECT e.seq FROM {entries} AS e
    WHERE e.key = $1 AND e.lease_id = $2 AND e.expires_at > clock_timestamp()
),
kept AS (
    UPDATE {table} AS h
    SET version = h.version + 1, entry_count = 0, exclusive_count = 0
    WHERE h.key = $1 AND h.entry_count = 1 AND EXISTS (SELECT 1 FROM mine)
    RETURNING h.key
),
removed AS (
    DELETE FROM {entries} AS e
    WHERE e.key = $1 AND e.seq = (SELECT seq FROM mine) AND EXISTS (SELECT 1 FROM kept)
    RETURNING e.seq
)
SELECT EXISTS (SELECT 1 FROM mine) AS found, EXISTS (SELECT 1 FROM removed) AS removed
