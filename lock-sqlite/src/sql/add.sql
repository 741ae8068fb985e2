-- Adds an entry for lease $3 of owner $2 to the queue of key $1 ($5:
-- shared, $6: the key's limit): holding for $4 ms when it holds at the end
-- of the queue, else, when $7 (the waiter ttl in ms) is not NULL, waiting
-- for $7 ms. Adds nothing when the lease already has a live entry (a
-- request sent again), when it is shared and the live shared entries use
-- another limit (exclusive entries ignore the limit), or when the entry
-- would wait and $7 is NULL. Returns (seq, holding, taken_from).
--
-- One statement, under the database's write lock: the decision rests on
-- the latest state. The trigger on the entries table moves the key's
-- counter and deletes its expired entries in the same statement.
WITH live AS (
    SELECT seq, lease_id, shared, lim FROM {entries}
    WHERE key = $1 AND expires_ms > {now}
),
decision AS (
    SELECT NOT EXISTS (SELECT 1 FROM live)
           OR ($5 AND NOT EXISTS (SELECT 1 FROM live WHERE NOT shared)
               AND (SELECT count(*) FROM live) < $6) AS holds
)
INSERT INTO {entries} (key, seq, lease_id, owner, shared, lim, expires_ms, holding, taken_from)
SELECT $1,
       coalesce((SELECT token FROM {table} WHERE key = $1), 0) + 1,
       $3, $2, $5, $6,
       {now} + CASE WHEN d.holds THEN $4 ELSE $7 END,
       d.holds,
       CASE WHEN d.holds THEN (
           SELECT owner FROM {entries}
           WHERE key = $1 AND expires_ms <= {now} AND holding
           ORDER BY seq DESC LIMIT 1
       ) END
FROM decision AS d
WHERE NOT EXISTS (SELECT 1 FROM live WHERE lease_id = $3)
  AND NOT ($5 AND EXISTS (SELECT 1 FROM live WHERE shared AND lim <> $6))
  AND (d.holds OR $7 IS NOT NULL)
RETURNING seq, holding, taken_from
