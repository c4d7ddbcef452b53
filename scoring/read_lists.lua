-- Read the live list version and the list entries that match a batch of IP addresses, atomically.
--
-- Keys:
--   KEYS[1]  string        <prefix>:lists:version
--   KEYS[2]  Bloom filter  <prefix>:blocklist:ip, single blocklisted addresses
--   KEYS[3]  sorted set    <prefix>:blocklist:ranges, merged ranges (see scoring/ranges.py)
--   KEYS[4]  sorted set    <prefix>:allowlist:ranges, merged ranges and single addresses
--
-- ARGV: n canonical addresses, then their n ZRANGE BYLEX bounds (scoring.ranges.lookup_bound).
--
-- Returns {version or nil, {Bloom flag per address}, then per address the blocklisted range and
-- the allowlisted range with the greatest start not above it ("" when there is none)}. The caller
-- checks that the address is at or below each range's end. One script call replaces 2n + 2
-- commands, which client-side command encoding made the largest cost of a batch read.

local n = #ARGV / 2
local version = redis.call('GET', KEYS[1])

local flags = {}
-- Lua's unpack() takes about 8,000 values, so BF.MEXISTS is called in slices.
for first = 1, n, 1000 do
  local last = math.min(first + 999, n)
  local slice = redis.call('BF.MEXISTS', KEYS[2], unpack(ARGV, first, last))
  for i = 1, #slice do
    flags[#flags + 1] = slice[i]
  end
end

local out = {version, flags}
for i = 1, n do
  local bound = ARGV[n + i]
  local blocked = redis.call('ZRANGE', KEYS[3], bound, '-', 'BYLEX', 'REV', 'LIMIT', 0, 1)
  local allowed = redis.call('ZRANGE', KEYS[4], bound, '-', 'BYLEX', 'REV', 'LIMIT', 0, 1)
  out[#out + 1] = blocked[1] or ''
  out[#out + 1] = allowed[1] or ''
end
return out
