-- A moving window. KEYS[1]: a list of the server's ms of each acquired entry, newest first,
-- at most `limit` long. ARGV[1]: 'acquire' or 'read'; ARGV[2]: limit; ARGV[3]: the window
-- in ms; ARGV[4]: amount (acquire only).
-- acquire: 1 if `amount` entries fit in the window (and they are added), else 0.
-- read: {oldest entry still in the window (ms, server clock), entries in the window, now}.
local now = now_ms()
local limit, window = tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[1] == 'acquire' then
  local amount = tonumber(ARGV[4])
  if amount > limit then return 0 end
  local entry = redis.call('LINDEX', KEYS[1], limit - amount)
  if entry and tonumber(entry) > now - window then return 0 end
  for _ = 1, amount do redis.call('LPUSH', KEYS[1], now) end
  redis.call('LTRIM', KEYS[1], 0, limit - 1)
  redis.call('PEXPIRE', KEYS[1], window)
  return 1
end
-- The entries are newest first: binary search for the last one still in the window
-- (O(log limit) LINDEX calls, not the whole list).
local low, high, last = 0, math.min(limit, redis.call('LLEN', KEYS[1])) - 1, -1
while low <= high do
  local middle = math.floor((low + high) / 2)
  if tonumber(redis.call('LINDEX', KEYS[1], middle)) > now - window then
    last, low = middle, middle + 1
  else
    high = middle - 1
  end
end
if last < 0 then return {now, 0, now} end
return {tonumber(redis.call('LINDEX', KEYS[1], last)), last + 1, now}
