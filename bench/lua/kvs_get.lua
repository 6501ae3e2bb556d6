-- GET one pre-populated key (kvs or the bare app).  args: key=bench/get
dofile((os.getenv("BENCH_LUA_DIR") or "bench/lua") .. "/common.lua")

function init(args)
   local opts = parse_opts(args)
   wrk.method = "GET"
   wrk.path = "/kv/" .. (opts.key or "bench/get")
end
