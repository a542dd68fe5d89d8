-- A live connection the store does not know (swept meanwhile, or Redis came back empty).
-- ARGV 6 connection id, 7 gender, 8 last known presence as the replica saw it (encoded like
-- `encode`), or '' when the replica saw none; 9 and 10 the status and details JSON this
-- connection had set (section 11), which it takes back.
-- A missing record is re-created with that exact state and version, unannounced: nothing
-- changed for anyone. An existing record is a plain revival (announced if it changes).
-- Returns {changed, presence, delta}.
local p = load()
local last = ARGV[8]
-- What this connection set is its own again (set_status.lua's field, a new `seq`).
local function mine()
  local st, det = ARGV[9], ARGV[10]
  if st ~= 'live' and st ~= 'in_call' then
    redis.call('HDEL', U, 's:' .. ARGV[6])
  else
    redis.call('HSET', U, 's:' .. ARGV[6], st .. '|' .. redis.call('HINCRBY', U, 'sq', 1) .. '|' .. det)
  end
end
if redis.call('EXISTS', U) == 0 and last ~= '' then
  local k = cjson.decode(last)
  redis.call('SADD', C, ARGV[6])
  redis.call('HSET', U, 'st', k.st, 'det', k.d, 'g', k.g, 'ls', k.ls, 'ua', k.ua, 'v', k.v,
    'inv', k.inv or '', 'lsn', k.lsn or '', 'hv', k.hv or '', 'hls', k.hls or '', 'hua', k.hua or '')
  -- The user's settings (section 11) come back with it, counted again.
  if k.inv == '1' then redis.call('HINCRBY', CNT, 'inv', 1) end
  indexed(ARGV[6])
  mine()
  if k.st ~= 'offline' then redis.call('ZADD', online_key(k.g), 0, uid) end
  p = load()
  -- Re-entering the online index is not a transition, but the cluster-wide counter lost it.
  return { 0, encode(p), p.st ~= 'offline' and 1 or 0 }
end
mine()
local changed = attach(p, ARGV[6], ARGV[7], false)
if changed then commit(p) end
return { changed and 1 or 0, encode(p), DELTA }
