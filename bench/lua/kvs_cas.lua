-- Compare-and-swap loop on kvs, one connection per wrk thread (run with -t N -c N, so
-- request() and response() of a thread strictly alternate and pair up).
--
-- args: mode=index|version|seq  prefix=<unique per run>  hot=0|N  value_bytes=64
--   mode=seq  quorum CAS: "consistency":"quorum" with if_seq (the key's cluster-wide seq)
--   hot=0  every connection owns one key and chains CAS writes on it: the write's own
--          answer carries the new modify_index / version, so no re-read is needed and
--          every attempt should succeed (a conflict here would be a bug).
--   hot=N  all connections CAS on N shared keys: a stale view loses with 409, whose body
--          carries the current version, which the next attempt on that key uses
--          (the usual optimistic-concurrency retry loop). Measures the conflict rate.
-- The first attempt on an unknown key is create-only (cas: 0).
dofile((os.getenv("BENCH_LUA_DIR") or "bench/lua") .. "/common.lua")

local mode, prefix, hot, value
local known = {}   -- key -> modify_index (number, as text) or version uuid
local last_key

function init(args)
   local opts = parse_opts(args)
   mode = opts.mode or "index"
   prefix = opts.prefix or "bench/cas"
   hot = tonumber(opts.hot or "0")
   value = '"' .. string.rep("v", tonumber(opts.value_bytes or "64")) .. '"'
   seed_random()
end

function request()
   local key = cas_key(prefix, hot)
   last_key = key
   local k = known[key]
   local cond
   if k == nil then
      cond = '"cas":0'
   elseif mode == "index" then
      cond = '"cas":' .. k
   elseif mode == "seq" then
      cond = '"if_seq":' .. k
   else
      cond = '"if_version":"' .. k .. '"'
   end
   if mode == "seq" then
      cond = cond .. ',"consistency":"quorum"'
   end
   return wrk.format("PUT", "/kv/" .. key, JSON, '{"value":' .. value .. ',' .. cond .. '}')
end

local function learn(text)
   if text == nil then return nil end
   if mode == "index" then
      return text:match('"modify_index":(%d+)')
   end
   if mode == "seq" then
      return text:match('"seq":(%d+)')
   end
   return text:match('"version":"([^"]+)"')
end

function response(status, headers, body)
   if status == 200 then
      ok = ok + 1
      known[last_key] = learn(body)
   elseif status == 409 then
      conflict = conflict + 1
      -- {"error":"cas_conflict","message":...,"current":{...}|null}
      known[last_key] = learn(body:match('"current":(%b{})'))
   else
      other = other + 1
      known[last_key] = nil
   end
end
