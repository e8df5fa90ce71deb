-- Move a job to the dead-letter queue (and events waiting on it, for an upsert).
-- ARGV[8] job id   [9] lease token   [10] reason   [11] last error JSON   [12] detail   [13] history entry
-- ARGV[14..] Celery task events to publish (task-failed), as (channel, message) pairs
local id, token = ARGV[8], ARGV[9]
publish_events(14)
push_history(id, ARGV[13])
release_lease(id, token)
if dead_letter(id, ARGV[10], ARGV[11], ARGV[12]) then return 1 end
return 0
