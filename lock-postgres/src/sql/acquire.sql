-- Adds an entry for lease $3 of owner $2 to the queue of key $1: holding
-- for $4 microseconds when it holds at the end of the queue, else (when
-- $7, the waiter ttl in microseconds, is not NULL) waiting for $7
-- microseconds. $5: the entry is shared; $6: the key's limit, which
-- shared entries agree on and exclusive ones ignore (the key row keeps the
-- limit of its shared entries).
--
-- One row comes back; `outcome` is one of
--   acquired  token = the entry's sequence number, owner = the owner of a
--             holding entry that expired and was purged here (or NULL)
--   queued    token, retry_after_us (the soonest expiry ahead), and the
--             first holder (owner, remaining_us, shared)
--   held      the first holder (owner, remaining_us, shared)
--   mismatch  holder_limit = the limit of the live shared entries
--   again     the key changed under the statement: nothing was added, ask
--             again
--
-- The snapshot decides whether to add an entry at all; answers that add
-- nothing (held, mismatch) are read from it alone, without a lock or a
-- write. Adding goes through the key row: locked first (waiting for the
-- key's other writers), then the entries the snapshot saw expired are
-- deleted, each re-checked on its latest version (one renewed meanwhile
-- stays), then the key row's counts of entries, as of its latest version
-- less those deleted, decide whether the new entry holds: it is first, or
-- shared behind shared entries only, fewer than the limit. So entries
-- added or released since the snapshot are accounted for.
WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS now
),
head AS MATERIALIZED (
    SELECT token, holder_limit, version FROM {table} WHERE key = $1
),
seen AS MATERIALIZED (
    SELECT e.seq, e.lease_id, e.owner, e.shared, e.expires_at,
           e.expires_at > (SELECT now FROM clock) AS live
    FROM {entries} AS e
    WHERE e.key = $1
    -- In index order: a plain index scan marks the index entries of
    -- deleted entries dead as it passes them, so they cost nothing next
    -- time (a bitmap scan would visit them again until a vacuum).
    ORDER BY e.seq
),
queue AS MATERIALIZED (
    SELECT s.seq, s.lease_id, s.owner, s.shared, s.expires_at,
           row_number() OVER w AS pos,
           bool_or(NOT s.shared) OVER w AS exclusive_so_far
    FROM seen AS s
    WHERE s.live
    WINDOW w AS (ORDER BY s.seq)
),
first AS (
    SELECT q.owner, q.shared, q.expires_at FROM queue AS q WHERE q.pos = 1
),
mine AS MATERIALIZED (
    SELECT q.seq,
           q.pos = 1 OR (q.shared AND NOT q.exclusive_so_far
                         AND q.pos <= coalesce((SELECT holder_limit FROM head), $6)) AS holds,
           (SELECT min(a.expires_at) FROM queue AS a WHERE a.seq < q.seq) AS ahead_expires
    FROM queue AS q
    WHERE q.lease_id = $3
),
decision AS MATERIALIZED (
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM mine) THEN 'retried'
        WHEN $5 AND bool_or(q.shared)
             AND (SELECT holder_limit FROM head) IS DISTINCT FROM $6 THEN 'mismatch'
        WHEN $7::bigint IS NOT NULL
             OR count(*) = 0
             OR ($5 AND NOT coalesce(bool_or(NOT q.shared), false) AND count(*) < $6)
            THEN 'add'
        ELSE 'held'
    END AS what,
    min(q.expires_at) AS soonest
    FROM queue AS q
),
-- The key row first, when entries the snapshot saw expired are to be
-- deleted (the order every writer of the key takes its locks in).
locked AS (
    SELECT h.key FROM {table} AS h
    WHERE h.key = $1
      AND (SELECT what FROM decision) = 'add'
      AND EXISTS (SELECT 1 FROM seen WHERE NOT live)
    FOR UPDATE
),
purged AS (
    DELETE FROM {entries} AS e
    USING clock AS c
    WHERE e.key = $1
      AND EXISTS (SELECT 1 FROM locked)
      AND e.seq IN (SELECT s.seq FROM seen AS s WHERE NOT s.live)
      AND e.expires_at <= c.now
    RETURNING e.seq, e.owner, e.shared, e.holding
),
-- The entries the key has, less those just deleted: as the snapshot saw
-- them while the key row is the one it read (counter and version), else by
-- the key row's counts on its latest version.
counts AS MATERIALIZED (
    SELECT (SELECT count(*) FROM seen) - (SELECT count(*) FROM purged) AS seen_entries,
           (SELECT count(*) FROM seen WHERE NOT shared)
               - (SELECT count(*) FROM purged WHERE NOT shared) AS seen_exclusive,
           (SELECT count(*) FROM purged) AS gone_entries,
           (SELECT count(*) FROM purged WHERE NOT shared) AS gone_exclusive
),
-- The key row, updated on its latest version (n: the entries it has, and
-- how many are exclusive): the new entry holds when it is the only one, or
-- shared with no exclusive entry and within the limit.
claimed AS (
    UPDATE {table} AS h
    SET token = h.token + 1,
        entry_count = 1 + CASE WHEN h.token = hd.token AND h.version = hd.version
                               THEN c.seen_entries ELSE h.entry_count - c.gone_entries END,
        exclusive_count = CASE WHEN $5 THEN 0 ELSE 1 END
                          + CASE WHEN h.token = hd.token AND h.version = hd.version
                                 THEN c.seen_exclusive
                                 ELSE h.exclusive_count - c.gone_exclusive END,
        holder_limit = CASE WHEN $5 THEN $6 ELSE h.holder_limit END
    FROM decision AS d, counts AS c, head AS hd
    WHERE h.key = $1
      AND d.what = 'add'
      AND CASE WHEN h.token = hd.token AND h.version = hd.version
               THEN c.seen_entries = 0
                    OR (NOT $5 OR h.holder_limit = $6 OR c.seen_entries = c.seen_exclusive)
                       AND ($7::bigint IS NOT NULL
                            OR $5 AND c.seen_exclusive = 0 AND c.seen_entries < $6)
               ELSE h.entry_count - c.gone_entries = 0
                    OR (NOT $5 OR h.holder_limit = $6
                        OR h.entry_count - c.gone_entries = h.exclusive_count - c.gone_exclusive)
                       AND ($7::bigint IS NOT NULL
                            OR $5 AND h.exclusive_count - c.gone_exclusive = 0
                               AND h.entry_count - c.gone_entries < $6)
          END
    RETURNING h.token,
              h.entry_count = 1 OR ($5 AND h.exclusive_count = 0 AND h.entry_count <= $6) AS holds
),
created AS (
    INSERT INTO {table} AS h (key, token, holder_limit, entry_count, exclusive_count)
    SELECT $1, 1, $6, 1, CASE WHEN $5 THEN 0 ELSE 1 END
    FROM decision AS d
    WHERE d.what = 'add' AND NOT EXISTS (SELECT 1 FROM head)
    ON CONFLICT (key) DO NOTHING
    RETURNING h.token, true AS holds
),
slot AS MATERIALIZED (
    SELECT token, holds FROM claimed UNION ALL SELECT token, holds FROM created
),
added AS (
    INSERT INTO {entries} (key, seq, lease_id, owner, shared, expires_at, holding)
    SELECT $1, s.token, $3, $2, $5,
           c.now + (CASE WHEN s.holds THEN $4::bigint ELSE $7::bigint END)::float8
                   * interval '1 microsecond',
           s.holds
    FROM slot AS s, clock AS c
    RETURNING seq, holding
),
-- The same lease id sent again (its reply was lost): extend the entry it
-- added and answer its state.
extended AS (
    UPDATE {entries} AS e
    SET expires_at = coalesce(
            c.now + (CASE WHEN m.holds THEN $4::bigint ELSE $7::bigint END)::float8
                    * interval '1 microsecond',
            e.expires_at),
        holding = e.holding OR m.holds
    FROM mine AS m, clock AS c
    WHERE e.key = $1 AND e.seq = m.seq AND e.expires_at > c.now
    RETURNING e.seq, m.holds, m.ahead_expires
),
answer AS (
    SELECT CASE
               WHEN a.seq IS NULL THEN 'again'
               WHEN a.holding THEN 'acquired'
               ELSE 'queued'
           END AS outcome,
           a.seq AS token,
           CASE WHEN a.holding THEN
               (SELECT p.owner FROM purged AS p WHERE p.holding ORDER BY p.seq DESC LIMIT 1)
           END AS previous_owner,
           d.soonest AS ahead_expires
    FROM decision AS d LEFT JOIN added AS a ON true
    WHERE d.what = 'add'
    UNION ALL
    SELECT CASE
               WHEN x.seq IS NULL THEN 'again'
               WHEN x.holds THEN 'acquired'
               ELSE 'queued'
           END,
           x.seq, NULL, x.ahead_expires
    FROM decision AS d LEFT JOIN extended AS x ON true
    WHERE d.what = 'retried'
    UNION ALL
    SELECT d.what, NULL, NULL, NULL
    FROM decision AS d
    WHERE d.what IN ('held', 'mismatch')
)
SELECT a.outcome,
       a.token,
       CASE WHEN a.outcome = 'acquired' THEN a.previous_owner ELSE f.owner END AS owner,
       (extract(epoch FROM f.expires_at - c.now) * 1000000)::bigint AS remaining_us,
       f.shared,
       (SELECT holder_limit FROM head) AS holder_limit,
       (extract(epoch FROM a.ahead_expires - c.now) * 1000000)::bigint AS retry_after_us
FROM answer AS a
CROSS JOIN clock AS c
LEFT JOIN first AS f ON a.outcome IN ('queued', 'held')
