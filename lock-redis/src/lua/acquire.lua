-- dlock acquire: adds an entry for a lease to the lock's queue, holding at
-- once when it would hold at the end of the queue, else waiting (when the
-- request queues) or nothing.
--
-- KEYS[1]  the lock's state (the other names are made from it)
-- ARGV[1]  ",<lease id><mode>,<ttl ms>,<limit>,<owner>,": the lease id is
--          32 lower-case hex digits, the mode x or s, upper case to mint
--          no token, the ttl 20 digits (zeros first)
-- ARGV[2]  the waiter ttl in ms, for a request that queues (absent: it
--          does not)
--
-- Replies:
--   token (a string; the caller drops it when the request mints none),
--   when a free key was granted
--   {"granted", token or "", previous owner or ""}
--   {"held", owner, remaining ms, mode}
--   {"queued", token or "", holder owner or "", its remaining ms, its mode,
--    retry after ms (-1: none known)}
--   {"limit", the live entries' limit}
--   {"corrupt", key index, what is wrong}
--
-- The fast path is written for the server's time: each argument and each
-- C function call (string.*, type) costs about a quarter of a SET, so it
-- takes one argument and makes as few calls as it can.

-- Fast path: an idle key (released by a fast release, or its counter
-- alone) has no entry at all; the grant writes the lone holder's form
-- around the argument. A missing key is idle for a request that mints no
-- token (one that does looks for the previous version's counter first).
local s = redis.pcall('GET', KEYS[1])
local idle
if not s then
  idle = string.byte(ARGV[1], 34) < 96
elseif not s.err then
  -- (s.err: nil for a string, the message of an error reply.) The
  -- dashes are RELEASED of common.lua.
  idle = string.find(s, '---------------------------------', 18, true) == 18
    or (#s <= 16 and string.find(s, '^%d*$'))
end
if idle then
  local t = redis.call('TIME')
  local now = t[2]
  if #now < 6 then
    now = string.sub('00000', #now) .. now
  end
  now = t[1] .. now
  -- Tokens increase: s is the counter, or starts with it and a comma.
  if not s or #s < 16 or s < now then
    redis.call('SET', KEYS[1], now .. ARGV[1] .. now)
    return now
  end
end

--[[common]]

names(KEYS[1])
local id, m = string.sub(ARGV[1], 2, 33), string.sub(ARGV[1], 34, 34)
local fenced = is_fenced(m)
local ttl, limit, owner = string.match(ARGV[1], '^,%x+[xsXS],(%d+),(%d+),(.*),$')
limit = tonumber(limit)
local wttl = ARGV[2] or ''
local shared = is_shared(m)

return guarded(function()
  local now, now_us = clock()
  local st = load(s, now, now_us)
  if st.absent and fenced then
    local token = legacy_token()
    if token then
      st.counter, st.drop_fence = token, true
    end
  end
  settle(st, now)
  local holders = st.holders
  for _, h in ipairs(holders) do
    if h.id == id then
      -- Sent again after a lost reply: answer the entry as it stands.
      h.i, h.t, h.e, st.dirty = now_us, ttl, now + ttl * 1000, true
      save(st, true)
      return {'granted', is_fenced(h.m) and h.q or '', ''}
    end
  end
  local live = #holders > 0 or st.w
  -- Shared entries agree on the limit while any of them is live (0: none
  -- set since the key was idle); exclusive ones hold alone whatever it is,
  -- and neither set nor check it.
  if shared and live and st.limit ~= 0 and st.limit ~= limit and has_shared(st, now) then
    save(st, true)
    return {'limit', st.limit}
  end
  local holds
  if shared then
    holds = not st.w and #holders < limit and (#holders == 0 or is_shared(holders[1].m))
  else
    holds = not live
  end
  if holds then
    local seq = next_seq(st.counter, now_us)
    st.counter, st.dirty = seq, true
    if shared then
      st.limit = limit
    end
    holders[#holders + 1] = {id = id, m = m, q = seq, i = now_us, t = ttl, o = owner,
      e = now + ttl * 1000}
    local prev = st.prev or ''
    st.prev = nil
    save(st, true)
    return {'granted', fenced and seq or '', prev}
  end
  local first = holders[1]
  if wttl == '' then
    save(st, true)
    if not first then
      corrupt(1, 'holds a queue without holder')
    end
    return {'held', holder_reply(first, now)}
  end
  local seq = next_seq(st.counter, now_us)
  local entry = m .. seq .. ',' .. now_us .. ',' .. wttl .. ',' .. owner
  local added = redis.pcall('HSETNX', K[3], id, entry)
  if type(added) == 'table' then
    corrupt(3, 'holds a ' .. type_of(K[3]) .. ', not a hash')
  end
  if added == 0 then
    local existing = waiter(id, redis.call('HGET', K[3], id))
    if existing.e > now then
      -- Sent again after a lost reply: the entry waits already.
      save(st, true)
      local o, left, hm = '', -1, ''
      if first then
        o, left, hm = holder_reply(first, now)
      end
      return {'queued', is_fenced(existing.m) and existing.q or '', o, left, hm,
        retry_after(st, now, id)}
    end
    -- An expired entry of this lease deeper in the queue: line up anew.
    unqueue(id)
    redis.call('HSET', K[3], id, entry)
  end
  local zadd = redis.pcall('ZADD', K[2], seq, id)
  if type(zadd) == 'table' then
    redis.call('HDEL', K[3], id)
    corrupt(2, 'holds a ' .. type_of(K[2]) .. ', not a sorted set')
  end
  if shared then
    st.limit = limit
  end
  st.counter, st.w, st.dirty = seq, true, true
  save(st, true)
  local o, left, hm = '', -1, ''
  if first then
    o, left, hm = holder_reply(first, now)
  end
  return {'queued', fenced and seq or '', o, left, hm, retry_after(st, now, id)}
end)
