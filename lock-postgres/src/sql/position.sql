-- Where the entry of lease $2 stands in the queue of key $1, read without
-- a lock: (seq, holds), or no row when it is not live. A waiter that has
-- just subscribed to notifications asks once, so that a grant sent before
-- it listened is not missed.
WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS now
),
queue AS (
    SELECT e.seq, e.lease_id, e.shared,
           row_number() OVER w AS pos,
           bool_or(NOT e.shared) OVER w AS exclusive_so_far
    FROM {entries} AS e, clock AS c
    WHERE e.key = $1 AND e.expires_at > c.now
    WINDOW w AS (ORDER BY e.seq)
)
SELECT q.seq,
       q.pos = 1 OR (q.shared AND NOT q.exclusive_so_far AND q.pos <= h.holder_limit) AS holds
FROM queue AS q
JOIN {table} AS h ON h.key = $1
WHERE q.lease_id = $2
