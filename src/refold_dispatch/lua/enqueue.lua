-- Claim an idempotency key and store + publish a job, atomically (one round trip on the web request path).
-- ARGV[8] job id   [9] idempotency key   [10] fingerprint   [11] kind ('event'|'upsert')   [12] account
-- ARGV[13] job JSON   [14] Celery message head   [15] Celery message tail
-- ARGV[16] channel for Celery's task-sent event ('' = none)   [17] the event
-- Returns {0, job_id} new, {1, first_job_id} duplicate (same key, same job), {2, first_job_id} conflict.
--
-- This is the web request's cost, so it is lib.lua's admit()/publish() inlined with as few Redis calls as
-- possible (each costs a few microseconds inside a script): the job record is written once, in its final state.
local id, key, fp, kind, acct = ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local head, tail = ARGV[14], ARGV[15]
local ik = idem_key(key)
local existing = redis.call('GET', ik)
if existing then
  local existing_fp = redis.call('HGET', job_key(existing), 'fp')
  if not existing_fp or existing_fp == fp then return {1, existing} end
  return {2, existing}
end
redis.call('SET', ik, id, 'EX', TTL)

local ak = acct_key(acct)
local order = {}
if kind == 'upsert' then
  local seq = redis.call('HINCRBY', ak, 'upsert_seq', 1)
  redis.call('HSET', ak, 'latest_upsert', id)
  redis.call('EXPIRE', ak, TTL)
  order = {'seq', seq}
else
  -- An event must not overtake the newest upsert of its account enqueued before it.
  local f = redis.call('HMGET', ak, 'upsert_seq', 'latest_upsert')
  if f[1] then order = {'after', f[1], 'after_job', f[2]} end
end

-- The fairness gate: straight onto the queue while the account is under its share and has no backlog.
local active = active_key(acct)
local count = redis.call('ZCARD', active)
if count >= SHARE then
  redis.call('ZREMRANGEBYSCORE', active, '-inf', NOW - STALE_ACTIVE_MS)
  count = redis.call('ZCARD', active)
end
local direct = count < SHARE and redis.call('EXISTS', backlog_key(acct)) == 0

local j = job_key(id)
redis.call('HSET', j, 'data', ARGV[13], 'fp', fp, 'kind', kind, 'acct', acct, 'key', key, 'msg_head', head,
  'msg_tail', tail, 'created', NOW, 'attempts', 0, 'credit', 0, 'state', direct and 'queued' or 'backlog',
  'pubs', direct and 1 or 0, 'queued_at', NOW, 'tag', delivery_tag(id, 1), unpack(order))
redis.call('EXPIRE', j, TTL)
if direct then
  redis.call('LPUSH', QUEUE, head .. delivery_tag(id, 1) .. tail)
  redis.call('ZADD', active, NOW, id)
  redis.call('EXPIRE', active, TTL)
  redis.call('ZADD', QUEUED, NOW, id)
else
  redis.call('RPUSH', backlog_key(acct), id)
  redis.call('EXPIRE', backlog_key(acct), TTL)
  redis.call('ZADD', BACKLOGS, NOW, acct)
  refill(acct)
end
if ARGV[16] ~= '' then redis.call('PUBLISH', ARGV[16], ARGV[17]) end
return {0, id}
