-- wrk script for the store benchmark (scripts/bench-store.py): GetItem, PutItem, Query of 10
-- items, or a mix of 80% GetItem / 20% PutItem, with random keys; or "Change [TABLE]": a PutItem
-- to TABLE (default bench) whose value differs every time, so that each write is a real change
-- (a stream records it; an unchanged item makes no record). Tables:
--   bench  (id S)           items k0..k9999 with a 100-byte v
--   bench2 (pk S, sk N)     partitions p0..p999, 10 items each
-- The Authorization header is a well-formed SigV4 header with a static signature: DynamoDB
-- Local, moto and a store without configured credentials accept it.
local counter = 0
function setup(thread) thread:set("tid", counter); counter = counter + 1 end
local op
local V = string.rep("x", 100)
local targets = { Get = "GetItem", Put = "PutItem", Change = "PutItem", Query = "Query" }
local change_table
function init(args)
  op = args[1] or "Get"
  change_table = args[2] or "bench"
  math.randomseed(os.time() + (tid or 0) * 7919)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-amz-json-1.0"
  wrk.headers["X-Amz-Date"] = "20261122T000000Z"
  wrk.headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/dynamodb/aws4_request, "
    .. "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" .. string.rep("0123456789abcdef", 4)
end
local function call(kind, body)
  wrk.headers["X-Amz-Target"] = "DynamoDB_20120810." .. targets[kind]
  return wrk.format(nil, nil, nil, body)
end
local function get() return call("Get", '{"TableName":"bench","Key":{"id":{"S":"k' .. math.random(0, 9999) .. '"}}}') end
local function put()
  return call("Put", '{"TableName":"bench","Item":{"id":{"S":"k' .. math.random(0, 9999) .. '"},"v":{"S":"' .. V .. '"}}}')
end
local function change()
  return call("Change", '{"TableName":"' .. change_table .. '","Item":{"id":{"S":"k' .. math.random(0, 9999)
    .. '"},"v":{"S":"' .. V:sub(1, 90) .. math.random(1000000000, 1999999999) .. '"}}}')
end
local function query()
  return call("Query", '{"TableName":"bench2","KeyConditionExpression":"pk = :p","ExpressionAttributeValues":'
    .. '{":p":{"S":"p' .. math.random(0, 999) .. '"}}}')
end
function request()
  if op == "Get" then return get()
  elseif op == "Put" then return put()
  elseif op == "Query" then return query()
  elseif op == "Change" then return change()
  elseif math.random() < 0.8 then return get()
  else return put() end
end
