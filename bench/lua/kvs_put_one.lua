-- PUT the same key again and again (kvs or the bare app).  args: key=..., value_bytes=64
dofile((os.getenv("BENCH_LUA_DIR") or "bench/lua") .. "/common.lua")

function init(args)
   local opts = parse_opts(args)
   wrk.method = "PUT"
   wrk.path = "/kv/" .. (opts.key or "bench/one")
   wrk.headers["Content-Type"] = "application/json"
   wrk.body = '{"value":"' .. string.rep("v", tonumber(opts.value_bytes or "64")) .. '"}'
end
