-- A connection went silent (swept). ARGV 6 connection id.
-- Returns {removed, went_offline, presence?}. Silence is its own grace: offline at once.
if redis.call('SREM', C, ARGV[6]) == 0 then return { 0, 0 } end
redis.call('HINCRBY', CNT, 'swept', 1)
if redis.call('SCARD', C) > 0 then return { 1, 0 } end
local p = load()
if p.st == 'offline' then return { 1, 0 } end
go_offline(p)
return { 1, 1, encode(p), DELTA }
