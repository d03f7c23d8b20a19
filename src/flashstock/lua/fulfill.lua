-- fulfill: ship open order units; they leave on_hand and committed together.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms a finished order and this fulfillment id are kept for replays
-- ARGV[2] order_id: string
-- ARGV[3] fulfillment_id: string, '' for none
-- ARGV[4] body_hash: string, identifies the request body for idempotency
-- ARGV[5..] lines: sku string, location string ('' = any), quantity int; repeated; none = every open unit
-- returns {0, order JSON} | {1, order JSON} the first result, for a replay of the same fulfillment id
-- refuses INVALID, NOT_FOUND, IDEMPOTENCY_CONFLICT, EXCEEDS_OPEN, LOCATION_MISMATCH, NEGATIVE_ON_HAND
-- events fulfilled, low_stock
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
--@include lib/orders.lua
local oid, ref, hash = ARGV[2], ARGV[3], ARGV[4]
local o = load_order(oid)
local again = seen('ful', ref, hash, oid)
if o == nil then return refuse(R.NOT_FOUND, { kind = 'order', id = oid }) end
if again then return again end

local picks, no = pick_lines(o, 5, open_of, R.EXCEEDS_OPEN)
if picks == nil then return no end
-- Shipping never takes on_hand below zero.
local per_level = {}
for _, p in ipairs(picks) do
  local l = o.lines[p[1]]
  local k = k_level(l[1], l[2])
  per_level[k] = (per_level[k] or 0) + p[2]
  local lv = level(l[1], l[2])
  local have = lv and lv.on_hand or 0
  if have - per_level[k] < 0 then
    return refuse(R.NEGATIVE_ON_HAND, { sku = l[1], location = l[2], on_hand = have, delta = -per_level[k] })
  end
end
local ev = {}
for i, p in ipairs(picks) do
  local l = o.lines[p[1]]
  ev[i] = move(l[1], l[2], p[2], -p[2], 0, -p[2], 0)
  l[4] = l[4] + p[2]
  if o.cu ~= '' then
    if redis.call('DECRBY', k_cust(o.cu, l[1]), p[2]) <= 0 then redis.call('DEL', k_cust(o.cu, l[1])) end
  end
end
if #picks > 0 then
  save_order(o)
  local e = order_event('fulfilled', o, ev)
  if ref ~= '' then e.ref = ref; e.h = hash end
  emit(e)
end
return remember('ful', ref, hash, oid, order_json(o))
