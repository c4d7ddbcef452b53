-- Write the outcomes of one scored batch and acknowledge its entries, atomically.
--
-- Keys (all declared in KEYS):
--   KEYS[1]  stream        input stream; entries are acknowledged with XACK
--   KEYS[2]  stream        dead-letter stream; invalid and duplicate entries are added
--   KEYS[3]  hash          <prefix>:stats; counters per status and the time of the last write
--   KEYS[4+] hash          <prefix>:tx:<tx_id>, one per transaction in the batch
--            T-Digest      <prefix>:history:<user_id>, one per user that learns an amount
--            sorted set    <prefix>:approved:<user_id>, the user's window of approved amounts
--
-- ARGV[1] group, ARGV[2] digest compression, ARGV[3] scored_at, ARGV[4] the records as JSON,
-- ARGV[5] window size (approved amounts kept per user), ARGV[6] approval time in ms,
-- ARGV[7+] original field pairs of invalid entries, kept out of the JSON because they may hold
-- bytes that are not UTF-8. A record is an object:
--   s  stream id              t  tx key index in KEYS (0: none)
--   valid entries:   h  history key index (0: none), w  window key index (0: none),
--                    a  1 when approved, m  amount (text),
--                    n  number of original field pairs at the start of f, f  field pairs to HSET
--   invalid entries: r  reason, d  detail, o  index in ARGV of the first original pair, n  pairs
--
-- Idempotence: an entry that is no longer pending in the group, or whose hash already has an
-- outcome from the same stream entry, is a redelivery and nothing is written again. A hash that
-- already has an outcome from another entry is never overwritten: the record is a duplicate tx_id,
-- counted on the hash and dead-lettered.
-- An amount feeds the user's digest and window only together with the outcome that approved it.
-- A window member is `<stream id>|<amount>`, scored by the approval time; the window keeps the
-- newest ARGV[5] members, and a history rebuild makes the digest from it.
--
-- Returns one status per record: "scored", "invalid", "duplicate" or "redelivered".

local group = ARGV[1]
local compression = ARGV[2]
local scored_at = ARGV[3]
local records = cjson.decode(ARGV[4])
local window_size = tonumber(ARGV[5])
local approved_at = ARGV[6]

local function original_pairs(record)
  local out = {}
  if record.o then
    for i = 0, 2 * record.n - 1 do
      out[#out + 1] = ARGV[record.o + i]
    end
  else
    for i = 1, 2 * record.n do
      out[#out + 1] = record.f[i]
    end
  end
  return out
end

local function dead_letter(reason, detail, stream_id, original)
  local args = {'XADD', KEYS[2], '*', 'reason', reason, 'detail', detail, 'source_id', stream_id}
  for i = 1, #original, 2 do
    args[#args + 1] = 'field:' .. original[i]
    args[#args + 1] = original[i + 1]
  end
  redis.call(unpack(args))
end

local results = {}
local counts = {}
local acks = {}
for r, record in ipairs(records) do
  local stream_id = record.s
  local tx_key = record.t > 0 and KEYS[record.t] or nil
  local previous = {false, false}
  if tx_key then
    previous = redis.call('HMGET', tx_key, 'outcome', 'stream_id')
  end

  -- An entry that is no longer pending was acknowledged by an earlier run of this script, which
  -- wrote all of its effects in the same step, so running its batch again must change nothing.
  -- The hash alone cannot tell, because a duplicate or a tx_id-less invalid entry has no hash of its own.
  local pending = #redis.call('XPENDING', KEYS[1], group, stream_id, stream_id, 1) > 0

  local status
  if not pending or (previous[1] and previous[2] == stream_id) then
    status = 'redelivered'
  elseif previous[1] and (previous[1] ~= 'invalid' or record.r) then
    -- A valid entry may replace an invalid outcome (the producer corrected and resent it);
    -- any other outcome stays, and the later entry is a duplicate.
    status = 'duplicate'
    redis.call('HINCRBY', tx_key, 'duplicates', 1)
    redis.call('HSET', tx_key, 'last_duplicate_id', stream_id)
    dead_letter('duplicate_tx_id', 'tx_id already has an outcome from entry ' .. previous[2], stream_id,
      original_pairs(record))
  elseif record.r then
    status = 'invalid'
    dead_letter(record.r, record.d, stream_id, original_pairs(record))
    if tx_key then
      redis.call('HSET', tx_key, 'status', 'invalid', 'outcome', 'invalid', 'reasons', record.r,
        'detail', record.d, 'stream_id', stream_id, 'scored_at', scored_at)
    end
  else
    status = 'scored'
    local learns = record.a == 1 and record.h > 0
    if learns then
      local history_key = KEYS[record.h]
      local digest_existed = redis.call('EXISTS', history_key) == 1
      if not digest_existed then
        redis.call('TDIGEST.CREATE', history_key, 'COMPRESSION', compression)
      end
      redis.call('TDIGEST.ADD', history_key, record.m)
      -- A digest that exists without a window (loaded without one) gets no window, because the
      -- next rebuild would replace the whole digest with that one-amount window.
      if record.w > 0 and (not digest_existed or redis.call('EXISTS', KEYS[record.w]) == 1) then
        redis.call('ZADD', KEYS[record.w], approved_at, stream_id .. '|' .. record.m)
        redis.call('ZREMRANGEBYRANK', KEYS[record.w], 0, -(window_size + 1))
      end
      record.f[#record.f + 1] = 'learned'
      record.f[#record.f + 1] = '1'
    end
    if previous[1] == 'invalid' then
      redis.call('HDEL', tx_key, 'detail', 'status')
    end
    redis.call('HSET', tx_key, unpack(record.f))
    if record.a ~= 1 then
      -- A flagged transaction keeps the status written into its hash before it was scored (the
      -- prototype's producers wrote `pending`), or gets 'pending'.
      redis.call('HSETNX', tx_key, 'status', 'pending')
    end
  end

  acks[#acks + 1] = stream_id
  results[r] = status
  counts[status] = (counts[status] or 0) + 1
end

-- XACK takes many ids at once; chunks stay well below Lua's limit on unpack() arguments.
for start = 1, #acks, 1000 do
  redis.call('XACK', KEYS[1], group, unpack(acks, start, math.min(start + 999, #acks)))
end
for status, n in pairs(counts) do
  redis.call('HINCRBY', KEYS[3], status, n)
end
redis.call('HSET', KEYS[3], 'last_write_at', scored_at)
return results
