-- Removes the live entry of lease $2 from the queue of key $1; returns its
-- sequence number, no row when it was not live. The entries behind it hold
-- from this statement on, by position.
DELETE FROM {entries}
WHERE key = $1 AND lease_id = $2 AND expires_ms > {now}
RETURNING seq
