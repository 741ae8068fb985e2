-- What the migration finds: $1 is the quoted key table, $2 the quoted
-- entries table. `legacy` is the layout of the previous version (one row
-- per key with the lease in it: owner, lease_id, expires_at, token,
-- previous_owner, wanted_until).
SELECT to_regclass($1) IS NOT NULL AS has_table,
       to_regclass($2) IS NOT NULL AS has_entries,
       EXISTS (
           SELECT 1 FROM pg_attribute
           WHERE attrelid = to_regclass($1) AND attname = 'lease_id' AND NOT attisdropped
       ) AS legacy,
       EXISTS (
           SELECT 1 FROM pg_attribute
           WHERE attrelid = to_regclass($1) AND attname = 'version' AND NOT attisdropped
       ) AS current
