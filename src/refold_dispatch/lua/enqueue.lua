-- Claim an idempotency key and store + publish a job, atomically (one round trip on the web request path).
-- ARGV[8] job id   [9] idempotency key   [10] fingerprint   [11] kind ('event'|'upsert')   [12] account
-- ARGV[13] job JSON   [14] Celery message head   [15] Celery message tail
-- ARGV[16] channel for Celery's task-sent event ('' = none)   [17] the event
-- Returns {0, job_id} new, {1, first_job_id} duplicate (same key, same job), {2, first_job_id} conflict.
local id, key, fp, kind, acct = ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local ik = idem_key(key)
local existing = redis.call('GET', ik)
if existing then
  local existing_fp = redis.call('HGET', job_key(existing), 'fp')
  if not existing_fp or existing_fp == fp then return {1, existing} end
  return {2, existing}
end
redis.call('SET', ik, id, 'EX', TTL)
local j = job_key(id)
redis.call('HSET', j, 'data', ARGV[13], 'fp', fp, 'kind', kind, 'acct', acct, 'key', key,
  'msg_head', ARGV[14], 'msg_tail', ARGV[15], 'created', NOW, 'attempts', 0, 'credit', 0, 'state', 'new')
local ak = acct_key(acct)
if kind == 'upsert' then
  local seq = redis.call('HINCRBY', ak, 'upsert_seq', 1)
  redis.call('HSET', ak, 'latest_upsert', id)
  redis.call('HSET', j, 'seq', seq)
else
  -- An event must not overtake the newest upsert of its account enqueued before it.
  local f = redis.call('HMGET', ak, 'upsert_seq', 'latest_upsert')
  if f[1] then redis.call('HSET', j, 'after', f[1], 'after_job', f[2]) end
end
redis.call('EXPIRE', ak, TTL)
redis.call('EXPIRE', j, TTL)
admit(id)
if ARGV[16] ~= '' then redis.call('PUBLISH', ARGV[16], ARGV[17]) end
return {0, id}
