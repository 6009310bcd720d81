-- Extend a lease this instance holds under the given epoch.
-- KEYS[1] lease, KEYS[2] epoch; ARGV[1] instance; ARGV[2] ttl in ms; ARGV[3] epoch.
-- Returns 1, or 0 when the lease expired or was taken: the caller must stop touching the symbol.
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
