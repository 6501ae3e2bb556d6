-- PUT a random key out of `keys` (default 10,000) (kvs or the bare app).
-- args: prefix=bench/r, keys=10000, value_bytes=64
dofile((os.getenv("BENCH_LUA_DIR") or "bench/lua") .. "/common.lua")

local prefix, keys, body

function init(args)
   local opts = parse_opts(args)
   prefix = "/kv/" .. (opts.prefix or "bench/r") .. "/"
   keys = tonumber(opts.keys or "10000")
   body = '{"value":"' .. string.rep("v", tonumber(opts.value_bytes or "64")) .. '"}'
   seed_random()
end

function request()
   return wrk.format("PUT", prefix .. string.format("%05d", math.random(0, keys - 1)), JSON, body)
end
