-- dlock renew: extends every lease of the batch that is still live and
-- still carries the expected lease id. Never creates a lease.
--
-- KEYS[i]    lock key of entry i
-- ARGV[1]    time to live in milliseconds
-- ARGV[i+1]  32 hex digits: the lease id entry i must carry
--
-- Reply: one integer per entry, in order: 1 renewed, 0 lost (absent,
-- expired or superseded), -1 the key holds another type, -2 the key holds
-- a string that is not a lease.

local ttl = ARGV[1]
local outcomes = {}
for i, lock in ipairs(KEYS) do
  local current = redis.pcall("GET", lock)
  if type(current) == "table" then
    outcomes[i] = -1
  elseif not current then
    outcomes[i] = 0
  elseif #current < 33
    or string.byte(current, 33) ~= 58
    or string.find(string.sub(current, 1, 32), "^%x+$") == nil then
    outcomes[i] = -2
  elseif string.sub(current, 1, 32) == ARGV[i + 1] then
    redis.call("PEXPIRE", lock, ttl)
    outcomes[i] = 1
  else
    outcomes[i] = 0
  end
end
return outcomes
