-- dlock release: removes the live entry of a lease (holding or waiting);
-- the entries it kept waiting hold from this step on, and are told so on
-- the lock's channel. Never removes by key alone.
--
-- KEYS[1]  the lock's state (the other names are made from it)
-- ARGV[1]  "<lease id><x or X>": 32 lower-case hex digits, then the mode
--          letter of an exclusive entry with the release's fencing (x: it
--          mints tokens), what the fast path looks for
-- ARGV[2]  absent with fencing on (the counter stays); present (any value)
--          with it off: a state left empty may be deleted
--
-- Replies: 1 released, 0 not held (nothing changed), or
-- {"corrupt", key index, what is wrong}.

local s = redis.pcall('GET', KEYS[1])
if not s then
  return 0
end
-- Fast path: the lease is the lone holder of an exclusive lock, with the
-- letter the release names (its fields sit at fixed places: common.lua),
-- and has not expired. Its "<lease id><m>" becomes RELEASED (of
-- common.lua): one write in place, nothing to cut out or copy.
if not s.err and string.find(s, ARGV[1], 18, true) == 18 then
  local t = redis.call('TIME')
  if string.sub(s, -16) + string.sub(s, 52, 71) * 1000 > t[1] * 1000000 + t[2] then
    if ARGV[2] then
      redis.call('DEL', KEYS[1])
    else
      -- ('17', not 17: a number argument is formatted by sprintf.)
      redis.call('SETRANGE', KEYS[1], '17', '---------------------------------')
    end
    return 1
  end
end

--[[common]]

names(KEYS[1])
local id = string.sub(ARGV[1], 1, 32)
local keep = not ARGV[2]

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
  save(st, keep)
  if released then
    return 1
  end
  return 0
end)
