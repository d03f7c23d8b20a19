-- wrk script: POST a JSON body, count answers by status, and count spurious refusals.
-- Arguments (after --): path, body, skus, check ('1': look for spurious refusals).
--   body may contain {sku}; with skus > 0 each request names a random one of SKU-1..SKU-<skus>.
-- A 409 whose body says "available":A with A >= its "requested":R was refused while stock
-- was there to cover it: a spurious refusal.
-- done() prints one line: "WRKJSON {...}" with counts and latency percentiles (microseconds).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local path, body, skus, check, fixed
local counts = {}
spurious = 0

function init(args)
  path, body, skus, check = args[1], args[2], tonumber(args[3] or "0"), args[4] == "1"
  if skus == 0 then
    fixed = wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
  end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

function request()
  if fixed then return fixed end
  local b = string.gsub(body, "{sku}", "SKU-" .. math.random(1, skus))
  return wrk.format("POST", path, { ["Content-Type"] = "application/json" }, b)
end

function response(status, headers, b)
  counts[status] = (counts[status] or 0) + 1
  if status == 409 and check then
    local lines = string.match(b, '"lines":(%b[])') or ""
    for obj in string.gmatch(lines, "%b{}") do
      local r = tonumber(string.match(obj, '"requested":(%d+)'))
      local a = tonumber(string.match(obj, '"available":(%-?%d+)'))
      if r and a and a >= r then spurious = spurious + 1; break end
    end
  end
  statuses = counts
end

function done(summary, latency, requests)
  local total = {}
  local sp = 0
  for _, t in ipairs(threads) do
    local c = t:get("statuses") or {}
    for k, v in pairs(c) do total[k] = (total[k] or 0) + v end
    sp = sp + (t:get("spurious") or 0)
  end
  local parts = {}
  for k, v in pairs(total) do parts[#parts + 1] = string.format('"%d":%d', k, v) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"status":{%s},"spurious":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.duration, summary.requests, table.concat(parts, ","), sp,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
