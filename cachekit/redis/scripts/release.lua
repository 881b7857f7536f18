-- Release a lease. KEYS[1]: the lease. ARGV[1]: its token.
-- Returns 1 if it was still this token's (deleted), 0 if it was lost (missing or another's).
local _, holder = parse(redis.call('GET', KEYS[1]))
if holder ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
