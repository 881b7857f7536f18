-- Whether a lease is held, unexpired, by a token. KEYS[1]: the lease. ARGV[1]: the token.
-- Returns 1 or 0. Writes nothing.
local expiry, holder = parse(redis.call('GET', KEYS[1]))
if holder == ARGV[1] and expiry > now_ms() then return 1 end
return 0
