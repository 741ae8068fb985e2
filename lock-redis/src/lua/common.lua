-- dlock: what every script shares beyond its fast path. A lock is a queue
-- of entries (see RedisKeys in keys.rs for the layout):
--
--   K[1] S  the state string (KEYS[1]), no expiry. Idle: "<counter>".
--              One holder, nobody waiting, the holder's token the counter
--              (what a fast grant writes, and a fast release reads; <seq>
--              and <renewed> have 16 digits, <ttl> 20 (zeros first), so
--              the fields sit at fixed places from either end but for the
--              owner's):
--              "<seq>,<lease id><m>,<ttl ms>,<limit>,<owner>,<renewed us>".
--              A fast release overwrites its "<lease id><m>" with RELEASED
--              (idle again, the counter <seq>; the rest means nothing).
--              Otherwise "<counter (16 digits)>,<limit>,<w>,<n>,<previous
--              owner (n bytes)>" followed by one
--              ";<lease id><m><seq>,<renewed us>,<ttl ms>,<n>,<owner>" per
--              holder, in grant order. <w> is 1 while the queue may hold
--              waiting entries; <m> is x (exclusive) or s (shared), upper
--              case when the entry mints no token; an entry expires <ttl>
--              after <renewed> (the server's clock when it was last granted
--              or renewed).
--   K[2] Z  "...:queue:...", sorted set of waiting lease ids by sequence
--   K[3] E  "...:waiting:...", hash: lease id ->
--              "<m><seq>,<renewed us>,<ttl ms>,<owner>" of each waiting entry
--   K[4] F  "...:fence:...", the previous version's fencing hash, read
--              once to migrate
--   C       "...:chan:...", the channel that grants by position are told on
--
-- The other names are made from S's (same hash tag, so same slot).
-- Sequence numbers are the fencing tokens: max(counter + 1, TIME in us).
-- Errors for data dlock did not write are raised as {corrupt = i, what =
-- text} (i: the KEYS index at fault) before anything is written, and
-- returned as {"corrupt", i, text}. K holds the names of the lock at hand.

local K, C

-- The command that tells promoted entries they hold: PUBLISH, or SPUBLISH
-- in a Cluster. Part of the text (ops/mod.rs writes which), not an
-- argument: every argument costs the server time on every call.
local publish = 'PUBLISH'

-- What a fast release writes over the lone holder's lease id and mode.
local RELEASED = '---------------------------------'

-- Sets K and C for the lock whose state is named S.
local function names(S)
  local at = string.find(S, '}:lock:', 1, true)
  local base, key = string.sub(S, 1, at), string.sub(S, at + 7)
  K = {S, base .. ':queue:' .. key, base .. ':waiting:' .. key, base .. ':fence:' .. key}
  C = base .. ':chan:' .. key
end

local function corrupt(which, what)
  error({corrupt = which, what = what})
end

local function type_of(key)
  return redis.call('TYPE', key)['ok']
end

-- Runs f, turning a corrupt error into the reply for it.
local function guarded(f)
  local ok, reply = pcall(f)
  if ok then
    return reply
  end
  if type(reply) == 'table' and reply.corrupt then
    return {'corrupt', reply.corrupt, reply.what}
  end
  error(reply)
end

-- The server's clock in microseconds: a number, and its digits. Expiry
-- times are compared in microseconds (below 2^53, exact).
local function clock()
  local t = redis.call('TIME')
  local us = t[2]
  return t[1] * 1000000 + us, t[1] .. string.sub('00000', #us) .. us
end

-- The next sequence number after counter (digits or nil): floored at the
-- clock, so that it keeps increasing after a restart that lost the data.
local function next_seq(counter, now_us)
  if not counter or #counter < #now_us or (#counter == #now_us and counter < now_us) then
    return now_us
  end
  return string.format('%.0f', counter + 1)
end

local function exact(digits)
  -- Sequence numbers stay below 2^53, where Lua numbers are exact.
  return #digits < 16 or (#digits == 16 and digits < '9007199254740992')
end

local function is_fenced(m)
  return m == 'x' or m == 's'
end

local function is_shared(m)
  return m == 's' or m == 'S'
end

local function is_lease_id(id)
  return #id == 32 and not string.find(id, '[^0-9a-f]')
end

-- A waiting entry from its hash value.
local function waiter(id, value)
  local m, q, i, t, o = string.match(value, '^([xsXS])(%d+),(%d+),(%d+),(.*)$')
  if not m or not exact(q) or not exact(i) then
    corrupt(3, 'holds a waiting entry dlock did not write')
  end
  return {id = id, m = m, q = q, i = i, t = t, o = o, e = i + t * 1000}
end

-- Whether a live shared entry holds or waits on the key: only those agree
-- on a limit. Reads the waiting entries (only on the way to refusing a
-- request for its limit).
local function has_shared(st, now)
  for _, h in ipairs(st.holders) do
    if is_shared(h.m) then
      return true
    end
  end
  if st.w then
    local all = redis.call('HGETALL', K[3])
    for i = 1, #all, 2 do
      local w = waiter(all[i], all[i + 1])
      if w.e > now and is_shared(w.m) then
        return true
      end
    end
  end
  return false
end

-- A waiting entry's hash value.
local function waiter_value(w)
  return w.m .. w.q .. ',' .. w.i .. ',' .. w.t .. ',' .. w.o
end

-- The state read from S (its GET reply), migrating a lease written by the
-- previous version (a "<lease id>:<owner>" string with PX, its token in F).
local function load(s, now, now_us)
  if type(s) == 'table' then
    corrupt(1, 'holds a ' .. type_of(K[1]) .. ', not a lock state string')
  end
  local st = {holders = {}, limit = 0, w = false}
  if not s then
    st.absent = true
    return st
  end
  if string.find(s, '^%d+$') then
    if not exact(s) then
      corrupt(1, 'holds a counter that is not a number below 2^53')
    end
    st.counter = s
    return st
  end
  if string.byte(s, 17) == 44 and string.find(s, RELEASED, 18, true) == 18 then
    -- Left by a fast release: the counter, and what no longer counts.
    local q = string.sub(s, 1, 16)
    if not string.find(q, '^%d+$') or not exact(q) then
      corrupt(1, 'holds a string that is not a lock state')
    end
    st.counter = q
    return st
  end
  local q, id, m, t, l, at = string.match(s, '^(%d+),(%x+)([xsXS]),(%d+),(%d+),()')
  if q then
    -- The lone holder's form.
    local i = string.sub(s, -16)
    if #q ~= 16 or #id ~= 32 or not exact(q) or #s < at + 16 or string.byte(s, -17) ~= 44
      or not string.find(i, '^%d+$') or not exact(i) then
      corrupt(1, 'holds a string that is not a lock state')
    end
    st.counter, st.limit = q, tonumber(l)
    st.holders[1] = {id = id, m = m, q = q, i = i, t = t, o = string.sub(s, at, -18),
      e = i + t * 1000}
    return st
  end
  local c, l, w, pl, pos = string.match(s, '^(%d+),(%d+),([01]),(%d+),()')
  if c then
    if not exact(c) then
      corrupt(1, 'holds a counter that is not a number below 2^53')
    end
    st.counter, st.limit, st.w = c, tonumber(l), w == '1'
    pl = tonumber(pl)
    if pl > 0 then
      st.prev = string.sub(s, pos, pos + pl - 1)
    end
    pos = pos + pl
    local holders, n = st.holders, #s
    while pos <= n do
      local id, m, q, i, t, ol, at = string.match(s, '^;(%x+)([xsXS])(%d+),(%d+),(%d+),(%d+),()', pos)
      if not id or #id ~= 32 or not exact(q) or not exact(i) then
        corrupt(1, 'holds a string that is not a lock state')
      end
      local o = string.sub(s, at, at + ol - 1)
      if #o ~= tonumber(ol) then
        corrupt(1, 'holds a string that is not a lock state')
      end
      holders[#holders + 1] = {id = id, m = m, q = q, i = i, t = t, ol = ol, o = o,
        e = i + t * 1000}
      pos = at + #o
    end
    if pos ~= n + 1 then
      corrupt(1, 'holds a string that is not a lock state')
    end
    return st
  end
  if #s >= 33 and string.byte(s, 33) == 58 and not string.find(string.sub(s, 1, 32), '[^%x]') then
    -- The previous version's lease: carry it over as the holder.
    local left = redis.call('PTTL', K[1])
    local token = redis.pcall('HGET', K[4], 'token')
    if type(token) == 'table' then
      corrupt(4, 'holds a ' .. type_of(K[4]) .. ', not a hash')
    end
    if not token or not string.find(token, '^%d+$') or not exact(token) then
      token = now_us
    end
    st.counter, st.limit, st.dirty, st.drop_fence = token, 1, true, true
    if left > 0 then
      st.holders[1] = {id = string.lower(string.sub(s, 1, 32)), m = 'x', q = token, i = now_us,
        t = left, o = string.sub(s, 34), e = now + left * 1000}
    end
    return st
  end
  corrupt(1, 'holds a string that is not a lock state')
end

-- The previous version's fencing counter, for a key without state.
local function legacy_token()
  local token = redis.pcall('HGET', K[4], 'token')
  if type(token) == 'table' then
    corrupt(4, 'holds a ' .. type_of(K[4]) .. ', not a hash')
  end
  if token and (not string.find(token, '^%d+$') or not exact(token)) then
    corrupt(4, 'holds a token that is not a number below 2^53')
  end
  return token
end

-- Removes the waiting entry id from the queue.
local function unqueue(id)
  local removed = redis.pcall('ZREM', K[2], id)
  if type(removed) == 'table' then
    corrupt(2, 'holds a ' .. type_of(K[2]) .. ', not a sorted set')
  end
  redis.call('HDEL', K[3], id)
end

-- The first live-or-not waiting ids from offset on (up to count), with
-- their hash values.
local function queued(offset, count)
  local ids = redis.pcall('ZRANGE', K[2], offset, offset + count - 1)
  if ids.err then
    corrupt(2, 'holds a ' .. type_of(K[2]) .. ', not a sorted set')
  end
  local values = {}
  if #ids > 0 then
    values = redis.pcall('HMGET', K[3], unpack(ids))
    if values.err then
      corrupt(3, 'holds a ' .. type_of(K[3]) .. ', not a hash')
    end
  end
  for _, id in ipairs(ids) do
    if not is_lease_id(id) then
      corrupt(2, 'holds a member that is not a lease id')
    end
  end
  return ids, values
end

-- Drops expired holders, then lets waiting entries hold by position: an
-- entry holds when every live entry before it holds and it is compatible
-- (exclusive: alone; shared: with shared ones, fewer than the limit).
-- Reads everything before it writes. Fills st.promoted.
local function settle(st, now)
  local kept = {}
  for _, h in ipairs(st.holders) do
    if h.e > now then
      kept[#kept + 1] = h
    else
      st.prev, st.dirty = h.o, true
    end
  end
  st.holders = kept
  st.promoted = st.promoted or {}
  if not st.w then
    return
  end
  local removed, offset = {}, 0
  while true do
    local n = #kept
    if n > 0 and (n >= st.limit or not is_shared(kept[1].m)) then
      break
    end
    -- As many as could still hold (a few more only when some are gone);
    -- at least the head, which may be exclusive (the limit is 0 while no
    -- shared entry set it).
    local want = math.min(8, math.max(st.limit - n, 1))
    local ids, values = queued(offset, want)
    local blocked = false
    for i, id in ipairs(ids) do
      local value = values[i]
      local w = value and waiter(id, value)
      if not w or w.e <= now then
        removed[#removed + 1] = id
      else
        local count = #kept
        local fits
        if is_shared(w.m) then
          fits = count < st.limit and (count == 0 or is_shared(kept[1].m))
        else
          fits = count == 0
        end
        if not fits then
          blocked = true
          break
        end
        kept[count + 1] = w
        removed[#removed + 1] = id
        st.promoted[#st.promoted + 1] = w
      end
    end
    if blocked then
      break
    end
    if #ids < want then
      -- Every waiting entry is gone or holds.
      st.w, st.dirty = false, true
      break
    end
    offset = offset + want
  end
  if #removed > 0 then
    redis.call('ZREM', K[2], unpack(removed))
    redis.call('HDEL', K[3], unpack(removed))
    st.dirty = true
  end
end

-- Writes the state back (deleting it when it is empty and keep_counter is
-- false), then tells the promoted entries on the channel. The fast paths
-- read the lone holder's form by position, so a token of another width
-- (carried over from the previous version) takes the general form.
local function save(st, keep_counter)
  if st.drop_fence then
    redis.call('DEL', K[4])
  end
  if st.dirty then
    local holders = st.holders
    local lone = holders[1]
    if #holders == 0 and not st.w and not st.prev then
      if keep_counter and st.counter then
        redis.call('SET', K[1], st.counter)
      else
        redis.call('DEL', K[1])
      end
    elseif #holders == 1 and not st.w and not st.prev and lone.q == st.counter and #lone.q == 16
      and #lone.i == 16 then
      -- (A carried-over lease's ttl is a number: digits, never 1e+17.)
      local ttl = string.format('%.0f', lone.t)
      redis.call('SET', K[1], lone.q .. ',' .. lone.id .. lone.m .. ',' .. string.rep('0', 20 - #ttl)
        .. ttl .. ',' .. st.limit .. ',' .. lone.o .. ',' .. lone.i)
    else
      local prev = st.prev or ''
      local limit = st.limit
      if #holders == 0 and not st.w then
        limit = 0
      end
      -- 16 digits, so that nothing of this form sits where the lone
      -- holder's lease id or RELEASED does.
      local counter = st.counter
      if #counter < 16 then
        counter = string.rep('0', 16 - #counter) .. counter
      end
      local parts = {counter, ',', limit, ',', st.w and '1' or '0', ',', #prev, ',', prev}
      for _, h in ipairs(holders) do
        parts[#parts + 1] = ';' .. h.id .. h.m .. h.q .. ',' .. h.i .. ',' .. h.t .. ',' .. (h.ol or #h.o)
          .. ',' .. h.o
      end
      redis.call('SET', K[1], table.concat(parts))
    end
  end
  local promoted = st.promoted
  if promoted and #promoted > 0 then
    local parts = {}
    for i, h in ipairs(promoted) do
      parts[i] = h.id .. ':' .. (is_fenced(h.m) and h.q or '')
    end
    redis.call(publish, C, table.concat(parts, ' '))
  end
end

-- How soon an entry ahead of waiting entry id may expire, in ms (-1: none
-- known): the holders and the first waiting entry.
local function retry_after(st, now, id)
  local best = -1
  for _, h in ipairs(st.holders) do
    if best < 0 or h.e - now < best then
      best = h.e - now
    end
  end
  local ids, values = queued(0, 1)
  local first = ids[1]
  if first and first ~= id then
    local value = values[1]
    if value then
      local e = waiter(first, value).e
      if best < 0 or e - now < best then
        best = e - now
      end
    end
  end
  if best < 0 then
    return -1
  end
  return math.floor(best / 1000)
end

-- The holder's reply fields: owner, remaining ms, mode.
local function holder_reply(h, now)
  return h.o, math.floor((h.e - now) / 1000), h.m
end
