-- enqueue.lua: store each event whose id was not seen within the idempotency TTL.
--
-- The duplicate mark and the stream entry are written together, so an id is either marked and
-- queued or neither. Ids repeated inside the batch are duplicates after their first occurrence
-- (the SET NX of the first one makes the later ones fail). A signed delivery's mark (KEYS[4])
-- is set by the same script: while it lives, the delivery is refused whole and nothing is
-- written but the duplicate count.
--
-- A new entry holds the fields `id` and `payload`; `failures` (the failed attempts so far) is
-- only written by the scripts that put an event back, and a missing one reads as 0.
--
-- KEYS[1]  the stream
-- KEYS[2]  the counters metric map (sorted set)
-- KEYS[3]  the registry of metric map names (set)
-- KEYS[4]  optional: the delivery mark key ("{p}:delivery:<webhook-id>")
-- ARGV[1]  prefix of the duplicate-mark keys ("{p}:seen:")
-- ARGV[2]  idempotency TTL in milliseconds
-- ARGV[3]  name of the counters map (added to the registry)
-- ARGV[4]  counter field for accepted events
-- ARGV[5]  counter field for duplicates
-- ARGV[6]  delivery mark TTL in milliseconds (ignored without KEYS[4])
-- ARGV[7]  sharded channel to SPUBLISH to when the stream was empty before this call and an
--          event was accepted (wakes waiting consumers on a cluster); '' = never
-- ARGV[8…] pairs: event id, payload
-- Returns  an array with one integer per event, in order: 1 accepted, 0 duplicate,
--          2 duplicate delivery.

local outcomes = {}
-- The mark is looked up first but written last, after every write that could fail: a script
-- that errors half-way keeps its earlier writes, and must not keep a mark.
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then
  local n = (#ARGV - 7) / 2
  for i = 1, n do
    outcomes[i] = 2
  end
  if n > 0 and tonumber(redis.call('ZINCRBY', KEYS[2], n, ARGV[5])) == n then
    redis.call('SADD', KEYS[3], ARGV[3])
  end
  return outcomes
end
local accepted, duplicates = 0, 0
local was_empty = ARGV[7] ~= '' and redis.call('XLEN', KEYS[1]) == 0
for i = 8, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('SET', ARGV[1] .. id, '1', 'NX', 'PX', ARGV[2]) then
    redis.call('XADD', KEYS[1], '*', 'id', id, 'payload', ARGV[i + 1])
    accepted = accepted + 1
    outcomes[#outcomes + 1] = 1
  else
    duplicates = duplicates + 1
    outcomes[#outcomes + 1] = 0
  end
end
-- A counter whose total is what this call added was just created, and with it perhaps the map:
-- only then is the map registered. A map that existed is registered already (every script that
-- writes a map registers it in the same step, and the registry only forgets maps that are gone).
local new_counter = false
if accepted > 0 then
  new_counter = tonumber(redis.call('ZINCRBY', KEYS[2], accepted, ARGV[4])) == accepted
end
if duplicates > 0 and tonumber(redis.call('ZINCRBY', KEYS[2], duplicates, ARGV[5])) == duplicates then
  new_counter = true
end
if new_counter then
  redis.call('SADD', KEYS[3], ARGV[3])
end
if KEYS[4] then
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[6])
end
if was_empty and accepted > 0 then
  redis.call('SPUBLISH', ARGV[7], '1')
end
return outcomes
