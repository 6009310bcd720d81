-- Refresh one l2builder's membership and return whether it was missing, and every live member.
-- KEYS[1] the members zset (score = expiry, ms of Redis time); ARGV[1] instance; ARGV[2] ttl in ms.
-- Redis's clock rather than each instance's, so instances on skewed hosts agree on who is alive.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local added = redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
return {added, redis.call('ZRANGE', KEYS[1], 0, -1)}
