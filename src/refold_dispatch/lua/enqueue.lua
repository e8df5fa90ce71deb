-- Claim idempotency keys and store + publish jobs, each atomically: one job per web request, or a batch
-- from enqueue_many (one script call for many jobs, so a backfill pays the script's start-up once).
-- ARGV[8] the channel for Celery's task-sent events ('' = send none)   [9] [10] the kombu envelope around them
-- (head and tail of the message; the events go between them, comma-separated)
-- ARGV[11] [12] the message templates of trigger-event and upsert jobs (message.py), '' = none in this call
-- ARGV[13] [14] their task-sent event templates, escaped for the envelope's JSON string ('' = none)
-- From ARGV[15] on, eight arguments per job:
--   +0 job id   +1 idempotency key   +2 fingerprint   +3 kind ('event'|'upsert')   +4 account   +5 job JSON
--   +6 message body (base64)   +7 description (a JSON string literal: Flower's kwargsrepr)
-- Returns a flat list, two values per job in argument order: {0, job_id} new, {1, first_job_id} duplicate
-- (same key, same job), {2, first_job_id} conflict (same key, another job). Jobs of one batch are claimed in
-- order, so a key repeated within the batch answers like a key enqueued before it.
--
-- This is the web request's cost, so it is lib.lua's admit()/publish() inlined with as few Redis calls as
-- possible (each costs a few microseconds inside a script): the job record is written once, in its final state,
-- and the messages, the queued index and Flower's events of all stored jobs go out in one call each, at the end.
local EVENTS_TO = ARGV[8]
local ARGS_PER_JOB = 8
local messages, queued, events = {}, {}, {}

-- This call's templates. A message template is also stored for later publishes (retries, backlogs), shared by
-- all jobs; it is written only when it differs (a new version of the library), so an enqueue adds no write.
local templates, event_templates = {}, {}
for n, kind in ipairs({'event', 'upsert'}) do
  local text = ARGV[10 + n]
  if text ~= '' then
    templates[kind] = compile_template(text)
    if redis.call('GET', template_key(kind)) ~= text then redis.call('SET', template_key(kind), text) end
  end
  if ARGV[12 + n] ~= '' then event_templates[kind] = compile_template(ARGV[12 + n]) end
end
-- Every event of this call carries the same timestamp: the script's clock does not move while it runs.
local stamp = string.format('%.3f', NOW / 1000)

-- Every idempotency key of this call, read with one command; a key claimed earlier in this same call (a batch
-- may repeat one) is found in `claimed` instead.
local idem_keys = {}
for b = 15, #ARGV, ARGS_PER_JOB do idem_keys[#idem_keys + 1] = idem_key(ARGV[b + 1]) end
local stored_ids = #idem_keys > 0 and redis.call('MGET', unpack(idem_keys)) or {}
local claimed = {}

local function enqueue_one(b, n)
  local id, fp, kind, acct = ARGV[b], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local key, body, described = ARGV[b + 1], ARGV[b + 6], ARGV[b + 7]
  local ik = idem_keys[n]
  local existing = claimed[ik] or stored_ids[n]
  if existing then
    local existing_fp = redis.call('HGET', job_key(existing), 'fp')
    if not existing_fp or existing_fp == fp then return 1, existing end
    return 2, existing
  end
  redis.call('SET', ik, id, 'EX', TTL)
  claimed[ik] = id

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
  local tag = delivery_tag(id, 1)
  redis.call('HSET', j, 'data', ARGV[b + 5], 'fp', fp, 'kind', kind, 'acct', acct, 'key', key, 'b64', body,
    'kw', described, 'created', NOW, 'state', direct and 'queued' or 'backlog', 'pubs', direct and 1 or 0,
    'tag', tag, unpack(order))
  redis.call('EXPIRE', j, TTL)
  local tpl = templates[kind]
  if direct then
    messages[#messages + 1] = fill(tpl, {body, id, described, tag})
    redis.call('ZADD', active, NOW, id)
    redis.call('EXPIRE', active, TTL)
    queued[#queued + 1] = NOW
    queued[#queued + 1] = id
  else
    redis.call('RPUSH', backlog_key(acct), id)
    redis.call('EXPIRE', backlog_key(acct), TTL)
    redis.call('ZADD', BACKLOGS, NOW, acct)
    refill(acct)
  end
  if EVENTS_TO ~= '' then
    -- The description inside the events' JSON string: it is a JSON string literal itself, ASCII, its control
    -- characters escaped already, so only quotes and backslashes need escaping again.
    local escaped = string.gsub(described, '[\\"]', '\\%0')
    events[#events + 1] = fill(event_templates[kind], {nil, id, escaped, nil, stamp})
  end
  return 0, id
end

local results, n = {}, 0
for b = 15, #ARGV, ARGS_PER_JOB do
  n = n + 1
  local status, id = enqueue_one(b, n)
  results[#results + 1] = status
  results[#results + 1] = id
end
-- LPUSH of several messages pushes them in argument order, as one LPUSH each would.
if #messages > 0 then redis.call('LPUSH', QUEUE, unpack(messages)) end
if #queued > 0 then redis.call('ZADD', QUEUED, unpack(queued)) end
if EVENTS_TO ~= '' and #events > 0 then
  redis.call('PUBLISH', EVENTS_TO, ARGV[9] .. table.concat(events, ',') .. ARGV[10])
end
return results
