-- Gives unused units of a lease back to one GCRA key: the inverse of an
-- allowed decision of that cost, never below an empty bucket. The same
-- model as gcra::give_back in src/layers/rate_limit/gcra.rs; the state is
-- the one gcra.lua writes.
--
-- KEYS[1]  state key, value pack('<d<d<d<d<d<d', debt, at, period_us,
--          expires_at, count, burst), as gcra.lua writes it
-- ARGV[1]  pack('<d<d<d<d<d', count, period_us, burst, units, now_us);
--          now_us < 0: use Redis TIME
-- returns  the debt left, or -1 when nothing changed (no key, nothing
--          owed, or a state written under another quota: another period,
--          count or burst, or one not known)

local n, p, b, units, now = struct.unpack('<d<d<d<d<d', ARGV[1])
local raw = redis.call('GET', KEYS[1])
if not raw or #raw ~= 48 then return -1 end
local d, sat, sp, sexp, sn, sb = struct.unpack('<d<d<d<d<d<d', raw)
if sp ~= p or sn ~= n or sb ~= b or not (d > 0) or units <= 0 then return -1 end
now = now_us(now)
local cap = b * p
if d > cap then d = cap end
local at = sat
if not (sat >= 0) then at = now end
local elapsed = now - at
if elapsed > 0 then
  local drained = elapsed * n
  if drained >= d then return -1 end
  d = d - drained
  at = now
end
if units > b then units = b end
local left = d - units * p
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
-- The expiry stays: the bucket is full again no later than before.
redis.call('SET', KEYS[1], struct.pack('<d<d<d<d<d<d', left, at, p, sexp, n, b), 'KEEPTTL')
return left
