-- rollups.lua: read rollup buckets of one partition in one consistent step.
--
-- KEYS     the buckets' keys (all in the partition's slot)
-- Returns  one array per key, in KEYS order: field, score, field, score, … (empty: nothing
--          stored, or the bucket expired)

local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
end
return out
