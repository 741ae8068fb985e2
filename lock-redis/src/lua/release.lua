-- dlock release: removes the live entry of a lease (holding or waiting);
-- the entries it kept waiting hold from this step on, and are told so on
-- the lock's channel. Never removes by key alone.
--
-- KEYS[1]  the lock's state (the other names are made from it)
-- ARGV[1]  lease id (32 lower-case hex digits)
-- ARGV[2]  "1" to keep the counter, "0" to delete a state left empty;
--          then "P" (PUBLISH) or "S" (SPUBLISH, Cluster)
--
-- Replies: 1 released, 0 not held (nothing changed), or
-- {"corrupt", key index, what is wrong}.

local s = redis.pcall('GET', KEYS[1])
if not s then
  return 0
end
-- Fast path: the lease is the only entry, nobody waits.
if type(s) == 'string' then
  local counter, holder, i, t, ol, at =
    string.match(s, '^(%d+),%d+,0,0,;(%x+)[xsXS]%d+,(%d+),(%d+),(%d+),()')
  if holder == ARGV[1] and at + ol == #s + 1 then
    local now = redis.call('TIME')
    if i + t * 1000 > now[1] * 1000000 + now[2] then
      if string.byte(ARGV[2], 1) == 49 then
        redis.call('SET', KEYS[1], counter)
      else
        redis.call('DEL', KEYS[1])
      end
      return 1
    end
  end
end

--[[common]]

names(KEYS[1])
local id = ARGV[1]
local keep = string.sub(ARGV[2], 1, 1) == '1'
local publish = string.sub(ARGV[2], 2, 2) == 'S' and 'SPUBLISH' or 'PUBLISH'

return guarded(function()
  local now, now_us = clock()
  local st = load(s, now, now_us)
  settle(st, now)
  local released = false
  local holders = st.holders
  for index, h in ipairs(holders) do
    if h.id == id then
      table.remove(holders, index)
      st.prev, st.dirty, released = nil, true, true
      break
    end
  end
  if not released and st.w then
    local value = redis.pcall('HGET', K[3], id)
    if type(value) == 'table' then
      corrupt(3, 'holds a ' .. type_of(K[3]) .. ', not a hash')
    end
    if value and waiter(id, value).e > now then
      unqueue(id)
      st.dirty, released = true, true
    end
  end
  if released then
    -- The entries behind it may hold now.
    settle(st, now)
  end
  save(st, keep, publish)
  if released then
    return 1
  end
  return 0
end)
