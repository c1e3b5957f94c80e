-- wrk script: POST /api/channels/<channel>/messages, ~100-byte body, keep-alive.
-- Set WRK_SECRET and WRK_CHANNELS (how many channels to spread publishes over).
local secret = os.getenv("WRK_SECRET") or "bench-secret"
local channels = tonumber(os.getenv("WRK_CHANNELS") or "1")
local counter = 0
local pad = string.rep("x", 60)
local headers = {
  ["Authorization"] = "Bearer " .. secret,
  ["Content-Type"] = "application/json",
}

request = function()
  counter = counter + 1
  local path = "/api/channels/bench" .. (counter % channels) .. "/messages"
  local body = '{"event":"tick","data":{"n":' .. counter .. ',"p":"' .. pad .. '"}}'
  return wrk.format("POST", path, headers, body)
end

local bad = 0
response = function(status, headers, body)
  if status ~= 202 then
    bad = bad + 1
    if bad < 3 then io.stderr:write("unexpected " .. status .. ": " .. body .. "\n") end
  end
end
