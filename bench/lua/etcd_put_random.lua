-- etcd gateway: put a random key out of `keys`.  args: prefix=bench/r, keys=10000, value_bytes=64
dofile((os.getenv("BENCH_LUA_DIR") or "bench/lua") .. "/common.lua")

local key64, value64, keys

function init(args)
   key64, value64, keys = etcd_keys(args, "bench/r")
end

function request()
   local key = key64(math.random(0, keys - 1))
   return wrk.format("POST", "/v3/kv/put", JSON, '{"key":"' .. key .. '","value":"' .. value64 .. '"}')
end
