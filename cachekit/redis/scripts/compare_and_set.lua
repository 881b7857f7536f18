-- An optimistic update's write.
-- KEYS[1]: the value. KEYS[2]: the lease of its stripe.
-- ARGV[1]: '1' if a value was read, '0' if it was missing. ARGV[2]: the raw value read.
-- ARGV[3]: the new raw value. ARGV[4]: ttl ('' keep, '0' none, else ms).
-- ARGV[5]: the caller's token of the lease, '' if it holds none.
-- Returns {1} written; {0, current raw value or false} changed since it was read;
-- {-1, holder's token} another holder's live lease covers the key (a transaction is at work).
local expiry, holder = parse(redis.call('GET', KEYS[2]))
if holder and holder ~= ARGV[5] and expiry > now_ms() then return {-1, holder} end
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return {0, current} end
elseif current then return {0, current} end
store(KEYS[1], ARGV[3], ARGV[4])
return {1}
