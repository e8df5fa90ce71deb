-- Ask permission to send one request to Refold: circuit breaker, shared pause, then the global rate limit.
-- ARGV[8] API key fingerprint   [9] rate per second   [10] burst   [11] longest wait ms a worker may sleep
-- ARGV[12] probe token   [13] probe TTL ms
-- Returns {'ok', wait_ms, probe}: send after sleeping wait_ms (a slot is reserved; probe=1 for a half-open
-- breaker's single probe); or {'breaker'|'paused'|'rate', until_ms}: defer the job until then.
--
-- The rate limit is a GCRA (generic cell rate algorithm) over the Redis clock shared by every worker: each
-- request reserves the next slot T = 1/rate apart, and may run ahead by a tolerance of (burst - 2) slots.
-- One slot less than Refold's own burst allows keeps network jitter from turning a legal burst into a 429.
local k = P .. ':rl:' .. ARGV[8]
local probe_key = k .. ':probe'
local rate, burst, max_wait = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local f = redis.call('HMGET', k, 'tat', 'factor', 'pause_until', 'state', 'open_until')
local state = f[4] or 'closed'
local probe = 0
if state == 'open' and NOW < (tonumber(f[5]) or 0) then
  return {'breaker', tostring(f[5])}
end
if state == 'open' or state == 'half_open' then
  -- Cool-down over: one probe at a time finds out whether Refold is back.
  if not redis.call('SET', probe_key, ARGV[12], 'NX', 'PX', tonumber(ARGV[13])) then
    return {'breaker', tostring(NOW + 1000)}
  end
  redis.call('HSET', k, 'state', 'half_open')
  probe = 1
end
local function give_up(kind, until_ms)
  if probe == 1 then redis.call('DEL', probe_key) end
  return {kind, tostring(math.floor(until_ms))}
end
local start = NOW
local pause_until = tonumber(f[3]) or 0
if pause_until > NOW then
  if pause_until - NOW > max_wait then return give_up('paused', pause_until) end
  start = pause_until
end
local factor = tonumber(f[2]) or 1
local interval = 1000 / (rate * factor)
local tolerance = math.max(burst - 2, 0) * interval
local tat = math.max(tonumber(f[1]) or 0, start)
local wait = math.max(tat - tolerance, start) - NOW
if wait > max_wait then return give_up('rate', NOW + wait) end
redis.call('HSET', k, 'tat', tostring(tat + interval))
redis.call('PEXPIRE', k, 3600000)
return {'ok', tostring(math.max(wait, 0)), probe}
