-- Shared by every script: Redis's clock, refusal codes, levels, events, reaping.
-- Expects BASE (KEYS[1]) and RETENTION_MS (ARGV[1]) set, and lib/keys.lua included.

-- Refusal codes; src/flashstock/errors.py RefusalCode mirrors them (a test checks both).
local R = {
  INVALID = -1, UNKNOWN_SKU = -2, UNKNOWN_LOCATION = -3, INSUFFICIENT_STOCK = -4,
  LIMIT_EXCEEDED = -5, IDEMPOTENCY_CONFLICT = -6, NOT_FOUND = -7, RESERVATION_EXPIRED = -8,
  NOT_ACTIVE = -9, EXCEEDS_OPEN = -10, LOCATION_MISMATCH = -11, NEGATIVE_ON_HAND = -12,
  CUSTOMER_REQUIRED = -13, ALREADY_COMMITTED = -14, EXCEEDS_RETURNABLE = -15,
  RATE_LIMITED = -16, TOO_MANY_HOLDS = -17, HOLD_LIFETIME = -18, CART_SHARE = -19,
}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- One clock for the whole call: Redis's own. Holds with expires_at <= NOW are expired.
local NOW = now_ms()

local function refuse(code, detail)
  return { code, cjson.encode(detail or {}) }
end

-- A positive integer argument up to `max` (default 2^31-1), or nil; strings are never
-- compared as numbers. Durations in ms pass a larger max (exact in Lua's doubles up to 2^53).
local function posint(s, max)
  local n = tonumber(s)
  if n == nil or n ~= math.floor(n) or n < 1 or n > (max or 2147483647) then return nil end
  return n
end
local MAX_MS = 9007199254740991

local function nz(s) if s == '' or s == false then return nil end return s end
local function orjnull(v) if v == nil then return cjson.null end return v end

-- RFC 3339 UTC from epoch milliseconds (civil-from-days; Redis has no os.date).
local function iso(ms)
  local s = math.floor(ms / 1000)
  local days = math.floor(s / 86400)
  local rem = s - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d,
    math.floor(rem / 3600), math.floor(rem % 3600 / 60), rem % 60, ms % 1000)
end

-- Items (policy), cached for the call.
local ITEMS = {}
local function item(sku)
  local it = ITEMS[sku]
  if it == nil then
    local v = redis.call('HMGET', k_item(sku), 'backorder', 'backorder_limit', 'per_customer_limit',
      'low_stock_threshold', 'restock_date', 'ships_in_days', 'prio_rest', 'rate_limit_customer',
      'max_holds_per_customer', 'max_hold_seconds', 'max_cart_share')
    it = { exists = v[1] ~= false, backorder = v[1] or 'deny', backorder_limit = tonumber(v[2]),
      per_customer_limit = tonumber(v[3]), low_stock_threshold = tonumber(v[4]),
      restock_date = v[5] or nil, ships_in_days = tonumber(v[6]),
      -- allocation priority of a location not in the configured list (0: none configured)
      prio_rest = tonumber(v[7]) or 0,
      -- abuse limits of a drop (docs/security.md); nil: the global setting applies
      rate_limit_customer = tonumber(v[8]), max_holds_per_customer = tonumber(v[9]),
      max_hold_seconds = tonumber(v[10]), max_cart_share = tonumber(v[11]) }
    ITEMS[sku] = it
  end
  return it
end


-- Levels, cached for the call; every change goes through move() so events see after-values.
local LEVELS = {}
local function level(sku, loc)
  local key = k_level(sku, loc)
  local lv = LEVELS[key]
  if lv == nil then
    local v = redis.call('HMGET', key, 'on_hand', 'reserved', 'committed', 'safety')
    if v[1] == false then return nil end
    lv = { on_hand = tonumber(v[1]), reserved = tonumber(v[2]) or 0,
      committed = tonumber(v[3]) or 0, safety = tonumber(v[4]) or 0 }
    LEVELS[key] = lv
  end
  return lv
end

local function available(lv) return lv.on_hand - lv.reserved - lv.committed - lv.safety end

