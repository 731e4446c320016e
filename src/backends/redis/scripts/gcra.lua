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
-- KEYS[i]    state key, value pack('<d<d<d<d<d<d', debt, at, period_us,
--            expires_at, count, burst) with the quota it was written under
--            (a 32-byte value without the last two, written before they
--            were kept, reads as under an unknown quota)
-- ARGV[i]    pack('<d<d<d<d<d', count, period_us, burst, cost, now_us) for
--            KEYS[i]; now_us < 0: use Redis TIME; cost < 0: give -cost
--            back (a charge spent by a request another slot denied);
--            followed by pack('<d', g) when KEYS[i] opens a group of g keys
--            (one request's policies), decided all or nothing
-- ARGV[#KEYS + 1]  TTL slack in microseconds
-- returns    for each key, the debt after its decision in its quota's
--            units: debt >= 0 when allowed, -1 - debt when denied; in a
--            group that some key denied, the others spend nothing and
--            return their debt as it stands

local floor = math.floor
local slack = tonumber(ARGV[#KEYS + 1])
local server_now

-- Writes `left` of debt; the key lives until the bucket is full again.
-- On Redis's own clock the expiry only moves when it must grow, and then
-- by the slack too, so most writes keep it (SET KEEPTTL is cheaper).
local function write(key, left, n, p, b, at, now, expires, server_clock)
  -- full = ceil(left / n) microseconds from now
  local full = floor(left / n)
  if full * n > left then full = full - 1 elseif (full + 1) * n <= left then full = full + 1 end
  if full * n < left then full = full + 1 end
  if server_clock and now + full <= expires then
    redis.call('SET', key, struct.pack('<d<d<d<d<d<d', left, at, p, expires, n, b), 'KEEPTTL')
    return
  end
  if server_clock then full = full + slack end
  local ttl = floor((full + 999) / 1000)
  if ttl < 1 then ttl = 1 end
  redis.call('SET', key, struct.pack('<d<d<d<d<d<d', left, at, p, now + ttl * 1000, n, b), 'PX', ttl)
end

-- Reads and decides one key without writing. Returns whether it is
-- allowed, the debt after it (allowed) or as it stands (denied), the debt
-- as it stands, and what a write needs.
local function evaluate(key, args)
  local n, p, b, cost, now = struct.unpack('<d<d<d<d<d', args)
  local server_clock = now < 0
  if server_clock then
    server_now = server_now or now_us(-1)
    now = server_now
  end

  local cap = b * p
  local debt = 0
  local at = now
  local expires = 0
  local restated = false
  local same_quota = false
  local raw = redis.call('GET', key)
  local held = raw and (#raw == 48 or #raw == 32)
  if held then
    local d, sat, sp, sexp = struct.unpack('<d<d<d<d', raw)
    local sn, sb = 0, 0
    if #raw == 48 then sn, sb = struct.unpack('<d<d', raw, 33) end
    same_quota = sp == p and sn == n and sb == b
    -- written under another quota: a decision writes it under this one
    restated = sp > 0 and not same_quota
    -- a debt out of range (or NaN) reads as nothing or a full bucket; a
    -- time that is not a number as now
    if not (d >= 0) then d = 0 end
    if not (sat >= 0) then sat = now end
    if sp > 0 and sp ~= p then
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

  if cost < 0 then
    -- giving back (gcra::give_back): only to a state still held under
    -- this quota and still owing, at most a full bucket, never below
    -- nothing; otherwise nothing is written and the debt stands
    if not same_quota or not (debt > 0) then
      return true, debt, debt, n, p, b, at, now, expires, server_clock, false, 0
    end
    if cost < -b then cost = -b end
    local left = debt + cost * p
    if left < 0 then left = 0 end
    return true, left, debt, n, p, b, at, now, expires, server_clock, false, cost
  end
  local after = debt + cost * p
  if cost <= b and after <= cap then
    return true, after, debt, n, p, b, at, now, expires, server_clock, restated, cost
  end
  return false, debt, debt, n, p, b, at, now, expires, server_clock, restated, cost
end

-- Writes what `evaluate` decided: an allowed charge, or a denial whose
-- state was written under another quota (then it is stored under this
-- one, in its units and with its lifetime, so the key cannot expire early
-- and refill, and a give-back under the old quota changes nothing).
-- Denials otherwise write nothing.
local function commit(key, ok, v, n, p, b, at, now, expires, server_clock, restated, cost)
  if ok then
    if cost ~= 0 then write(key, v, n, p, b, at, now, expires, server_clock) end
    return v
  end
  if restated and v > 0 then write(key, v, n, p, b, at, now, expires, server_clock) end
  return -1 - v
end

local debts = {}

-- One request's policies: every key is read first; all are spent only if
-- all are allowed.
local function decide_group(first, last)
  local evaluated = {}
  local all = true
  for i = first, last do
    local r = {evaluate(KEYS[i], ARGV[i])}
    evaluated[i] = r
    if not r[1] then all = false end
  end
  for i = first, last do
    local r = evaluated[i]
    if all or not r[1] then
      debts[i] = commit(KEYS[i], r[1], r[2], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12])
    else
      debts[i] = r[3]
    end
  end
end

local i = 1
while i <= #KEYS do
  local args = ARGV[i]
  if #args == 48 then
    local g = struct.unpack('<d', args, 41)
    local last = i + g - 1
    if last > #KEYS then last = #KEYS end
    if last < i then last = i end
    decide_group(i, last)
    i = last + 1
  else
    local ok, v, _, n, p, b, at, now, expires, server_clock, restated, cost = evaluate(KEYS[i], args)
    debts[i] = commit(KEYS[i], ok, v, n, p, b, at, now, expires, server_clock, restated, cost)
    i = i + 1
  end
end
return debts
