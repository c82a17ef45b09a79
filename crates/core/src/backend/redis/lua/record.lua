-- record.lua: add increments to metric maps outside any delivery.
--
-- KEYS[1]  the registry of metric map names (set)
-- ARGV[1]  prefix of the metric map keys ("{p}:m:")
-- ARGV[2]  name prefix of per-minute maps
-- ARGV[3]  lifetime of a per-minute map in seconds
-- ARGV[4]  the analytics bounds, JSON (see metric_lib.lua)
-- ARGV[5…] triples: map, field, by, sorted by map, then field
-- Returns  the number of increments applied.

local bounds = decode_bounds(ARGV[4])
local metrics = new_metrics()
local n = 0
for i = 5, #ARGV, 3 do
  add_metric(metrics, ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]))
  n = n + 1
end
flush_metrics(metrics, ARGV[1], KEYS[1], ARGV[2], tonumber(ARGV[3]), bounds)
return n
