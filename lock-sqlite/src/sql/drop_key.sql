-- With fencing off: deletes the row of key $1, and with it its counter,
-- once the key has no entry at all.
DELETE FROM {table}
WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM {entries} WHERE key = $1)
