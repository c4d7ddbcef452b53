-- Rebuild users' T-Digests from their rolling windows of approved amounts, one user at a time.
--
-- Keys, three per user:
--   approved  sorted set  <prefix>:approved:<user_id>, members `<id>|<amount>` scored by time in ms
--   history   T-Digest    <prefix>:history:<user_id>, replaced by the rebuilt digest
--   build     T-Digest    <prefix>:history_build:<user_id>, the digest being built
--
-- ARGV: compression, window count, cut-off time in ms ("" for no age limit), build key expiry in ms.
--
-- The script first trims the window (entries older than the cut-off, then all but the newest
-- `window count`), then builds the digest under the build key and renames it over the history.
-- A script runs atomically, so no approval is written between reading the window and replacing the
-- digest. The build key exists so that a failing TDIGEST.ADD leaves the old digest in place,
-- because a script's earlier writes are not rolled back. An empty window deletes the digest.
--
-- Returns {users rebuilt, users whose window was empty, amounts added}.

local compression = ARGV[1]
local window = tonumber(ARGV[2])
local cutoff = ARGV[3]
local build_ttl = ARGV[4]
-- Lua's unpack() takes about 8,000 values, so amounts are added in slices.
local slice = 1000

local rebuilt, emptied, amounts_added = 0, 0, 0
for k = 1, #KEYS, 3 do
  local approved, history, build = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  if cutoff ~= '' then
    redis.call('ZREMRANGEBYSCORE', approved, '-inf', '(' .. cutoff)
  end
  redis.call('ZREMRANGEBYRANK', approved, 0, -(window + 1))
  local members = redis.call('ZRANGE', approved, 0, -1)
  if #members == 0 then
    redis.call('DEL', history)
    emptied = emptied + 1
  else
    redis.call('DEL', build)
    redis.call('TDIGEST.CREATE', build, 'COMPRESSION', compression)
    redis.call('PEXPIRE', build, build_ttl)
    local amounts = {}
    for _, member in ipairs(members) do
      local amount = string.match(member, '|([^|]*)$')
      if amount then
        amounts[#amounts + 1] = amount
      end
    end
    for first = 1, #amounts, slice do
      redis.call('TDIGEST.ADD', build, unpack(amounts, first, math.min(first + slice - 1, #amounts)))
    end
    redis.call('RENAME', build, history)
    redis.call('PERSIST', history)
    rebuilt = rebuilt + 1
    amounts_added = amounts_added + #amounts
  end
end
return {rebuilt, emptied, amounts_added}
