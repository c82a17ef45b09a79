-- metrics.lua: read every metric map in one consistent snapshot.
--
-- Map names come from the registry set, so no SCAN is needed. Names whose map no longer exists
-- (expired per-minute maps) are removed from the registry.
--
-- KEYS[1]  the registry of metric map names (set)
-- ARGV[1]  prefix of the metric map keys ("{p}:m:")
-- ARGV[2]  name of the distinct-count map (only its size is returned)
-- ARGV[3]  name of the ranked map (only its top entries are returned)
-- ARGV[4]  how many top entries of the ranked map
-- ARGV[5]  how many users the distinct-count map holds exactly at most
-- ARGV[6]  suffix of the distinct-count map's HyperLogLog key
-- ARGV[7]  most members of the distinct-count map to return with its count (0: none)
-- Returns  a flat array of pairs: map name, then either, for the distinct-count map, an array
--          of its count (the map's size while below ARGV[5], else the HyperLogLog's PFCOUNT,
--          never below the size) followed by every member when the exact set is below both
--          ARGV[5] and ARGV[7] (so counts of several partitions can be united); or an array
--          of field, score, field, score, … (ranked map: largest first).

local out = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. name
  if redis.call('EXISTS', key) == 0 then
    redis.call('SREM', KEYS[1], name)
  elseif name == ARGV[2] then
    out[#out + 1] = name
    local size = redis.call('ZCARD', key)
    local reply = { size }
    if size >= tonumber(ARGV[5]) then
      reply[1] = math.max(size, redis.call('PFCOUNT', key .. ARGV[6]))
    elseif size <= tonumber(ARGV[7]) and size > 0 then
      for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
        reply[#reply + 1] = member
      end
    end
    out[#out + 1] = reply
  elseif name == ARGV[3] then
    out[#out + 1] = name
    out[#out + 1] = redis.call('ZREVRANGE', key, 0, tonumber(ARGV[4]) - 1, 'WITHSCORES')
  else
    out[#out + 1] = name
    out[#out + 1] = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  end
end
return out
