-- Orders: hash fields rid, cu (customer), st (status),
-- ln (JSON [[sku, loc, quantity, fulfilled, cancelled, returned], ...]).
local function open_of(l) return l[3] - l[4] - l[5] end

local function order_status(lines)
  local open, done = 0, 0
  for _, l in ipairs(lines) do open = open + open_of(l); done = done + l[4] end
  if open > 0 then return done > 0 and 'partially_fulfilled' or 'open' end
  return done > 0 and 'fulfilled' or 'cancelled'
end

local function load_order(oid)
  local v = redis.call('HMGET', k_order(oid), 'rid', 'cu', 'ln')
  if v[1] == false then return nil end
  return { id = oid, rid = v[1], cu = v[2], lines = cjson.decode(v[3]) }
end

local function order_json(o)
  local items = {}
  for i, l in ipairs(o.lines) do
    items[i] = { sku = l[1], location = l[2], quantity = l[3], fulfilled = l[4], cancelled = l[5],
      returned = l[6], open = open_of(l) }
  end
  return cjson.encode({ order_id = o.id, reservation_id = o.rid, status = order_status(o.lines),
    customer_id = orjnull(nz(o.cu)), items = items })
end

-- Persist an order; one with nothing left open is kept for the retention window only.
local function save_order(o)
  local key, st = k_order(o.id), order_status(o.lines)
  redis.call('HSET', key, 'rid', o.rid, 'cu', o.cu, 'st', st, 'ln', cjson.encode(o.lines))
  if st == 'open' or st == 'partially_fulfilled' then redis.call('PERSIST', key)
  else redis.call('PEXPIRE', key, RETENTION_MS) end
end

local function order_event(kind, o, lines)
  local snap = {}
  for i, l in ipairs(o.lines) do
    snap[i] = { sku = l[1], loc = l[2], qty = l[3], fulfilled = l[4], cancelled = l[5], returned = l[6] }
  end
  local st = order_status(o.lines)
  local e = { type = kind, oid = o.id, rid = o.rid, status = st,
    order = { rid = o.rid, status = st, lines = snap } }
  if o.cu ~= '' then e.cust = o.cu; e.order.cust = o.cu end
  if #lines > 0 then e.lines = lines end
  return e
end

-- Match the requested lines (ARGV triples sku, location '' = any, quantity from index `first`)
-- to order lines; room(l) is what a line can still take. No triples means every line's room.
-- Returns a list of {line index, quantity}, or nil and a refusal.
local function pick_lines(o, first, room, over)
  local picks, used = {}, {}
  local function left(i) return room(o.lines[i]) - (used[i] or 0) end
  if #ARGV < first then
    for i, l in ipairs(o.lines) do
      if room(l) > 0 then picks[#picks + 1] = { i, room(l) } end
    end
    return picks
  end
  if (#ARGV - first + 1) % 3 ~= 0 then return nil, refuse(R.INVALID, { message = 'bad arguments' }) end
  for a = first, #ARGV, 3 do
    local sku, loc, q = ARGV[a], ARGV[a + 1], posint(ARGV[a + 2])
    if q == nil then return nil, refuse(R.INVALID, { sku = sku, message = 'quantity must be a positive integer' }) end
    local has_sku, matched, can = false, {}, 0
    for i, l in ipairs(o.lines) do
      if l[1] == sku then
        has_sku = true
        if loc == '' or l[2] == loc then matched[#matched + 1] = i; can = can + left(i) end
      end
    end
    if has_sku and #matched == 0 then return nil, refuse(R.LOCATION_MISMATCH, { sku = sku, location = loc }) end
    if can < q then
      local d = { sku = sku, requested = q }
      d[over == R.EXCEEDS_OPEN and 'open' or 'returnable'] = can
      if loc ~= '' then d.location = loc end
      if not has_sku then d.in_order = false end
      return nil, refuse(over, d)
    end
    for _, i in ipairs(matched) do
      local n = math.min(q, left(i))
      if n > 0 then used[i] = (used[i] or 0) + n; q = q - n end
    end
  end
  for i = 1, #o.lines do
    if used[i] then picks[#picks + 1] = { i, used[i] } end
  end
  return picks
end
