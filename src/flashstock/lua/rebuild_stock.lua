-- rebuild_stock: write items, levels and locations from the ledger into a partition, replacing what is there.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, unused (every script takes it first)
-- ARGV[2] items: string, JSON array of {sku, policy: {field: value}, rest: prio_rest or null}
-- ARGV[3] levels: string, JSON array of [sku, location, on_hand, reserved, committed, safety, score]
-- returns {0, number of items and levels written}
-- refuses INVALID
-- events none
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local ok1, items = pcall(cjson.decode, ARGV[2])
local ok2, levels = pcall(cjson.decode, ARGV[3])
if not ok1 or not ok2 or type(items) ~= 'table' or type(levels) ~= 'table' then
  return refuse(R.INVALID, { message = 'items and levels must be JSON arrays' })
end
local n = 0
for _, it in ipairs(items) do
  local key = k_item(it.sku)
  redis.call('DEL', key)
  -- The same text set_item writes: tostring of the decoded JSON value.
  for _, f in ipairs(POLICY_FIELDS) do
    local v = it.policy[f]
    if v ~= nil and v ~= cjson.null then redis.call('HSET', key, f, tostring(v)) end
  end
  redis.call('HSETNX', key, 'backorder', 'deny')
  if it.rest ~= nil and it.rest ~= cjson.null then redis.call('HSET', key, 'prio_rest', it.rest) end
  redis.call('SADD', K_SKUS, it.sku)
  n = n + 1
end
for _, l in ipairs(levels) do
  redis.call('HSET', k_level(l[1], l[2]), 'on_hand', l[3], 'reserved', l[4], 'committed', l[5], 'safety', l[6])
  redis.call('ZADD', k_locs(l[1]), l[7], l[2])
  redis.call('SADD', K_SKUS, l[1])
  n = n + 1
end
return { 0, n }
