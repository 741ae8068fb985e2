-- Extends every lease of the batch ($1 keys, $2 lease ids) that is still
-- live and still carries that lease id, to $3 microseconds from now.
-- Returns the (key, lease id) pairs renewed; the others are lost.
UPDATE {table} AS l
SET expires_at = clock_timestamp() + $3::bigint::float8 * interval '1 microsecond'
FROM unnest($1::text[], $2::bytea[]) AS b(key, lease_id)
WHERE l.key = b.key
  AND l.lease_id = b.lease_id
  AND l.expires_at > clock_timestamp()
RETURNING l.key, l.lease_id
