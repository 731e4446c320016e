-- Reads a breaker state with the server time.
--
-- KEYS[1]  state key, value "state:version:open_until_us:reopens"
-- ARGV     now_us ("" = Redis TIME)
-- returns  {value ("" = none), now_us}

local now = now_us(ARGV[1])
return {redis.call('GET', KEYS[1]) or '', now}
