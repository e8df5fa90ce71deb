-- The mover: publish delayed jobs that are due, and unstick backlogs whose account went quiet.
-- Safe to run from every worker at once: each due job is taken by exactly one call.
-- ARGV[8] max jobs per call   [9] [10] the message templates of trigger-event and upsert jobs (message.py),
-- stored where missing (a wiped key) so publishing can go on. Returns the number of jobs published or admitted.
local limit = tonumber(ARGV[8])
if ARGV[9] then
  redis.call('SET', template_key('event'), ARGV[9], 'NX')
  redis.call('SET', template_key('upsert'), ARGV[10], 'NX')
end
local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', NOW, 'LIMIT', 0, limit)
local moved = 0
for _, id in ipairs(due) do
  redis.call('ZREM', DELAYED, id)
  local f = redis.call('HMGET', job_key(id), 'state', 'acct')
  if f[1] and not FINAL[f[1]] then
    if f[1] == 'waiting' then redis.call('ZREM', waiting_key(f[2]), id) end
    if f[1] ~= 'backlog' then
      admit(id, true)
      moved = moved + 1
    end
  end
end
local quiet = redis.call('ZRANGEBYSCORE', BACKLOGS, '-inf', NOW - 30000, 'LIMIT', 0, 20)
for _, acct in ipairs(quiet) do refill(acct) end

-- Heal messages lost in transit. kombu's Redis transport pops a message (BRPOP) and records it as unacked in a
-- second step: a worker killed between the two loses the message. A job still 'queued' long after its latest
-- copy was published, whose copy is neither in a worker's hands (kombu's unacked hash, by delivery tag) nor
-- still in the queue, was lost that way, and is published again. "Still in the queue" is read off the next
-- message to be consumed (the list's tail): consumption is first in, first out, and kombu puts messages it
-- restores back at the tail, so once a copy published at time T has been popped, every copy published before
-- T has been popped too. The publish time comes from the tail's own delivery tag; anything unsure is left.
local suspects = redis.call('ZRANGEBYSCORE', QUEUED, '-inf', NOW - 60000, 'LIMIT', 0, 50)
if #suspects > 0 then
  local popped_before = math.huge
  local next_out = redis.call('LINDEX', QUEUE, -1)
  if next_out then
    local published = string.match(next_out, '"delivery_tag": "[^"]*%.(%d+)"}}$')
    popped_before = tonumber(published) or -1
  end
  for _, id in ipairs(suspects) do
    local f = redis.call('HMGET', job_key(id), 'state', 'tag')
    local published = tonumber(redis.call('ZSCORE', QUEUED, id))
    if f[1] ~= 'queued' or not f[2] then
      redis.call('ZREM', QUEUED, id)
    elseif published < popped_before and redis.call('HEXISTS', UNACKED, f[2]) == 0 then
      publish(id)
      moved = moved + 1
    end
  end
end
return moved
