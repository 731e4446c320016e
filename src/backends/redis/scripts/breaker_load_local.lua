-- Reads a batch of breaker states on one Redis Cluster node, in one call.
--
-- ARGV[1]   now_us ("" = Redis TIME)
-- ARGV[2..] state keys
-- returns   {values ("" = none, 0 = not served by this node), now_us}
--
-- The keys hash to many slots, which a declared key list may not do, so
-- they come as arguments: a script without flags may read any key its
-- node serves (Redis 6 and 7). A key of another node (or of a slot being
-- moved) is answered 0, and the caller asks for it elsewhere.

local now = now_us(ARGV[1])
local values = {}
for i = 2, #ARGV do
  local value = redis.pcall('GET', ARGV[i])
  if type(value) == 'table' then
    values[i - 1] = 0
  else
    values[i - 1] = value or ''
  end
end
return {values, now}