-- Units of q taken from a level with `left` available that stock cannot cover.
local function bo_of(left, q) return q - math.max(0, math.min(q, left)) end

-- How many more units the sku may put on backorder: none for a deny item; for allow and
-- notify, backorder_limit less what its locations together are already short (SPEC §1:
-- the policy is the item's, shared by all its locations).
local function bo_budget(sku)
  local it = item(sku)
  if it.backorder == 'deny' then return 0 end
  if it.backorder_limit == nil then return math.huge end
  local short = 0
  for _, loc in ipairs(redis.call('ZRANGE', k_locs(sku), 0, -1)) do
    local lv = level(sku, loc)
    if lv then short = short + math.max(0, -available(lv)) end
  end
  return it.backorder_limit - short
end

local function level_json(loc, lv)
  return { location = loc, on_hand = lv.on_hand, reserved = lv.reserved, committed = lv.committed,
    safety_stock = lv.safety, available = available(lv) }
end

local PENDING = {}  -- low_stock events, written after the event that caused them

-- Apply a change to a level (created at zero when absent) and return the event line.
local function move(sku, loc, qty, don, dres, dcom, dsaf)
  local key = k_level(sku, loc)
  local lv = level(sku, loc)
  if lv == nil then
    lv = { on_hand = 0, reserved = 0, committed = 0, safety = 0 }
    LEVELS[key] = lv
    redis.call('HSET', key, 'on_hand', 0, 'reserved', 0, 'committed', 0, 'safety', 0)
    redis.call('ZADD', k_locs(sku), 'NX', item(sku).prio_rest, loc)
    redis.call('SADD', K_SKUS, sku)
  end
  local before = available(lv)
  if don ~= 0 then lv.on_hand = lv.on_hand + don; redis.call('HINCRBY', key, 'on_hand', don) end
  if dres ~= 0 then lv.reserved = lv.reserved + dres; redis.call('HINCRBY', key, 'reserved', dres) end
  if dcom ~= 0 then lv.committed = lv.committed + dcom; redis.call('HINCRBY', key, 'committed', dcom) end
  if dsaf ~= 0 then lv.safety = lv.safety + dsaf; redis.call('HINCRBY', key, 'safety', dsaf) end
  local after = available(lv)
  local thr = item(sku).low_stock_threshold
  if thr ~= nil and after <= thr and before > thr then
    PENDING[#PENDING + 1] = { type = 'low_stock', sku = sku, loc = loc, threshold = thr, available = after,
      lines = { { sku = sku, loc = loc, qty = 0, d = { 0, 0, 0, 0 },
        lv = { lv.on_hand, lv.reserved, lv.committed, lv.safety } } } }
  end
  return { sku = sku, loc = loc, qty = qty, d = { don, dres, dcom, dsaf },
    lv = { lv.on_hand, lv.reserved, lv.committed, lv.safety } }
end

-- Append an event (and the low_stock events it caused) to the stream, and count them:
-- the count is what the ledger's row count is checked against, whatever was trimmed.
local function emit(ev)
  ev.at = NOW
  redis.call('XADD', K_EVENTS, '*', 'e', cjson.encode(ev))
  for i = 1, #PENDING do
    PENDING[i].at = NOW
    redis.call('XADD', K_EVENTS, '*', 'e', cjson.encode(PENDING[i]))
  end
  redis.call('HINCRBY', K_STATS, 'events', 1 + #PENDING)
  PENDING = {}
end

-- Reservations: hash fields st (status), cu (customer), ex (expires_at ms), h (body hash),
-- ln (JSON [[sku, loc, qty, backordered], ...]), oi (order id once committed).
local function rsv_json(rid, st, cu, ex, lines)
  local items = {}
  for i, l in ipairs(lines) do
    local it = item(l[1])
    local line = { sku = l[1], location = l[2], quantity = l[3], backordered = l[4] }
    if l[4] > 0 then
      line.restock_date = orjnull(it.restock_date)
      line.ships_in_days = orjnull(it.ships_in_days)
      line.notify = it.backorder == 'notify'
    end
    items[i] = line
  end
  return cjson.encode({ reservation_id = rid, status = st, customer_id = orjnull(nz(cu)),
    expires_at = iso(ex), items = items })
end

-- End an active hold: its units go back, it leaves every index, and one event says so
-- (`released` or `expired`, which is also its new status).
local function end_hold(rid, cust, lines, status, ex)
  redis.call('ZREM', K_EXP, rid)
  if cust ~= '' then redis.call('ZREM', k_cust_holds(cust), rid) end  -- no longer a hold of theirs
  local ev = {}
  for i, l in ipairs(lines) do
    redis.call('ZREM', k_holds(l[1], l[2]), rid)
    ev[i] = move(l[1], l[2], l[3], 0, -l[3], 0, 0)
    if cust ~= '' then
      if redis.call('DECRBY', k_cust(cust, l[1]), l[3]) <= 0 then redis.call('DEL', k_cust(cust, l[1])) end
    end
  end
  local key = k_rsv(rid)
  redis.call('HSET', key, 'st', status)
  redis.call('PEXPIRE', key, RETENTION_MS)
  local e = { type = status, rid = rid, status = status, lines = ev }
  if status == 'expired' then e.exp = ex end
  if cust ~= '' then e.cust = cust end
  emit(e)
end

-- Give back the units of an active reservation whose TTL has passed; exactly one `expired` event.
local function expire_rsv(rid)
  local r = redis.call('HMGET', k_rsv(rid), 'st', 'cu', 'ln', 'ex')
  if r[1] ~= 'active' or tonumber(r[4]) > NOW then
    redis.call('ZREM', K_EXP, rid)  -- a stale index entry
    return false
  end
  end_hold(rid, r[2], cjson.decode(r[3]), 'expired', tonumber(r[4]))
  return true
end

-- Reap every expired hold on every location of a sku, so its levels are exact.
local function reap_sku(sku)
  for _, loc in ipairs(redis.call('ZRANGE', k_locs(sku), 0, -1)) do
    for _, rid in ipairs(redis.call('ZRANGEBYSCORE', k_holds(sku, loc), '-inf', NOW)) do
      expire_rsv(rid)
    end
  end
end

-- An id-keyed mutation (adjustment, fulfillment, return) seen before: nil if new, the first
-- result {1, JSON} if this very request was applied already, or a refusal when the id came
-- with another body or target.
local function seen(kind, ref, hash, scope)
  if ref == '' then return nil end
  local v = redis.call('HMGET', k_idem(kind, ref), 'h', 'scope', 'r')
  if v[1] == false then return nil end
  if v[1] ~= hash or v[2] ~= scope then return refuse(R.IDEMPOTENCY_CONFLICT, { id = ref }) end
  return { 1, v[3] }
end

-- Keep the first result of an id-keyed mutation, so a replay answers exactly the same.
local function remember(kind, ref, hash, scope, result)
  if ref ~= '' then
    redis.call('HSET', k_idem(kind, ref), 'h', hash, 'scope', scope, 'r', result)
    redis.call('PEXPIRE', k_idem(kind, ref), RETENTION_MS)
  end
  return { 0, result }
end

local POLICY_FIELDS = { 'backorder', 'backorder_limit', 'restock_date', 'ships_in_days',
  'low_stock_threshold', 'per_customer_limit', 'rate_limit_customer', 'max_holds_per_customer',
  'max_hold_seconds', 'max_cart_share' }

-- Redis's cjson writes an empty table as {}; fields that are lists must stay [].
local function encode_lists(t, fields)
  local out = cjson.encode(t)
  for _, f in ipairs(fields) do out = string.gsub(out, '"' .. f .. '":{}', '"' .. f .. '":[]') end
  return out
end

local function policy_table(sku)
  local it = item(sku)
  local p = {}
  for _, f in ipairs(POLICY_FIELDS) do p[f] = orjnull(it[f]) end
  p.locations = redis.call('ZRANGE', k_locs(sku), 0, -1)
  return p
end
