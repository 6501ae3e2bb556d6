-- etcd gateway: put a random key out of `keys`.  args: prefix=bench/r, keys=10000, value_bytes=64
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
   local prefix = (opts.prefix or "bench/r") .. "/"
   keys = tonumber(opts.keys or "10000")
   key_prefix = prefix
   value64 = base64('"' .. string.rep("v", tonumber(opts.value_bytes or "64")) .. '"')
   seed_random()
end

function request()
   local key = key64(math.random(0, keys - 1))
   return wrk.format("POST", "/v3/kv/put", JSON, '{"key":"' .. key .. '","value":"' .. value64 .. '"}')
end
