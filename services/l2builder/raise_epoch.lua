-- Move the epoch of a held lease to at least ARGV[3]: a restored document carried an epoch the counter
-- no longer exceeds (the epoch key was lost), and writes under a lower epoch would never win.
-- KEYS[1] lease, KEYS[2] epoch; ARGV[1] instance; ARGV[2] current epoch; ARGV[3] floor.
-- Returns the epoch to write under, or false (nil) when the lease is no longer ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return false
end
local floor = tonumber(ARGV[3])
if tonumber(ARGV[2]) < floor then
  redis.call('SET', KEYS[2], floor)
  return floor
end
return tonumber(ARGV[2])
