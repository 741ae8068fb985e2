CREATE TABLE IF NOT EXISTS {table} (
    key TEXT PRIMARY KEY NOT NULL,
    owner TEXT,
    lease_id BLOB,
    expires_ms INTEGER NOT NULL DEFAULT 0,
    token INTEGER NOT NULL DEFAULT 0,
    previous_owner TEXT
) WITHOUT ROWID
