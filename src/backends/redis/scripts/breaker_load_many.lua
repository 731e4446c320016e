-- Reads a batch of breaker states with the server time, in one call.
--
-- KEYS     state keys (a standalone server: any slots)
-- ARGV     now_us ("" = Redis TIME)
-- returns  {values ("" = none), now_us}

local now = now_us(ARGV[1])
local values = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do
  values[i] = values[i] or ''
end
return {values, now}
