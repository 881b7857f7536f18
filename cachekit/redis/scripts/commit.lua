-- A transaction's commit: every key written, or none.
-- KEYS: n leases, then the value keys. ARGV: as cachekit/redis/argv.py encodes them:
--   ARGV[1] = n; ARGV[2 .. n + 1] = the tokens of the n leases;
--   then per value key: what was read ('-' nothing to check, '0' missing, '1' this raw value),
--   the raw value read (or ''), then 'd' (delete) or 's' followed by the raw value and the ttl.
-- Returns {1} all written; {0} a lease is no longer this transaction's; {2, i} value key i
-- changed since it was read (an INCRBY or a plain SET, which take no lease). In the last two
-- cases nothing is written.
local n = tonumber(ARGV[1])
for i = 1, n do
  local _, holder = parse(redis.call('GET', KEYS[i]))
  if holder ~= ARGV[i + 1] then return {0} end
end
local a = n + 2
for i = n + 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if (ARGV[a] == '0' and current) or (ARGV[a] == '1' and current ~= ARGV[a + 1]) then
    return {2, i - n}
  end
  a = a + (ARGV[a + 2] == 'd' and 3 or 5)
end
a = n + 2
for i = n + 1, #KEYS do
  if ARGV[a + 2] == 'd' then
    redis.call('DEL', KEYS[i])
    a = a + 3
  else
    store(KEYS[i], ARGV[a + 3], ARGV[a + 4])
    a = a + 5
  end
end
return {1}
