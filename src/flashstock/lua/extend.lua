-- extend: give an active reservation a new expiry of now + ttl (by Redis's clock).
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms a terminal reservation is kept for replays
-- ARGV[2] reservation_id: string
-- ARGV[3] ttl_ms: int, ms from now
-- returns {0, reservation JSON} with the new expires_at
-- refuses INVALID, NOT_FOUND, RESERVATION_EXPIRED, NOT_ACTIVE
-- events extended, expired
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local rid, ttl = ARGV[2], posint(ARGV[3])
if ttl == nil then return refuse(R.INVALID, { message = 'ttl must be a positive integer' }) end
local key = k_rsv(rid)
local r = redis.call('HMGET', key, 'st', 'cu', 'ex', 'ln')
if r[1] == false then return refuse(R.NOT_FOUND, { kind = 'reservation', id = rid }) end
if r[1] == 'active' and tonumber(r[3]) <= NOW then
  expire_rsv(rid)
  r[1] = 'expired'
end
if r[1] == 'expired' then return refuse(R.RESERVATION_EXPIRED, { reservation_id = rid }) end
if r[1] ~= 'active' then return refuse(R.NOT_ACTIVE, { reservation_id = rid, status = r[1] }) end

local ex = NOW + ttl
local lines = cjson.decode(r[4])
for _, l in ipairs(lines) do redis.call('ZADD', k_holds(l[1], l[2]), ex, rid) end
redis.call('ZADD', K_EXP, ex, rid)
redis.call('HSETNX', key, 'x0', r[3])  -- the first expiry, for replays of the reservation
redis.call('HSET', key, 'ex', ex)
local e = { type = 'extended', rid = rid, status = 'active', exp = ex }
if r[2] ~= '' then e.cust = r[2] end
emit(e)
return { 0, rsv_json(rid, 'active', r[2], ex, lines) }
