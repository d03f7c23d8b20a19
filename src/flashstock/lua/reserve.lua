-- reserve: hold every line of a cart for a TTL, all or nothing, never below the item's floor.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms a terminal reservation is kept for replays
-- ARGV[2] reservation_id: string
-- ARGV[3] customer_id: string, '' for none
-- ARGV[4] ttl_ms: int, ms
-- ARGV[5] body_hash: string, identifies the request body for idempotency
-- ARGV[6] split: '1' a line without location may split across locations, '0' it may not
-- ARGV[7..] lines: sku string, location string ('' = allocate), quantity int; repeated
-- returns {0, reservation JSON} created | {1, reservation JSON} the first result, for a replay of the same body
-- refuses INVALID, UNKNOWN_SKU, UNKNOWN_LOCATION, INSUFFICIENT_STOCK, LIMIT_EXCEEDED, CUSTOMER_REQUIRED, IDEMPOTENCY_CONFLICT
-- events reserved, expired, low_stock
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local rid, cust, ttl, hash, split = ARGV[2], ARGV[3], posint(ARGV[4]), ARGV[5], ARGV[6] == '1'
if ttl == nil or (#ARGV - 6) % 3 ~= 0 or #ARGV < 9 then return refuse(R.INVALID, { message = 'bad arguments' }) end

local rkey = k_rsv(rid)
local prev = redis.call('HMGET', rkey, 'h', 'cu', 'ex', 'x0', 'ln')
if prev[1] then
  if prev[1] ~= hash then return refuse(R.IDEMPOTENCY_CONFLICT, { reservation_id = rid }) end
  -- The first result, whatever happened since (x0 is the first expiry, kept by extend).
  return { 1, rsv_json(rid, 'active', prev[2], tonumber(prev[4] or prev[3]), cjson.decode(prev[5])) }
end

-- Sum lines naming the same sku and location, keeping first-seen order.
local skus, wants, order = {}, {}, {}
for i = 7, #ARGV, 3 do
  local sku, loc, q = ARGV[i], ARGV[i + 1], posint(ARGV[i + 2])
  if q == nil then return refuse(R.INVALID, { sku = sku, message = 'quantity must be a positive integer' }) end
  if wants[sku] == nil then
    wants[sku] = {}
    skus[#skus + 1] = sku
  end
  if wants[sku][loc] == nil then
    wants[sku][loc] = 0
    order[#order + 1] = { sku, loc }
  end
  wants[sku][loc] = wants[sku][loc] + q
end

-- Check every sku before writing anything.
local plan, short = {}, {}
for _, sku in ipairs(skus) do
  local locs = redis.call('ZRANGE', k_locs(sku), 0, -1, 'WITHSCORES')
  local it = item(sku)
  if #locs == 0 and not it.exists then return refuse(R.UNKNOWN_SKU, { sku = sku }) end
  reap_sku(sku)
  local floor = floor_of(it)
  -- Locations in priority order, then most available first.
  local cand = {}
  for j = 1, #locs, 2 do
    local lv = level(sku, locs[j])
    cand[#cand + 1] = { loc = locs[j], prio = tonumber(locs[j + 1]), left = lv and available(lv) or 0 }
  end
  table.sort(cand, function(a, b)
    if a.prio ~= b.prio then return a.prio < b.prio end
    if a.left ~= b.left then return a.left > b.left end
    return a.loc < b.loc
  end)
  if #cand == 0 then cand[1] = { loc = 'default', prio = 0, left = 0 } end  -- a pre-order item with no level yet
  local byloc = {}
  for _, c in ipairs(cand) do byloc[c.loc] = c end
  local total = 0
  local function take(c, q)
    local bo = q - math.max(0, math.min(q, c.left))
    c.left = c.left - q
    total = total + q
    local p = byloc[c.loc].planned
    if p then
      p[3], p[4] = p[3] + q, p[4] + bo
    else
      byloc[c.loc].planned = { sku, c.loc, q, bo }
      plan[#plan + 1] = byloc[c.loc].planned
    end
  end
  -- Lines naming a location first, then lines the engine allocates.
  for _, o in ipairs(order) do
    if o[1] == sku and o[2] ~= '' then
      local c, q = byloc[o[2]], wants[sku][o[2]]
      if c == nil then return refuse(R.UNKNOWN_LOCATION, { sku = sku, location = o[2] }) end
      if c.left - q < floor then
        short[#short + 1] = { sku = sku, location = o[2], requested = q, available = math.max(c.left, 0) }
      else
        take(c, q)
      end
    end
  end
  local q = wants[sku]['']
  if q then
    local free = 0
    for _, c in ipairs(cand) do free = free + math.max(c.left, 0) end
    local rest = q
    if split then
      for _, c in ipairs(cand) do
        local n = math.min(rest, math.max(c.left, 0))
        if n > 0 then take(c, n); rest = rest - n end
      end
    else
      for _, c in ipairs(cand) do
        if c.left >= q then take(c, q); rest = 0; break end
      end
    end
    -- What stock cannot cover goes on backorder at the first location whose floor allows it.
    if rest > 0 then
      for _, c in ipairs(cand) do
        if c.left - rest >= floor then take(c, rest); rest = 0; break end
      end
    end
    if rest > 0 then short[#short + 1] = { sku = sku, location = cjson.null, requested = q, available = free } end
  end
  -- Per-customer limit, in the same atomic step as the stock check.
  if it.per_customer_limit ~= nil and #short == 0 then
    if cust == '' then return refuse(R.CUSTOMER_REQUIRED, { sku = sku }) end
    local held = tonumber(redis.call('GET', k_cust(cust, sku))) or 0
    if held + total > it.per_customer_limit then
      return refuse(R.LIMIT_EXCEEDED, { sku = sku, limit = it.per_customer_limit, held = held, requested = total })
    end
  end
end
if #short > 0 then return refuse(R.INSUFFICIENT_STOCK, { lines = short }) end

-- Every check passed: write.
local ex = NOW + ttl
local ev = {}
for i, p in ipairs(plan) do
  ev[i] = move(p[1], p[2], p[3], 0, p[3], 0, 0)
  ev[i].bo = p[4]
  redis.call('ZADD', k_holds(p[1], p[2]), ex, rid)
  if cust ~= '' then redis.call('INCRBY', k_cust(cust, p[1]), p[3]) end
end
redis.call('HSET', rkey, 'st', 'active', 'cu', cust, 'ex', ex, 'h', hash, 'ln', cjson.encode(plan))
redis.call('ZADD', K_EXP, ex, rid)
local e = { type = 'reserved', rid = rid, status = 'active', exp = ex, lines = ev }
if cust ~= '' then e.cust = cust end
emit(e)
return { 0, rsv_json(rid, 'active', cust, ex, plan) }
