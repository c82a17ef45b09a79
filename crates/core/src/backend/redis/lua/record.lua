-- record.lua: add increments to metric maps outside any delivery.
--
-- KEYS[1]  the registry of metric map names (set)
-- ARGV[1]  prefix of the metric map keys ("{p}:m:")
-- ARGV[2]  name prefix of per-minute maps
-- ARGV[3]  lifetime of a per-minute map in seconds
-- ARGV[4]  the analytics bounds, JSON (see metric_lib.lua)
-- ARGV[5…] the summed increments, per map (see read_metrics in metric_lib.lua): the number of
--          maps, then per map its name, n, n fields, n sums; sorted by map, then field
-- Returns  the number of increments applied.

local bounds = decode_bounds(ARGV[4])
local metrics = new_metrics()
read_metrics(metrics, ARGV, 5)
local n = 0
for _, map in ipairs(metrics.order) do
  n = n + #metrics.maps[map].fields
end
flush_metrics(metrics, ARGV[1], KEYS[1], ARGV[2], tonumber(ARGV[3]), bounds)
return n
