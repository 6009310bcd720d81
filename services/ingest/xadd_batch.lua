-- Append a batch of entries to their streams, in order, each trimmed with MAXLEN ~, then the batch's
-- activity signals (services.core.activity).
-- ARGV[1]: the MAXLEN. ARGV[2]: how many signals follow the entries (their activity streams are the last
-- KEYS, their texts the last ARGV). ARGV[3]: the activity streams' MAXLEN. Then, for each entry in turn:
-- the number of its field-value pairs, followed by the pairs. KEYS[i] (i up to the entries' count): the
-- stream of entry i.
-- A stream whose XADD fails (OOM, READONLY, WRONGTYPE...) takes no further entry from this batch, so a retry
-- of the rest can never land out of order. Reply: one {entry index, error} per stream that failed, at its
-- first failure, and {0, error} for a signal that failed; an empty array when everything was appended.
local maxlen = ARGV[1]
local signals = tonumber(ARGV[2])
local entries = #KEYS - signals
local failed = {}
local errors = {}
local arg = 4
for i = 1, entries do
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
for j = 1, signals do
    local reply = redis.pcall('XADD', KEYS[entries + j], 'MAXLEN', '~', ARGV[3], '*', 's', ARGV[#ARGV - signals + j])
    if type(reply) == 'table' and reply.err then
        errors[#errors + 1] = {0, reply.err}
    end
end
return errors
