-- Extends a live claim's lock, if it is still the caller's.
--
-- KEYS[1]  record key
-- ARGV     token, lock_us, now_us ("" = Redis TIME)
-- returns  1 when extended, else 0

local current = redis.call('GET', KEYS[1])
if not current then
  return 0
end
local expires, token, fingerprint = string.match(current, '^I:(%d+):(%x+):(.*)$')
if token ~= ARGV[1] then
  return 0
end
local now = now_us(ARGV[3])
if tonumber(expires) <= now then
  return 0
end
local lock = tonumber(ARGV[2])
local value = string.format('I:%d:%s:%s', now + lock, token, fingerprint)
redis.call('SET', KEYS[1], value, 'PX', math.ceil(lock / 1000))
return 1
