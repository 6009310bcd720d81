-- Mark one symbol's cached orderBook10 stale because its ingest session is gone, then announce it.
--
-- Every top10 instance watches every key, so several may decide the same thing at once: only the first
-- changes the key and publishes, the others find it stale already. The key changes only while it still
-- holds a snapshot of the lost session: a newer snapshot of a live session written meanwhile wins.
--
-- KEYS[1]  <prefix>:top10:SYM, a hash and the channel of the same name
-- ARGV     session (the lost one), reason, message
-- Returns  1 marked and published, 0 left alone (another session's snapshot, stale already, not a hash).

local current = redis.pcall('HMGET', KEYS[1], 'session', 'status')
if current['err'] or current[1] ~= ARGV[1] or current[2] == 'stale' then
    return 0
end
redis.call('HSET', KEYS[1], 'status', 'stale', 'reason', ARGV[2])
redis.call('PUBLISH', KEYS[1], ARGV[3])
return 1
