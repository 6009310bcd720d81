-- The few numbers status needs about one stream, without its first and last entries.
--
-- XINFO STREAM replies with the whole first and last entries, and the first is often a partial: a full
-- book, hundreds of kilobytes for a busy symbol. Called every second per stream by `--watch` and the
-- `bookstream dev` view, that would be most of the traffic; here it stays inside Redis.
--
-- KEYS[1]  the stream
-- Returns  false when there is no stream, else
--          {length, entries-added, first entry id or false, last entry id or false, session of the last entry or false}

if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then
    return false
end
local reply = redis.call('XINFO', 'STREAM', KEYS[1])
local info = {}
for i = 1, #reply, 2 do
    info[reply[i]] = reply[i + 1]
end
local first, last = info['first-entry'], info['last-entry']
local session = false
if last then
    local fields = last[2]
    for i = 1, #fields, 2 do
        if fields[i] == 'session' then
            session = fields[i + 1]
        end
    end
end
return {info['length'], info['entries-added'], first and first[1] or false, last and last[1] or false, session}
