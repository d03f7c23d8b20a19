-- rebuild_holds: put reservations back from the ledger with their holds; one whose TTL has passed by Redis's clock is expired at once.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms a finished reservation is kept after its last change
-- ARGV[2] reservations: string, JSON array of {id, st, cu, ex, h, ln, at, t0?, mh?, x0?, oi?}; ln as in rs:{id}
-- returns {0, JSON {restored, expired}}
-- refuses INVALID
-- events expired
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local ok, rsvs = pcall(cjson.decode, ARGV[2])
if not ok or type(rsvs) ~= 'table' then return refuse(R.INVALID, { message = 'reservations must be a JSON array' }) end

-- An active reservation's holds, sweeper entry and customer counts: added (sign 1) or taken out (-1).
local function holds(rid, cu, ex, lines, sign)
  for _, l in ipairs(lines) do
    if sign > 0 then redis.call('ZADD', k_holds(l[1], l[2]), ex, rid) else redis.call('ZREM', k_holds(l[1], l[2]), rid) end
    if cu ~= '' and redis.call('INCRBY', k_cust(cu, l[1]), sign * l[3]) <= 0 then redis.call('DEL', k_cust(cu, l[1])) end
  end
  if sign > 0 then redis.call('ZADD', K_EXP, ex, rid) else redis.call('ZREM', K_EXP, rid) end
  if cu ~= '' then
    local ch = k_cust_holds(cu)
    if sign > 0 then
      redis.call('ZADD', ch, ex, rid)
      if redis.call('PTTL', ch) < ex - NOW then redis.call('PEXPIRE', ch, math.max(ex - NOW, 1)) end
    else
      redis.call('ZREM', ch, rid)
    end
  end
end

local restored, past = 0, {}
for _, r in ipairs(rsvs) do
  local key = k_rsv(r.id)
  -- Replacing a reservation Redis has: take out what it holds first.
  local old = redis.call('HMGET', key, 'st', 'cu', 'ex', 'ln')
  if old[1] == 'active' then holds(r.id, old[2], tonumber(old[3]), cjson.decode(old[4]), -1) end
  redis.call('DEL', key)
  local ex, active = tonumber(r.ex), r.st == 'active'
  if active or tonumber(r.at) + RETENTION_MS > NOW then
    redis.call('HSET', key, 'st', r.st, 'cu', r.cu, 'ex', ex, 'h', r.h, 'ln', cjson.encode(r.ln))
    for _, f in ipairs({ 't0', 'mh', 'x0', 'oi' }) do
      if r[f] ~= nil and r[f] ~= cjson.null then redis.call('HSET', key, f, r[f]) end
    end
    if active then
      holds(r.id, r.cu, ex, r.ln, 1)
      if ex <= NOW then past[#past + 1] = r.id end
    else
      redis.call('PEXPIREAT', key, tonumber(r.at) + RETENTION_MS)
    end
    restored = restored + 1
  end
end
-- Holds whose TTL passed while Redis was away: expired now, each with its `expired` event.
local expired = 0
for _, rid in ipairs(past) do
  if expire_rsv(rid) then expired = expired + 1 end
end
return { 0, cjson.encode({ restored = restored, expired = expired }) }
