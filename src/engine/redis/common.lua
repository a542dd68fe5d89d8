-- Shared by every presence script. KEYS (all share the bucket's hash tag, so a script runs
-- on one cluster slot): 1 user record (hash; also `i:<conn>`, when each connection was last
-- indexed), 2 user's connections (set), 3-5 the bucket's
-- online users by gender (male, female, other; sorted sets read by lex), 6 the bucket's
-- counters (hash), 7 the bucket's pending offlines (sorted set, score = deadline), and 8,
-- when webhooks are on, the bucket's webhook stream.
-- ARGV: 1 user id, 2 now (µs), 3 how to announce: "PUBLISH <channel>" or, on Redis Cluster,
-- "SPUBLISH <channel>" (the bucket's channel, in this slot), 4 this replica's id, 5 offline
-- retention (ms), then the script's own arguments from 6 on.
local U, C, CNT, PEND = KEYS[1], KEYS[2], KEYS[6], KEYS[7]
local uid, now, node, retention = ARGV[1], tonumber(ARGV[2]), ARGV[4], ARGV[5]
local pubcmd, chan = string.match(ARGV[3], '^(%u+) (.+)$')

-- Lua numbers are doubles: exact for µs timestamps (< 2^53), but tostring() would print them
-- in exponent form.
local function fmt(n) return string.format('%.0f', n) end

local function online_key(g)
  if g == 'male' then return KEYS[3] elseif g == 'female' then return KEYS[4] end
  return KEYS[5]
end

local function load()
  local r = redis.call('HMGET', U, 'st', 'det', 'g', 'ls', 'ua', 'v', 'po', 'inv', 'lsn', 'hv', 'hls', 'hua')
  return { st = r[1] or 'offline', det = r[2] or '', g = r[3] or 'other', ls = r[4] or '',
           ua = r[5] or '', v = tonumber(r[6] or '0'), po = r[7] or '',
           was_on = (r[1] or 'offline') ~= 'offline', was_g = r[3] or 'other',
           -- The user's settings (section 11; domain::privacy): they travel with every change.
           inv = r[8] or '', lsn = r[9] or '', hv = r[10] or '', hls = r[11] or '', hua = r[12] or '' }
end

local function encode(p)
  -- pg: the gender the user was online with until this change, when it changed.
  local pg = ''
  if p.was_on and p.was_g ~= p.g then pg = p.was_g end
  -- wo: whether the user was online until this change.
  local wo = ''
  if p.was_on then wo = '1' end
  return cjson.encode({ u = uid, st = p.st, g = p.g, ls = p.ls, ua = p.ua, v = fmt(p.v), d = p.det, at = fmt(now), o = node, pg = pg, wo = wo,
                        inv = p.inv, lsn = p.lsn, hv = p.hv, hls = p.hls, hua = p.hua })
end

-- Commit a change: version, record, online index, TTL, announcement. Nothing is announced
-- that was not stored, and it is stored and announced in one atomic step.
-- +1 / -1 when this script took the user online / offline: the caller adds it to the
-- cluster-wide online counter that `peak` follows.
local DELTA = 0

local function commit(p)
  local now_on = p.st ~= 'offline'
  if now_on and not p.was_on then DELTA = 1 elseif p.was_on and not now_on then DELTA = -1 end
  local nv = p.v + 1
  if now > nv then nv = now end
  p.v = nv
  p.ua = fmt(now)
  redis.call('HSET', U, 'st', p.st, 'det', p.det, 'g', p.g, 'ls', p.ls, 'ua', p.ua, 'v', fmt(p.v))
  if p.was_on then redis.call('ZREM', online_key(p.was_g), uid) end
  if p.st ~= 'offline' then
    redis.call('ZADD', online_key(p.g), 0, uid)
    redis.call('PERSIST', U)
  elseif p.inv == '' and p.lsn == '' then
    redis.call('PEXPIRE', U, retention)
  else
    -- The settings are kept (with the record that carries them) however long they are away.
    redis.call('PERSIST', U)
  end
  local msg = encode(p)
  redis.call(pubcmd, chan, msg)
  -- The webhook's queue, in the same atomic step: a replica killed right after cannot lose it.
  if KEYS[8] then redis.call('XADD', KEYS[8], '*', 'e', msg) end
end

local function clear_pending(p)
  if p.po ~= '' then
    p.po = ''
    redis.call('HDEL', U, 'po')
    redis.call('ZREM', PEND, uid)
  end
end

-- When connection `conn` was last indexed (its replica's `index_conn`, with this `now`):
-- the user's record keeps it, so an expiry can tell a connection indexed after it was judged
-- stale (expire.lua).
local function indexed(conn)
  redis.call('HSET', U, 'i:' .. conn, fmt(now))
end

-- Statuses per device (section 11; domain::devices restated): field `s:<conn>` of the user's
-- record holds what connection `conn` set, "<status>|<seq>|<details>" (`seq` from the
-- record's counter `sq`: the greater was set later); none means `online`. The user shows
-- the best of their live connections': the highest status, the most recent among equals.
local RANK = { online = 1, live = 2, in_call = 3 }

local function best()
  local conns = redis.call('SMEMBERS', C)
  local bst, bq, bdet = 'online', -1, ''
  if #conns == 0 then return bst, bdet end
  local fields = {}
  for i, c in ipairs(conns) do fields[i] = 's:' .. c end
  for _, v in ipairs(redis.call('HMGET', U, unpack(fields))) do
    local st, q, det = 'online', 0, ''
    if v then
      local a, b, c = string.match(v, '^([%l_]+)|(%d+)|(.*)$')
      if a then st, q, det = a, tonumber(b), c end
    end
    if RANK[st] > RANK[bst] or (RANK[st] == RANK[bst] and q > bq) then bst, bq, bdet = st, q, det end
  end
  return bst, bdet
end

-- Show the best of the live connections' statuses. Returns whether that changed the
-- presence (an offline user shows nothing); the caller commits.
local function show(p)
  if p.st == 'offline' then return false end
  local st, det = best()
  if p.st == st and p.det == det then return false end
  p.st = st; p.det = det; p.ls = ''
  return true
end

-- Connection `conn` is gone: what it set goes with it.
local function forget_conn(conn)
  redis.call('HDEL', U, 'i:' .. conn, 's:' .. conn)
end

-- Register connection `conn`; offline -> online. Returns whether the presence changed.
local function attach(p, conn, gender, fresh)
  redis.call('SADD', C, conn)
  indexed(conn)
  if fresh then redis.call('HINCRBY', CNT, 'conns', 1) end
  clear_pending(p)
  local changed = false
  -- The newest handshake decides the gender (a user never seen takes the connection's);
  -- an older connection speaking again must not undo it.
  if p.g ~= gender and (fresh or p.v == 0) then p.g = gender; changed = true end
  if p.st == 'offline' then p.st = 'online'; p.det = ''; p.ls = ''; changed = true end
  -- A status held through a grace by a connection that closed gives way to the live ones'.
  if show(p) then changed = true end
  return changed
end

local function go_offline(p)
  clear_pending(p)
  p.st = 'offline'; p.det = ''; p.ls = fmt(now)
  commit(p)
end
