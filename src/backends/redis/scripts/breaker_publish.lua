-- Writes a breaker state if the stored version is the expected one
-- (absent counts as any), in one round trip.
--
-- KEYS[1]  state key, value "state:version:open_until_us:reopens:writer"
-- ARGV     expected version, state, open_for_us, reopens, ttl_ms, writer,
--          now_us ("" = Redis TIME)
-- returns  {written version (0 = conflict), stored value on conflict, now_us}
--
-- Versions are store times in µs (below 2^53, exact as doubles) or one
-- more than the version replaced, so they never go back.

local now = now_us(ARGV[7])
local expected = ARGV[1]
local current = redis.call('GET', KEYS[1])
if current and string.match(current, '^[%a_]+:(%d+):') ~= expected then
  return {0, current, now}
end
local version = math.max(tonumber(expected) + 1, now)
local value = string.format('%s:%d:%d:%s:%s', ARGV[2], version, now + tonumber(ARGV[3]), ARGV[4], ARGV[6])
redis.call('SET', KEYS[1], value, 'PX', ARGV[5])
return {version, '', now}
