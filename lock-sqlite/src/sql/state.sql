-- The database's clock and the entries of key $1 in sequence order, read
-- without a lock: to answer an acquisition that added nothing, or the
-- holder and retry time of one that queued.
SELECT {now} AS now_ms, seq, lease_id, owner, shared, lim, expires_ms
FROM {entries}
WHERE key = $1
ORDER BY seq
