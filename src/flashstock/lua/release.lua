-- release: give back every unit of an active reservation (the shopper emptied the cart); idempotent.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms the released reservation is kept for replays
-- ARGV[2] reservation_id: string
-- returns {0, reservation JSON} released | {1, reservation JSON} already released or expired (nothing changed)
-- refuses NOT_FOUND, NOT_ACTIVE
-- events released, expired
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local rid = ARGV[2]
local key = k_rsv(rid)
local r = redis.call('HMGET', key, 'st', 'cu', 'ex', 'ln')
if r[1] == false then return refuse(R.NOT_FOUND, { kind = 'reservation', id = rid }) end
local lines = cjson.decode(r[4])
if r[1] == 'committed' then return refuse(R.NOT_ACTIVE, { reservation_id = rid, status = 'committed' }) end
if r[1] == 'active' and tonumber(r[3]) <= NOW then
  expire_rsv(rid)
  r[1] = 'expired'
end
if r[1] ~= 'active' then return { 1, rsv_json(rid, r[1], r[2], tonumber(r[3]), lines) } end

end_hold(rid, r[2], lines, 'released')
return { 0, rsv_json(rid, 'released', r[2], tonumber(r[3]), lines) }
