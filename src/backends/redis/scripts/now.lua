-- Put before every script that reads the time: now_us(arg) is the
-- caller's clock in microseconds, or Redis TIME when the caller sent none
-- ("" or a negative number).
local function now_us(arg)
  local now = tonumber(arg)
  if now and now >= 0 then return now end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
