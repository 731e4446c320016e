-- Claims an idempotency key, or returns the live record.
--
-- KEYS[1]  record key (see src/layers/idempotency/record.rs)
-- ARGV     token, fingerprint, lock_us, now_us ("" = Redis TIME)
-- returns  "" when claimed, else the stored record

local now = now_us(ARGV[4])
local current = redis.call('GET', KEYS[1])
if current then
  local expires = tonumber(string.match(current, '^%a:(%d+):'))
  if expires and expires > now then
    return current
  end
end
local lock = tonumber(ARGV[3])
local value = string.format('I:%d:%s:%s', now + lock, ARGV[1], ARGV[2])
redis.call('SET', KEYS[1], value, 'PX', math.ceil(lock / 1000))
return ''
