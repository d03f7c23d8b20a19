-- adjust: change on_hand by a signed delta with a reason (received, damaged, ...); never below zero.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms this adjustment id is kept for replays
-- ARGV[2] sku: string
-- ARGV[3] location: string
-- ARGV[4] delta: int, non-zero, units added (negative: removed)
-- ARGV[5] reason: string
-- ARGV[6] adjustment_id: string, '' for none
-- ARGV[7] body_hash: string, identifies the request body for idempotency
-- ARGV[8] by: string, id of the API key making the change (recorded in the event), '' for none
-- returns {0, level JSON} | {1, level JSON} the first result, for a replay of the same adjustment id
-- refuses INVALID, UNKNOWN_SKU, IDEMPOTENCY_CONFLICT, NEGATIVE_ON_HAND
-- events adjusted, expired, low_stock
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local sku, loc, delta, reason, ref, hash = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local by = ARGV[8]
if delta == nil or delta == 0 or delta ~= math.floor(delta) then
  return refuse(R.INVALID, { message = 'delta must be a non-zero integer' })
end
local scope = sku .. '\0' .. loc
local again = seen('adj', ref, hash, scope)
if again then return again end
if not item(sku).exists and redis.call('ZCARD', k_locs(sku)) == 0 then
  return refuse(R.UNKNOWN_SKU, { sku = sku })
end
reap_sku(sku)
local lv = level(sku, loc)
local have = lv and lv.on_hand or 0
if have + delta < 0 then
  return refuse(R.NEGATIVE_ON_HAND, { sku = sku, location = loc, on_hand = have, delta = delta })
end
local e = { type = 'adjusted', reason = reason, lines = { move(sku, loc, math.abs(delta), delta, 0, 0, 0) } }
if ref ~= '' then e.ref = ref; e.h = hash end
if by ~= '' then e.by = by end
emit(e)
return remember('adj', ref, hash, scope, cjson.encode(level_json(loc, level(sku, loc))))
