-- Releases $1 if its live lease is $2 by deleting the row (fencing off);
-- notifies channel $3 with the key in the same transaction, but only
-- when a waiter marked the row (NOTIFY serializes commits database-wide,
-- so uncontended releases skip it).
WITH released AS (
    DELETE FROM {table}
    WHERE key = $1 AND lease_id = $2 AND expires_at > clock_timestamp()
    RETURNING key, wanted_until > clock_timestamp() AS wanted
)
SELECT (SELECT count(*) FROM released) AS released,
       (SELECT count(pg_notify($3, key)) FROM released WHERE wanted) AS notified
