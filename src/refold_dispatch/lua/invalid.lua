-- Store a dead letter for a message that is not a job we know (garbage on the queue).
-- ARGV[8] dead-letter id   [9] entry JSON (built by the worker, raw body truncated)
store_dead_letter(ARGV[8], ARGV[9])
return 1
