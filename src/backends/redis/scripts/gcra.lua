-- Integer GCRA, one key, one round trip (SPEC RL-1, RL-5).
-- The same model as src/layers/rate_limit/gcra.rs. Every number stays below
-- 2^53, so Lua's doubles hold them exactly; a quotient a / b of such
-- numbers is off by at most one after math.floor, which the divisions
-- below correct (no helper functions: closures cost per call).
--
-- KEYS[1]  state key, value "debt:at:period_us"
-- ARGV     count, period_us, burst, cost, now_us ("" = Redis TIME)
-- returns  {allowed (0/1), remaining, retry_after_us (-1 = never), reset_us}

local floor = math.floor
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
local at = now
local rescaled = false
local raw = redis.call('GET', KEYS[1])
if raw then
  local d, sat, sp = string.match(raw, '^(%d+):(%d+):(%d+)$')
  if d then
    d = tonumber(d)
    sat = tonumber(sat)
    sp = tonumber(sp)
    if sp > 0 and sp ~= p then
      rescaled = true
      -- keep the outstanding cost in whole units, at most a full bucket
      local units = floor(d / sp)
      if units * sp > d then units = units - 1 elseif (units + 1) * sp <= d then units = units + 1 end
      if units * sp < d then units = units + 1 end
      if units > b then units = b end
      d = units * p
    end
    local elapsed = now - sat
    if elapsed > 0 then
      local drained = elapsed * n
      if drained < d then debt = d - drained end
    else
      -- a clock behind the stored one drains nothing and keeps its time
      debt = d
      at = sat
    end
  end
end

local after = debt + cost * p
if cost <= b and after <= cap then
  -- reset = ceil(after / n), remaining = floor((cap - after) / p)
  local reset = floor(after / n)
  if reset * n > after then reset = reset - 1 elseif (reset + 1) * n <= after then reset = reset + 1 end
  if reset * n < after then reset = reset + 1 end
  local left = cap - after
  local remaining = floor(left / p)
  if remaining * p > left then remaining = remaining - 1 elseif (remaining + 1) * p <= left then remaining = remaining + 1 end
  if cost > 0 then
    local ttl = floor((reset + 999) / 1000)
    if ttl < 1 then ttl = 1 end
    redis.call('SET', KEYS[1], string.format('%d:%d:%d', after, at, p), 'PX', ttl)
  end
  return {1, remaining, 0, reset}
end

-- Denied: nothing is written (but see the rescaled case below).
local held = debt
if held > cap then held = cap end
local left = cap - held
local remaining = floor(left / p)
if remaining * p > left then remaining = remaining - 1 elseif (remaining + 1) * p <= left then remaining = remaining + 1 end
local reset = floor(debt / n)
if reset * n > debt then reset = reset - 1 elseif (reset + 1) * n <= debt then reset = reset + 1 end
if reset * n < debt then reset = reset + 1 end
if rescaled and debt > 0 then
  -- written under another period: store it in this quota's units and
  -- lifetime, so the key cannot expire early and refill
  local ttl = floor((reset + 999) / 1000)
  if ttl < 1 then ttl = 1 end
  redis.call('SET', KEYS[1], string.format('%d:%d:%d', debt, at, p), 'PX', ttl)
end
if cost > b then
  return {0, remaining, -1, reset}
end
local over = after - cap
local wait = floor(over / n)
if wait * n > over then wait = wait - 1 elseif (wait + 1) * n <= over then wait = wait + 1 end
if wait * n < over then wait = wait + 1 end
return {0, remaining, wait, reset}
