-- Releases $1 if its live lease is $2, keeping the row (and its fencing
-- counter); notifies channel $3 with the key in the same transaction, but only
-- when a waiter marked the row (NOTIFY serializes commits database-wide,
-- so uncontended releases skip it).
WITH released AS (
    UPDATE {table}
    SET owner = NULL, lease_id = NULL, previous_owner = NULL, expires_at = clock_timestamp()
    WHERE key = $1 AND lease_id = $2 AND expires_at > clock_timestamp()
    RETURNING key, wanted_until > clock_timestamp() AS wanted
)
SELECT (SELECT count(*) FROM released) AS released,
       (SELECT count(pg_notify($3, key)) FROM released WHERE wanted) AS notified
