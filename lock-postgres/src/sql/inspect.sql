-- The key's holder (when live), remaining microseconds and counter.
SELECT owner,
       lease_id IS NOT NULL AND expires_at > clock_timestamp() AS live,
       CASE WHEN lease_id IS NOT NULL AND expires_at > clock_timestamp()
            THEN (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint
       END AS remaining_us,
       token
FROM {table}
WHERE key = $1
