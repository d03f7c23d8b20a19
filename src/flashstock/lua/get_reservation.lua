-- get_reservation: a reservation as it is now (a hold past its TTL is reaped and shows as expired).
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms a reaped reservation is kept for replays
-- ARGV[2] reservation_id: string
-- returns {0, reservation JSON}
-- refuses NOT_FOUND
-- events expired
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local rid = ARGV[2]
local key = k_rsv(rid)
local r = redis.call('HMGET', key, 'st', 'ex')
if r[1] == false then return refuse(R.NOT_FOUND, { kind = 'reservation', id = rid }) end
if r[1] == 'active' and tonumber(r[2]) <= NOW then expire_rsv(rid) end
r = redis.call('HMGET', key, 'st', 'cu', 'ex', 'ln')
return { 0, rsv_json(rid, r[1], r[2], tonumber(r[3]), cjson.decode(r[4])) }
