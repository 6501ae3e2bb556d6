-- POST /txn with 4 `set` ops on 4 distinct random keys out of `keys` (kvs).
-- args: prefix=bench/t, keys=10000, value_bytes=64
dofile((os.getenv("BENCH_LUA_DIR") or "bench/lua") .. "/common.lua")

local prefix, keys, value

function init(args)
   local opts = parse_opts(args)
   prefix = (opts.prefix or "bench/t") .. "/"
   keys = tonumber(opts.keys or "10000")
   value = '"' .. string.rep("v", tonumber(opts.value_bytes or "64")) .. '"'
   seed_random()
end

function request()
   local first = math.random(0, keys - 1)
   local ops = {}
   for i = 0, 3 do
      local key = prefix .. string.format("%05d", (first + i) % keys)
      ops[#ops + 1] = '{"op":"set","key":"' .. key .. '","value":' .. value .. '}'
   end
   return wrk.format("POST", "/txn", JSON, '{"ops":[' .. table.concat(ops, ",") .. ']}')
end
