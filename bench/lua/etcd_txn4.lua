-- etcd gateway: txn with 4 puts on 4 distinct random keys (no compare), like kvs_txn4.lua.
-- args: prefix=bench/t, keys=10000, value_bytes=64
dofile((os.getenv("BENCH_LUA_DIR") or "bench/lua") .. "/common.lua")

local key64, value64, keys

function init(args)
   key64, value64, keys = etcd_keys(args, "bench/t")
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
