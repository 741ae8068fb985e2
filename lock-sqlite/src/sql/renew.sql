-- Extends every lease of the batch $1 (a JSON array of [key, lease id in
-- hex]) that is live and carries that lease id, to $2 ms from now.
-- Returns the (key, lease id) pairs renewed; the others are lost.
UPDATE {table}
SET expires_ms = {now} + $2
WHERE expires_ms > {now}
  AND (key, lease_id) IN (SELECT value ->> 0, unhex(value ->> 1) FROM json_each($1))
RETURNING key, lease_id
