-- etcd gateway: range (default, linearizable) of one pre-populated key.  args: key=bench/get
dofile((os.getenv("BENCH_LUA_DIR") or "bench/lua") .. "/common.lua")

function init(args)
   local opts = parse_opts(args)
   wrk.method = "POST"
   wrk.path = "/v3/kv/range"
   wrk.headers["Content-Type"] = "application/json"
   wrk.body = '{"key":"' .. base64(opts.key or "bench/get") .. '"}'
end
