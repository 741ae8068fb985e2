-- Releases $1 if its live lease is $2 by deleting the row (fencing off).
DELETE FROM {table}
WHERE key = $1 AND lease_id = $2 AND expires_ms > {now}
