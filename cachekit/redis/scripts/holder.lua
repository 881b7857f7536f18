-- Who holds a lease, if it is live and not the caller's. KEYS[1]: the lease.
-- ARGV[1]: the caller's token, or ''. Returns the holder's token, or '' if none. Writes nothing.
local expiry, holder = parse(redis.call('GET', KEYS[1]))
if holder and holder ~= ARGV[1] and expiry > now_ms() then return holder end
return ''
