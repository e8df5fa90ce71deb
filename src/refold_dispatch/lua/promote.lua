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

-- Heal messages lost in transit. kombu's Redis transport pops a message (BRPOP) and records it as unacked in a
-- second step: a worker killed between the two loses the message. A job still 'queued' long after it was
-- published, whose message is neither in a worker's hands (kombu's unacked hash, by delivery tag) nor still
-- waiting in the queue (the queue is FIFO: everything published before the oldest message in it has been
-- popped), was lost that way, and is published again. Anything unsure is left alone.
local suspects = redis.call('ZRANGEBYSCORE', QUEUED, '-inf', NOW - 60000, 'LIMIT', 0, 50)
if #suspects > 0 then
  local oldest_in_queue = math.huge
  local tail = redis.call('LINDEX', QUEUE, -1)
  if tail then
    local tail_id = string.match(tail, '"task": "[^"]*", "id": "([^"]+)"')
    local tail_published = tail_id and redis.call('ZSCORE', QUEUED, tail_id)
    oldest_in_queue = tonumber(tail_published) or -1
  end
  for _, id in ipairs(suspects) do
    local f = redis.call('HMGET', job_key(id), 'state', 'pubs')
    local published = tonumber(redis.call('ZSCORE', QUEUED, id))
    if f[1] ~= 'queued' then
      redis.call('ZREM', QUEUED, id)
    elseif published < oldest_in_queue and redis.call('HEXISTS', UNACKED, id .. '.' .. (f[2] or '0')) == 0 then
      publish(id)
      moved = moved + 1
    end
  end
end
return moved
