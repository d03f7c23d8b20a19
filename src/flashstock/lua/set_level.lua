-- set_level: record a stock count (and optionally safety stock); never touches reserved or committed.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms this adjustment id is kept for replays
-- ARGV[2] sku: string
-- ARGV[3] location: string
-- ARGV[4] on_hand: int >= 0, units counted
-- ARGV[5] safety_stock: int >= 0, or '' to keep it
-- ARGV[6] adjustment_id: string, '' for none
-- ARGV[7] body_hash: string, identifies the request body for idempotency
-- ARGV[8] by: string, id of the API key making the change (recorded in the event), '' for none
-- returns {0, level JSON} | {1, level JSON} the first result, for a replay of the same adjustment id
-- refuses INVALID, IDEMPOTENCY_CONFLICT
-- events counted, expired, low_stock
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local sku, loc, ref, hash, by = ARGV[2], ARGV[3], ARGV[6], ARGV[7], ARGV[8]
local on_hand, safety = tonumber(ARGV[4]), tonumber(ARGV[5])
if on_hand == nil or on_hand < 0 or on_hand ~= math.floor(on_hand) or (ARGV[5] ~= '' and (safety == nil or safety < 0)) then
  return refuse(R.INVALID, { message = 'on_hand and safety_stock must be integers >= 0' })
end
local scope = sku .. '\0' .. loc
local again = seen('adj', ref, hash, scope)
if again then return again end
reap_sku(sku)

local lv = level(sku, loc)
local old_on, old_saf = lv and lv.on_hand or 0, lv and lv.safety or 0
if safety == nil then safety = old_saf end
if lv == nil or on_hand ~= old_on or safety ~= old_saf then
  if redis.call('HSETNX', k_item(sku), 'backorder', 'deny') == 1 then ITEMS[sku] = nil end
  local line = move(sku, loc, on_hand, on_hand - old_on, 0, 0, safety - old_saf)
  local e = { type = 'counted', reason = 'count', lines = { line } }
  if ref ~= '' then e.ref = ref; e.h = hash end
  if by ~= '' then e.by = by end
  emit(e)
end
return remember('adj', ref, hash, scope, cjson.encode(level_json(loc, level(sku, loc))))
