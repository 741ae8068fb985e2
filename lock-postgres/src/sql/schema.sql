CREATE TABLE IF NOT EXISTS {table} (
    key text PRIMARY KEY,
    owner text,
    lease_id bytea,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    token bigint NOT NULL DEFAULT 0,
    previous_owner text,
    wanted_until timestamptz NOT NULL DEFAULT '-infinity'
)
