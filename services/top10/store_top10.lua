-- Compare-and-set of one symbol's cached orderBook10, then an announcement on the key's channel.
--
-- Consumers of the `top10` group process entries in any order (several instances, claims of entries left
-- by dead ones, replays), so the write happens only when the snapshot is strictly newer than the cached one,
-- ordered by (order time in microseconds, stream id as (ms, seq)). The order time is the exchange time
-- (the receive time for a frame stamped too far ahead, see snapshots.py): a snapshot the venue sent later
-- wins even when it reached the stream earlier; the stream id breaks ties between snapshots of the same
-- time. Being one script, the read and the write cannot interleave with another consumer's.
--
-- A cached order time beyond Redis's clock plus the tolerance cannot be real: it was written before the
-- tolerance existed, or by a host whose clock ran ahead. It is replaced rather than compared, so no key
-- stays pinned by a timestamp in the future.
--
-- Every write states the key's liveness: `status` and `reason` as the caller decided them (`live` and
-- empty, unless the snapshot's ingest session is known to be lost) and the `session` of the snapshot. A
-- snapshot the caller calls live is written stale all the same when it is older, by stream id, than the
-- last gap marker seen on its stream (`gap_id`, see mark_gap.lua): frames may be missing after it.
--
-- KEYS[1]  <prefix>:top10:SYM, a hash and the channel of the same name
-- ARGV     ts_us, id_ms, id_seq, stream_id, bids, asks, timestamp, recv_us, message (a JSON object without its
--          status, reason and closing brace, appended here), session, status, reason, tolerance_us
-- Returns  updated_us (> 0) written and published, 0 older than the cached snapshot, -1 the cached snapshot
--          is this entry. The write time comes back so a caller that reads the reply later can still time it.
--
-- Numbers compare as Lua doubles, exact up to 2^53: epoch microseconds stay below that until the year 2255.

local ts_us, id_ms, id_seq = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

-- Redis's own clock, so updated_us is the time of the write whichever consumer host sent it. TIME returns
-- strings; they are joined as text because tostring() of a double this large would print an exponent.
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])

local function position(id)
    local ms, seq = string.match(id or '', '^(%d+)-(%d+)$')
    return tonumber(ms) or -1, tonumber(seq) or -1
end

local cached = redis.pcall('HMGET', KEYS[1], 'ts_us', 'stream_id', 'gap_id')
if cached['err'] then
    -- The key holds another type (a mistake, or an older format). The name is top10's own: replace it
    -- rather than let one bad key stop every batch that includes its symbol.
    redis.call('DEL', KEYS[1])
    cached = {}
end
local cached_ts = tonumber(cached[1])
if cached_ts and cached_ts <= now_us + tonumber(ARGV[13]) then
    -- A cached value whose stream id does not parse sorts before every real id of the same time.
    local cached_ms, cached_seq = position(cached[2])
    if ts_us < cached_ts then
        return 0
    elseif ts_us == cached_ts then
        if id_ms < cached_ms or (id_ms == cached_ms and id_seq < cached_seq) then
            return 0
        elseif id_ms == cached_ms and id_seq == cached_seq then
            return -1
        end
    end
end

local status, reason = ARGV[11], ARGV[12]
local gap_ms, gap_seq = position(cached[3])
if status == 'live' and (id_ms < gap_ms or (id_ms == gap_ms and id_seq <= gap_seq)) then
    status, reason = 'stale', 'gap: the snapshot is older than the gap ' .. cached[3]
end

local updated_us = now[1] .. string.format('%06d', tonumber(now[2]))

redis.call('HSET', KEYS[1],
    'bids', ARGV[5], 'asks', ARGV[6], 'timestamp', ARGV[7], 'ts_us', ARGV[1],
    'stream_id', ARGV[4], 'recv_us', ARGV[8], 'updated_us', updated_us,
    'session', ARGV[10], 'status', status, 'reason', reason)
redis.call('PUBLISH', KEYS[1], ARGV[9] .. ',"status":' .. cjson.encode(status) .. ',"reason":' .. cjson.encode(reason) .. '}')
return now_us
