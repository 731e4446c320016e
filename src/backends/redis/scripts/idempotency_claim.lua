-- Claims an idempotency key, or returns the live record.
--
-- KEYS[1]  record key (see src/layers/idempotency/record.rs)
-- ARGV     token, fingerprint, lock_us, now_us ("" = Redis TIME)
-- returns  "" when claimed, else the stored record

local now
if ARGV[4] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[4])
end
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
