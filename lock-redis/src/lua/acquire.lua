-- dlock acquire: adds an entry for a lease to the lock's queue, holding at
-- once when it would hold at the end of the queue, else waiting (when the
-- request queues) or nothing.
--
-- KEYS[1]  the lock's state (the other names are made from it)
-- ARGV[1]  "<lease id><mode>": 32 lower-case hex digits, then x or s, upper
--          case to mint no token
-- ARGV[2]  ",<ttl ms>,<limit>,<owner>"
-- ARGV[3]  "P" (PUBLISH) or "S" (SPUBLISH, Cluster), then the waiter ttl
--          in ms for a request that queues
--
-- Replies:
--   token (a string, empty when none is minted), when a free key was
--   granted
--   {"granted", token or "", previous owner or ""}
--   {"held", owner, remaining ms, mode}
--   {"queued", token or "", holder owner or "", its remaining ms, its mode,
--    retry after ms (-1: none known)}
--   {"limit", the live entries' limit}
--   {"corrupt", key index, what is wrong}

-- Fast path: a key whose state is its counter alone has no entry at all;
-- the grant writes the lone holder's form.
local s = redis.pcall('GET', KEYS[1])
local entry = ARGV[1]
local fenced = string.byte(entry, 33) > 96
if s == false and not fenced then
  s = ''
end
if type(s) == 'string' and not string.find(s, '[^%d]')
  and (#s < 16 or (#s == 16 and s < '9007199254740992')) then
  local t = redis.call('TIME')
  local us = t[2]
  local now = t[1] .. string.sub('00000', #us) .. us
  local seq = now
  if #s > #now or (#s == #now and s >= now) then
    seq = string.format('%.0f', s + 1)
  end
  redis.call('SET', KEYS[1], entry .. seq .. ',' .. now .. ARGV[2])
  if fenced then
    return seq
  end
  return ''
end

--[[common]]

names(KEYS[1])
local id, m = string.sub(entry, 1, 32), string.sub(entry, 33, 33)
local ttl, limit, owner = string.match(ARGV[2], '^,(%d+),(%d+),(.*)$')
limit = tonumber(limit)
local publish = string.sub(ARGV[3], 1, 1) == 'S' and 'SPUBLISH' or 'PUBLISH'
local wttl = string.sub(ARGV[3], 2)
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
      save(st, true, publish)
      return {'granted', is_fenced(h.m) and h.q or '', ''}
    end
  end
  local live = #holders > 0 or st.w
  -- Shared entries agree on the limit while any of them is live (0: none
  -- set since the key was idle); exclusive ones hold alone whatever it is,
  -- and neither set nor check it.
  if shared and live and st.limit ~= 0 and st.limit ~= limit and has_shared(st, now) then
    save(st, true, publish)
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
    save(st, true, publish)
    return {'granted', fenced and seq or '', prev}
  end
  local first = holders[1]
  if wttl == '' then
    save(st, true, publish)
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
      save(st, true, publish)
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
  save(st, true, publish)
  local o, left, hm = '', -1, ''
  if first then
    o, left, hm = holder_reply(first, now)
  end
  return {'queued', fenced and seq or '', o, left, hm, retry_after(st, now, id)}
end)
