-- Ask permission to send one request to Refold (see flow_acquire in lib.lua).
-- ARGV[8] API key fingerprint   [9] rate per second   [10] burst   [11] longest wait ms a worker may sleep
-- ARGV[12] probe token   [13] probe TTL ms
return flow_acquire(ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12], tonumber(ARGV[13]))
