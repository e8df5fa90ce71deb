"""What the sandbox received: one record per ``/api`` request, and the statistics tests assert on.

Recording is an O(1) append to a bounded deque (the oldest records fall off), so it costs the hot path almost
nothing; statistics are computed when asked. Records never hold the API key, only whether it was valid.

``seq`` is the order in which responses were decided, which for accepted writes is the order they were
applied; ``time`` is when the request was received (epoch seconds).
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

# delivered: an event trigger or account write accepted with 2xx; ok: any other 2xx (reads, tokens);
# rejected: refused on its merits (4xx, or 5xx the request itself caused); fault: an injected fault answered;
# rate_limited: the GCRA limiter said no.
Outcome = Literal["delivered", "ok", "rejected", "fault", "rate_limited"]
OUTCOMES: tuple[Outcome, ...] = ("delivered", "ok", "rejected", "fault", "rate_limited")


@dataclass(slots=True)
class RequestRecord:
    """One ``/api`` request as the sandbox saw and answered it."""

    seq: int
    time: float
    method: str
    path: str
    status: int
    outcome: Outcome
    request_id: str
    key_valid: bool
    linked_account_id: str | None = None
    idempotency_key: str | None = None
    event: str | None = None
    fault: str | None = None
    account_id: str | None = None
    name: str | None = None
    udf: dict[str, str] | None = None
    duration_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def max_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most timestamps inside any half-open interval ``[t, t + window)``.

    Sort, then two pointers: O(n log n), and close to O(n) because records arrive nearly sorted.
    """
    ordered = sorted(times)
    best = 0
    left = 0
    for right, moment in enumerate(ordered):
        while moment - ordered[left] >= window:
            left += 1
        best = max(best, right - left + 1)
    return best


class Recorder:
    """A bounded, append-only log of requests with sequence numbers that never repeat (not even on clear)."""

    def __init__(self, max_records: int) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=max_records)
        self._seq = itertools.count(1)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self._records)

    def append(self, record: RequestRecord) -> None:
        """Store a record, stamping its ``seq`` here so seqs in the deque are always contiguous."""
        record.seq = next(self._seq)
        self._records.append(record)

    def clear(self) -> None:
        self._records.clear()

    def query(
        self,
        *,
        since_seq: int = 0,
        path: str | None = None,
        outcome: str | None = None,
        linked_account_id: str | None = None,
        idempotency_key: str | None = None,
        limit: int | None = None,
    ) -> list[RequestRecord]:
        """Records after ``since_seq`` (ascending), filtered; at most ``limit``, so callers can page."""
        records = self._records
        if not records:
            return []
        # Seqs in the deque are contiguous (stamped on append), so the first wanted record is found by offset.
        skip = max(0, since_seq - records[0].seq + 1)
        found: list[RequestRecord] = []
        for record in itertools.islice(records, skip, None):
            if record.seq <= since_seq:
                continue
            if path is not None and record.path != path:
                continue
            if outcome is not None and record.outcome != outcome:
                continue
            if linked_account_id is not None and record.linked_account_id != linked_account_id:
                continue
            if idempotency_key is not None and record.idempotency_key != idempotency_key:
                continue
            found.append(record)
            if limit is not None and len(found) >= limit:
                break
        return found

    def stats(self) -> dict[str, Any]:
        """Totals by status and outcome, deliveries per idempotency key, and the busiest one-second window."""
        by_status: Counter[str] = Counter()
        by_outcome: Counter[str] = Counter()
        delivered_by_key: Counter[str] = Counter()
        for record in self._records:
            by_status[str(record.status)] += 1
            by_outcome[record.outcome] += 1
            if record.outcome == "delivered" and record.idempotency_key is not None:
                delivered_by_key[record.idempotency_key] += 1
        return {
            "total": len(self._records),
            "by_status": dict(by_status),
            "by_outcome": dict(by_outcome),
            "delivered_by_idempotency_key": dict(delivered_by_key),
            "duplicates": sorted(key for key, count in delivered_by_key.items() if count > 1),
            "max_in_any_1s_window": max_in_window(record.time for record in self._records),
        }
