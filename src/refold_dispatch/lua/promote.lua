-- The mover: publish delayed jobs that are due, and unstick backlogs whose account went quiet.
-- Safe to run from every worker at once: each due job is taken by exactly one call.
-- ARGV[8] max jobs per call. Returns the number of jobs published or admitted.
local limit = tonumber(ARGV[8])
local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', NOW, 'LIMIT', 0, limit)
local moved = 0
for _, id in ipairs(due) do
  redis.call('ZREM', DELAYED, id)
  local f = redis.call('HMGET', job_key(id), 'state', 'acct')
  if f[1] and not FINAL[f[1]] then
    if f[1] == 'waiting' then redis.call('ZREM', waiting_key(f[2]), id) end
    if f[1] ~= 'backlog' then
      admit(id)
      moved = moved + 1
    end
  end
end
local quiet = redis.call('ZRANGEBYSCORE', BACKLOGS, '-inf', NOW - 30000, 'LIMIT', 0, 20)
for _, acct in ipairs(quiet) do refill(acct) end
return moved
