-- ARGV 6 connection id, 7 gender, 8 "1" for a new connection ("0": a revival), 9 the most
-- connections a user may hold (0: no limit; a connection the user holds already is not new).
-- Returns {changed, presence}, or {-1} when the user holds the most connections allowed.
local max = tonumber(ARGV[9] or '0')
if ARGV[8] == '1' and max > 0 and redis.call('SISMEMBER', C, ARGV[6]) == 0
    and redis.call('SCARD', C) >= max then
  return { -1 }
end
local p = load()
local changed = attach(p, ARGV[6], ARGV[7], ARGV[8] == '1')
if changed then commit(p) end
return { changed and 1 or 0, encode(p), DELTA }
