-- A claimed connection went silent (see claim.lua). ARGV 6 connection id, 7 the claimed
-- score: when the connection was last heard or indexed, as the sweep judged it stale.
-- A connection indexed again after that (a status change, a revival by a heartbeat that
-- found it claimed) is alive: it stays. Silence is its own grace: offline at once.
-- Returns {removed, went_offline, presence?}.
local indexed = redis.call('HGET', U, 'i:' .. ARGV[6])
if indexed and tonumber(indexed) > tonumber(ARGV[7]) then return { 0, 0 } end
if redis.call('SREM', C, ARGV[6]) == 0 then return { 0, 0 } end
forget_conn(ARGV[6])
redis.call('HINCRBY', CNT, 'swept', 1)
local p = load()
if redis.call('SCARD', C) > 0 then
  if show(p) then commit(p) end
  return { 1, 0 }
end
if p.st == 'offline' then return { 1, 0 } end
go_offline(p)
return { 1, 1, encode(p), DELTA }
