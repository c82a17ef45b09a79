-- metric_lib.lua: shared prelude of settle.lua and record.lua (prepended to both).
--
-- Increments are summed per (map, field) first, then written once each: one ZINCRBY per
-- field, (for per-minute maps) one EXPIRE per map and one SADD of all map names into the
-- registry.
--
-- KEYS, ARGV: none of its own; the functions take what they need.
-- Returns nothing: defines new_metrics(), add_metric(acc, map, field, by) and
-- flush_metrics(acc, metric_prefix, registry, minute_prefix, minute_ttl_seconds).

local function new_metrics()
  return { maps = {}, order = {} }
end

local function add_metric(acc, map, field, by)
  local m = acc.maps[map]
  if not m then
    m = { fields = {}, order = {} }
    acc.maps[map] = m
    acc.order[#acc.order + 1] = map
  end
  if m.fields[field] == nil then
    m.fields[field] = 0
    m.order[#m.order + 1] = field
  end
  m.fields[field] = m.fields[field] + by
end

local function flush_metrics(acc, metric_prefix, registry, minute_prefix, minute_ttl)
  if #acc.order == 0 then
    return
  end
  for _, map in ipairs(acc.order) do
    local m = acc.maps[map]
    local key = metric_prefix .. map
    for _, field in ipairs(m.order) do
      redis.call('ZINCRBY', key, string.format('%.17g', m.fields[field]), field)
    end
    if string.sub(map, 1, #minute_prefix) == minute_prefix then
      redis.call('EXPIRE', key, minute_ttl)
    end
  end
  redis.call('SADD', registry, unpack(acc.order))
end
