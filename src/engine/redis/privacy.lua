-- `presence:set-privacy` (section 11; PresenceRecord::set_privacy restated). ARGV 6 invisible
-- ('1', '0', or '' to leave it), 7 last seen ('nobody', 'everyone', or '').
-- A change of either is committed with a new version; turning invisible fixes what others see
-- from now on (`hv`, `hls`, `hua`): offline as of now if online, else the presence as it was.
-- Counts invisible users per bucket (`inv` in the bucket's counters).
-- Returns {changed, presence}.
local p = load()
local inv, lsn = p.inv, p.lsn
if ARGV[6] == '1' then inv = '1' elseif ARGV[6] == '0' then inv = '' end
if ARGV[7] == 'nobody' then lsn = '1' elseif ARGV[7] == 'everyone' then lsn = '' end
if inv == p.inv and lsn == p.lsn then return { 0, encode(p), 0 } end
-- The version `commit` gives this change.
local nv = p.v + 1
if now > nv then nv = now end
if inv ~= p.inv then
  if inv == '1' then
    if p.st ~= 'offline' then
      p.hv, p.hls, p.hua = fmt(nv), fmt(now), fmt(now)
    else
      p.hv, p.hls, p.hua = fmt(p.v), p.ls, p.ua
    end
    redis.call('HINCRBY', CNT, 'inv', 1)
  else
    p.hv, p.hls, p.hua = '', '', ''
    redis.call('HINCRBY', CNT, 'inv', -1)
  end
elseif inv == '1' then
  -- Invisible still, the last seen rule changed: the offline face again, under this version.
  p.hv = fmt(nv)
end
p.inv, p.lsn = inv, lsn
redis.call('HSET', U, 'inv', p.inv, 'lsn', p.lsn, 'hv', p.hv, 'hls', p.hls, 'hua', p.hua)
commit(p)
return { 1, encode(p), DELTA }
