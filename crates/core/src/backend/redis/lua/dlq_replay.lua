-- dlq_replay.lua: move dead letters back to the queue with their failure count reset.
--
-- Each moved letter is XADDed to the stream and XDELed from the DLQ in the same step, so it is
-- never in both or in neither.
--
-- KEYS[1]  the DLQ stream
-- KEYS[2]  the stream
-- ARGV[1]  most letters to move in this call (the caller repeats until fewer moved)
-- ARGV[2…] event ids to replay; none = every letter
-- Returns  how many letters moved.

local dlq, stream = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[1])
local wanted = nil
if #ARGV > 1 then
  wanted = {}
  for i = 2, #ARGV do
    wanted[ARGV[i]] = true
  end
end

local moved = 0
local start = '-'
while moved < limit do
  local page = redis.call('XRANGE', dlq, start, '+', 'COUNT', 500)
  if #page == 0 then
    break
  end
  for _, entry in ipairs(page) do
    local f = {}
    local raw = entry[2]
    for i = 1, #raw, 2 do
      f[raw[i]] = raw[i + 1]
    end
    if moved < limit and (wanted == nil or wanted[f['id']]) then
      redis.call('XADD', stream, '*', 'id', f['id'], 'payload', f['payload'], 'failures', '0')
      redis.call('XDEL', dlq, entry[1])
      moved = moved + 1
    end
    start = '(' .. entry[1]
  end
end
return moved
