-- Job lifecycle helpers shared by the scripts that move a job on after it was queued (all but enqueue, which
-- carries only lib.lua: Redis runs a script's whole text on every call, defining each local function anew).
-- The job no longer holds a queue slot: the next job of its account's backlog moves up.
local function leave(id, acct)
  if redis.call('ZREM', active_key(acct), id) == 1 or redis.call('EXISTS', backlog_key(acct)) == 1 then
    refill(acct)
  end
end

local function release_lease(id, token)
  if token ~= nil and token ~= '' and redis.call('GET', lease_key(id)) == token then
    redis.call('DEL', lease_key(id))
  end
end

local function release_lock(id, acct)
  if redis.call('GET', lock_key(acct)) == id then
    redis.call('DEL', lock_key(acct))
  end
end

local function json_or_null(text)
  if text == nil or text == false or text == '' then return 'null' end
  return text
end

local function trim_dead_letters()
  local old = redis.call('ZRANGEBYSCORE', DLQ_INDEX, '-inf', NOW - DLQ_RETENTION_MS, 'LIMIT', 0, 200)
  for _, dead_id in ipairs(old) do
    redis.call('ZREM', DLQ_INDEX, dead_id)
    redis.call('HDEL', DLQ_ENTRIES, dead_id)
  end
  local excess = redis.call('ZCARD', DLQ_INDEX) - DLQ_MAX
  if excess > 0 then
    local oldest = redis.call('ZRANGE', DLQ_INDEX, 0, excess - 1)
    for _, dead_id in ipairs(oldest) do
      redis.call('ZREM', DLQ_INDEX, dead_id)
      redis.call('HDEL', DLQ_ENTRIES, dead_id)
    end
  end
end

local function store_dead_letter(id, entry)
  redis.call('HSET', DLQ_ENTRIES, id, entry)
  redis.call('ZADD', DLQ_INDEX, NOW, id)
  trim_dead_letters()
end

-- Move a job to the dead-letter queue with its evidence; an upsert takes the events waiting on it along.
-- The entry is assembled as text so the job's own JSON (the payload) is kept byte for byte.
local dead_letter
dead_letter = function(id, reason, error_json, detail)
  local j = job_key(id)
  local f = redis.call('HMGET', j, 'data', 'kind', 'acct', 'key', 'attempts', 'created', 'seq', 'state')
  if not f[1] or FINAL[f[8]] then return false end
  local hist = redis.call('LRANGE', hist_key(id), 0, -1)
  local entry = '{"id":' .. cjson.encode(id)
    .. ',"reason":' .. cjson.encode(reason)
    .. ',"detail":' .. cjson.encode(detail or '')
    .. ',"kind":' .. cjson.encode(f[2])
    .. ',"linked_account_id":' .. cjson.encode(f[3])
    .. ',"idempotency_key":' .. cjson.encode(f[4])
    .. ',"attempts":' .. (tonumber(f[5]) or 0)
    .. ',"created_at_ms":' .. (tonumber(f[6]) or 0)
    .. ',"dead_at_ms":' .. NOW
    .. ',"last_error":' .. json_or_null(error_json)
    .. ',"history":[' .. table.concat(hist, ',') .. ']'
    .. ',"job":' .. f[1] .. '}'
  store_dead_letter(id, entry)
  redis.call('HSET', j, 'state', 'dead', 'dead_reason', reason, 'dead_at', NOW)
  redis.call('HDEL', j, 'b64', 'kw')  -- a replay takes the job's values anew from the dead letter
  if error_json ~= nil and error_json ~= '' then redis.call('HSET', j, 'last_error', error_json) end
  touch(id)
  redis.call('ZREM', DELAYED, id)
  redis.call('ZREM', waiting_key(f[3]), id)
  leave(id, f[3])
  if f[2] == 'upsert' then
    release_lock(id, f[3])
    local seq = tonumber(f[7]) or 0
    local waiters = redis.call('ZRANGEBYSCORE', waiting_key(f[3]), seq, seq)
    for _, waiter in ipairs(waiters) do
      dead_letter(waiter, 'dependency', error_json, 'upsert ' .. id .. ' of its account was dead-lettered')
    end
  end
  return true
end

-- Events parked behind an upsert up to sequence `seq` may go now.
local function release_waiters(acct, seq)
  local wk = waiting_key(acct)
  local ready = redis.call('ZRANGEBYSCORE', wk, '-inf', seq)
  for _, waiter in ipairs(ready) do
    redis.call('ZREM', wk, waiter)
    redis.call('ZREM', DELAYED, waiter)
    admit(waiter)
  end
end

