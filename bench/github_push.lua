-- wrk script: signed GitHub pushes with a unique X-GitHub-Delivery each.
-- Usage: wrk ... -s github_push.lua URL -- BODY_FILE SIGNATURE RUN_ID [RATE CONNECTIONS]
-- With RATE > 0 each connection waits between requests so that all of them
-- together send about RATE requests per second (wrk has no open-loop mode).
-- The signature covers the body only (GitHub signs nothing else), so one
-- body and one signature serve every request; the delivery id varies.

local made = 0
function setup(thread)
  made = made + 1
  thread:set("tid", made)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  body = f:read("*a")
  f:close()
  sig = args[2]
  run = args[3]
  local rate = tonumber(args[4] or "0")
  local conns = tonumber(args[5] or "1")
  pause = 0
  if rate > 0 then pause = conns * 1000 / rate end
  n = 0
end

function delay()
  return pause
end

function request()
  n = n + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "push",
    ["X-GitHub-Delivery"] = run .. "-" .. tid .. "-" .. n,
    ["X-Hub-Signature-256"] = sig,
  }
  return wrk.format("POST", nil, headers, body)
end
