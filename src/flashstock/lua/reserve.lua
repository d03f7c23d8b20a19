-- reserve: hold every line of a cart for a TTL, all or nothing, never past the item's backorder limit.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms a terminal reservation is kept for replays
-- ARGV[2] reservation_id: string
-- ARGV[3] customer_id: string, '' for none
-- ARGV[4] ttl_ms: int, ms
-- ARGV[5] body_hash: string, identifies the request body for idempotency
-- ARGV[6] split: '1' a line without location may split across locations, '0' it may not
-- ARGV[7] key_id: string, the API key making the request, '' for none
-- ARGV[8] rate_limit_customer: int, reserve attempts per window per customer, 0 = off (an item's own value wins)
-- ARGV[9] rate_limit_key: int, reserve attempts per window per API key, 0 = off
-- ARGV[10] rate_window_ms: int, ms, the fixed window both rates count in
-- ARGV[11] max_holds: int, active reservations per customer, 0 = off (an item's own value wins; a cart gets its strictest sku's)
-- ARGV[12] max_hold_ms: int, ms, longest total life of a hold across extensions, 0 = off (as max_holds)
-- ARGV[13] max_cart_share: int, percent of a sku's on_hand that may be reserved at once, 0 = off (an item's own value wins)
-- ARGV[14..] lines: sku string, location string ('' = allocate), quantity int; repeated
-- returns {0, reservation JSON} created | {1, reservation JSON} the first result, for a replay of the same body
-- refuses INVALID, UNKNOWN_SKU, UNKNOWN_LOCATION, INSUFFICIENT_STOCK, LIMIT_EXCEEDED, CUSTOMER_REQUIRED, IDEMPOTENCY_CONFLICT, RATE_LIMITED, TOO_MANY_HOLDS, HOLD_LIFETIME, CART_SHARE
-- events reserved, expired, low_stock
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local rid, cust, ttl, hash, split = ARGV[2], ARGV[3], posint(ARGV[4], MAX_MS), ARGV[5], ARGV[6] == '1'
local key_id, rate_cust, rate_key, window = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local max_holds, max_hold, max_share = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local FIRST = 14
if ttl == nil or window == nil or window < 1 or (#ARGV - FIRST + 1) % 3 ~= 0 or #ARGV < FIRST + 2 then
  return refuse(R.INVALID, { message = 'bad arguments' })
end

local rkey = k_rsv(rid)
local prev = redis.call('HMGET', rkey, 'h', 'cu', 'ex', 'x0', 'ln')
if prev[1] then
  if prev[1] ~= hash then return refuse(R.IDEMPOTENCY_CONFLICT, { reservation_id = rid }) end
  -- The first result, whatever happened since (x0 is the first expiry, kept by extend).
  return { 1, rsv_json(rid, 'active', prev[2], tonumber(prev[4] or prev[3]), cjson.decode(prev[5])) }
end

-- Sum lines naming the same sku and location, keeping first-seen order.
local skus, wants, order = {}, {}, {}
for i = FIRST, #ARGV, 3 do
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

-- Abuse limits (docs/security.md), before the stock check and in the same atomic step.
-- Each sku's own value replaces the global one; the strictest of a cart's skus applies; 0 is off.
local function limit_of(global, field, scale)
  local cap = 0
  for _, sku in ipairs(skus) do
    local v = item(sku)[field]
    v = v and v * scale or global
    if v > 0 and (cap == 0 or v < cap) then cap = v end
  end
  return cap
end
-- Fixed-window attempt counter: counts this attempt; the ms left in the window once over the limit.
local function over(key, limit)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, window) end
  if n <= limit then return nil end
  local left = redis.call('PTTL', key)
  if left < 0 then redis.call('PEXPIRE', key, window); left = window end
  return left
end
local function rate_refusal(scope, limit, left, sku)
  return refuse(R.RATE_LIMITED, { scope = scope, limit = limit, retry_after_ms = left, sku = sku })
end
if key_id ~= '' and rate_key > 0 then
  local left = over(k_rate_key(key_id), rate_key)
  if left then return rate_refusal('key', rate_key, left) end
end
for _, sku in ipairs(skus) do
  local own = item(sku)
  if cust == '' and (own.rate_limit_customer or own.max_holds_per_customer) then
    return refuse(R.CUSTOMER_REQUIRED, { sku = sku })
  end
end
if cust ~= '' then
  if rate_cust > 0 then
    local left = over(k_rate_cust(cust), rate_cust)
    if left then return rate_refusal('customer', rate_cust, left) end
  end
  for _, sku in ipairs(skus) do
    local lim = item(sku).rate_limit_customer
    if lim then
      local left = over(k_rate_item(cust, sku), lim)
      if left then return rate_refusal('customer', lim, left, sku) end
    end
  end
