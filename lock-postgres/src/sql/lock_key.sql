-- Locks the key row of $1 for the rest of the transaction: a release whose
-- snapshot was overtaken runs again behind this lock, where its snapshot
-- is taken after every other writer of the key committed.
SELECT 1 FROM {table} WHERE key = $1 FOR UPDATE
