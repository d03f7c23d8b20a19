-- extend: give an active reservation a new expiry of now + ttl (by Redis's clock).
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms a terminal reservation is kept for replays
-- ARGV[2] reservation_id: string
-- ARGV[3] ttl_ms: int, ms from now
-- ARGV[4] max_hold_ms: int, ms, longest total life of a hold, 0 = off; the cap stored at reserve wins
-- returns {0, reservation JSON} with the new expires_at
-- refuses INVALID, NOT_FOUND, RESERVATION_EXPIRED, NOT_ACTIVE, HOLD_LIFETIME
-- events extended, expired
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local rid, ttl, max_hold = ARGV[2], posint(ARGV[3], MAX_MS), tonumber(ARGV[4])
if ttl == nil or max_hold == nil then return refuse(R.INVALID, { message = 'ttl must be a positive integer' }) end
local key = k_rsv(rid)
local r = redis.call('HMGET', key, 'st', 'cu', 'ex', 'ln', 't0', 'mh')
if r[1] == false then return refuse(R.NOT_FOUND, { kind = 'reservation', id = rid }) end
if r[1] == 'active' and tonumber(r[3]) <= NOW then
  expire_rsv(rid)
  r[1] = 'expired'
end
if r[1] == 'expired' then return refuse(R.RESERVATION_EXPIRED, { reservation_id = rid }) end
if r[1] ~= 'active' then return refuse(R.NOT_ACTIVE, { reservation_id = rid, status = r[1] }) end

local ex = NOW + ttl
-- No endless extending: a hold ends at most max_hold after it was made (t0), by Redis's clock.
local cap, t0 = tonumber(r[6]) or max_hold, tonumber(r[5])
if cap > 0 and t0 and ex > t0 + cap then
  return refuse(R.HOLD_LIFETIME, { reservation_id = rid, max_hold_seconds = math.floor(cap / 1000),
    max_expires_at = iso(t0 + cap) })
end
local lines = cjson.decode(r[4])
for _, l in ipairs(lines) do redis.call('ZADD', k_holds(l[1], l[2]), ex, rid) end
redis.call('ZADD', K_EXP, ex, rid)
redis.call('HSETNX', key, 'x0', r[3])  -- the first expiry, for replays of the reservation
redis.call('HSET', key, 'ex', ex)
if r[2] ~= '' then
  local ch = k_cust_holds(r[2])
  redis.call('ZADD', ch, 'XX', ex, rid)
  if redis.call('PTTL', ch) < ttl then redis.call('PEXPIRE', ch, ttl) end
end
local e = { type = 'extended', rid = rid, status = 'active', exp = ex }
if r[2] ~= '' then e.cust = r[2] end
emit(e)
return { 0, rsv_json(rid, 'active', r[2], ex, lines) }
