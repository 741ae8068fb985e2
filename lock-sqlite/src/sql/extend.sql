-- An acquisition sent again finds its own live entry $2 of key $1: moves
-- its expiry to $3 ms from now, marks it holding when $4.
UPDATE {entries} SET expires_ms = {now} + $3, holding = holding OR $4
WHERE key = $1 AND seq = $2 AND expires_ms > {now}