end
local hold_cap = limit_of(max_hold, 'max_hold_seconds', 1000)
if hold_cap > 0 and ttl > hold_cap then
  return refuse(R.HOLD_LIFETIME, { max_hold_seconds = math.floor(hold_cap / 1000),
    max_expires_at = iso(NOW + hold_cap) })
end
local ch = cust ~= '' and k_cust_holds(cust) or nil
if ch then
  redis.call('ZREMRANGEBYSCORE', ch, '-inf', NOW)
  local cap = limit_of(max_holds, 'max_holds_per_customer', 1)
  if cap > 0 then
    -- Released and committed reservations leave the set here; expired ones by their score.
    local active = 0
    for _, r in ipairs(redis.call('ZRANGE', ch, 0, -1)) do
      if redis.call('HGET', k_rsv(r), 'st') == 'active' then active = active + 1 else redis.call('ZREM', ch, r) end
    end
    if active >= cap then return refuse(R.TOO_MANY_HOLDS, { limit = cap, active = active }) end
  end
end

-- Check every sku before writing anything.
local plan, short = {}, {}
for _, sku in ipairs(skus) do
  local locs = redis.call('ZRANGE', k_locs(sku), 0, -1, 'WITHSCORES')
  local it = item(sku)
  if #locs == 0 and not it.exists then return refuse(R.UNKNOWN_SKU, { sku = sku }) end
  reap_sku(sku)
  local budget = bo_budget(sku)  -- units that may still go on backorder (deny: 0)
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
    local bo = bo_of(c.left, q)
    budget = budget - bo
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
      if bo_of(c.left, q) > budget then
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
    -- What stock cannot cover goes on backorder at the first location, if the budget allows.
    if rest > 0 then
      for _, c in ipairs(cand) do
        if bo_of(c.left, rest) <= budget then take(c, rest); rest = 0; break end
      end
    end
    if rest > 0 then
      -- Unsplit, what counts is the most one location has.
      local most = 0
      for _, c in ipairs(cand) do most = math.max(most, c.left) end
      short[#short + 1] = { sku = sku, location = cjson.null, requested = q,
        available = split and free or math.max(most, 0) }
    end
  end
  -- Cart share: the sku's reserved units across its locations, against a share of its on_hand.
  local share = it.max_cart_share or max_share
  if share > 0 and #short == 0 then
    local held, stock = 0, 0
    for j = 1, #locs, 2 do
      local lv = level(sku, locs[j])
      if lv then held, stock = held + lv.reserved, stock + lv.on_hand end
    end
    local cap = math.floor(stock * share / 100)
    if held + total > cap then
      return refuse(R.CART_SHARE, { sku = sku, cap = cap, reserved = held, requested = total })
    end
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
if #short > 0 then
  -- cache_ms: how long a process may answer these lines "sold out" without asking again
  -- (src/flashstock/soldout.py): not past the partition's first hold expiry (-1: no hold).
  -- None for items with abuse limits: their counters move only on a real attempt.
  local detail = { lines = short }
  local plain = true
  for _, sku in ipairs(skus) do
    local it = item(sku)
    if it.rate_limit_customer or it.max_holds_per_customer or it.max_hold_seconds or it.max_cart_share then
      plain = false
    end
  end
  if plain then
    local first = redis.call('ZRANGE', K_EXP, 0, 0, 'WITHSCORES')
    -- NOW is whole milliseconds, Redis's clock may be up to 1 ms past it: count from NOW + 1.
    detail.cache_ms = first[2] and math.max(0, tonumber(first[2]) - NOW - 1) or -1
  end
  return refuse(R.INSUFFICIENT_STOCK, detail)
end

-- Every check passed: write.
local ex = NOW + ttl
local ev = {}
for i, p in ipairs(plan) do
  ev[i] = move(p[1], p[2], p[3], 0, p[3], 0, 0)
  ev[i].bo = p[4]
  redis.call('ZADD', k_holds(p[1], p[2]), ex, rid)
  if cust ~= '' then redis.call('INCRBY', k_cust(cust, p[1]), p[3]) end
end
redis.call('HSET', rkey, 'st', 'active', 'cu', cust, 'ex', ex, 'h', hash, 'ln', cjson.encode(plan), 't0', NOW)
if hold_cap > 0 then redis.call('HSET', rkey, 'mh', hold_cap) end
redis.call('ZADD', K_EXP, ex, rid)
if ch then
  redis.call('ZADD', ch, ex, rid)
  if redis.call('PTTL', ch) < ttl then redis.call('PEXPIRE', ch, ttl) end
end
local e = { type = 'reserved', rid = rid, status = 'active', exp = ex, lines = ev }
if cust ~= '' then e.cust = cust end
-- What rebuild needs to restore the reservation whole: its body hash and its hold cap.
e.h = hash
if hold_cap > 0 then e.mh = hold_cap end
emit(e)
return { 0, rsv_json(rid, 'active', cust, ex, plan) }
