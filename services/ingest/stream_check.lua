-- How many entries each stream has ever been given (XINFO STREAM `entries-added`, Redis 7+): 0 when the
-- stream does not exist (it holds nothing it was given), -1 when it cannot be told (not a stream, or a
-- Redis without the counter).
-- Run here so that only the counters travel back, not the first and last entries XINFO also returns.
local out = {}
for i, key in ipairs(KEYS) do
    local kind = redis.call('TYPE', key)['ok']
    if kind == 'none' then
        out[i] = 0
    elseif kind ~= 'stream' then
        out[i] = -1
    else
        local info = redis.call('XINFO', 'STREAM', key)
        out[i] = -1
        for j = 1, #info, 2 do
            if info[j] == 'entries-added' then
                out[i] = info[j + 1]
            end
        end
    end
end
return out
