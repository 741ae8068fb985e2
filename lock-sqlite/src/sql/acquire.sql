-- Grants $1 to ($2, $3) for $4 ms iff no live lease exists; $5 is 1 to
-- mint a fencing token (the row's counter + 1), else 0. Returns the token
-- and the owner of an expired lease taken over; no row when held.
INSERT INTO {table} (key, owner, lease_id, expires_ms, token, previous_owner)
VALUES ($1, $2, $3, {now} + $4, $5, NULL)
ON CONFLICT (key) DO UPDATE
SET owner = excluded.owner,
    lease_id = excluded.lease_id,
    expires_ms = excluded.expires_ms,
    token = token + excluded.token,
    previous_owner = CASE WHEN lease_id IS NOT NULL THEN owner END
WHERE lease_id IS NULL OR expires_ms <= {now}
RETURNING token, previous_owner
