-- dlock renew: extends every live entry of the batch that carries its
-- lease id: held ones to the ttl; waiting ones by their waiter ttl, or to
-- the ttl when they hold by now. Never creates an entry.
--
-- KEYS[i]         the state of entry i's lock (the other names are made
--                 from it)
-- ARGV[1]         ttl in ms
-- ARGV[2i..2i+1]  entry i: lease id; then "" (held), a waiter ttl in ms
--                 (waiting), or "?" (waiting, only look)
--
-- Reply: one string per entry, in order: "r" renewed, "g<token>" holds
-- (the token empty when it mints none), "w<ms>" still waits (an entry
-- ahead may expire in ms, empty when none is known), "l" lost, or
-- "c<key index><what is wrong>".

--[[common]]

local ttl = ARGV[1]
local now, now_us = clock()

local function renew(id, wttl)
  local st = load(redis.pcall('GET', K[1]), now, now_us)
  settle(st, now)
  for _, h in ipairs(st.holders) do
    if h.id == id then
      if wttl ~= '?' then
        h.i, h.t, h.e, st.dirty = now_us, ttl, now + ttl * 1000, true
      end
      save(st, true)
      if wttl == '' then
        return 'r'
      end
      return 'g' .. (is_fenced(h.m) and h.q or '')
    end
  end
  local outcome = 'l'
  if st.w then
    local value = redis.pcall('HGET', K[3], id)
    if type(value) == 'table' then
      corrupt(3, 'holds a ' .. type_of(K[3]) .. ', not a hash')
    end
    local w = value and waiter(id, value)
    if w and w.e > now then
      if wttl == '' then
        -- Renewed as held, but it waits: its holder is mistaken; drop the
        -- entry rather than let it block the queue.
        unqueue(id)
        st.dirty = true
        settle(st, now)
      else
        if wttl ~= '?' then
          w.i, w.t = now_us, wttl
          redis.call('HSET', K[3], id, waiter_value(w))
        end
        local after = retry_after(st, now, id)
        outcome = 'w' .. (after >= 0 and after or '')
      end
    end
  end
  save(st, true)
  return outcome
end

local outcomes = {}
for n = 1, #KEYS do
  names(KEYS[n])
  local ok, outcome = pcall(renew, ARGV[2 * n], ARGV[2 * n + 1])
  if not ok then
    if type(outcome) == 'table' and outcome.corrupt then
      outcome = 'c' .. outcome.corrupt .. outcome.what
    else
      error(outcome)
    end
  end
  outcomes[n] = outcome
end
return outcomes
