-- get_stock: a sku's policy and exact levels (expired holds reaped first), in allocation order.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms a reaped reservation is kept for replays
-- ARGV[2] sku: string
-- returns {0, stock JSON}: {sku, policy, locations: [level...], total: level}
-- refuses UNKNOWN_SKU
-- events expired
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local sku = ARGV[2]
local locs = redis.call('ZRANGE', k_locs(sku), 0, -1)
if #locs == 0 and not item(sku).exists then return refuse(R.UNKNOWN_SKU, { sku = sku }) end
reap_sku(sku)
local levels = {}
local total = { on_hand = 0, reserved = 0, committed = 0, safety = 0 }
local sellable = 0
for i, loc in ipairs(locs) do
  local lv = level(sku, loc) or { on_hand = 0, reserved = 0, committed = 0, safety = 0 }
  levels[i] = level_json(loc, lv)
  for _, f in ipairs({ 'on_hand', 'reserved', 'committed', 'safety' }) do total[f] = total[f] + lv[f] end
  -- One oversold location never hides stock in another.
  sellable = sellable + math.max(available(lv), 0)
end
local t = level_json('*', total)
t.available = sellable
local p = policy_table(sku)
p.locations = nil
return { 0, encode_lists({ sku = sku, policy = p, locations = levels, total = t }, { 'locations' }) }
