-- Apply a due pending offline. Returns {0} nothing to do, {1, presence} offline now.
local p = load()
if p.po == '' then redis.call('ZREM', PEND, uid); return { 0 } end
if tonumber(p.po) > now then return { 0 } end
if redis.call('SCARD', C) > 0 or p.st == 'offline' then clear_pending(p); return { 0 } end
go_offline(p)
return { 1, encode(p), DELTA }
