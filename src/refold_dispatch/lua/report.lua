-- Tell the shared flow state how a request to Refold went.
-- ARGV[8] API key fingerprint   [9] outcome: 'ok' | 'transient' | 'rate_limited' | 'unavailable'
-- ARGV[10] Retry-After ms ('' = none)   [11] this request was the breaker's probe (1/0)
-- ARGV[12] breaker threshold (transient failures in a row)   [13] cool-down ms   [14] longest cool-down ms
-- Returns the breaker state after the report: 'closed', 'half_open' or 'open'.
--
-- 429 (and 503): every worker pauses until Retry-After, or an adaptive 1, 2, 4 ... 30 s without it, and the
-- rate drops to 70 % (never below 20 %); each success wins back 2 % of the rate. Transient failures in a row
-- open the breaker for a cool-down that doubles with each reopening; a failed probe reopens it.
local k = P .. ':rl:' .. ARGV[8]
local outcome, was_probe = ARGV[9], ARGV[11] == '1'
local retry_after = tonumber(ARGV[10])
local threshold, cooldown, max_cooldown = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
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
