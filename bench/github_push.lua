-- wrk script: signed GitHub pushes with a unique X-GitHub-Delivery each.
-- Usage: wrk ... -s github_push.lua URL -- BODY_FILE SIGNATURE RUN_ID
-- (wrk has no open-loop mode; latency at a fixed rate is examples/paced.rs.)
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
  n = 0
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
