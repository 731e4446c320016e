-- Integer GCRA, one key, one round trip (SPEC RL-1, RL-5).
-- The same model as src/layers/rate_limit/gcra.rs; every number stays
-- below 2^53 so Lua's doubles are exact, and divisions are done exactly.
--
-- KEYS[1]  state key, value "debt:at:period_us"
-- ARGV     count, period_us, burst, cost, now_us ("" = Redis TIME)
-- returns  {allowed (0/1), remaining, retry_after_us (-1 = never), reset_us}

local function fdiv(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  while r < 0 do q = q - 1; r = r + b end
  while r >= b do q = q + 1; r = r - b end
  return q
end

local function cdiv(a, b)
  local q = fdiv(a, b)
  if q * b < a then q = q + 1 end
  return q
end

local n = tonumber(ARGV[1])
local p = tonumber(ARGV[2])
local b = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local now
if ARGV[5] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[5])
end

local cap = b * p
local debt = 0
local raw = redis.call('GET', KEYS[1])
if raw then
  local d, at, sp = string.match(raw, '^(%d+):(%d+):(%d+)$')
  if d then
    d = tonumber(d); at = tonumber(at); sp = tonumber(sp)
    if sp > 0 and sp ~= p then d = math.ceil(d / sp * p) end
    local elapsed = now - at
    if elapsed < 0 then elapsed = 0 end
    if elapsed < cdiv(d, n) then debt = d - elapsed * n end
  end
end

local remaining_now = fdiv(cap - math.min(debt, cap), p)
if cost > b then
  return {0, remaining_now, -1, cdiv(debt, n)}
end
local after = debt + cost * p
if after <= cap then
  local reset = cdiv(after, n)
  if cost > 0 then
    redis.call('SET', KEYS[1], string.format('%d:%d:%d', after, now, p),
      'PX', math.max(1, cdiv(reset, 1000)))
  end
  return {1, fdiv(cap - after, p), 0, reset}
end
return {0, remaining_now, cdiv(after - cap, n), cdiv(debt, n)}
