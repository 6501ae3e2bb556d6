-- Shared by every bench script (loaded with dofile, see the first line of each).
--
-- * Arguments after `--` on the wrk command line are key=value pairs: opts.
-- * Every thread gets a number `id` (1..threads) before init() runs.
-- * Scripts that define response() count outcomes in the per-thread globals
--   ok / conflict / other; done() adds them up over all threads.
-- * With BENCH_TOKEN set, every request carries it as Authorization: Bearer (ACLs).
-- * done() prints one machine-readable line, "BENCH_JSON {...}", that bench/run.py parses:
--   request count, duration, wrk's error counters, latency percentiles (microseconds)
--   and the outcome counters.

ok, conflict, other = 0, 0, 0
local threads = {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("id", thread_count)
   table.insert(threads, thread)
end

function parse_opts(args)
   local opts = {}
   for _, a in ipairs(args or {}) do
      local k, v = a:match("^([%w_]+)=(.*)$")
      if k then opts[k] = v end
   end
   return opts
end

function seed_random()
   math.randomseed((id or 0) * 7919 + os.time())
   for _ = 1, 10 do math.random() end
end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64char(n)
   return b64chars:sub(n + 1, n + 1)
end

-- Standard base64 (with padding), as etcd's JSON gateway wants keys and values.
function base64(data)
   local out = {}
   for i = 1, #data, 3 do
      local a, b, c = data:byte(i, i + 2)
      local n = a * 65536 + (b or 0) * 256 + (c or 0)
      out[#out + 1] = b64char(math.floor(n / 262144)) .. b64char(math.floor(n / 4096) % 64) ..
         (b and b64char(math.floor(n / 64) % 64) or "=") .. (c and b64char(n % 64) or "=")
   end
   return table.concat(out)
end

JSON = { ["Content-Type"] = "application/json" }

-- A node with ACLs on: the harness passes the token in BENCH_TOKEN; every request
-- (wrk's static one and those built with JSON) carries it.
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
   JSON["Authorization"] = "Bearer " .. token
   wrk.headers["Authorization"] = "Bearer " .. token
end

function done(summary, latency, requests)
   local c_ok, c_conflict, c_other = 0, 0, 0
   for _, t in ipairs(threads) do
      c_ok = c_ok + (t:get("ok") or 0)
      c_conflict = c_conflict + (t:get("conflict") or 0)
      c_other = c_other + (t:get("other") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
      '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
      '"max_us":%d,"mean_us":%.1f,"ok":%d,"conflict":%d,"other":%d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
      e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean, c_ok, c_conflict, c_other))
end

-- etcd random-key workloads: `etcd_keys(args, default_prefix)` reads prefix, keys and
-- value_bytes, and returns key64(i) (the base64 of key number i, memoised), the base64
-- of the value, and the number of keys.
function etcd_keys(args, default_prefix)
   local opts = parse_opts(args)
   local key_prefix = (opts.prefix or default_prefix) .. "/"
   local count = tonumber(opts.keys or "10000")
   local value64 = base64('"' .. string.rep("v", tonumber(opts.value_bytes or "64")) .. '"')
   local encoded = {}
   local function key64(i)
      local e = encoded[i]
      if e == nil then
         e = base64(key_prefix .. string.format("%05d", i))
         encoded[i] = e
      end
      return e
   end
   seed_random()
   return key64, value64, count
end

-- CAS workloads: with hot > 0 every thread contends on `hot` shared keys, else each
-- thread chains CAS on its own key (no conflicts).
function cas_key(prefix, hot)
   if hot > 0 then
      return prefix .. "/hot/" .. math.random(1, hot)
   end
   return prefix .. "/own/" .. id
end
