-- ARGV 6 connection id, 7 grace (ms).
-- Returns {0} unknown connection, {1} still online, {2, deadline} pending, {3, presence} offline.
redis.call('HINCRBY', CNT, 'disconns', 1)
if redis.call('SREM', C, ARGV[6]) == 0 then return { 0 } end
redis.call('HDEL', U, 'i:' .. ARGV[6])
if redis.call('SCARD', C) > 0 then return { 1 } end
local p = load()
if p.st == 'offline' then return { 1 } end
local grace = tonumber(ARGV[7])
if grace > 0 then
  local deadline = now + grace * 1000
  redis.call('HSET', U, 'po', fmt(deadline))
  redis.call('ZADD', PEND, deadline, uid)
  return { 2, fmt(deadline) }
end
go_offline(p)
return { 3, encode(p), DELTA }
