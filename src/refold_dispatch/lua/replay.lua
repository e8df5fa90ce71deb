-- Replay a dead letter: the same job id and idempotency key, attempts and age reset.
-- ARGV[8] job id   [9] idempotency key   [10] fingerprint   [11] kind   [12] account   [13] job JSON
-- ARGV[14] message body (base64)   [15] description   [16] seq   [17] after   [18] after_job
-- ARGV[19] the job kind's message template (message.py), stored if the queue has none
-- Returns 'replayed', 'delivered' (never sent twice), 'active' (already live again), 'conflict'.
local id, key = ARGV[8], ARGV[9]
local j = job_key(id)
local state = redis.call('HGET', j, 'state')
if state == 'delivered' then return 'delivered' end
if state and state ~= 'dead' then return 'active' end
local claimed = redis.call('GET', idem_key(key))
if claimed and claimed ~= id then
  local other = redis.call('HGET', job_key(claimed), 'state')
  if other == 'delivered' then return 'delivered' end
  if other then return 'conflict' end
end
redis.call('SET', idem_key(key), id, 'EX', TTL)
redis.call('DEL', j, hist_key(id))
redis.call('HSET', j, 'data', ARGV[13], 'fp', ARGV[10], 'kind', ARGV[11], 'acct', ARGV[12], 'key', key,
  'b64', ARGV[14], 'kw', ARGV[15], 'created', NOW, 'attempts', 0, 'credit', 0, 'state', 'new',
  'replayed_at', NOW)
if ARGV[16] ~= '' then redis.call('HSET', j, 'seq', ARGV[16]) end
if ARGV[17] ~= '' then redis.call('HSET', j, 'after', ARGV[17], 'after_job', ARGV[18]) end
redis.call('EXPIRE', j, TTL)
redis.call('SET', template_key(ARGV[11]), ARGV[19], 'NX')
redis.call('HDEL', DLQ_ENTRIES, id)
redis.call('ZREM', DLQ_INDEX, id)
admit(id)
return 'replayed'
