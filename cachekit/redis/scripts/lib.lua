-- Prepended to every cachekit script (see cachekit/redis/scripts.py).
--
-- A lease is the string "<expiry, server ms> <token>", stored WITHOUT a Redis TTL, so that
-- eviction under the volatile-* policies (which only evict keys that have a TTL) never drops
-- it. Its expiry is judged here against the server's own clock. A lease that has expired
-- but still holds a token was taken by no one since: its holder may renew or commit.
if redis.replicate_commands then redis.replicate_commands() end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t
end

-- The expiry and token of a lease (nil, nil if missing). A value without a space (a lease
-- of an older cachekit, kept by its TTL) counts as held, forever, by a token no one has.
local function parse(lease)
  if not lease then return nil, nil end
  local space = string.find(lease, ' ', 1, true)
  if not space then return math.huge, lease end
  return tonumber(string.sub(lease, 1, space - 1)), string.sub(lease, space + 1)
end

local function lease_of(now, ms, token)
  return string.format('%d %s', now + tonumber(ms), token)
end

-- Store a value: ttl '' keeps the key's TTL, '0' none, otherwise milliseconds.
local function store(key, raw, ttl)
  if ttl == '' then redis.call('SET', key, raw, 'KEEPTTL')
  elseif ttl == '0' then redis.call('SET', key, raw)
  else redis.call('SET', key, raw, 'PX', ttl) end
end
