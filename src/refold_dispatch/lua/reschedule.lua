-- Put a job in the delayed set for a later attempt.
-- ARGV[8] job id   [9] lease token   [10] due ms   [11] refund the attempt (1/0)   [12] age credit ms
-- ARGV[13] reason   [14] last error JSON ('' = keep)   [15] history entry JSON ('' = none)
-- ARGV[16..] Celery task events to publish (task-retried), as (channel, message) pairs
local id, token, due = ARGV[8], ARGV[9], tonumber(ARGV[10])
publish_events(16)
local j = job_key(id)
local f = redis.call('HMGET', j, 'kind', 'acct', 'state', 'attempts')
if not f[1] or FINAL[f[3]] then return 0 end
if ARGV[11] == '1' and (tonumber(f[4]) or 0) > 0 then redis.call('HINCRBY', j, 'attempts', -1) end
local credit = tonumber(ARGV[12]) or 0
if credit > 0 then redis.call('HINCRBY', j, 'credit', credit) end
redis.call('HSET', j, 'state', 'delayed', 'next_due', due, 'defer_reason', ARGV[13])
if ARGV[14] ~= '' then redis.call('HSET', j, 'last_error', ARGV[14]) end
push_history(id, ARGV[15])
touch(id)
redis.call('ZADD', DELAYED, due, id)
release_lease(id, token)
if f[1] == 'upsert' then release_lock(id, f[2]) end
leave(id, f[2])
return 1
