-- Remove the consumers of one stream's group that hold no pending entry and have been idle longer than
-- ARGV[1] ms (instances that stopped or died, each leaving its own name behind), but never ARGV[2].
-- KEYS[1] stream; ARGV[3] group. Atomic, so a consumer that just took an entry is never removed.
-- Returns how many consumers were removed.
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[3])) do
  local info = {}
  for i = 1, #consumer, 2 do
    info[consumer[i]] = consumer[i + 1]
  end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[1]) and info['name'] ~= ARGV[2] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[3], info['name'])
    removed = removed + 1
  end
end
return removed
