-- Extend a lease this instance holds under the given epoch.
-- KEYS[1] lease, KEYS[2] epoch; ARGV[1] instance; ARGV[2] ttl in ms; ARGV[3] epoch.
-- Returns 1; 0 when the lease expired or was taken: the caller must stop touching the symbol; -1 when the
-- epoch key is missing or below ARGV[3]: epochs only grow, so Redis lost it (FLUSHALL, eviction, a failover
-- to a replica behind), and whatever else Redis held for the symbol may be gone too.
local raw = redis.call('GET', KEYS[2])
local epoch = raw and tonumber(raw) or 0
if epoch < tonumber(ARGV[3]) then
  return -1
end
if redis.call('GET', KEYS[1]) == ARGV[1] and epoch == tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
