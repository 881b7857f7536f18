-- A fixed window's hit. KEYS[1]: the window's counter. ARGV[1]: amount; ARGV[2]: the
-- window in ms. The TTL is set when the window opens (and on a counter that lost its TTL),
-- never moved by later hits: the window ends when it began plus its length.
-- Reply: the count after this hit.
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
