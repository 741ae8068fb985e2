-- The key's owner, whether its lease is live, the remaining ms, the counter.
SELECT owner,
       lease_id IS NOT NULL AND expires_ms > {now} AS live,
       expires_ms - {now} AS remaining_ms,
       token
FROM {table}
WHERE key = $1
