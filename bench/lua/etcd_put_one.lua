-- etcd gateway: put the same key again and again.  args: key=bench/one, value_bytes=64
-- The value is the same JSON text kvs stores ("vvv..."), base64-encoded as the gateway wants.
dofile((os.getenv("BENCH_LUA_DIR") or "bench/lua") .. "/common.lua")

function init(args)
   local opts = parse_opts(args)
   local value = '"' .. string.rep("v", tonumber(opts.value_bytes or "64")) .. '"'
   wrk.method = "POST"
   wrk.path = "/v3/kv/put"
   wrk.headers["Content-Type"] = "application/json"
   wrk.body = '{"key":"' .. base64(opts.key or "bench/one") .. '","value":"' .. base64(value) .. '"}'
end
