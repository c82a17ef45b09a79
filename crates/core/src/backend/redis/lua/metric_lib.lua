-- metric_lib.lua: shared prelude of settle.lua and record.lua (prepended to both).
--
-- Increments are summed per (map, field) first, then written under the analytics bounds,
-- decided inside the calling script (so atomically with what it settles), with as few commands
-- per map as the bounds allow (a command called from Lua costs Redis far more than the work it
-- does on a small sorted set; so do the scores Lua formats and Redis replies with):
--   dimension maps      at most `cap` named fields; a new field past the cap is written to
--                       `other` instead (fields that are always named never take a slot);
--                       the count of named fields (ZCARD) is read only for a new field;
--   the distinct map    users the sorted set does not hold yet (one ZMSCORE) are PFADDed to
--                       `<map key><hll suffix>`, and join the set while it holds fewer than
--                       `exact` (ZADD NX);
--   the ranked map      Space-Saving top-K: while every new user fits (ZCARD + new <= k, the
--                       ZCARD read only when a user is new) all
--                       scores grow in one ZADD; else one user at a time, a tracked one
--                       ZINCRBYed, a new one added while ZCARD < k, else replacing the
--                       smallest entry (ZPOPMIN) with that entry's score plus its own;
--   any other map       every field's sum added to its score: one ZMSCORE and one ZADD of the
--                       new scores (the very doubles ZINCRBY would store), or one ZINCRBY for a
--                       single field.
-- Then (for per-minute maps) one EXPIRE per map and one SADD of all map names into the
-- registry. Rollup buckets (`<rollup_prefix><aggregate>:<m|h|d>:<start>`) are not registered
-- (they are read by name, per range): the write that creates one sets its EXPIREAT, its start
-- plus `rollup_expiry[<m|h|d>]` (bucket width + retention), and a bucket already past that on
-- Redis's clock is not written at all (a late event counts in the totals only). Dimension
-- buckets are capped like their totals map; a `registers` bucket holds its users' HyperLogLog
-- registers (member = register, score = rank), raised with ZADD GT. Fields are decided in the
-- order they were first added: the caller sends them sorted by map and field, so maps written
-- together decide alike.
--
-- KEYS, ARGV: none of its own; the functions take what they need.
-- Returns nothing: defines decode_bounds(json), new_metrics(), add_metric(acc, map, field, by),
-- read_metrics(acc, argv, i) and flush_metrics(acc, metric_prefix, registry, minute_prefix, minute_ttl_seconds, bounds).
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

-- A map's increments: `fields` (distinct) and `by` (their sums), parallel arrays.
local function new_metrics()
  return { maps = {}, order = {} }
end

