-- Renews a batch: $1 is a JSON array of [key, lease id in hex, waiter ttl
-- in ms or null for an entry renewed as held], $2 the holders' ttl in ms.
-- Every entry still live is extended: to $2 when it is held or holds by
-- now, else by its waiter ttl, and marked holding when it holds. Returns
-- (key, lease id, holding, seq) per renewed entry; the others are lost.
-- One statement, under the database's write lock: positions are those of
-- the latest state.
WITH batch AS (
    SELECT value ->> 0 AS key, unhex(value ->> 1) AS lease_id, value ->> 2 AS wait_ms
    FROM json_each($1)
),
queue AS (
    SELECT e.key, e.seq,
           row_number() OVER w = 1
               OR (e.shared AND NOT max(1 - e.shared) OVER w
                   AND row_number() OVER w <= e.lim) AS holds
    FROM {entries} AS e
    WHERE e.key IN (SELECT key FROM batch WHERE wait_ms IS NOT NULL)
      AND e.expires_ms > {now}
    WINDOW w AS (PARTITION BY e.key ORDER BY e.seq)
),
plan AS (
    SELECT e.key, e.seq,
           b.wait_ms IS NULL OR coalesce(q.holds, 0) AS holds,
           b.wait_ms
    FROM batch AS b
    JOIN {entries} AS e ON e.key = b.key AND e.lease_id = b.lease_id
    LEFT JOIN queue AS q ON q.key = e.key AND q.seq = e.seq
    WHERE e.expires_ms > {now}
)
UPDATE {entries}
SET expires_ms = {now} + CASE WHEN p.holds THEN $2 ELSE p.wait_ms END,
    holding = holding OR p.holds
FROM plan AS p
WHERE {entries}.key = p.key AND {entries}.seq = p.seq
RETURNING key, lease_id, holding, seq
