-- wrk script that loads the table of scripts/bench-index-backfill.py. Table `scale` (pk S, sk N):
-- item i is pk "p<i // 100>", sk i % 100, a ~1 KB attribute v (as benches/scale.lua's items)
-- and g "g<i % 1000>", the attribute the global secondary index created later is keyed on.
-- Arguments: item count, wrk threads, a folder for the done files. Each wrk thread writes its
-- own slice of 0..count once with BatchWriteItem (25 items a request), then writes
-- <folder>/done-<thread> holding its failed requests (wrk runs until its duration or a SIGINT,
-- which the caller sends once every thread is done).
-- The Authorization header is a well-formed SigV4 header with a static signature, which a store
-- without configured credentials accepts.
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
local first, last, next_item, done_dir, done, failed, issued, answered, verifying
local V = string.rep("x", 1000)
function init(args)
  local count = tonumber(args[1] or "1000")
  local nthreads = tonumber(args[2] or "1")
  first = math.floor(count * tid / nthreads)
  last = math.floor(count * (tid + 1) / nthreads)
  next_item = first
  done_dir = args[3]
  done = false
  failed = 0
  issued = 0
  answered = 0
  -- wrk calls request() once on thread 0 right after init to check the script, and throws the
  -- request away: that call must not take items.
  verifying = (tid == 0)
  if first >= last then
    done = true
    local f = io.open(done_dir .. "/done-" .. tid, "w")
    f:write("0")
    f:close()
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-amz-json-1.0"
  wrk.headers["X-Amz-Date"] = "20261122T000000Z"
  wrk.headers["X-Amz-Target"] = "DynamoDB_20120810.BatchWriteItem"
  wrk.headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/dynamodb/aws4_request, "
    .. "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" .. string.rep("0123456789abcdef", 4)
end
local function describe()
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["X-Amz-Target"] = "DynamoDB_20120810.DescribeTable"
  return wrk.format(nil, nil, headers, '{"TableName":"scale"}')
end
local function item(i)
  return '{"pk":{"S":"p' .. math.floor(i / 100) .. '"},"sk":{"N":"' .. (i % 100) .. '"},'
    .. '"g":{"S":"g' .. (i % 1000) .. '"},"v":{"S":"' .. V .. '"}}'
end
function request()
  if verifying then
    verifying = false
    return describe()
  end
  local parts = {}
  local stop = math.min(next_item + 25, last)
  for i = next_item, stop - 1 do
    table.insert(parts, '{"PutRequest":{"Item":' .. item(i) .. '}}')
  end
  next_item = stop
  if #parts == 0 then
    -- This thread's slice is written: ask for nothing that changes data.
    return describe()
  end
  issued = issued + 1
  return wrk.format(nil, nil, nil, '{"RequestItems":{"scale":[' .. table.concat(parts, ",") .. ']}}')
end
function response(status, headers, body)
  if status == 200 and string.find(body, '"Table"', 1, true) then return end -- DescribeTable
  answered = answered + 1
  if status ~= 200 or not string.find(body, '"UnprocessedItems":{}', 1, true) then
    failed = failed + 1
    io.stderr:write("load: HTTP " .. status .. " " .. string.sub(body, 1, 300) .. "\n")
  end
  if not done and next_item >= last and answered >= issued then
    done = true
    local f = io.open(done_dir .. "/done-" .. tid, "w")
    f:write(tostring(failed))
    f:close()
  end
end
