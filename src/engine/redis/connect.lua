-- ARGV 6 connection id, 7 gender, 8 "1" for a new connection ("0": a revival).
-- Returns {changed, presence}.
local p = load()
local changed = attach(p, ARGV[6], ARGV[7], ARGV[8] == '1')
if changed then commit(p) end
return { changed and 1 or 0, encode(p), DELTA }
