-- metric_lib.lua: shared prelude of settle.lua and record.lua (prepended to both).
--
-- Increments are summed per (map, field) first, then written once each under the analytics
-- bounds, decided inside the calling script (so atomically with what it settles):
--   dimension maps      at most `cap` named fields; a new field past the cap is written to
--                       `other` instead (fields that are always named never take a slot);
--   the distinct map    every user is PFADDed to `<map key><hll suffix>`; the sorted set keeps
--                       only the first `exact` users (ZADD NX);
--   the ranked map      Space-Saving top-K: a tracked user is ZINCRBYed; a new one is added
--                       while ZCARD < k, else it replaces the smallest entry (ZPOPMIN) with
--                       that entry's score plus its own;
--   any other map       one ZINCRBY per field.
-- Then (for per-minute maps) one EXPIRE per map and one SADD of all map names into the
-- registry. Rollup buckets (`<rollup_prefix><aggregate>:<m|h|d>:<start>`) are not registered
-- (they are read by name, per range): each gets EXPIREAT its start plus
-- `rollup_expiry[<m|h|d>]` (bucket width + retention), and a bucket already past that on
-- Redis's clock is not written at all (a late event counts in the totals only). Dimension
-- buckets are capped like their totals map; a `registers` bucket holds its users' HyperLogLog
-- registers (member = register, score = rank), raised with ZADD GT. Fields are written in the order they were first added: the caller sends them
-- sorted by map and field, so maps written together decide alike.
--
-- KEYS, ARGV: none of its own; the functions take what they need.
-- Returns nothing: defines decode_bounds(json), new_metrics(), add_metric(acc, map, field, by)
-- and flush_metrics(acc, metric_prefix, registry, minute_prefix, minute_ttl_seconds, bounds).
-- The bounds JSON: { cap, exact, k, users, ranked, hll_suffix, other, capped = [map names],
-- minute_prefix, typed = [maps where the known types are always named], known = [types],
-- rollup_prefix, registers = aggregate of register buckets, rollup_expiry = { m, h, d } }.

local function as_set(list)
  local set = {}
  for _, v in ipairs(list) do
    set[v] = true
  end
  return set
end

local function decode_bounds(json)
  local b = cjson.decode(json)
  b.capped_set = as_set(b.capped)
  b.typed_set = as_set(b.typed)
  b.known_set = as_set(b.known)
  return b
end

local function starts_with(s, prefix)
  return string.sub(s, 1, #prefix) == prefix
end

-- `aggregate, letter, start` of a rollup bucket's map name; nil for any other map.
local function rollup_parts(b, map)
  if not starts_with(map, b.rollup_prefix) then
    return nil
  end
  local aggregate, letter, start = string.match(string.sub(map, #b.rollup_prefix + 1),
    '^([^:]+):(%a):(%-?%d+)$')
  if not aggregate then
    return nil
  end
  return aggregate, letter, tonumber(start)
end

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

local function number(x)
  return string.format('%.17g', x)
end

-- Whether `field` of a dimension map keeps its name without taking a slot; `typed`: whether
-- the map counts events by type.
local function always_named(b, typed, field)
  if field == b.other then
    return true
  end
  return typed and b.known_set[field] == true
end

local function write_distinct(key, m, b)
  local chunk = 1000 -- members per PFADD, well below Lua's unpack limit
  for from = 1, #m.order, chunk do
    redis.call('PFADD', key .. b.hll_suffix, unpack(m.order, from, math.min(from + chunk - 1, #m.order)))
  end
  local size = redis.call('ZCARD', key)
  for _, field in ipairs(m.order) do
    if size >= b.exact then
      return
    end
    size = size + redis.call('ZADD', key, 'NX', 1, field)
  end
end

local function write_ranked(key, m, b)
  local tracked = redis.call('ZCARD', key)
  for _, field in ipairs(m.order) do
    local by = m.fields[field]
    if redis.call('ZSCORE', key, field) then
      redis.call('ZINCRBY', key, number(by), field)
    elseif tracked < math.max(b.k, 1) then
      redis.call('ZINCRBY', key, number(by), field)
      tracked = tracked + 1
    else
      local smallest = redis.call('ZPOPMIN', key)
      local inherited = 0
      if #smallest == 2 then
        inherited = tonumber(smallest[2])
      end
      redis.call('ZADD', key, number(inherited + by), field)
    end
  end
end

local function write_capped(key, typed, m, b)
  local named = redis.call('ZCARD', key)
  if named + #m.order <= b.cap then
    -- Room for every field, new or not: no field can be turned into `other`.
    for _, field in ipairs(m.order) do
      redis.call('ZINCRBY', key, number(m.fields[field]), field)
    end
    return
  end
  if redis.call('ZSCORE', key, b.other) then
    named = named - 1
  end
  if typed then
    for _, t in ipairs(b.known) do
      if redis.call('ZSCORE', key, t) then
        named = named - 1
      end
    end
  end
  for _, field in ipairs(m.order) do
    local target = field
    if not always_named(b, typed, field) and not redis.call('ZSCORE', key, field) then
      if named < b.cap then
        named = named + 1
      else
        target = b.other
      end
    end
    redis.call('ZINCRBY', key, number(m.fields[field]), target)
  end
end

-- A rollup bucket's distinct users: HyperLogLog registers (member = register, score = rank),
-- each raised to the rank sent when that is higher (ZADD GT).
local function write_registers(key, m)
  local chunk = 500 -- registers per ZADD, well below Lua's unpack limit
  local args = {}
  for _, field in ipairs(m.order) do
    args[#args + 1] = number(m.fields[field])
    args[#args + 1] = field
    if #args >= chunk * 2 then
      redis.call('ZADD', key, 'GT', unpack(args))
      args = {}
    end
  end
  if #args > 0 then
    redis.call('ZADD', key, 'GT', unpack(args))
  end
end

local function flush_metrics(acc, metric_prefix, registry, minute_prefix, minute_ttl, b)
  if #acc.order == 0 then
    return
  end
  local registered = {}
  local now = nil
  for _, map in ipairs(acc.order) do
    local m = acc.maps[map]
    local key = metric_prefix .. map
    local aggregate, letter, start = rollup_parts(b, map)
    local expires_at = nil
    if aggregate then
      if not now then
        now = tonumber(redis.call('TIME')[1])
      end
      expires_at = start + (b.rollup_expiry[letter] or 0)
    end
    local minute = starts_with(map, b.minute_prefix)
    if expires_at and expires_at <= now then
      -- Past its retention: the late event counts in the totals only.
    else
      if aggregate == b.registers then
        write_registers(key, m)
      elseif map == b.users then
        write_distinct(key, m, b)
      elseif map == b.ranked then
        write_ranked(key, m, b)
      elseif b.capped_set[map] or minute or (aggregate and b.capped_set[aggregate]) then
        local typed = b.typed_set[map] or minute or (aggregate ~= nil and b.typed_set[aggregate] == true)
        write_capped(key, typed, m, b)
      else
        for _, field in ipairs(m.order) do
          redis.call('ZINCRBY', key, number(m.fields[field]), field)
        end
      end
      if expires_at then
        redis.call('EXPIREAT', key, expires_at)
      else
        if starts_with(map, minute_prefix) then
          redis.call('EXPIRE', key, minute_ttl)
        end
        registered[#registered + 1] = map
      end
    end
  end
  if #registered > 0 then
    redis.call('SADD', registry, unpack(registered))
  end
end
