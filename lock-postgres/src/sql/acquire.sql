-- Grants $1 to ($2, $3) for $4 microseconds iff no live lease exists.
-- $5 is 1 to mint a fencing token (the row's counter + 1), else 0.
-- One row comes back: (true, token, previous owner) when granted, or
-- (false, token, holder, remaining microseconds) when held.
--
-- The statement's snapshot decides the path: a key seen held is answered
-- from that read without touching the row (waiters take no row lock and
-- write nothing); a key seen free is updated in place, re-checking
-- liveness on the latest row version under its lock; a key never seen is
-- inserted. If someone won meanwhile, no row comes back and the caller
-- asks again.
WITH current AS (
    SELECT owner, token,
           lease_id IS NOT NULL AND expires_at > clock_timestamp() AS live,
           (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint AS remaining_us
    FROM {table}
    WHERE key = $1
),
taken AS (
    UPDATE {table} AS l
    SET owner = $2,
        lease_id = $3,
        expires_at = clock_timestamp() + $4::bigint::float8 * interval '1 microsecond',
        token = l.token + $5,
        previous_owner = CASE WHEN l.lease_id IS NOT NULL THEN l.owner END
    WHERE l.key = $1
      AND EXISTS (SELECT 1 FROM current WHERE NOT live)
      AND (l.lease_id IS NULL OR l.expires_at <= clock_timestamp())
    RETURNING l.token, l.previous_owner
),
created AS (
    INSERT INTO {table} (key, owner, lease_id, expires_at, token, previous_owner)
    SELECT $1, $2, $3, clock_timestamp() + $4::bigint::float8 * interval '1 microsecond', $5, NULL
    WHERE NOT EXISTS (SELECT 1 FROM current)
    ON CONFLICT (key) DO NOTHING
    RETURNING token, previous_owner
)
SELECT true AS granted, token, previous_owner AS owner, NULL::bigint AS remaining_us
FROM taken
UNION ALL
SELECT true, token, previous_owner, NULL FROM created
UNION ALL
SELECT false, token, owner, remaining_us
FROM current
WHERE live
