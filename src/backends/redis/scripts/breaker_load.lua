-- Reads a breaker state with the server time.
--
-- KEYS[1]  state key, value "state:version:open_until_us:reopens"
-- ARGV     now_us ("" = Redis TIME)
-- returns  {value ("" = none), now_us}

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
return {redis.call('GET', KEYS[1]) or '', now}
