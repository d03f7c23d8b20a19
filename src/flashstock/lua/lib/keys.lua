-- Key names inside one partition; mirrors src/flashstock/keys.py (a test checks both).
-- BASE is KEYS[1], the partition prefix "{prefix}:{pN}:", so every key shares its hash tag.
local function esc(s)
  return (string.gsub(s, '[%%:{}]', { ['%'] = '%25', [':'] = '%3A', ['{'] = '%7B', ['}'] = '%7D' }))
end
local function k_level(sku, loc) return BASE .. 'lv:' .. esc(sku) .. ':' .. esc(loc) end
local function k_holds(sku, loc) return BASE .. 'hd:' .. esc(sku) .. ':' .. esc(loc) end
local function k_item(sku) return BASE .. 'it:' .. esc(sku) end
local function k_locs(sku) return BASE .. 'locs:' .. esc(sku) end
local function k_rsv(rid) return BASE .. 'rs:' .. esc(rid) end
local function k_order(oid) return BASE .. 'or:' .. esc(oid) end
local function k_cust(cust, sku) return BASE .. 'cu:' .. esc(cust) .. ':' .. esc(sku) end
local function k_idem(kind, ref) return BASE .. 'id:' .. kind .. ':' .. esc(ref) end
local function k_cust_holds(cust) return BASE .. 'ch:' .. esc(cust) end
local function k_rate_cust(cust) return BASE .. 'rl:cu:' .. esc(cust) end
local function k_rate_key(key) return BASE .. 'rl:key:' .. esc(key) end
local function k_rate_item(cust, sku) return BASE .. 'rl:it:' .. esc(cust) .. ':' .. esc(sku) end
local K_EXP = BASE .. 'exp'
local K_SKUS = BASE .. 'skus'
local K_EVENTS = BASE .. 'ev'
local K_STATS = BASE .. 'stats'
