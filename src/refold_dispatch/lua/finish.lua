-- Record a delivery. Always recorded, even when the lease was lost: the request did reach Refold.
-- ARGV[8] job id   [9] lease token   [10] HTTP status   [11] request id   [12] history entry JSON
-- ARGV[13..17] the success report to flow control, folded into this round trip ('' in [13] = skip): API key
--   fingerprint, was the breaker's probe (1/0), breaker threshold, cool-down ms, longest cool-down ms
-- ARGV[18..] Celery task events to publish (task-succeeded), as (channel, message) pairs
local id, token = ARGV[8], ARGV[9]
publish_events(18)
if ARGV[13] ~= nil and ARGV[13] ~= '' then
  flow_report(ARGV[13], 'ok', nil, ARGV[14] == '1', tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17]))
end
local j = job_key(id)
local f = redis.call('HMGET', j, 'kind', 'acct', 'seq', 'state')
if not f[1] then return 0 end
redis.call('HSET', j, 'state', 'delivered', 'delivered_at', NOW, 'status', ARGV[10], 'request_id', ARGV[11])
-- A delivered job is never published again: its message values are dead weight for 72 h.
redis.call('HDEL', j, 'b64', 'kw')
push_history(id, ARGV[12])
touch(id)
release_lease(id, token)
redis.call('ZREM', DELAYED, id)
leave(id, f[2])
if f[1] == 'upsert' then
  release_lock(id, f[2])
  local seq = tonumber(f[3]) or 0
  local ak = acct_key(f[2])
  if seq > (tonumber(redis.call('HGET', ak, 'delivered_seq')) or 0) then
    redis.call('HSET', ak, 'delivered_seq', seq)
    redis.call('EXPIRE', ak, TTL)
  end
  release_waiters(f[2], tonumber(redis.call('HGET', ak, 'delivered_seq')) or 0)
end
return 1
