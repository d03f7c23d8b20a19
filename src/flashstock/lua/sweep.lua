-- sweep: expire holds whose TTL has passed by Redis's clock, oldest first; never one still live.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms an expired reservation is kept for replays
-- ARGV[2] limit: int, most reservations expired by this call
-- returns {0, number expired}
-- refuses INVALID
-- events expired
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local limit = posint(ARGV[2])
if limit == nil then return refuse(R.INVALID, { message = 'limit must be a positive integer' }) end
local n = 0
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', K_EXP, '-inf', NOW, 'LIMIT', 0, limit)) do
  if expire_rsv(rid) then n = n + 1 end
end
return { 0, n }
