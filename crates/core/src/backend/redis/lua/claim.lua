-- claim.lua: the upkeep of a claim, in one atomic step.
--
-- 1. Retries that are due move from the retry sorted set back into the stream as new entries
--    (keeping their failure count), so they are read like any new event.
-- 2. Entries idle in the pending list longer than the visibility timeout (their consumer
--    crashed or stalled) are taken over with XAUTOCLAIM, up to ARGV[3] of them.
-- The caller fills the rest of the batch with a plain XREADGROUP … > of its own: copying new
-- entries through Lua cost more than the script's other work together.
-- Each delivery carries the entry's delivery count from the pending list: it identifies this
-- lease, so a settlement from an older lease on the same entry can be told apart.
--
-- KEYS[1]  the stream
-- KEYS[2]  the retry sorted set (score = due time in ms)
-- ARGV[1]  consumer group
-- ARGV[2]  consumer name
-- ARGV[3]  maximum deliveries (>= 1)
-- ARGV[4]  visibility timeout in ms (minimum idle time for XAUTOCLAIM)
-- ARGV[5]  now, epoch ms
-- ARGV[6]  XAUTOCLAIM cursor (start of the pending-list scan)
-- ARGV[7]  maximum retries to move back per call
-- ARGV[8]  '1' to look for expired leases (XAUTOCLAIM) in this call, '0' to skip that step
-- Returns  { next XAUTOCLAIM cursor, due time of the next waiting retry in ms or -1,
--            then 5 values per delivery: entry id, delivery count, event id, payload, failures }

local stream, retry = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local max = tonumber(ARGV[3])

local due = redis.call('ZRANGEBYSCORE', retry, '-inf', ARGV[5], 'LIMIT', 0, tonumber(ARGV[7]))
for _, member in ipairs(due) do
  local r = cjson.decode(member)
  redis.call('XADD', stream, '*', 'id', r[2], 'payload', r[3], 'failures', tostring(r[4]))
  redis.call('ZREM', retry, member)
end
local next_due = -1
local first = redis.call('ZRANGE', retry, 0, 0, 'WITHSCORES')
if #first == 2 then
  next_due = tonumber(first[2])
end

local out = { ARGV[6], next_due }

local function push(entry_id, deliveries, fields)
  local f = {}
  for i = 1, #fields, 2 do
    f[fields[i]] = fields[i + 1]
  end
  out[#out + 1] = entry_id
  out[#out + 1] = deliveries
  out[#out + 1] = f['id'] or ''
  out[#out + 1] = f['payload'] or ''
  out[#out + 1] = f['failures'] or '0'
end

if ARGV[8] == '1' then
  local auto = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[4], ARGV[6], 'COUNT', max)
  out[1] = auto[1]
  for _, entry in ipairs(auto[2]) do
    -- An entry deleted while pending comes back without fields; nothing to deliver.
    if entry and entry[2] then
      local p = redis.call('XPENDING', stream, group, entry[1], entry[1], 1)
      if #p == 1 then
        push(entry[1], p[1][4], entry[2])
      end
    end
  end
end

return out
