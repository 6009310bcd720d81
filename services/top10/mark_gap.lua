-- Mark one symbol's cached orderBook10 stale because ingest wrote a gap marker on its stream, then announce it.
--
-- A gap says frames may be missing after it: the cached snapshot is no longer known to be the latest. The
-- key changes only when the gap is newer (by stream id) than the snapshot it holds, so a snapshot written
-- after the gap wins however the consumers interleave, and only once per gap (or a newer one): `gap_id`
-- keeps the gap's id, and `store_top10.lua` writes a snapshot from before it stale. A key that does not
-- exist (no snapshot yet) is left alone.
--
-- KEYS[1]  <prefix>:top10:SYM, a hash and the channel of the same name
-- ARGV     gap id ms, gap id seq, gap stream id, reason, message
-- Returns  1 marked and published, 0 left alone (a newer snapshot or gap, no key, not a hash).

local function position(id)
    local ms, seq = string.match(id or '', '^(%d+)-(%d+)$')
    return tonumber(ms) or -1, tonumber(seq) or -1
end

local function newer(ms, seq, other_ms, other_seq)
    return ms > other_ms or (ms == other_ms and seq > other_seq)
end

local current = redis.pcall('HMGET', KEYS[1], 'stream_id', 'gap_id')
if current['err'] or not current[1] then
    return 0
end
local gap_ms, gap_seq = tonumber(ARGV[1]), tonumber(ARGV[2])
local cached_ms, cached_seq = position(current[1])
local marked_ms, marked_seq = position(current[2])
if not newer(gap_ms, gap_seq, cached_ms, cached_seq) or not newer(gap_ms, gap_seq, marked_ms, marked_seq) then
    return 0
end
redis.call('HSET', KEYS[1], 'status', 'stale', 'reason', ARGV[4], 'gap_id', ARGV[3])
redis.call('PUBLISH', KEYS[1], ARGV[5])
return 1
