-- The counter of key $1 and its live entries in sequence order, with their
-- limit (shared entries only), their position's verdict (holds) and remaining ms; one row with
-- NULL entry columns when it has no live entry, none when it is unknown.
WITH queue AS (
    SELECT e.seq, e.owner, e.shared, e.lim, e.expires_ms - {now} AS remaining_ms,
           row_number() OVER w AS pos,
           max(1 - e.shared) OVER w AS exclusive_so_far
    FROM {entries} AS e
    WHERE e.key = $1 AND e.expires_ms > {now}
    WINDOW w AS (ORDER BY e.seq)
)
SELECT k.token, CASE WHEN q.shared THEN q.lim END, q.seq, q.owner, q.shared,
       q.pos = 1 OR (q.shared AND NOT q.exclusive_so_far AND q.pos <= q.lim) AS holds,
       q.remaining_ms
FROM {table} AS k
LEFT JOIN queue AS q ON true
WHERE k.key = $1
ORDER BY q.seq
