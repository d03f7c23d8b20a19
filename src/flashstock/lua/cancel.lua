-- cancel: give back open (unshipped) order units; shipped units are never touched.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms a finished order is kept for replays
-- ARGV[2] order_id: string
-- ARGV[3..] lines: sku string, location string ('' = any), quantity int; repeated; none = every open unit
-- returns {0, order JSON}; with nothing open and no lines named, the order unchanged
-- refuses INVALID, NOT_FOUND, EXCEEDS_OPEN, LOCATION_MISMATCH
-- events cancelled
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
--@include lib/orders.lua
local oid = ARGV[2]
local o = load_order(oid)
if o == nil then return refuse(R.NOT_FOUND, { kind = 'order', id = oid }) end
local picks, no = pick_lines(o, 3, open_of, R.EXCEEDS_OPEN)
if picks == nil then return no end
if #picks == 0 then return { 0, order_json(o) } end
local ev = {}
for i, p in ipairs(picks) do
  local l = o.lines[p[1]]
  ev[i] = move(l[1], l[2], p[2], 0, 0, -p[2], 0)
  l[5] = l[5] + p[2]
  if o.cu ~= '' then
    if redis.call('DECRBY', k_cust(o.cu, l[1]), p[2]) <= 0 then redis.call('DEL', k_cust(o.cu, l[1])) end
  end
end
save_order(o)
emit(order_event('cancelled', o, ev))
return { 0, order_json(o) }
