-- dlock release: deletes the lock KEYS[1] if it carries the lease id, and
-- wakes waiters with a message on the key's channel. Never deletes by key
-- alone.
--
-- KEYS[1]  lock key
-- KEYS[2]  fencing key (hash); only its "holder" field goes while fencing
--          is kept, the whole key goes when it is not
-- ARGV[1]  32 hex digits: the lease id to release
-- ARGV[2]  "1" to keep the fencing state, "0" to delete it
-- ARGV[3]  the channel to notify
-- ARGV[4]  "PUBLISH", or "SPUBLISH" in Cluster mode (sharded channels)
--
-- Replies: {"released"}, {"notheld"}, {"corrupt", 1, what is wrong}

local lock, fence = KEYS[1], KEYS[2]
local current = redis.pcall("GET", lock)
if type(current) == "table" then
  return {"corrupt", 1, "holds a " .. redis.call("TYPE", lock)["ok"] .. ", not a lease string"}
end
if not current then
  return {"notheld"}
end
if #current < 33
  or string.byte(current, 33) ~= 58
  or string.find(string.sub(current, 1, 32), "^%x+$") == nil then
  return {"corrupt", 1, "holds a string that is not a lease"}
end
if string.sub(current, 1, 32) ~= ARGV[1] then
  return {"notheld"}
end
redis.call("DEL", lock)
if ARGV[2] == "1" then
  -- A fencing key of the wrong type is reported by the next acquire.
  redis.pcall("HDEL", fence, "holder")
else
  redis.call("DEL", fence)
end
redis.call(ARGV[4], ARGV[3], "released")
return {"released"}
