-- The key's counter and shared entries' limit, and its live entries in sequence order
-- with their position's verdict (holds) and remaining microseconds; one
-- row with NULL entry columns when the key has no live entry, none when
-- the key is unknown.
WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS now
),
head AS (
    SELECT token, holder_limit FROM {table} WHERE key = $1
),
queue AS (
    SELECT e.seq, e.owner, e.shared,
           (extract(epoch FROM e.expires_at - c.now) * 1000000)::bigint AS remaining_us,
           row_number() OVER w AS pos,
           bool_or(NOT e.shared) OVER w AS exclusive_so_far
    FROM {entries} AS e, clock AS c
    WHERE e.key = $1 AND e.expires_at > c.now
    WINDOW w AS (ORDER BY e.seq)
)
SELECT h.token, h.holder_limit, q.seq, q.owner, q.shared,
       q.pos = 1 OR (q.shared AND NOT q.exclusive_so_far AND q.pos <= h.holder_limit) AS holds,
       q.remaining_us
FROM head AS h
LEFT JOIN queue AS q ON true
ORDER BY q.seq
