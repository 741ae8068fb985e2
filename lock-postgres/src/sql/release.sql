-- Removes the live entry of lease $2 from the queue of key $1, and tells
-- every entry that holds from this step on: one pg_notify on channel $3
-- per promoted entry, payload "<seq>:<lease id in hex>:<key>", sent when
-- the statement commits. A release that promotes nobody sends nothing
-- (NOTIFY serializes commits across the database). $4 is false when
-- fencing is off: a key left without any entry is then deleted with its
-- counter.
--
-- One row: found (the snapshot saw the entry live), removed, notified.
-- Found but not removed means the snapshot was overtaken by a concurrent
-- change to the key (nothing was changed): ask again. The key row is
-- updated (or deleted), which waits for concurrent writers of the key,
-- only while no other entry was released since the snapshot (the version
-- is the one read) and no entry was added that could hold once this one is
-- gone (the counter is the one read, or the remaining entries leave no
-- room at the end of the queue): so the promotions are those of the key's
-- latest state. The entries' liveness is re-checked on their latest
-- version.
WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS now
),
head AS MATERIALIZED (
    SELECT token, holder_limit, version FROM {table} WHERE key = $1
),
seen AS MATERIALIZED (
    SELECT e.seq, e.lease_id, e.shared, e.expires_at > (SELECT now FROM clock) AS live
    FROM {entries} AS e
    WHERE e.key = $1
    -- In index order: a plain index scan marks the index entries of
    -- deleted entries dead as it passes them, so they cost nothing next
    -- time (a bitmap scan would visit them again until a vacuum).
    ORDER BY e.seq
),
target AS MATERIALIZED (
    SELECT s.seq, s.shared FROM seen AS s WHERE s.live AND s.lease_id = $2
),
-- Positions before and after the removal; holding is monotone, so the
-- promoted entries are those that hold after and did not before.
ranked AS MATERIALIZED (
    SELECT r.seq, r.lease_id, r.shared,
           r.pos_before, r.exclusive_before,
           row_number() OVER after AS pos_after,
           bool_or(NOT r.shared) OVER after AS exclusive_after
    FROM (
        SELECT s.seq, s.lease_id, s.shared,
               row_number() OVER before AS pos_before,
               bool_or(NOT s.shared) OVER before AS exclusive_before
        FROM seen AS s
        WHERE s.live
        WINDOW before AS (ORDER BY s.seq)
    ) AS r
    WHERE r.seq <> (SELECT seq FROM target)
    WINDOW after AS (ORDER BY r.seq)
),
promoted AS (
    SELECT r.seq, r.lease_id
    FROM ranked AS r, head AS h
    WHERE (r.pos_after = 1
           OR (r.shared AND NOT r.exclusive_after AND r.pos_after <= h.holder_limit))
      AND NOT (r.pos_before = 1
               OR (r.shared AND NOT r.exclusive_before AND r.pos_before <= h.holder_limit))
),
-- Whether an entry added after the snapshot, at the end of the queue,
-- could hold once this one is gone: only then do additions matter here.
last AS MATERIALIZED (
    SELECT count(*) = 0
               OR (NOT bool_or(NOT r.shared) AND count(*) < (SELECT holder_limit FROM head))
               AS open_end
    FROM ranked AS r
),
-- The key row, on its latest version: its counts lose the entry; with
-- fencing off, a key left without any entry goes with its counter.
kept AS (
    UPDATE {table} AS h
    SET version = h.version + 1,
        -- As the snapshot saw them while no entry was added since.
        entry_count = CASE WHEN h.token = (SELECT token FROM head)
                           THEN (SELECT count(*) FROM seen) ELSE h.entry_count END - 1,
        exclusive_count = CASE WHEN h.token = (SELECT token FROM head)
                               THEN (SELECT count(*) FROM seen WHERE NOT shared)
                               ELSE h.exclusive_count END
                          - CASE WHEN t.shared THEN 0 ELSE 1 END
    FROM target AS t
    WHERE h.key = $1
      AND h.version = (SELECT version FROM head)
      AND (h.token = (SELECT token FROM head) OR NOT (SELECT open_end FROM last))
      AND ($4::boolean OR h.token <> (SELECT token FROM head) OR (SELECT count(*) FROM seen) > 1)
    RETURNING h.key
),
dropped AS (
    DELETE FROM {table} AS h
    USING target AS t
    WHERE h.key = $1
      AND h.version = (SELECT version FROM head)
      AND h.token = (SELECT token FROM head)
      AND NOT $4::boolean AND (SELECT count(*) FROM seen) = 1
    RETURNING h.key
),
removed AS (
    DELETE FROM {entries} AS e
    USING clock AS c
    WHERE e.key = $1
      AND e.seq = (SELECT seq FROM target)
      AND e.expires_at > c.now
      AND (EXISTS (SELECT 1 FROM kept) OR EXISTS (SELECT 1 FROM dropped))
    RETURNING e.seq
),
notified AS (
    SELECT count(pg_notify($3, p.seq::text || ':' || encode(p.lease_id, 'hex') || ':' || $1)) AS n
    FROM promoted AS p
    WHERE EXISTS (SELECT 1 FROM removed)
)
SELECT (SELECT count(*) FROM target) AS found,
       (SELECT count(*) FROM removed) AS removed,
       (SELECT n FROM notified) AS notified
