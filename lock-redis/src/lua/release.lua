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
-- Fast path: the lease is the lone holder (its form has fixed widths while
-- tokens have 16 digits: the lease id, its mode, token, renewal time).
if type(s) == 'string' and string.sub(s, 1, 32) == ARGV[1] and string.byte(s, 33) ~= 58
  and string.byte(s, 50) == 44 and string.byte(s, 67) == 44 then
  local comma = string.find(s, ',', 68, true)
  local t = redis.call('TIME')
  if comma and string.sub(s, 51, 66) + string.sub(s, 68, comma - 1) * 1000 > t[1] * 1000000 + t[2] then
    if string.byte(ARGV[2], 1) == 49 then
      redis.call('SET', KEYS[1], string.sub(s, 34, 49))
    else
      redis.call('DEL', KEYS[1])
    end
    return 1
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
