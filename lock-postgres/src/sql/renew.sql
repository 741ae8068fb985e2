-- Renews a batch of entries: $1 keys, $2 lease ids, $3 waiter ttls in
-- microseconds (NULL for an entry renewed as held), $4 the holders' ttl in
-- microseconds. Every entry still live is extended: to $4 when it is held
-- or holds by now, else by its waiter ttl. One row per renewed entry:
-- (key, lease id, holds, seq, retry_after_us: the soonest expiry ahead of
-- a waiting entry); entries not returned are lost.
--
-- Positions are computed only for keys with a waiting entry in the batch.
-- Holding is monotone and the entries behind one never change it, so a
-- snapshot that shows an entry holding is not contradicted by changes
-- committed since; one that shows it waiting is answered Waiting, and the
-- next renewal sees more.
WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS now
),
batch AS MATERIALIZED (
    SELECT DISTINCT ON (b.key, b.lease_id) b.key, b.lease_id, b.wait_us
    FROM unnest($1::text[], $2::bytea[], $3::bigint[]) AS b(key, lease_id, wait_us)
    ORDER BY b.key, b.lease_id, b.wait_us NULLS FIRST
),
queue AS MATERIALIZED (
    SELECT e.key, e.seq, e.lease_id,
           row_number() OVER w = 1
               OR (e.shared AND NOT bool_or(NOT e.shared) OVER w
                   AND row_number() OVER w <= h.holder_limit) AS holds,
           min(e.expires_at) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
               AS ahead_expires
    FROM {entries} AS e
    JOIN {table} AS h ON h.key = e.key
    CROSS JOIN clock AS c
    WHERE e.key IN (SELECT b.key FROM batch AS b WHERE b.wait_us IS NOT NULL)
      AND e.expires_at > c.now
    WINDOW w AS (PARTITION BY e.key ORDER BY e.seq)
)
UPDATE {entries} AS e
SET expires_at = c.now
        + (CASE WHEN b.wait_us IS NULL OR q.holds THEN $4::bigint ELSE b.wait_us END)::float8
          * interval '1 microsecond',
    holding = e.holding OR b.wait_us IS NULL OR q.holds
FROM batch AS b
LEFT JOIN queue AS q ON q.key = b.key AND q.lease_id = b.lease_id
CROSS JOIN clock AS c
WHERE e.key = b.key
  AND e.lease_id = b.lease_id
  AND e.expires_at > c.now
  AND (b.wait_us IS NULL OR q.seq IS NOT NULL)
RETURNING e.key, e.lease_id, b.wait_us IS NULL OR q.holds AS holds, e.seq,
          (extract(epoch FROM q.ahead_expires - c.now) * 1000000)::bigint AS retry_after_us
