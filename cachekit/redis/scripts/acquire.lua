-- Take a lease.
-- KEYS[1]: the lease. KEYS[2] (locks only): the stripe's fencing counter, no TTL either.
-- ARGV[1]: the new token. ARGV[2]: the lease, ms. ARGV[3]: the token of a holder proven dead
-- (its process is gone), which may be replaced before its lease ends; '' if none.
-- Returns {1, fencing token} when granted (0 without KEYS[2]), or {0, the holder's token}.
-- A lease that already holds ARGV[1] is granted again: a caller whose reply was lost may
-- repeat the call with the same token.
-- The fencing token is the counter plus one, raised first to the server time in microseconds,
-- so it grows with every grant even if the counter was lost (a restart without persistence).
local now, t = now_ms()
local expiry, holder = parse(redis.call('GET', KEYS[1]))
if holder and holder ~= ARGV[1] and holder ~= ARGV[3] and expiry > now then
  return {0, holder}
end
redis.call('SET', KEYS[1], lease_of(now, ARGV[2], ARGV[1]))
if not KEYS[2] then return {1, 0} end
local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
if tonumber(redis.call('GET', KEYS[2]) or '0') < floor then
  redis.call('SET', KEYS[2], string.format('%d', floor))
end
return {1, redis.call('INCR', KEYS[2])}
