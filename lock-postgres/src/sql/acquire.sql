-- Grants $1 to ($2, $3) for $4 microseconds iff no live lease exists.
-- $5 is 1 to mint a fencing token (the row's counter + 1), else 0.
-- One row comes back: (true, token, previous owner) when granted, or
-- (false, token, holder, remaining microseconds) when held.
--
-- A key seen held in the statement's snapshot is answered from that read,
-- without touching the row: failed attempts of waiters take no row lock
-- and write nothing. Otherwise the upsert re-checks liveness on the latest
-- row version under its lock; if someone won meanwhile, no row comes back
-- and the caller asks again.
WITH current AS (
    SELECT owner, token,
           (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint AS remaining_us
    FROM {table}
    WHERE key = $1 AND lease_id IS NOT NULL AND expires_at > clock_timestamp()
),
attempt AS (
    INSERT INTO {table} AS l (key, owner, lease_id, expires_at, token, previous_owner)
    SELECT $1, $2, $3, clock_timestamp() + $4::bigint::float8 * interval '1 microsecond', $5, NULL
    WHERE NOT EXISTS (SELECT 1 FROM current)
    ON CONFLICT (key) DO UPDATE
    SET owner = excluded.owner,
        lease_id = excluded.lease_id,
        expires_at = excluded.expires_at,
        token = l.token + excluded.token,
        previous_owner = CASE WHEN l.lease_id IS NOT NULL THEN l.owner END
    WHERE l.lease_id IS NULL OR l.expires_at <= clock_timestamp()
    RETURNING l.token, l.previous_owner
)
SELECT true AS granted, token, previous_owner AS owner, NULL::bigint AS remaining_us
FROM attempt
UNION ALL
SELECT false, token, owner, remaining_us
FROM current
