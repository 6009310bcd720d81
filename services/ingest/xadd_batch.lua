-- Append a batch of entries to their streams, in order, each trimmed with MAXLEN ~.
-- KEYS[i]: the stream of entry i. ARGV[1]: the MAXLEN. Then, for each entry in turn: the number of its
-- field-value pairs, followed by the pairs.
-- A stream whose XADD fails (OOM, READONLY, WRONGTYPE...) takes no further entry from this batch, so a retry
-- of the rest can never land out of order. Reply: one {entry index, error} per stream that failed, at its
-- first failure; an empty array when everything was appended.
local maxlen = ARGV[1]
local failed = {}
local errors = {}
local arg = 2
for i = 1, #KEYS do
    local key = KEYS[i]
    local last = arg + 2 * tonumber(ARGV[arg])
    if not failed[key] then
        local reply = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, arg + 1, last))
        if type(reply) == 'table' and reply.err then
            failed[key] = true
            errors[#errors + 1] = {i, reply.err}
        end
    end
    arg = last + 1
end
return errors
