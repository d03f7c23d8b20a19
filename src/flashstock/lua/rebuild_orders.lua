-- rebuild_orders: put orders back from the ledger, open ones with their customers' counts, finished ones for the rest of their retention.
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, ms a finished order is kept after its last change
-- ARGV[2] orders: string, JSON array of {id, rid, cu, at, lines: [[sku, loc, qty, fulfilled, cancelled, returned]]}
-- returns {0, number of orders written}
-- refuses INVALID
-- events none
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
--@include lib/orders.lua
local ok, orders = pcall(cjson.decode, ARGV[2])
if not ok or type(orders) ~= 'table' then return refuse(R.INVALID, { message = 'orders must be a JSON array' }) end

-- What an order adds to its customer's per-sku counts: its open units.
local function count_open(o, sign)
  if o.cu == '' then return end
  for _, l in ipairs(o.lines) do
    local q = open_of(l)
    if q > 0 and redis.call('INCRBY', k_cust(o.cu, l[1]), sign * q) <= 0 then redis.call('DEL', k_cust(o.cu, l[1])) end
  end
end

local n = 0
for _, o in ipairs(orders) do
  local old = load_order(o.id)
  if old then count_open(old, -1) end  -- replacing an order Redis has: take its counts out first
  redis.call('DEL', k_order(o.id))
  local st = order_status(o.lines)
  local open = st == 'open' or st == 'partially_fulfilled'
  if open or tonumber(o.at) + RETENTION_MS > NOW then
    save_order(o)
    if not open then redis.call('PEXPIREAT', k_order(o.id), tonumber(o.at) + RETENTION_MS) end
    count_open(o, 1)
    n = n + 1
  end
end
return { 0, n }
