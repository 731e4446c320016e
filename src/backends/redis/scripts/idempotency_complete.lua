-- Stores the response of a claim, if the claim is still the caller's.
--
-- KEYS[1]  record key
-- ARGV     token, fingerprint, response bytes, retention_us, now_us ("" = TIME)
-- returns  1 when stored, 0 when the claim is gone

local current = redis.call('GET', KEYS[1])
if not current or string.match(current, '^I:%d+:(%x+):') ~= ARGV[1] then
  return 0
end
local now = now_us(ARGV[5])
local retention = tonumber(ARGV[4])
local value = string.format('C:%d:%s:', now + retention, ARGV[2]) .. ARGV[3]
redis.call('SET', KEYS[1], value, 'PX', math.ceil(retention / 1000))
return 1
