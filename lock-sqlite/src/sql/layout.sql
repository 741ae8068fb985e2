-- The columns of table $1 (none when it does not exist), and '#trigger'
-- when the trigger $2 exists.
SELECT name FROM pragma_table_info($1)
UNION ALL
SELECT '#trigger' FROM sqlite_master WHERE type = 'trigger' AND name = $2
