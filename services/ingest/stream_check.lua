-- How many entries each stream has ever been given (XINFO STREAM `entries-added`, Redis 7+): -1 when the
-- stream does not exist, -2 when it cannot be told (not a stream, or a Redis without the counter).
-- Run here so that only the counters travel back, not the first and last entries XINFO also returns.
local out = {}
for i, key in ipairs(KEYS) do
    local kind = redis.call('TYPE', key)['ok']
    if kind == 'none' then
        out[i] = -1
    elseif kind ~= 'stream' then
        out[i] = -2
    else
        local info = redis.call('XINFO', 'STREAM', key)
        out[i] = -2
        for j = 1, #info, 2 do
            if info[j] == 'entries-added' then
                out[i] = info[j + 1]
            end
        end
    end
end
return out
