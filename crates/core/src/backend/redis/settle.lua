-- settle.lua: settle a batch of deliveries in one atomic step.
--
-- Acks:        the batch's effects arrive summed per (map, field), not per event, so Redis does
--              one ZINCRBY per distinct field however large the batch. The pending-entries list
--              is the applied mark: an entry is applied in the same step that acks it, and only
--              while it is still pending. `XCLAIM … JUSTID` (which keeps the delivery count)
--              returns the acked entries that are still pending; if any is not (another
--              consumer's settlement won, after this lease expired), nothing is written and
--              those entries are returned, so the caller sends the batch again without them
--              and their share of the sums. Otherwise all are XACKed + XDELeted and the sums
--              applied.
-- Retry:       only while this lease still owns the entry (it is pending with the delivery
--              count of the lease): ZADD the retry set (due ms -> [entry id, event id, payload,
--              failures]), XACK + XDEL, count failed and retried.
-- Dead-letter: same ownership check; XADD the DLQ stream with the failure fields, XACK + XDEL,
--              count failed and dead_lettered.
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
-- ARGV[7], ARGV[8], ARGV[9]  counter fields: failed, retried, dead_lettered
-- ARGV[10] consumer that holds the acked entries (XCLAIM needs one; it keeps them there)
-- ARGV[11] a = number of acked entries, then a entry ids
-- then     m = number of summed increments, then m × (map, field, by), each (map, field) once
-- then     records, each starting with its kind:
--   'R', entry id, lease delivery count, failures after this attempt, due ms
--   'D', entry id, lease delivery count, attempts, failure reason, error
-- Returns  the acked entries that were no longer pending (empty: everything took effect).

local stream, retry, dlq, registry = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group = ARGV[1]
local counters = ARGV[6]
local chunk = 1000 -- entries per XCLAIM/XACK/XDEL call, well below Lua's unpack limit

local acks = {}
local a = tonumber(ARGV[11])
for k = 1, a do
  acks[k] = ARGV[11 + k]
end

-- Every acked entry must still be pending before anything is written.
local live = {}
local still_pending = 0
for from = 1, #acks, chunk do
  local to = math.min(from + chunk - 1, #acks)
  local call = { 'XCLAIM', stream, group, ARGV[10], 0 }
  for k = from, to do
    call[#call + 1] = acks[k]
  end
  call[#call + 1] = 'JUSTID'
  for _, id in ipairs(redis.call(unpack(call))) do
    live[id] = true
    still_pending = still_pending + 1
  end
end
if still_pending ~= #acks then
  local stale = {}
  for _, id in ipairs(acks) do
    if not live[id] then
      stale[#stale + 1] = id
    end
  end
  return stale
end

-- The sums are distinct per (map, field) already: written as they come, no re-summing here.
local i = 12 + a
local m = tonumber(ARGV[i])
i = i + 1
local maps = {}
for k = 0, m - 1 do
  local at = i + k * 3
  local map = ARGV[at]
  if not maps[map] then
    maps[map] = true
    maps[#maps + 1] = map
  end
  redis.call('ZINCRBY', ARGV[2] .. map, ARGV[at + 2], ARGV[at + 1])
end
i = i + m * 3
for _, map in ipairs(maps) do
  if string.sub(map, 1, #ARGV[3]) == ARGV[3] then
    redis.call('EXPIRE', ARGV[2] .. map, tonumber(ARGV[4]))
  end
end
if #maps > 0 then
  redis.call('SADD', registry, unpack(maps))
end

local metrics = new_metrics()

local done_ids = acks

local function owns(entry, lease)
  local p = redis.call('XPENDING', stream, group, entry, entry, 1)
  return #p == 1 and tonumber(p[1][4]) == tonumber(lease)
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
    local entry, lease = ARGV[i + 1], ARGV[i + 2]
    if owns(entry, lease) then
      local f = fields_of(entry)
      if f then
        local member = cjson.encode({ entry, f['id'], f['payload'], tonumber(ARGV[i + 3]) })
        redis.call('ZADD', retry, ARGV[i + 4], member)
      end
      done_ids[#done_ids + 1] = entry
      add_metric(metrics, counters, ARGV[7], 1)
      add_metric(metrics, counters, ARGV[8], 1)
    end
    i = i + 5
  elseif kind == 'D' then
    local entry, lease = ARGV[i + 1], ARGV[i + 2]
    if owns(entry, lease) then
      local f = fields_of(entry)
      if f then
        redis.call('XADD', dlq, '*', 'id', f['id'], 'payload', f['payload'],
          'failure_reason', ARGV[i + 4], 'error', ARGV[i + 5], 'attempts', ARGV[i + 3],
          'failed_at', ARGV[5])
      end
      done_ids[#done_ids + 1] = entry
      add_metric(metrics, counters, ARGV[7], 1)
      add_metric(metrics, counters, ARGV[9], 1)
    end
    i = i + 6
  else
    return redis.error_reply('ERR settle: unknown record kind ' .. tostring(kind))
  end
end

for from = 1, #done_ids, chunk do
  local to = math.min(from + chunk - 1, #done_ids)
  redis.call('XACK', stream, group, unpack(done_ids, from, to))
  redis.call('XDEL', stream, unpack(done_ids, from, to))
end

flush_metrics(metrics, ARGV[2], registry, ARGV[3], tonumber(ARGV[4]))
return {}
