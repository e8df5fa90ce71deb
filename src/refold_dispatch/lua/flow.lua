-- Flow-control functions, prepended (after lib.lua) to the scripts that use them (see scripts.py).
-- Flow control (the rate limit, the shared pause and the breaker), shared by acquire.lua, report.lua and the
-- begin/finish scripts that fold the first permit and the success report into their own round trip.
--
-- flow_acquire: may one request go to Refold now? Returns {'ok', wait_ms, probe}: send after sleeping
-- wait_ms (a slot is reserved; probe=1 for a half-open breaker's single probe); or
-- {'breaker'|'paused'|'rate', until_ms}: not before then.
-- The rate limit is a GCRA (generic cell rate algorithm) over the Redis clock shared by every worker: each
-- request reserves the next slot T = 1/rate apart, and may run ahead by a tolerance of (burst - 2) slots.
-- One slot less than Refold's own burst allows keeps network jitter from turning a legal burst into a 429.
local function flow_acquire(fp, rate, burst, max_wait, probe_token, probe_ttl)
  local k = P .. ':rl:' .. fp
  local probe_key = k .. ':probe'
  local f = redis.call('HMGET', k, 'tat', 'factor', 'pause_until', 'state', 'open_until')
  local state = f[4] or 'closed'
  local probe = 0
  if state == 'open' and NOW < (tonumber(f[5]) or 0) then
    return {'breaker', tostring(f[5])}
  end
  if state == 'open' or state == 'half_open' then
    -- Cool-down over: one probe at a time finds out whether Refold is back.
    if not redis.call('SET', probe_key, probe_token, 'NX', 'PX', probe_ttl) then
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
end

-- flow_report: how a request to Refold went ('ok' | 'transient' | 'rate_limited' | 'unavailable'); returns
-- the breaker state after it. 429 (and 503): every worker pauses until Retry-After, or an adaptive 1, 2, 4 ...
-- 30 s without it, and the rate drops to 70 % (never below 20 %); each success wins back 2 % of the rate.
-- Transient failures in a row open the breaker for a cool-down that doubles with each reopening; a failed
-- probe reopens it.
local function flow_report(fp, outcome, retry_after, was_probe, threshold, cooldown, max_cooldown)
  local k = P .. ':rl:' .. fp
  local f = redis.call('HMGET', k, 'factor', 'c429', 'fails', 'state', 'opens', 'pause_until')
  local factor = tonumber(f[1]) or 1
  local state = f[4] or 'closed'

  local function pause(ms)
    local current = tonumber(f[6]) or 0
    if NOW + ms > current then redis.call('HSET', k, 'pause_until', tostring(NOW + ms)) end
  end
  local function open_breaker()
    local opens = (tonumber(f[5]) or 0) + 1
    local length = math.min(cooldown * 2 ^ (opens - 1), max_cooldown)
    redis.call('HSET', k, 'state', 'open', 'open_until', tostring(math.floor(NOW + length)), 'opens', opens,
      'fails', 0, 'opened_at', NOW)
    redis.call('DEL', k .. ':probe')
    state = 'open'
  end

  if outcome == 'ok' then
    redis.call('HSET', k, 'fails', 0, 'c429', 0, 'factor', tostring(math.min(1, factor + 0.02)), 'last_ok', NOW)
    if was_probe or state == 'half_open' then
      redis.call('HSET', k, 'state', 'closed', 'opens', 0)
      redis.call('DEL', k .. ':probe')
      state = 'closed'
    end
  elseif outcome == 'rate_limited' then
    local c429 = redis.call('HINCRBY', k, 'c429', 1)
    pause(retry_after or math.min(1000 * 2 ^ (c429 - 1), 30000))
    redis.call('HSET', k, 'factor', tostring(math.max(0.2, factor * 0.7)))
    if was_probe then redis.call('DEL', k .. ':probe') end
  else
    if outcome == 'unavailable' and retry_after then pause(retry_after) end
    local fails = redis.call('HINCRBY', k, 'fails', 1)
    if was_probe or state == 'half_open' or fails >= threshold then open_breaker() end
  end
  redis.call('PEXPIRE', k, 3600000)
  return state
end
