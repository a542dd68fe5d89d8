-- ARGV 6 connection id, 7 gender, 8 status, 9 details JSON ('' for none): this connection's
-- status (section 11); the user shows the best of their connections'.
-- Returns {changed, presence}.
local p = load()
-- Speaking revives a swept connection: that is a change of its own (offline -> online),
-- committed and announced before the status, as the domain composes them.
local changed = attach(p, ARGV[6], ARGV[7], false)
if changed then
  commit(p)
  p.was_on = p.st ~= 'offline'; p.was_g = p.g
  changed = false
end
local st, det = ARGV[8], ARGV[9]
if st ~= 'live' and st ~= 'in_call' then det = '' end
-- This connection's own status (common.lua's `best`); unchanged, it is not "set later".
local field = 's:' .. ARGV[6]
local mine = redis.call('HGET', U, field)
local cur = 'online||'
if mine then cur = string.gsub(mine, '|%d+|', '||', 1) end
if cur ~= st .. '||' .. det then
  if st == 'online' then
    redis.call('HDEL', U, field)
  else
    redis.call('HSET', U, field, st .. '|' .. redis.call('HINCRBY', U, 'sq', 1) .. '|' .. det)
  end
end
if show(p) then commit(p); changed = true end
return { changed and 1 or 0, encode(p), DELTA }
