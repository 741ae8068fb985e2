-- dlock inspect: what the store knows about one lock.
--
-- KEYS[1]  lock key
-- KEYS[2]  fencing key (hash)
--
-- Replies:
--   {"none"} when neither key exists
--   {"info", value of the live lease or "", its PTTL in ms, last token or ""}
--   {"corrupt", 1 or 2 (the key at fault), what is wrong}

local lock, fence = KEYS[1], KEYS[2]
local current = redis.pcall("GET", lock)
if type(current) == "table" then
  return {"corrupt", 1, "holds a " .. redis.call("TYPE", lock)["ok"] .. ", not a lease string"}
end
local token = redis.pcall("HGET", fence, "token")
if type(token) == "table" then
  return {"corrupt", 2, "holds a " .. redis.call("TYPE", fence)["ok"] .. ", not a hash"}
end
if token and not string.find(token, "^%d+$") then
  return {"corrupt", 2, "holds a token that is not a number"}
end
if not current and not token and redis.call("EXISTS", fence) == 0 then
  return {"none"}
end
local ttl = -2
if current then
  if #current < 33
    or string.byte(current, 33) ~= 58
    or string.find(string.sub(current, 1, 32), "^%x+$") == nil then
    return {"corrupt", 1, "holds a string that is not a lease"}
  end
  ttl = redis.call("PTTL", lock)
end
return {"info", current or "", ttl, token or ""}
