-- Remove one member of a stream's consumer group if it has been idle long enough and owns no pending entry.
--
-- XGROUP DELCONSUMER drops a consumer's pending entries with it, and nobody can claim them afterwards.
-- Checking and deleting in one script means a consumer that comes back to life cannot take an entry
-- between the check and the deletion; if it reads again later, Redis simply creates it anew.
--
-- KEYS[1]  the stream
-- ARGV     group, consumer, minimum idle milliseconds
-- Returns  1 removed, 0 kept (absent, busy or holding entries).

for _, fields in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local consumer = {}
    for i = 1, #fields, 2 do
        consumer[fields[i]] = fields[i + 1]
    end
    if consumer['name'] == ARGV[2] then
        if consumer['pending'] == 0 and consumer['idle'] >= tonumber(ARGV[3]) then
            redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
            return 1
        end
        return 0
    end
end
return 0
