-- Tell the shared flow state how a request to Refold went (see flow_report in lib.lua).
-- ARGV[8] API key fingerprint   [9] outcome: 'ok' | 'transient' | 'rate_limited' | 'unavailable'
-- ARGV[10] Retry-After ms ('' = none)   [11] this request was the breaker's probe (1/0)
-- ARGV[12] breaker threshold (transient failures in a row)   [13] cool-down ms   [14] longest cool-down ms
return flow_report(ARGV[8], ARGV[9], tonumber(ARGV[10]), ARGV[11] == '1', tonumber(ARGV[12]), tonumber(ARGV[13]),
  tonumber(ARGV[14]))
