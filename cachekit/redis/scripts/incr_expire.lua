-- incr with a timeout. KEYS[1]: the value. ARGV[1]: delta. ARGV[2]: ttl, '0' none, else ms.
-- INCRBY fails first on a value that is not an integer, so nothing else changes then.
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] == '0' then redis.call('PERSIST', KEYS[1])
else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
