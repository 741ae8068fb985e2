-- Releases $1 if its live lease is $2, keeping the row and its counter.
UPDATE {table}
SET owner = NULL, lease_id = NULL, previous_owner = NULL, expires_ms = {now}
WHERE key = $1 AND lease_id = $2 AND expires_ms > {now}
