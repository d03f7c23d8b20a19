-- returns: take back shipped units, never more than fulfilled and not yet returned.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms this return id is kept for replays
-- ARGV[2] order_id: string
-- ARGV[3] return_id: string, '' for none
-- ARGV[4] body_hash: string, identifies the request body for idempotency
-- ARGV[5] restock: '1' the units go back to on_hand at the line's location, '0' they do not
-- ARGV[6..] lines: sku string, location string ('' = any), quantity int; repeated; at least one
-- returns {0, order JSON} | {1, order JSON} the first result, for a replay of the same return id
-- refuses INVALID, NOT_FOUND, IDEMPOTENCY_CONFLICT, EXCEEDS_RETURNABLE, LOCATION_MISMATCH
-- events returned
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
--@include lib/orders.lua
local oid, ref, hash, restock = ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
if #ARGV < 8 then return refuse(R.INVALID, { message = 'a return names at least one line' }) end
local o = load_order(oid)
local again = seen('ret', ref, hash, oid)
if o == nil then return refuse(R.NOT_FOUND, { kind = 'order', id = oid }) end
if again then return again end

local function returnable(l) return l[4] - l[6] end
local picks, no = pick_lines(o, 6, returnable, R.EXCEEDS_RETURNABLE)
if picks == nil then return no end
local ev = {}
for i, p in ipairs(picks) do
  local l = o.lines[p[1]]
  ev[i] = move(l[1], l[2], p[2], restock and p[2] or 0, 0, 0, 0)
  l[6] = l[6] + p[2]
end
save_order(o)
local e = order_event('returned', o, ev)
e.restock = restock
if ref ~= '' then e.ref = ref; e.h = hash end
emit(e)
return remember('ret', ref, hash, oid, order_json(o))