local function map_of(acc, map)
  local m = acc.maps[map]
  if not m then
    m = { fields = {}, by = {} }
    acc.maps[map] = m
    acc.order[#acc.order + 1] = map
  end
  return m
end

local function add_metric(acc, map, field, by)
  local m = map_of(acc, map)
  if not m.at then
    m.at = {}
    for j, f in ipairs(m.fields) do
      m.at[f] = j
    end
  end
  local j = m.at[field]
  if not j then
    j = #m.fields + 1
    m.fields[j] = field
    m.by[j] = 0
    m.at[field] = j
  end
  m.by[j] = m.by[j] + by
end

-- Reads summed increments laid out per map from `argv` at `i`: the number of maps, then per map
-- its name, n, its n fields (distinct), and their n sums. A map named twice is added up field by
-- field. Returns the position after them.
local function read_metrics(acc, argv, i)
  local maps = tonumber(argv[i])
  i = i + 1
  for _ = 1, maps do
    local map, n = argv[i], tonumber(argv[i + 1])
    local first = i + 2
    if acc.maps[map] then
      for j = 0, n - 1 do
        add_metric(acc, map, argv[first + j], tonumber(argv[first + n + j]))
      end
    else
      local m = map_of(acc, map)
      local fields, by = m.fields, m.by
      for j = 1, n do
        fields[j] = argv[first + j - 1]
        by[j] = tonumber(argv[first + n + j - 1])
      end
    end
    i = first + 2 * n
  end
  return i
end

-- `x` as Redis reads it back exactly: an integer (most sums are counts) in plain digits,
-- which Lua formats several times faster than 17 significant digits, anything else in 17.
local function number(x)
  if x == math.floor(x) and x > -9007199254740992 and x < 9007199254740992 then
    return string.format('%d', x)
  end
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

-- Fields per variadic call (ZMSCORE, ZADD, PFADD), well below Lua's unpack limit.
local per_call = 500

-- The stored scores of `fields` in `key`, by position (false for a field it does not hold):
-- one ZMSCORE per `per_call` fields.
local function scores_of(key, fields)
  local out = {}
  for from = 1, #fields, per_call do
    local part = redis.call('ZMSCORE', key, unpack(fields, from, math.min(from + per_call - 1, #fields)))
    for j = 1, #part do
      out[from + j - 1] = part[j]
    end
  end
  return out
end

-- ZADD `key` (with `flag` unless nil) of `args` = { score, member, score, member, … }: one
-- call per `per_call` members. Returns how many members were added.
local function zadd_all(key, flag, args)
  local added = 0
  for from = 1, #args, per_call * 2 do
    local to = math.min(from + per_call * 2 - 1, #args)
    if flag then
      added = added + redis.call('ZADD', key, flag, unpack(args, from, to))
    else
      added = added + redis.call('ZADD', key, unpack(args, from, to))
    end
  end
  return added
end

-- Writes `stored[j] + by[j]` (nil counts as 0) as the score of every field `fields[j]`, in one
-- ZADD: what one ZINCRBY per field would store, bit for bit (the stored double read back
-- exactly, the same addition, written so that Redis reads the sum back exactly).
local function zadd_sums(key, fields, by, stored)
  local args = {}
  for j, field in ipairs(fields) do
    local score = by[j]
    if stored[j] then
      score = tonumber(stored[j]) + score
    end
    args[#args + 1] = number(score)
    args[#args + 1] = field
  end
  zadd_all(key, nil, args)
end

-- How many of the `n` positions of `stored` (from scores_of) hold no score.
local function count_absent(stored, n)
  local absent = 0
  for j = 1, n do
    if not stored[j] then
      absent = absent + 1
    end
  end
  return absent
end

-- Adds `by[j]` to the score of every field `fields[j]` (distinct) in one ZMSCORE and one ZADD
-- instead of one call per field. Returns whether the write may have created `key`.
local function add_all(key, fields, by)
  if #fields == 1 then
    redis.call('ZINCRBY', key, number(by[1]), fields[1])
    return true
  end
  local stored = scores_of(key, fields)
  zadd_sums(key, fields, by, stored)
  return count_absent(stored, #fields) == #fields
end

-- A user already in the exact set was PFADDed by the step that added it (every write of the set
-- is this function, which PFADDs a user as it joins the set), so PFADDing it again would change
-- nothing: only the users the set does not hold are PFADDed, and the first `room` of them join
-- the set, as adding them one by one until it is full would. A batch of returning users costs
-- one ZMSCORE (a PFADD per user is slow on a sparse HyperLogLog, and was sent every batch).
-- Returns whether the write may have created `key`.
local function write_distinct(key, m, b)
  local stored = scores_of(key, m.fields)
  local new = {}
  for j, field in ipairs(m.fields) do
    if not stored[j] then
      new[#new + 1] = field
    end
  end
  if #new == 0 then
    return false
  end
  local hll = key .. b.hll_suffix
  for from = 1, #new, per_call do
    redis.call('PFADD', hll, unpack(new, from, math.min(from + per_call - 1, #new)))
  end
  local held = redis.call('ZCARD', key)
  local args = {}
  for j = 1, math.min(b.exact - held, #new) do
    args[#args + 1] = '1'
    args[#args + 1] = new[j]
  end
  zadd_all(key, 'NX', args)
  return held == 0
end

-- Returns whether the write may have created `key`.
local function write_ranked(key, m, b)
  local k = math.max(b.k, 1)
  local stored = scores_of(key, m.fields)
  local new = count_absent(stored, #m.fields)
  if new == 0 then
    -- Every user is tracked: every score grows by its sum, whatever the number tracked.
    zadd_sums(key, m.fields, m.by, stored)
    return false
  end
  local tracked = redis.call('ZCARD', key)
  if tracked + new <= k then
    -- Room for every new user: nothing is replaced, every score grows by its sum.
    zadd_sums(key, m.fields, m.by, stored)
    return tracked == 0
  end
  -- Full: one user at a time, since a replacement may pop a user of this very batch.
  for j, field in ipairs(m.fields) do
    local by = m.by[j]
    if redis.call('ZSCORE', key, field) then
      redis.call('ZINCRBY', key, number(by), field)
    elseif tracked < k then
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
  return tracked == 0
end

-- Fields the map holds already keep their names, so a batch of known values costs one ZMSCORE
-- and one ZADD; the number of named fields (ZCARD) is read only when a value is new. Returns
-- whether the write may have created `key`.
local function write_capped(key, typed, m, b)
  local stored = scores_of(key, m.fields)
  local new = count_absent(stored, #m.fields)
  if new == 0 then
    zadd_sums(key, m.fields, m.by, stored)
    return false
  end
  local held = redis.call('ZCARD', key)
  if held + new <= b.cap then
    -- Room for every new field: none can be turned into `other`.
    zadd_sums(key, m.fields, m.by, stored)
    return held == 0
  end
  local named = held
  -- Past the cap: which fields exist is known; whether `other` and the known types exist (they
  -- take no slot) is read in one ZMSCORE. Then each field is added to its target in order, as
  -- one ZINCRBY per field would, and the targets written in one ZADD.
  -- `at[field]` is the field's position in `stored`: the batch's (distinct) fields first, then
  -- `other` and the known types the batch does not name.
  local at, extra = {}, {}
  for j, field in ipairs(m.fields) do
    at[field] = j
  end
  local function look(field)
    if not at[field] then
      extra[#extra + 1] = field
      at[field] = #m.fields + #extra
    end
  end
  look(b.other)
  if typed then
    for _, t in ipairs(b.known) do
      look(t)
    end
  end
  local more = scores_of(key, extra)
  for j = 1, #extra do
    stored[#m.fields + j] = more[j]
  end
  if stored[at[b.other]] then
    named = named - 1
  end
  if typed then
    for _, t in ipairs(b.known) do
      if stored[at[t]] then
        named = named - 1
      end
    end
  end
  local score, targets = {}, {}
  for j, field in ipairs(m.fields) do
    local target = field
    if not always_named(b, typed, field) and not stored[at[field]] then
      if named < b.cap then
        named = named + 1
      else
        target = b.other
      end
    end
    if score[target] == nil then
      targets[#targets + 1] = target
      score[target] = stored[at[target]] and tonumber(stored[at[target]]) or 0
    end
    score[target] = score[target] + m.by[j]
  end
  local args = {}
  for _, target in ipairs(targets) do
    args[#args + 1] = number(score[target])
    args[#args + 1] = target
  end
  zadd_all(key, nil, args)
  return held == 0
end

-- A rollup bucket's distinct users: HyperLogLog registers (member = register, score = rank),
-- each raised to the rank sent when that is higher (ZADD GT). Returns whether the write may
-- have created `key` (only a write that adds members can).
local function write_registers(key, m)
  local args = {}
  for j, field in ipairs(m.fields) do
    args[#args + 1] = number(m.by[j])
    args[#args + 1] = field
  end
  return zadd_all(key, 'GT', args) > 0
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
      local created
      if aggregate == b.registers then
        created = write_registers(key, m)
      elseif map == b.users then
        created = write_distinct(key, m, b)
      elseif map == b.ranked then
        created = write_ranked(key, m, b)
      elseif b.capped_set[map] or minute or (aggregate and b.capped_set[aggregate]) then
        local typed = b.typed_set[map] or minute or (aggregate ~= nil and b.typed_set[aggregate] == true)
        created = write_capped(key, typed, m, b)
      else
        created = add_all(key, m.fields, m.by)
      end
      if expires_at then
        -- A bucket's expiry is fixed by its name, and set by the very write that creates it:
        -- a bucket that existed before this write has it already.
        if created then
          redis.call('EXPIREAT', key, expires_at)
        end
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
