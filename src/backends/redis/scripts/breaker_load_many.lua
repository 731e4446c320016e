-- Reads a batch of breaker states with the server time, in one call.
--
-- KEYS     state keys (a standalone server: any slots)
-- ARGV     now_us ("" = Redis TIME)
-- returns  {values ("" = none), now_us}

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local values = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do
  values[i] = values[i] or ''
end
return {values, now}
