"""Every Redis key refold-dispatch writes, in one place, under one prefix (``REFOLD_KEY_PREFIX``, default ``refold``).

The Lua scripts in ``lua/`` build the same names (see ``lua/lib.lua``); this module is the Python side and the
documentation. Every key has a TTL or a bound:

=====================================  =======  =============================================================
key                                    type     what, and what bounds it
=====================================  =======  =============================================================
``{p}:idem:{idempotency_key}``         string   the idempotency claim: job id. TTL = idempotency window (72 h)
``{p}:job:{job_id}``                   hash     the job record: data, state, attempts, delivery evidence,
                                                its values in the Celery message (b64, kw). TTL = idempotency
                                                window, refreshed on every change. Counters (attempts,
                                                credit) start absent, read as 0
``{p}:tpl:v2:{queue}:{kind}``          string   the Celery message template of a job kind (message.py's
                                                template_text), shared by every job; bounded: two per queue,
                                                no TTL (v1, a JSON form before 0.1.0, is unused)
``{p}:job:{job_id}:hist``              list     the last 10 attempts (JSON). Same TTL as the job
``{p}:lease:{job_id}``                 string   the worker delivering the job now. TTL = time limit + margin
``{p}:acct:{account}``                 hash     ``upsert_seq`` (last enqueued upsert), ``latest_upsert`` (its
                                                job id), ``delivered_seq`` (newest delivered). TTL = window
``{p}:acct:{account}:lock``            string   the upsert of this account in flight. TTL = lease
``{p}:acct:{account}:waiting``         zset     events parked until an upsert is delivered (score: the
                                                upsert sequence they need). TTL = window
``{p}:acct:{account}:active``          zset     this account's jobs in the Celery queue (fair share); members
                                                older than 10 min are pruned. TTL = window
``{p}:acct:{account}:backlog``         list     this account's jobs held back by the fair share. TTL = window
``{p}:backlogs``                       zset     accounts with a backlog, for the mover's stale-backlog sweep;
                                                bounded by the number of accounts with a backlog
``{p}:queued``                         zset     job id -> publish time (ms) of jobs published and not yet
                                                begun, to heal a message kombu lost between its BRPOP and its
                                                unacked record; bounded by the jobs in the queue
``{p}:delayed``                        zset     job id -> due time (ms): retries, deferrals, watchdogs;
                                                bounded by the number of live jobs
``{p}:dlq``                            zset     dead-letter id -> dead time (ms); bounded by retention and
                                                ``REFOLD_DLQ_MAX_ENTRIES``
``{p}:dlq:entries``                    hash     dead-letter id -> entry JSON; same bound
``{p}:rl:{key_fingerprint}``           hash     global rate limiter, shared pause and circuit breaker per API
                                                key (fingerprint, never the key). TTL = 1 h, refreshed on use
``{p}:rl:{key_fingerprint}:probe``     string   the half-open breaker's single probe. TTL = lease
``{p}:worker:{hostname}``              hash     worker heartbeat and consumption proof. TTL = 3 heartbeats
=====================================  =======  =============================================================

The Celery queue itself is a plain Redis list named ``REFOLD_QUEUE`` (kombu's layout), outside the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

# How many attempts a job record remembers; enough to see a pattern, small enough to keep dead letters lean.
HISTORY_LENGTH = 10


@dataclass(frozen=True)
class Keys:
    """Key names for one prefix."""

    prefix: str

    def idempotency(self, idempotency_key: str) -> str:
        return f"{self.prefix}:idem:{idempotency_key}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def history(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:hist"

    def lease(self, job_id: str) -> str:
        return f"{self.prefix}:lease:{job_id}"

    def account(self, account_id: str) -> str:
        return f"{self.prefix}:acct:{account_id}"

    def account_backlog(self, account_id: str) -> str:
        return f"{self.prefix}:acct:{account_id}:backlog"

    def account_waiting(self, account_id: str) -> str:
        return f"{self.prefix}:acct:{account_id}:waiting"

    @property
    def backlogs(self) -> str:
        return f"{self.prefix}:backlogs"

    @property
    def delayed(self) -> str:
        return f"{self.prefix}:delayed"

    @property
    def dlq_index(self) -> str:
        return f"{self.prefix}:dlq"

    @property
    def dlq_entries(self) -> str:
        return f"{self.prefix}:dlq:entries"

    def flow(self, key_fingerprint: str) -> str:
        return f"{self.prefix}:rl:{key_fingerprint}"

    def worker(self, hostname: str) -> str:
        return f"{self.prefix}:worker:{hostname}"

    @property
    def worker_pattern(self) -> str:
        return f"{self.prefix}:worker:*"
