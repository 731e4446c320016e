-- Deletes a claim, if it is still the caller's.
--
-- KEYS[1]  record key
-- ARGV     token
-- returns  1 when deleted, else 0

local current = redis.call('GET', KEYS[1])
if current and string.match(current, '^I:%d+:(%x+):') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
