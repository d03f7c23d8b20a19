-- rebuild_ids: put back the idempotency records of adjustments, fulfillments and returns still in their retention window.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms a record is kept after its change
-- ARGV[2] records: string, JSON array of {kind, ref, h, at, sku?, loc?, level?: [on_hand, reserved, committed, safety], order?: {id, rid, cu, lines}}
-- returns {0, number of records written}
-- refuses INVALID
-- events none
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
--@include lib/orders.lua
local ok, recs = pcall(cjson.decode, ARGV[2])
if not ok or type(recs) ~= 'table' then return refuse(R.INVALID, { message = 'records must be a JSON array' }) end
local n = 0
for _, x in ipairs(recs) do
  local until_ms = tonumber(x.at) + RETENTION_MS
  if until_ms > NOW then
    -- The first result, built by the same functions that answered the request.
    local scope, result
    if x.kind == 'adj' then
      local v = x.level
      scope = x.sku .. '\0' .. x.loc
      result = cjson.encode(level_json(x.loc, { on_hand = v[1], reserved = v[2], committed = v[3], safety = v[4] }))
    else
      scope = x.order.id
      result = order_json(x.order)
    end
    local key = k_idem(x.kind, x.ref)
    redis.call('DEL', key)
    redis.call('HSET', key, 'h', x.h, 'scope', scope, 'r', result)
    redis.call('PEXPIREAT', key, until_ms)
    n = n + 1
  end
end
return { 0, n }
