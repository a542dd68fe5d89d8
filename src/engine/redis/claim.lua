-- Claim a stale member of a replica's connection index for expiry. KEYS 1 the replica's
-- index (sorted set, score = last heard or indexed, µs), 2 its claimed set (same hash tag).
-- ARGV 1 member, 2 cutoff (µs).
-- Re-checks the score and moves the member in one step, so a connection heard since the
-- sweep read the index is never expired, and a member is claimed by one sweeper only. The
-- claimed set keeps it until its expiry ran: a sweeper that dies in between leaves it there
-- for the next sweep, never a connection that no index can find.
-- Returns the claimed score, or false (not stale any more, or gone).
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) >= tonumber(ARGV[2]) then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], s, ARGV[1])
return s
