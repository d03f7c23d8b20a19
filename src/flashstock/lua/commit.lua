-- commit: turn a reservation into an order; an expired hold is re-reserved only if the units are still there.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms a terminal reservation or order is kept for replays
-- ARGV[2] reservation_id: string
-- ARGV[3] order_id: string
-- returns {0, order JSON} committed | {1, order JSON} the first result, for a replay of the same commit
-- refuses NOT_FOUND, NOT_ACTIVE, ALREADY_COMMITTED, IDEMPOTENCY_CONFLICT, INSUFFICIENT_STOCK, LIMIT_EXCEEDED
-- events committed, expired, low_stock
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
--@include lib/orders.lua
local rid, oid = ARGV[2], ARGV[3]

local existing = load_order(oid)
if existing then
  if existing.rid ~= rid then return refuse(R.IDEMPOTENCY_CONFLICT, { order_id = oid }) end
  -- The first result: the order as committed, before any shipment, cancel or return.
  for _, l in ipairs(existing.lines) do l[4], l[5], l[6] = 0, 0, 0 end
  return { 1, order_json(existing) }
end
local rkey = k_rsv(rid)
local r = redis.call('HMGET', rkey, 'st', 'cu', 'ex', 'ln', 'oi')
if r[1] == false then return refuse(R.NOT_FOUND, { kind = 'reservation', id = rid }) end
if r[1] == 'committed' then return refuse(R.ALREADY_COMMITTED, { reservation_id = rid, order_id = r[5] }) end
if r[1] == 'released' then return refuse(R.NOT_ACTIVE, { reservation_id = rid, status = 'released' }) end
local cust, lines = r[2], cjson.decode(r[4])

local revived = false
if r[1] == 'active' and tonumber(r[3]) <= NOW then expire_rsv(rid) end
if r[1] == 'expired' or tonumber(r[3]) <= NOW then
  -- Re-reserve against current stock: someone may have bought these units since.
  revived = true
  local short, per_sku, budget = {}, {}, {}
  for _, l in ipairs(lines) do reap_sku(l[1]) end
  for _, l in ipairs(lines) do
    if budget[l[1]] == nil then budget[l[1]] = bo_budget(l[1]) end
    local lv = level(l[1], l[2])
    local left = lv and available(lv) or 0
    local bo = bo_of(left, l[3])
    if bo > budget[l[1]] then
      short[#short + 1] = { sku = l[1], location = l[2], requested = l[3], available = math.max(left, 0) }
    end
    budget[l[1]] = budget[l[1]] - bo
    per_sku[l[1]] = (per_sku[l[1]] or 0) + l[3]
  end
  if #short > 0 then return refuse(R.INSUFFICIENT_STOCK, { lines = short, reservation_id = rid }) end
  if cust ~= '' then
    for sku, q in pairs(per_sku) do
      local lim = item(sku).per_customer_limit
      local held = tonumber(redis.call('GET', k_cust(cust, sku))) or 0
      if lim ~= nil and held + q > lim then
        return refuse(R.LIMIT_EXCEEDED, { sku = sku, limit = lim, held = held, requested = q })
      end
    end
  end
end

local ev, olines = {}, {}
for i, l in ipairs(lines) do
  if revived then
    ev[i] = move(l[1], l[2], l[3], 0, 0, l[3], 0)
    if cust ~= '' then redis.call('INCRBY', k_cust(cust, l[1]), l[3]) end
  else
    ev[i] = move(l[1], l[2], l[3], 0, -l[3], l[3], 0)
    redis.call('ZREM', k_holds(l[1], l[2]), rid)
  end
  olines[i] = { l[1], l[2], l[3], 0, 0, 0 }
end
redis.call('ZREM', K_EXP, rid)
if cust ~= '' then redis.call('ZREM', k_cust_holds(cust), rid) end
redis.call('HSET', rkey, 'st', 'committed', 'oi', oid)
redis.call('PEXPIRE', rkey, RETENTION_MS)
local o = { id = oid, rid = rid, cu = cust, lines = olines }
save_order(o)
local e = order_event('committed', o, ev)
e.exp = tonumber(r[3])
if revived then e.revived = true end
emit(e)
return { 0, order_json(o) }
