-- ARGV 6 connection id, 7 gender, 8 status, 9 details JSON ('' for none).
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
if p.st ~= st or p.det ~= det then p.st = st; p.det = det; p.ls = ''; changed = true end
if changed then commit(p) end
return { changed and 1 or 0, encode(p), DELTA }
