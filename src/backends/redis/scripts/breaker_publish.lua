-- Writes a breaker state if the stored version is the expected one
-- (absent counts as any), in one round trip (SPEC CB-6).
--
-- KEYS[1]  state key, value "state:version:open_until_us:reopens"
-- ARGV     expected version, state, open_for_us, reopens, retention_ms,
--          now_us ("" = Redis TIME)
-- returns  {written version (0 = conflict), stored value on conflict, now_us}

local now
if ARGV[6] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[6])
end
local expected = tonumber(ARGV[1])
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^[%a_]+:(%d+):'))
  if version ~= expected then
    return {0, current, now}
  end
end
local version = expected + 1
local open_for = tonumber(ARGV[3])
local value = string.format('%s:%d:%d:%s', ARGV[2], version, now + open_for, ARGV[4])
redis.call('SET', KEYS[1], value, 'PX', math.ceil(open_for / 1000) + tonumber(ARGV[5]))
return {version, '', now}
