-- ARGV 6 connection id, 7 grace (ms), 8 flap limit, 9 flap hold (ms).
-- Returns {0} unknown connection, {1} still online, {2, deadline} pending, {3, presence} offline.
redis.call('HINCRBY', CNT, 'disconns', 1)
if redis.call('SREM', C, ARGV[6]) == 0 then return { 0 } end
forget_conn(ARGV[6])
local p = load()
if redis.call('SCARD', C) > 0 then
  -- Its status leaves with it: the user shows the best of the others'.
  if show(p) then commit(p) end
  return { 1 }
end
if p.st == 'offline' then return { 1 } end
local grace = tonumber(ARGV[7])
-- Flap damping, domain::flap's rule: this user's offlines in a 10 s window (in the user's
-- hash, so cluster-wide); past half the limit (each offline follows an online) this one is
-- held as a grace is.
local limit, hold = tonumber(ARGV[8]), tonumber(ARGV[9])
if limit > 0 then
  local w = redis.call('HMGET', U, 'fw', 'fn')
  local start, n = tonumber(w[1] or '0'), tonumber(w[2] or '0')
  if now - start >= 10000000 then start, n = now, 0 end
  n = n + 1
  redis.call('HSET', U, 'fw', fmt(start), 'fn', n)
  if 2 * n > limit and hold > grace then grace = hold end
end
if grace > 0 then
  local deadline = now + grace * 1000
  redis.call('HSET', U, 'po', fmt(deadline))
  redis.call('ZADD', PEND, deadline, uid)
  return { 2, fmt(deadline) }
end
go_offline(p)
return { 3, encode(p), DELTA }
