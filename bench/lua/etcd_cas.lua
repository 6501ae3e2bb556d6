-- Compare-and-swap loop on etcd's gateway, the counterpart of kvs_cas.lua (same args,
-- same one-connection-per-thread pairing). A CAS is a txn:
--   compare [key MOD == known mod_revision]   (mode=index)
--        or [key VERSION == known version]    (mode=version; etcd's per-key write counter)
--   success [put key value]   failure [range key]   (the failure branch returns the current
--   state, as kvs's 409 does, so a retry needs no extra read)
-- A key never seen is compared with 0, which holds only while it is absent (create-only).
dofile((os.getenv("BENCH_LUA_DIR") or "bench/lua") .. "/common.lua")

local mode, prefix, hot, value64
local known = {}   -- key -> mod_revision or version (number)
local encoded = {}
local last_key

function init(args)
   local opts = parse_opts(args)
   mode = opts.mode or "index"
   prefix = opts.prefix or "bench/cas"
   hot = tonumber(opts.hot or "0")
   value64 = base64('"' .. string.rep("v", tonumber(opts.value_bytes or "64")) .. '"')
   seed_random()
end

local function key64(key)
   local e = encoded[key]
   if e == nil then
      e = base64(key)
      encoded[key] = e
   end
   return e
end

function request()
   local key = cas_key(prefix, hot)
   last_key = key
   local k = key64(key)
   local n = known[key] or 0
   local compare
   if mode == "index" then
      compare = '{"key":"' .. k .. '","target":"MOD","result":"EQUAL","mod_revision":"' .. n .. '"}'
   else
      compare = '{"key":"' .. k .. '","target":"VERSION","result":"EQUAL","version":"' .. n .. '"}'
   end
   local body = '{"compare":[' .. compare .. '],"success":[{"request_put":{"key":"' .. k ..
      '","value":"' .. value64 .. '"}}],"failure":[{"request_range":{"key":"' .. k .. '"}}]}'
   return wrk.format("POST", "/v3/kv/txn", JSON, body)
end

function response(status, headers, body)
   if status ~= 200 then
      other = other + 1
      known[last_key] = nil
      return
   end
   if body:find('"succeeded":true', 1, true) then
      ok = ok + 1
      if mode == "index" then
         -- the new mod_revision is the txn's revision, the first one in the header
         known[last_key] = tonumber(body:match('"revision":"(%d+)"'))
      else
         known[last_key] = (known[last_key] or 0) + 1
      end
   else
      conflict = conflict + 1
      local field = mode == "index" and "mod_revision" or "version"
      known[last_key] = tonumber(body:match('"' .. field .. '":"(%d+)"')) -- nil: key is absent
   end
end
