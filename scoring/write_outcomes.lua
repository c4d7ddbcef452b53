-- Write the outcomes of one scored batch and acknowledge its entries, atomically.
--
-- Keys (all declared in KEYS):
--   KEYS[1]  stream        input stream; entries are acknowledged with XACK
--   KEYS[2]  stream        dead-letter stream; invalid and duplicate entries are added
--   KEYS[3]  hash          <prefix>:stats; counters per status and the time of the last write
--   KEYS[4+] hash          <prefix>:tx:<tx_id>, one per transaction in the batch
--            T-Digest      <prefix>:history:<user_id>, one per user that learns an amount
--
-- ARGV: group, compression, scored_at, record count, then per record:
--   stream_id, kind ("score" | "invalid"), tx key index (0: none), history key index (0: none),
--   approved ("1" | "0"), amount, reason, detail,
--   n, n original field pairs, m, m computed field pairs.
--
-- Idempotence: a hash that already has an outcome is never overwritten. When that outcome came
-- from the same stream entry the record is a redelivery and nothing is written again; when it came
-- from another entry the record is a duplicate tx_id, counted on the hash and dead-lettered.
-- An amount feeds the user's digest only together with the outcome that approved it.
--
-- Returns one status per record: "scored", "invalid", "duplicate" or "redelivered".

local group = ARGV[1]
local compression = ARGV[2]
local scored_at = ARGV[3]
local count = tonumber(ARGV[4])
local pos = 5

local function take_pairs()
  local n = tonumber(ARGV[pos])
  local pairs_out = {}
  for i = 1, 2 * n do
    pairs_out[i] = ARGV[pos + i]
  end
  pos = pos + 2 * n + 1
  return pairs_out
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
for r = 1, count do
  local stream_id = ARGV[pos]
  local kind = ARGV[pos + 1]
  local tx_index = tonumber(ARGV[pos + 2])
  local history_index = tonumber(ARGV[pos + 3])
  local approved = ARGV[pos + 4] == '1'
  local amount = ARGV[pos + 5]
  local reason = ARGV[pos + 6]
  local detail = ARGV[pos + 7]
  pos = pos + 8
  local original = take_pairs()
  local computed = take_pairs()

  local status
  local tx_key = tx_index > 0 and KEYS[tx_index] or nil
  local previous = {false, false}
  if tx_key then
    previous = redis.call('HMGET', tx_key, 'outcome', 'stream_id')
  end

  if previous[1] and previous[2] == stream_id then
    status = 'redelivered'
  elseif previous[1] then
    status = 'duplicate'
    redis.call('HINCRBY', tx_key, 'duplicates', 1)
    redis.call('HSET', tx_key, 'last_duplicate_id', stream_id)
    dead_letter('duplicate_tx_id', 'tx_id already has an outcome from entry ' .. previous[2], stream_id, original)
  elseif kind == 'invalid' then
    status = 'invalid'
    dead_letter(reason, detail, stream_id, original)
    if tx_key then
      redis.call('HSET', tx_key, 'status', 'invalid', 'outcome', 'invalid', 'reasons', reason,
        'detail', detail, 'stream_id', stream_id, 'scored_at', scored_at)
    end
  else
    status = 'scored'
    local fields = {'HSET', tx_key}
    for i = 1, #original do fields[#fields + 1] = original[i] end
    for i = 1, #computed do fields[#fields + 1] = computed[i] end
    redis.call(unpack(fields))
    if not approved then
      -- A flagged transaction keeps the status its producer gave it, or gets 'pending'.
      redis.call('HSETNX', tx_key, 'status', 'pending')
    elseif history_index > 0 then
      local history_key = KEYS[history_index]
      if redis.call('EXISTS', history_key) == 0 then
        redis.call('TDIGEST.CREATE', history_key, 'COMPRESSION', compression)
      end
      redis.call('TDIGEST.ADD', history_key, amount)
      redis.call('HSET', tx_key, 'learned', '1')
    end
  end

  redis.call('XACK', KEYS[1], group, stream_id)
  results[r] = status
end

local counts = {}
for _, status in ipairs(results) do
  counts[status] = (counts[status] or 0) + 1
end
for status, n in pairs(counts) do
  redis.call('HINCRBY', KEYS[3], status, n)
end
redis.call('HSET', KEYS[3], 'last_write_at', scored_at)
return results
