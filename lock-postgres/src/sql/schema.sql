-- The key rows and the entries of the queue layout. Run inside the
-- migration's transaction, as one simple-protocol batch.
--
-- A key row carries the sequence counter (the last fencing token, bumped
-- by every entry added), the limit its live entries agreed on, how many
-- entries it has (live or expired, until deleted) and how many of them are
-- exclusive, and a version bumped by every release. A statement decides
-- from its snapshot, then checks the decision against the key row's latest
-- version while it holds the row's lock.
CREATE TABLE IF NOT EXISTS {table} (
    key text PRIMARY KEY,
    token bigint NOT NULL DEFAULT 0,
    holder_limit integer NOT NULL DEFAULT 1,
    entry_count integer NOT NULL DEFAULT 0,
    exclusive_count integer NOT NULL DEFAULT 0,
    version bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 80);

-- One row per entry, holding or waiting, in sequence order per key. The
-- sequence number is the entry's fencing token. `holding` records that a
-- statement saw the entry hold (for the previous owner of a takeover);
-- who holds is decided by position.
CREATE TABLE IF NOT EXISTS {entries} (
    key text NOT NULL,
    seq bigint NOT NULL,
    lease_id bytea NOT NULL,
    owner text NOT NULL,
    shared boolean NOT NULL,
    expires_at timestamptz NOT NULL,
    holding boolean NOT NULL,
    PRIMARY KEY (key, seq)
) WITH (fillfactor = 80);
