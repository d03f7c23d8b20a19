-- get_order: an order with its lines' fulfilled, cancelled, returned and open units.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, unused (every script takes it first)
-- ARGV[2] order_id: string
-- returns {0, order JSON}
-- refuses NOT_FOUND
-- events none
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
--@include lib/orders.lua
local o = load_order(ARGV[2])
if o == nil then return refuse(R.NOT_FOUND, { kind = 'order', id = ARGV[2] }) end
return { 0, order_json(o) }
