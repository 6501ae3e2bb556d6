-- etcd gateway: txn with 4 puts on 4 distinct random keys (no compare), like kvs_txn4.lua.
-- args: prefix=bench/t, keys=10000, value_bytes=64
dofile((os.getenv("BENCH_LUA_DIR") or "bench/lua") .. "/common.lua")

local encoded = {}  -- key number -> base64 key, filled lazily
local keys, value64, key_prefix

local function key64(i)
   local e = encoded[i]
   if e == nil then
      e = base64(key_prefix .. string.format("%05d", i))
      encoded[i] = e
   end
   return e
end

function init(args)
   local opts = parse_opts(args)
   local prefix = (opts.prefix or "bench/t") .. "/"
   keys = tonumber(opts.keys or "10000")
   key_prefix = prefix
   value64 = base64('"' .. string.rep("v", tonumber(opts.value_bytes or "64")) .. '"')
   seed_random()
end

function request()
   local first = math.random(0, keys - 1)
   local ops = {}
   for i = 0, 3 do
      ops[#ops + 1] = '{"request_put":{"key":"' .. key64((first + i) % keys) .. '","value":"' ..
         value64 .. '"}}'
   end
   return wrk.format("POST", "/v3/kv/txn", JSON, '{"success":[' .. table.concat(ops, ",") .. ']}')
end
