-- dlock inspect: what the store knows about one lock.
--
-- KEYS[1]  the lock's state (the other names are made from it)
--
-- Replies:
--   {"none"} when the lock has no state
--   {"info", last token or "", limit (0: no live entry), waiting entries,
--    then owner, remaining ms, mode of each holder in grant order}
--   {"corrupt", key index, what is wrong}

--[[common]]

names(KEYS[1])

return guarded(function()
  local now, now_us = clock()
  local st = load(redis.pcall('GET', K[1]), now, now_us)
  if st.absent then
    local token = legacy_token()
    if token then
      return {'info', token, 0, 0}
    end
    return {'none'}
  end
  settle(st, now)
  local waiting = 0
  if st.w then
    local offset = 0
    repeat
      local ids, values = queued(offset, 1000)
      for i, id in ipairs(ids) do
        if values[i] and waiter(id, values[i]).e > now then
          waiting = waiting + 1
        end
      end
      offset = offset + 1000
    until #ids < 1000
  end
  save(st, true)
  local limit = st.limit
  if #st.holders == 0 and waiting == 0 then
    limit = 0
  end
  local reply = {'info', st.counter or '', limit, waiting}
  for _, h in ipairs(st.holders) do
    reply[#reply + 1] = h.o
    reply[#reply + 1] = math.floor((h.e - now) / 1000)
    reply[#reply + 1] = h.m
  end
  return reply
end)
