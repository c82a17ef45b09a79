-- dlq_purge.lua: delete every dead letter.
--
-- KEYS[1]  the DLQ stream
-- ARGV     none
-- Returns  how many letters were deleted.

local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
