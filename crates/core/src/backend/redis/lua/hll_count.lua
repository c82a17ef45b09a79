-- hll_count.lua: the distinct count of several partitions' HyperLogLogs together.
--
-- The partitions' HyperLogLogs live in different slots, so they cannot be merged where they
-- are; their raw values (read with GET) are written to scratch keys of this slot, merged,
-- counted and deleted again, all inside this script, so nothing else ever sees them.
--
-- KEYS[1]  a scratch key of this slot (the merge target)
-- KEYS[2]  a second scratch key of this slot
-- ARGV[…]  the raw HyperLogLog values
-- Returns  the estimated number of distinct members of their union.

redis.call('DEL', KEYS[1])
for i = 1, #ARGV do
  redis.call('SET', KEYS[2], ARGV[i])
  redis.call('PFMERGE', KEYS[1], KEYS[2])
end
local n = redis.call('PFCOUNT', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return n
