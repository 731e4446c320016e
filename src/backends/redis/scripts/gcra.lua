-- Integer GCRA, one round trip for one or many decisions.
-- The same model as src/layers/rate_limit/gcra.rs, which turns the debt
-- this returns into the decision's numbers. Every number stays below 2^53,
-- so Lua's doubles hold them exactly; a quotient a / b of such numbers is
-- off by at most one after math.floor, which the divisions below correct.
-- Numbers travel packed as little-endian doubles (struct), because
-- tonumber, string.match and string.format cost more than the decision.
-- Decisions run in order, so a key named twice sees its first write.
-- Needs Redis 6.0 or later (SET ... KEEPTTL).
--
-- KEYS[i]    state key, value pack('<d<d<d<d', debt, at, period_us, expires_at)
-- ARGV[i]    pack('<d<d<d<d<d', count, period_us, burst, cost, now_us) for
--            KEYS[i]; now_us < 0: use Redis TIME
-- ARGV[#KEYS + 1]  TTL slack in microseconds
-- returns    for each key, the debt after its decision in its quota's
--            units: debt >= 0 when allowed, -1 - debt when denied

local floor = math.floor
local slack = tonumber(ARGV[#KEYS + 1])
local server_now

-- Writes `left` of debt; the key lives until the bucket is full again.
-- On Redis's own clock the expiry only moves when it must grow, and then
-- by the slack too, so most writes keep it (SET KEEPTTL is cheaper).
local function write(key, left, n, p, at, now, expires, server_clock)
  -- full = ceil(left / n) microseconds from now
  local full = floor(left / n)
  if full * n > left then full = full - 1 elseif (full + 1) * n <= left then full = full + 1 end
  if full * n < left then full = full + 1 end
  if server_clock and now + full <= expires then
    redis.call('SET', key, struct.pack('<d<d<d<d', left, at, p, expires), 'KEEPTTL')
    return
  end
  if server_clock then full = full + slack end
  local ttl = floor((full + 999) / 1000)
  if ttl < 1 then ttl = 1 end
  redis.call('SET', key, struct.pack('<d<d<d<d', left, at, p, now + ttl * 1000), 'PX', ttl)
end

local function decide(key, args)
  local n, p, b, cost, now = struct.unpack('<d<d<d<d<d', args)
  local server_clock = now < 0
  if server_clock then
    if not server_now then
      local t = redis.call('TIME')
      server_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    now = server_now
  end

  local cap = b * p
  local debt = 0
  local at = now
  local expires = 0
  local rescaled = false
  local raw = redis.call('GET', key)
  if raw and #raw == 32 then
    local d, sat, sp, sexp = struct.unpack('<d<d<d<d', raw)
    -- a debt out of range (or NaN) reads as nothing or a full bucket; a
    -- time that is not a number as now
    if not (d >= 0) then d = 0 end
    if not (sat >= 0) then sat = now end
    if sp > 0 and sp ~= p then
      rescaled = true
      -- keep the outstanding cost in whole units (rounded up), at most a
      -- full bucket
      local units = floor(d / sp)
      if units * sp > d then units = units - 1 elseif (units + 1) * sp <= d then units = units + 1 end
      if units * sp < d then units = units + 1 end
      if units > b then units = b end
      d = units * p
    else
      if d > cap then d = cap end
      expires = sexp
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

  local after = debt + cost * p
  if cost <= b and after <= cap then
    if cost > 0 then write(key, after, n, p, at, now, expires, server_clock) end
    return after
  end
  -- Denied: nothing is written, unless the state was written under another
  -- period: then it is stored in this quota's units and lifetime, so the
  -- key cannot expire early and refill.
  if rescaled and debt > 0 then write(key, debt, n, p, at, now, expires, server_clock) end
  return -1 - debt
end

local debts = {}
for i = 1, #KEYS do
  debts[i] = decide(KEYS[i], ARGV[i])
end
return debts
