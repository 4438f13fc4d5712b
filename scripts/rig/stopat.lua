-- wrk script: the thread stops after N responses (environment N, default 20000), so a
-- profiled run covers an exact number of requests.
local n = tonumber(os.getenv("N") or "20000")
local count = 0
response = function(status, headers, body)
  count = count + 1
  if count >= n then wrk.thread:stop() end
end
