-- Take the lease of one symbol when it is free and start a new fencing epoch.
-- KEYS[1] lease, KEYS[2] epoch (same hash tag); ARGV[1] instance; ARGV[2] ttl in ms; ARGV[3] epoch floor.
-- A lease still naming this instance was left by an earlier process of the same name: it is taken over
-- with a new epoch too, so every incarnation writes under an epoch of its own.
-- The floor is an epoch already used (by this instance before Redis lost the epoch key): the counter is
-- set to it when it fell behind, so no write is ever fenced under an epoch that was handed out before.
-- Returns the new epoch, or false (nil) while another instance holds the lease.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return false
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local epoch = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if epoch < floor then
  redis.call('SET', KEYS[2], floor)
  return floor
end
return epoch
