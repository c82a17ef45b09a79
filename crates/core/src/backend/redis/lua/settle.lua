-- settle.lua: settle a batch of deliveries in one atomic step.
--
-- Acks:        the batch's effects arrive summed per (map, field), not per event, so Redis does
--              one write per distinct field however large the batch (under the analytics
--              bounds of ARGV[9], see metric_lib.lua). The pending-entries list
--              is the applied mark: an entry is applied in the same step that acks it, and only
--              while its lease is current (pending for the lease's consumer with the lease's
--              delivery count; one XPENDING range per consumer checks that). If any acked entry
--              is not (its lease ran out and it was claimed again, or another consumer settled
--              it), nothing is written and those entries are returned, so the caller sends the
--              batch again without them and their share of the sums. Otherwise all are XACKed +
--              XDELeted and the sums applied.
-- Retry:       only while the lease is current: ZADD the retry set (due ms -> [entry id, event
--              id, payload, failures]), XACK + XDEL, count what ARGV[7] names.
-- Dead-letter: same lease check; XADD the DLQ stream with the failure fields, XACK + XDEL,
--              count what ARGV[8] names.
--
-- KEYS[1]  the stream
-- KEYS[2]  the retry sorted set
-- KEYS[3]  the DLQ stream
-- KEYS[4]  the registry of metric map names (set)
-- ARGV[1]  consumer group
-- ARGV[2]  prefix of the metric map keys ("{p}:m:")
-- ARGV[3]  name prefix of per-minute maps
-- ARGV[4]  lifetime of a per-minute map in seconds
-- ARGV[5]  now, epoch ms (the DLQ's failed_at)
-- ARGV[6]  counters map name
-- ARGV[7]  the counters a retry adds one to, space-separated
-- ARGV[8]  the counters a dead letter adds one to, space-separated
-- ARGV[9]  the analytics bounds, JSON (see metric_lib.lua)
-- ARGV[10] g = number of groups of acks, one per consumer, then per group: consumer, lowest
--          and highest entry id of the group, n, then n × (entry id, lease delivery count)
-- then     the summed increments, per map (see read_metrics in metric_lib.lua): the number of
--          maps, then per map its name, n, n fields, n sums; each (map, field) once, sorted by
--          map, then field
-- then     records, each starting with its kind:
--   'R', entry id, lease consumer, lease delivery count, failures after this attempt, due ms
--   'D', entry id, lease consumer, lease delivery count, attempts, failure reason, error
-- Returns  the acked entries whose lease was not current (empty: everything took effect).

local stream, retry, dlq, registry = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group = ARGV[1]
local counters = ARGV[6]
local bounds = decode_bounds(ARGV[9])
local chunk = 1000 -- entries per XPENDING/XACK/XDEL call, well below Lua's unpack limit

-- Delivery counts of `consumer`'s pending entries from `first` to `last`.
local function pending_of(consumer, first, last)
  local counts = {}
  local from = first
  while true do
    local page = redis.call('XPENDING', stream, group, from, last, chunk, consumer)
    for _, p in ipairs(page) do
      counts[p[1]] = tonumber(p[4])
    end
    if #page < chunk then
      return counts
    end
    from = '(' .. page[#page][1]
  end
end

-- Every acked entry's lease must be current before anything is written.
local acks, stale = {}, {}
local i = 11
for _ = 1, tonumber(ARGV[10]) do
  local consumer, first, last, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  i = i + 4
  local counts = pending_of(consumer, first, last)
  for k = 0, n - 1 do
    local entry, deliveries = ARGV[i + k * 2], tonumber(ARGV[i + k * 2 + 1])
    if counts[entry] == deliveries then
      acks[#acks + 1] = entry
    else
      stale[#stale + 1] = entry
    end
  end
  i = i + n * 2
end
if #stale > 0 then
  return stale
end

-- The sums are distinct per (map, field) already and in decision order: kept in that order.
local sums = new_metrics()
i = read_metrics(sums, ARGV, i)
flush_metrics(sums, ARGV[2], registry, ARGV[3], tonumber(ARGV[4]), bounds)

local metrics = new_metrics()

local function count(names)
  for name in string.gmatch(names, '%S+') do
    add_metric(metrics, counters, name, 1)
  end
end

local done_ids = acks

local function owns(entry, consumer, deliveries)
  local p = redis.call('XPENDING', stream, group, entry, entry, 1)
  return #p == 1 and p[1][2] == consumer and tonumber(p[1][4]) == tonumber(deliveries)
end

local function fields_of(entry)
  local e = redis.call('XRANGE', stream, entry, entry)
  if #e ~= 1 then
    return nil
  end
  local f = {}
  local raw = e[1][2]
  for j = 1, #raw, 2 do
    f[raw[j]] = raw[j + 1]
  end
  return f
end

while i <= #ARGV do
  local kind = ARGV[i]
  if kind == 'R' then
    local entry = ARGV[i + 1]
    if owns(entry, ARGV[i + 2], ARGV[i + 3]) then
      local f = fields_of(entry)
      if f then
        local member = cjson.encode({ entry, f['id'], f['payload'], tonumber(ARGV[i + 4]) })
        redis.call('ZADD', retry, ARGV[i + 5], member)
      end
      done_ids[#done_ids + 1] = entry
      count(ARGV[7])
    end
    i = i + 6
  elseif kind == 'D' then
    local entry = ARGV[i + 1]
    if owns(entry, ARGV[i + 2], ARGV[i + 3]) then
      local f = fields_of(entry)
      if f then
        redis.call('XADD', dlq, '*', 'id', f['id'], 'payload', f['payload'],
          'failure_reason', ARGV[i + 5], 'error', ARGV[i + 6], 'attempts', ARGV[i + 4],
          'failed_at', ARGV[5])
      end
      done_ids[#done_ids + 1] = entry
      count(ARGV[8])
    end
    i = i + 7
  else
    return redis.error_reply('ERR settle: unknown record kind ' .. tostring(kind))
  end
end

for from = 1, #done_ids, chunk do
  local to = math.min(from + chunk - 1, #done_ids)
  redis.call('XACK', stream, group, unpack(done_ids, from, to))
  redis.call('XDEL', stream, unpack(done_ids, from, to))
end

flush_metrics(metrics, ARGV[2], registry, ARGV[3], tonumber(ARGV[4]), bounds)
return {}
