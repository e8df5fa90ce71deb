-- Shared definitions, prepended to every refold-dispatch script (see scripts.py).
--
-- Every script takes the same seven leading arguments, then its own from ARGV[8] on:
--   ARGV[1] key prefix            ARGV[2] now in ms ('' = the Redis server's clock, shared by all workers)
--   ARGV[3] job/idempotency TTL s ARGV[4] Celery queue (a kombu list)   ARGV[5] per-account queue share
--   ARGV[6] dead-letter retention ms                                   ARGV[7] dead-letter max entries
-- Key names are documented in keys.py. Scripts touch keys derived from ids in their arguments, so they
-- need a single Redis (not Cluster); that is what Celery's Redis broker needs too.
local P = ARGV[1]
local NOW
if ARGV[2] ~= nil and ARGV[2] ~= '' then
  NOW = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local TTL = tonumber(ARGV[3])
local QUEUE = ARGV[4]
local SHARE = tonumber(ARGV[5])
local DLQ_RETENTION_MS = tonumber(ARGV[6])
local DLQ_MAX = tonumber(ARGV[7])
-- A job that has sat in the Celery queue this long no longer counts against its account's share: it only
-- weakens fairness, never loses work, and it heals the count if a message ever went missing.
local STALE_ACTIVE_MS = 600000
local HISTORY_LENGTH = 10
-- A parked event re-checks its dependency at least this often, so nothing can wait forever.
local WATCHDOG_MS = 300000

local DELAYED = P .. ':delayed'
-- Jobs published to the Celery queue and not yet picked up by a worker's begin script (see heal_lost()).
local QUEUED = P .. ':queued'
-- kombu's record of messages a worker holds but has not acked yet (its default key name).
local UNACKED = 'unacked'
local BACKLOGS = P .. ':backlogs'
local DLQ_INDEX = P .. ':dlq'
local DLQ_ENTRIES = P .. ':dlq:entries'

local function job_key(id) return P .. ':job:' .. id end
local function hist_key(id) return P .. ':job:' .. id .. ':hist' end
local function lease_key(id) return P .. ':lease:' .. id end
local function idem_key(k) return P .. ':idem:' .. k end
local function acct_key(a) return P .. ':acct:' .. a end
local function lock_key(a) return P .. ':acct:' .. a .. ':lock' end
local function waiting_key(a) return P .. ':acct:' .. a .. ':waiting' end
local function active_key(a) return P .. ':acct:' .. a .. ':active' end
local function backlog_key(a) return P .. ':acct:' .. a .. ':backlog' end

local FINAL = { delivered = true, superseded = true, dead = true }

-- Celery task events for Flower (see events.py): (channel, message) pairs in ARGV from `first` on. Each script
-- that records a step publishes that step's events, so they cost no round trip of their own.
local function publish_events(first)
  for i = first, #ARGV - 1, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
end

local function touch(id)
  redis.call('EXPIRE', job_key(id), TTL)
  redis.call('EXPIRE', hist_key(id), TTL)
end

local function push_history(id, entry)
  if entry ~= nil and entry ~= '' then
    redis.call('RPUSH', hist_key(id), entry)
    redis.call('LTRIM', hist_key(id), -HISTORY_LENGTH, -1)
  end
end

-- kombu tracks unacked messages by delivery tag, so each copy of a job's message gets its own: the job id,
-- the publish count and the publish time (which heal_lost in promote.lua reads back from the queue).
local function delivery_tag(id, n)
  return id .. '.' .. n .. '.' .. NOW
end

-- Templates (message.py's template_text): the slot letters, then the pieces of text around the slots, all
-- NUL-separated. Slot letters name the values: b (message body), i (job id), k (description), t (delivery tag),
-- s (event timestamp). A template is compiled once per script call into the array fill() writes values into and
-- concatenates: the pieces sit at the odd positions already, so filling one allocates nothing but the result.
local SLOT_INDEX = {b = 1, i = 2, k = 3, t = 4, s = 5}
local function compile_template(text)
  local stop = string.find(text, '\0', 1, true)
  local slots = string.sub(text, 1, stop - 1)
  local index, out = {}, {}
  for n = 1, #slots + 1 do
    local start = stop + 1
    stop = string.find(text, '\0', start, true) or (#text + 1)
    out[2 * n - 1] = string.sub(text, start, stop - 1)
    if n <= #slots then
      index[n] = SLOT_INDEX[string.sub(slots, n, n)]
      out[2 * n] = ''
    end
  end
  return {index = index, out = out, last = 2 * #slots + 1}
end

-- pieces[1] .. values[slot 1] .. pieces[2] .. ... (message.py's fill is the reference).
local function fill(template, values)
  local index, out = template.index, template.out
  for k = 1, #index do out[2 * k] = values[index[k]] end
  return table.concat(out, '', 1, template.last)
end

-- The message templates of this queue, one per job kind, shared by every job (see message.py): read and
-- compiled once per script call.
local function template_key(kind) return P .. ':tpl:v2:' .. QUEUE .. ':' .. kind end
local TEMPLATES = {}
local function template(kind)
  local found = TEMPLATES[kind]
  if found == nil then
    local text = redis.call('GET', template_key(kind))
    found = false
    if text then found = compile_template(text) end
    TEMPLATES[kind] = found
  end
  return found
end

-- Put the job's Celery message on the queue: its template filled with the job's own values and a new delivery
-- tag (kombu tracks unacked messages by tag); every publish of a job keeps the job's task id.
local function publish(id)
  local j = job_key(id)
  local f = redis.call('HMGET', j, 'b64', 'kw', 'acct', 'kind')
  if not f[1] then return false end
  local tpl = template(f[4])
  if not tpl then
    -- The shared template is gone (a wiped key). Every enqueue and mover call writes it again: look again soon.
    redis.call('HSET', j, 'state', 'delayed', 'next_due', NOW + 5000, 'defer_reason', 'template')
    redis.call('ZADD', DELAYED, NOW + 5000, id)
    return false
  end
  local n = redis.call('HINCRBY', j, 'pubs', 1)
  local tag = delivery_tag(id, n)
  redis.call('LPUSH', QUEUE, fill(tpl, {f[1], id, f[2], tag}))
  redis.call('ZADD', active_key(f[3]), NOW, id)
  redis.call('EXPIRE', active_key(f[3]), TTL)
  redis.call('HSET', j, 'state', 'queued', 'tag', tag)
  redis.call('ZADD', QUEUED, NOW, id)
  return true
end

-- Move jobs from the account's backlog into the queue while the account is under its share.
local function refill(acct)
  local ak = active_key(acct)
  local bk = backlog_key(acct)
  redis.call('ZREMRANGEBYSCORE', ak, '-inf', NOW - STALE_ACTIVE_MS)
  while redis.call('ZCARD', ak) < SHARE do
    local next_id = redis.call('LPOP', bk)
    if not next_id then break end
    local st = redis.call('HGET', job_key(next_id), 'state')
    if st == 'backlog' then publish(next_id) end
  end
  if redis.call('LLEN', bk) == 0 then
    redis.call('ZREM', BACKLOGS, acct)
  else
    redis.call('ZADD', BACKLOGS, NOW, acct)
  end
end

-- The fairness gate: publish now, or hold the job in its account's backlog while the account has its share
-- of the queue already.
-- A job coming back (a retry, a watchdog) goes to the front of the backlog: it has queued once already.
local function admit(id, returning)
  local acct = redis.call('HGET', job_key(id), 'acct')
  if not acct then return false end
  local ak = active_key(acct)
  redis.call('ZREMRANGEBYSCORE', ak, '-inf', NOW - STALE_ACTIVE_MS)
  if redis.call('ZCARD', ak) < SHARE and redis.call('LLEN', backlog_key(acct)) == 0 then
    return publish(id)
  end
  if returning then
    redis.call('LPUSH', backlog_key(acct), id)
  else
    redis.call('RPUSH', backlog_key(acct), id)
  end
  redis.call('EXPIRE', backlog_key(acct), TTL)
  redis.call('ZADD', BACKLOGS, NOW, acct)
  redis.call('HSET', job_key(id), 'state', 'backlog')
  refill(acct)
  return true
end
