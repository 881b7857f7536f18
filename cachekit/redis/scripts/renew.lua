-- Extend leases still held by their tokens (expired or not: no one took them).
-- KEYS: the leases. ARGV[1]: the lease, ms. ARGV[i + 1]: the token of KEYS[i].
-- Returns, per lease, 1 renewed or 0 lost (missing, or another holder's).
local now = now_ms()
local renewed = {}
for i = 1, #KEYS do
  local _, holder = parse(redis.call('GET', KEYS[i]))
  if holder == ARGV[i + 1] then
    redis.call('SET', KEYS[i], lease_of(now, ARGV[1], holder))
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
