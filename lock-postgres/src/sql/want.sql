-- A waiter on $1 makes sure a release in the next $2 microseconds
-- notifies, and learns whether the key is held right now.
--
-- The row is marked only when no earlier mark covers the wait, so a crowd
-- of waiters does not write (or lock) the row again and again. The row
-- lock orders a new mark against releases: either the release sees the
-- mark, or this sees the key free. An existing mark was committed before
-- this statement, so a release that commits later sees it too.
WITH marked AS (
    UPDATE {table}
    SET wanted_until = clock_timestamp() + 2 * $2::bigint::float8 * interval '1 microsecond'
    WHERE key = $1
      AND wanted_until < clock_timestamp() + $2::bigint::float8 * interval '1 microsecond'
    RETURNING lease_id IS NOT NULL AND expires_at > clock_timestamp() AS live
)
SELECT live FROM marked
UNION ALL
SELECT lease_id IS NOT NULL AND expires_at > clock_timestamp()
FROM {table}
WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM marked)
