-- A sliding window counter, both windows in one hash. KEYS[1]: fields w (the current
-- window's number, server ms / window), p (the previous window's count), c (the current's).
-- ARGV[1]: 'acquire' or 'read'; ARGV[2]: the window in ms; ARGV[3]: limit and ARGV[4]:
-- amount (acquire only). The previous window weighs by the part of it still inside the
-- sliding window, as in limits: count = p * (ms left of the window) / window + c.
-- acquire: 1 if floor(count) + amount <= limit (and c grows by amount), else 0.
-- read: {p, ms the previous window still weighs (0 if p is 0), c, ms the current one lasts}.
local now = now_ms()
local window = tonumber(ARGV[2])
local w = math.floor(now / window)
local stored = redis.call('HMGET', KEYS[1], 'w', 'p', 'c')
local at, p, c = tonumber(stored[1]), tonumber(stored[2]) or 0, tonumber(stored[3]) or 0
if at == nil then p, c = 0, 0
elseif at == w - 1 then p, c = c, 0
elseif at < w - 1 then p, c = 0, 0
elseif at > w then w = at end  -- the server's clock went back: stay in the newer window
local left = window - now % window
if ARGV[1] == 'acquire' then
  local limit, amount = tonumber(ARGV[3]), tonumber(ARGV[4])
  if math.floor(p * left / window + c) + amount > limit then return 0 end
  redis.call('HSET', KEYS[1], 'w', w, 'p', p, 'c', c + amount)
  redis.call('PEXPIRE', KEYS[1], 2 * window)
  return 1
end
if p == 0 then return {0, 0, c, left + window} end
return {p, left, c, left + window}
