-- set_item: set an item's selling policy (and its locations' allocation priority).
-- KEYS[1] partition base "{prefix}:{pN}:"
-- ARGV[1] retention_ms: int, unused (every script takes it first)
-- ARGV[2] sku: string
-- ARGV[3] mode: 'replace' (fields absent from the policy go back to their defaults) or 'merge'
-- ARGV[4] policy: JSON object of policy fields, validated by the caller; null clears a field
-- ARGV[5] locations: JSON array of locations in allocation priority order, or '' to keep it
-- ARGV[6] by: string, id of the API key making the change (recorded in the event), '' for none
-- returns {0, item JSON} (a policy that did not change writes no event)
-- refuses INVALID
-- events policy
local BASE = KEYS[1]
local RETENTION_MS = tonumber(ARGV[1])
--@include lib/keys.lua
--@include lib/common.lua
local sku, mode, by = ARGV[2], ARGV[3], ARGV[6]
local ok, policy = pcall(cjson.decode, ARGV[4])
if not ok or type(policy) ~= 'table' or (mode ~= 'replace' and mode ~= 'merge') then
  return refuse(R.INVALID, { message = 'bad policy' })
end
local key = k_item(sku)
local before = cjson.encode(redis.call('HMGET', key, unpack(POLICY_FIELDS))) .. cjson.encode(redis.call('ZRANGE', k_locs(sku), 0, -1, 'WITHSCORES')) .. tostring(redis.call('HGET', key, 'prio_rest'))
for _, f in ipairs(POLICY_FIELDS) do
  local v = policy[f]
  if v == cjson.null or (v == nil and mode == 'replace') then
    redis.call('HDEL', key, f)
  elseif v ~= nil then
    redis.call('HSET', key, f, tostring(v))
  end
end
if redis.call('HEXISTS', key, 'backorder') == 0 then redis.call('HSET', key, 'backorder', 'deny') end
redis.call('SADD', K_SKUS, sku)
local created = {}  -- levels a new location brought into being, as event lines
if ARGV[5] ~= '' then
  local locs = cjson.decode(ARGV[5])
  local prio = {}
  for i, loc in ipairs(locs) do prio[loc] = i end
  -- Listed locations first, in order; the others keep their order after them.
  for _, loc in ipairs(redis.call('ZRANGE', k_locs(sku), 0, -1)) do
    if prio[loc] == nil then redis.call('ZADD', k_locs(sku), #locs + 1, loc) end
  end
  redis.call('HSET', key, 'prio_rest', #locs + 1)  -- where locations stocked later go
  ITEMS[sku] = nil
  for _, loc in ipairs(locs) do
    redis.call('ZADD', k_locs(sku), prio[loc], loc)
    if level(sku, loc) == nil then created[#created + 1] = move(sku, loc, 0, 0, 0, 0, 0) end
  end
end
local p = policy_table(sku)
local after = cjson.encode(redis.call('HMGET', key, unpack(POLICY_FIELDS))) .. cjson.encode(redis.call('ZRANGE', k_locs(sku), 0, -1, 'WITHSCORES')) .. tostring(redis.call('HGET', key, 'prio_rest'))
if after ~= before then
  local e = { type = 'policy', sku = sku, policy = p }
  if #created > 0 then e.lines = created end
  if by ~= '' then e.by = by end
  -- The locations' scores (in policy.locations order) and where later ones go, for rebuild.
  local sc = redis.call('ZRANGE', k_locs(sku), 0, -1, 'WITHSCORES')
  e.prio = {}
  for j = 2, #sc, 2 do e.prio[#e.prio + 1] = tonumber(sc[j]) end
  e.prio_rest = tonumber(redis.call('HGET', key, 'prio_rest'))
  emit(e)
end
p.sku = sku
return { 0, encode_lists(p, { 'locations' }) }
