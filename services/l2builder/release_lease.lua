-- Give a lease back so another instance can take the symbol at once, only if it is still ours.
-- KEYS[1] lease, KEYS[2] epoch; ARGV[1] instance; ARGV[2] epoch. Returns 1 when released, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
