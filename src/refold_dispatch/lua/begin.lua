-- Start one delivery attempt of a job whose message a worker just received.
-- ARGV[8] job id   [9] lease token (unique per attempt)   [10] lease ms   [11] lock retry ms
-- ARGV[12..17] the first flow-control permit, folded into this round trip ('' in [12] = skip), the same
--   arguments as acquire.lua: API key fingerprint, rate per second, burst, longest wait ms, probe token,
--   probe TTL ms;  ARGV[18] jitter ms added to a hold's due time
-- ARGV[19..] Celery task events to publish (task-received, task-started), as (channel, message) pairs
-- Returns one of:
--   {'go', data, attempts, created_ms, credit_ms, wait_ms, probe}   deliver after wait_ms; the lease is held
--   {'done', state}                                 already delivered / superseded / dead: drop this copy
--   {'stale', state}                                a stale copy: the job is scheduled elsewhere
--   {'held', due_ms}                                another worker holds the lease; a watchdog entry is set
--   {'wait_lock', due_ms}                           another upsert of the account is in flight
--   {'waiting', upsert_job_id}                      parked until the account's upsert is delivered
--   {'dead', 'dependency'}                          the upsert it waits for was dead-lettered
--   {'hold', 'breaker'|'paused'|'rate', due_ms}      flow control said not yet; rescheduled, no attempt spent
--   {'missing'}                                     no job record (expired or never existed)
local id, token, lease_ms, lock_retry_ms = ARGV[8], ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
publish_events(19)
local j = job_key(id)
local f = redis.call('HMGET', j, 'state', 'kind', 'acct', 'seq', 'after', 'after_job', 'data', 'created', 'credit')
redis.call('ZREM', QUEUED, id)
if not f[7] then return {'missing'} end
local state, kind, acct = f[1], f[2], f[3]
if FINAL[state] then
  redis.call('ZREM', active_key(acct), id)
  return {'done', state}
end
if state == 'delayed' or state == 'waiting' or state == 'backlog' then return {'stale', state} end

local holder = redis.call('GET', lease_key(id))
if holder and holder ~= token then
  -- This copy may be the only one left if the holder dies, so make sure the job comes back after the lease.
  local due = NOW + math.max(redis.call('PTTL', lease_key(id)), 0) + 1000
  redis.call('ZADD', DELAYED, 'NX', due, id)
  return {'held', tostring(due)}
end

if kind == 'upsert' then
  local delivered_seq = tonumber(redis.call('HGET', acct_key(acct), 'delivered_seq')) or 0
  if (tonumber(f[4]) or 0) <= delivered_seq then
    -- A newer upsert of this account already landed: sending this one would overwrite fresh data.
    redis.call('HSET', j, 'state', 'superseded', 'superseded_at', NOW)
    touch(id)
    redis.call('ZREM', DELAYED, id)
    leave(id, acct)
    return {'done', 'superseded'}
  end
  local lk = lock_key(acct)
  if not redis.call('SET', lk, id, 'NX', 'PX', lease_ms) then
    if redis.call('GET', lk) ~= id then
      local due = NOW + lock_retry_ms
      redis.call('HSET', j, 'state', 'delayed', 'next_due', due, 'defer_reason', 'ordering')
      redis.call('ZADD', DELAYED, due, id)
      leave(id, acct)
      return {'wait_lock', tostring(due)}
    end
    redis.call('PEXPIRE', lk, lease_ms)
  end
elseif f[5] then
  local needed = tonumber(f[5])
  local delivered_seq = tonumber(redis.call('HGET', acct_key(acct), 'delivered_seq')) or 0
  if delivered_seq < needed then
    local dep_state = redis.call('HGET', job_key(f[6]), 'state')
    if dep_state == 'dead' then
      dead_letter(id, 'dependency', nil, 'upsert ' .. f[6] .. ' of its account was dead-lettered')
      return {'dead', 'dependency'}
    end
    if dep_state and not FINAL[dep_state] then
      redis.call('ZADD', waiting_key(acct), needed, id)
      redis.call('EXPIRE', waiting_key(acct), TTL)
      redis.call('ZADD', DELAYED, NOW + WATCHDOG_MS, id)
      redis.call('HSET', j, 'state', 'waiting', 'waiting_for', f[6])
      touch(id)
      leave(id, acct)
      return {'waiting', f[6]}
    end
    -- The upsert's record is gone (past the retention window): nothing left to wait for.
  end
end

local wait_ms, probe = '0', 0
if ARGV[12] ~= nil and ARGV[12] ~= '' then
  local permit = flow_acquire(ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15]), ARGV[16],
    tonumber(ARGV[17]))
  if permit[1] ~= 'ok' then
    local due = tonumber(permit[2]) + tonumber(ARGV[18])
    -- An open breaker or a shared pause is an outage: its length does not count against the job's age.
    if permit[1] ~= 'rate' then redis.call('HINCRBY', j, 'credit', math.max(due - NOW, 0)) end
    redis.call('HSET', j, 'state', 'delayed', 'next_due', due, 'defer_reason', permit[1])
    redis.call('ZADD', DELAYED, due, id)
    if kind == 'upsert' then release_lock(id, acct) end
    touch(id)
    leave(id, acct)
    return {'hold', permit[1], tostring(due)}
  end
  wait_ms, probe = permit[2], permit[3]
end

redis.call('SET', lease_key(id), token, 'PX', lease_ms)
-- A watchdog: if this worker dies in any way (SIGKILL, OOM, hard time limit), the mover brings the job back
-- once the lease has expired. Every normal ending of the attempt replaces or removes this entry.
redis.call('ZADD', DELAYED, NOW + lease_ms + 1000, id)
local attempts = redis.call('HINCRBY', j, 'attempts', 1)
redis.call('HSET', j, 'state', 'active', 'attempt_started', NOW)
touch(id)
return {'go', f[7], attempts, f[8], f[9] or '0', wait_ms, probe}
