-- A waiter on $1 marks the row for $2 microseconds, so that a release in
-- that time notifies; returns whether the key is held right now. The row
-- lock orders this against releases: either the release sees the mark, or
-- this sees the key free.
UPDATE {table}
SET wanted_until = greatest(wanted_until, clock_timestamp() + $2::bigint::float8 * interval '1 microsecond')
WHERE key = $1
RETURNING lease_id IS NOT NULL AND expires_at > clock_timestamp() AS live
