-- settle.lua: settle a batch of deliveries in one atomic step.
--
-- Ack:         XACK + XDEL the entry; if the event carries an effect and its id was not applied
--              within the idempotency TTL (SET processed:<id> NX PX), apply its increments.
--              A stale ack (lost lease) still removes the entry; the processed mark keeps the
--              effect from being applied twice.
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
-- ARGV[2]  prefix of the applied-mark keys ("{p}:processed:")
-- ARGV[3]  prefix of the metric map keys ("{p}:m:")
-- ARGV[4]  name prefix of per-minute maps
-- ARGV[5]  lifetime of a per-minute map in seconds
-- ARGV[6]  idempotency TTL in ms
-- ARGV[7]  now, epoch ms (the DLQ's failed_at)
-- ARGV[8]  counters map name
-- ARGV[9], ARGV[10], ARGV[11]  counter fields: failed, retried, dead_lettered
-- ARGV[12…] records, each starting with its kind:
--   'A', entry id ('' if unknown), event id ('' = no effect), n, then n × (map, field, by)
--   'R', entry id, lease delivery count, failures after this attempt, due ms
--   'D', entry id, lease delivery count, attempts, failure reason, error
-- Returns  the number of settlements that took effect (acks always do).

local stream, retry, dlq, registry = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group = ARGV[1]
local counters = ARGV[8]
local metrics = new_metrics()
local done_ids = {}
local effective = 0

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
  for i = 1, #raw, 2 do
    f[raw[i]] = raw[i + 1]
  end
  return f
end

local i = 12
while i <= #ARGV do
  local kind = ARGV[i]
  if kind == 'A' then
    local entry, event_id, n = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    if entry ~= '' then
      done_ids[#done_ids + 1] = entry
    end
    if event_id ~= '' and
        redis.call('SET', ARGV[2] .. event_id, '1', 'NX', 'PX', ARGV[6]) then
      for k = 0, n - 1 do
        local at = i + 4 + k * 3
        add_metric(metrics, ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2]))
      end
    end
    effective = effective + 1
    i = i + 4 + n * 3
  elseif kind == 'R' then
    local entry, lease = ARGV[i + 1], ARGV[i + 2]
    if owns(entry, lease) then
      local f = fields_of(entry)
      if f then
        local member = cjson.encode({ entry, f['id'], f['payload'], tonumber(ARGV[i + 3]) })
        redis.call('ZADD', retry, ARGV[i + 4], member)
      end
      done_ids[#done_ids + 1] = entry
      add_metric(metrics, counters, ARGV[9], 1)
      add_metric(metrics, counters, ARGV[10], 1)
      effective = effective + 1
    end
    i = i + 5
  elseif kind == 'D' then
    local entry, lease = ARGV[i + 1], ARGV[i + 2]
    if owns(entry, lease) then
      local f = fields_of(entry)
      if f then
        redis.call('XADD', dlq, '*', 'id', f['id'], 'payload', f['payload'],
          'failure_reason', ARGV[i + 4], 'error', ARGV[i + 5], 'attempts', ARGV[i + 3],
          'failed_at', ARGV[7])
      end
      done_ids[#done_ids + 1] = entry
      add_metric(metrics, counters, ARGV[9], 1)
      add_metric(metrics, counters, ARGV[11], 1)
      effective = effective + 1
    end
    i = i + 6
  else
    return redis.error_reply('ERR settle: unknown record kind ' .. tostring(kind))
  end
end

-- Ack and delete in chunks: one call per chunk instead of one per entry, and well below
-- Lua's limit on unpacked arguments.
local chunk = 1000
for from = 1, #done_ids, chunk do
  local to = math.min(from + chunk - 1, #done_ids)
  redis.call('XACK', stream, group, unpack(done_ids, from, to))
  redis.call('XDEL', stream, unpack(done_ids, from, to))
end

flush_metrics(metrics, ARGV[3], registry, ARGV[4], tonumber(ARGV[5]))
return effective
