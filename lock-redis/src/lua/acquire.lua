-- dlock acquire: grants the lock KEYS[1] if no live lease holds it, and
-- mints the fencing token in the same atomic step.
--
-- KEYS[1]  lock key: a string "<32 hex lease id>:<owner>" with a PX expiry
-- KEYS[2]  fencing key: a hash {token = last token, holder = lock value of
--          the last grant, removed again on release}
-- ARGV[1]  the new lock value "<32 hex lease id>:<owner>"
-- ARGV[2]  time to live in milliseconds
-- ARGV[3]  "1" to mint a fencing token, "0" not to
--
-- Replies:
--   {"granted", token or "", value of an expired, unreleased lease or ""}
--   {"held", value of the live lease, its PTTL in ms (-1: no expiry)}
--   {"corrupt", 1 or 2 (the key at fault), what is wrong}

local function is_lease(value)
  return #value >= 33
    and string.byte(value, 33) == 58 -- ":"
    and string.find(string.sub(value, 1, 32), "^%x+$") ~= nil
end

local function type_of(key)
  return redis.call("TYPE", key)["ok"]
end

local lock, fence = KEYS[1], KEYS[2]
local value, ttl, fencing = ARGV[1], ARGV[2], ARGV[3] == "1"

local current = redis.pcall("GET", lock)
if type(current) == "table" then
  return {"corrupt", 1, "holds a " .. type_of(lock) .. ", not a lease string"}
end
if current then
  if not is_lease(current) then
    return {"corrupt", 1, "holds a string that is not a lease"}
  end
  if current ~= value then
    return {"held", current, redis.call("PTTL", lock)}
  end
  -- Our own lease: this request was sent again after its reply was lost.
  -- Grant it again, unchanged, with the token it was minted.
  local token = ""
  if fencing then
    local minted = redis.pcall("HGET", fence, "token")
    if type(minted) == "string" then
      token = minted
    end
  end
  return {"granted", token, ""}
end

local token, previous = "", ""
if fencing then
  local state = redis.pcall("HMGET", fence, "token", "holder")
  if state["err"] then
    return {"corrupt", 2, "holds a " .. type_of(fence) .. ", not a hash"}
  end
  local last, holder = state[1], state[2]
  local time = redis.call("TIME")
  -- Floor at the server's clock in microseconds, so that tokens keep
  -- increasing after a restart that lost the counter.
  local next = tonumber(time[1] .. string.format("%06d", tonumber(time[2])))
  if last then
    -- Tokens stay below 2^53, where Lua numbers are exact.
    if not string.find(last, "^%d+$") or #last > 16 or tonumber(last) >= 9007199254740991 then
      return {"corrupt", 2, "holds a token that is not a number below 2^53"}
    end
    local counted = tonumber(last) + 1
    if counted > next then
      next = counted
    end
  end
  token = string.format("%.0f", next)
  if holder and is_lease(holder) then
    -- The last grant was never released: it expired and is taken over.
    previous = holder
  end
  redis.call("HSET", fence, "token", token, "holder", value)
end
redis.call("SET", lock, value, "PX", ttl)
return {"granted", token, previous}
