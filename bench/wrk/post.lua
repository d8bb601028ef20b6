-- wrk script for the benchmark: POSTs the body in $BENCH_BODY with the headers in $BENCH_HEADERS
-- ("Name: value" lines) and prints one machine-readable line, BENCH_RESULT {json}, when done.
-- $BENCH_COUNT_429=1 counts 429 answers (the rate-limit scenario); $BENCH_DELAY_MS paces each
-- connection (the soak at half load). Both are off otherwise: a Lua response() hook costs wrk time.
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

if os.getenv("BENCH_COUNT_429") == "1" then
  function init(args) n429 = 0 end
  function response(status, headers, body)
    if status == 429 then n429 = n429 + 1 end
  end
end

local pace = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pace then
  function delay() return pace end
end

function done(summary, latency, requests)
  local total429 = 0
  for _, t in ipairs(threads) do total429 = total429 + (t:get("n429") or 0) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"n429":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max, total429))
end
