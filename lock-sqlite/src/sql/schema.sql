-- The key rows, the entries, and the trigger that keeps each key's counter:
-- the queue layout, created together in one transaction.
--
-- A key row carries the sequence counter: the last sequence number (and
-- fencing token) handed out for the key, kept when its entries go.
CREATE TABLE IF NOT EXISTS {table} (
    key TEXT PRIMARY KEY NOT NULL,
    token INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- One row per entry, holding or waiting, in sequence order per key; the
-- sequence number is the entry's fencing token. Expiry is in milliseconds
-- by the database's clock; `lim` is the limit the entry agreed on (every
-- live entry of a key has the same). `holding` records that a statement
-- saw the entry hold, `taken_from` the owner of the holding entry that
-- expired and was deleted when it was granted; who holds is decided by
-- position.
CREATE TABLE IF NOT EXISTS {entries} (
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    lease_id BLOB NOT NULL,
    owner TEXT NOT NULL,
    shared INTEGER NOT NULL,
    lim INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    holding INTEGER NOT NULL,
    taken_from TEXT,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;

-- Every entry added moves its key's counter to its sequence number and
-- deletes the key's entries that expired, in the adding statement itself.
CREATE TRIGGER IF NOT EXISTS {trigger} AFTER INSERT ON {entries}
BEGIN
    INSERT OR IGNORE INTO {table} (key, token) VALUES (NEW.key, 0);
    UPDATE {table} SET token = max(token, NEW.seq) WHERE key = NEW.key;
    DELETE FROM {entries}
    WHERE key = NEW.key AND seq < NEW.seq AND expires_ms <= {now};
END;
