-- Read each user's history for one batch: observation count and one quantile.
--
-- Keys: KEYS[1..n]  T-Digest  <prefix>:history:<user_id>, one per distinct user of the batch
-- ARGV[1]: the quantile, between 0 and 1.
--
-- Returns a flat array with two items per key: the observation count (0 for a missing digest)
-- and the quantile as text ("nan" for a missing digest; RedisBloom 2.8.2 also returns "nan" for
-- a digest with one observation or none). One script call replaces two commands per user,
-- which would cost the Python client more than the server's work.

local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    -- The rank of +inf is the number of observations (-2 for an empty digest). It is much
    -- cheaper here than TDIGEST.INFO, whose 18-item reply Lua turns into tables.
    local observations = redis.call('TDIGEST.RANK', key, 'inf')[1]
    if observations < 0 then
      observations = 0
    end
    out[2 * i - 1] = observations
    out[2 * i] = redis.call('TDIGEST.QUANTILE', key, ARGV[1])[1]
  else
    out[2 * i - 1] = 0
    out[2 * i] = 'nan'
  end
end
return out
