"""What Flower sees: a real worker's task events, read the way Flower reads them.

Flower keeps its task list in ``celery.events.state.State`` fed by an event receiver on the broker. This test
does the same with Celery's own receiver and ``State``, sends the ``enable_events`` broadcast Flower sends every
few seconds, and checks each job reads as one task with the right name, worker, result or error, and that no
step is announced twice (our scripts publish the events; Celery's own stay off, even when asked to switch on).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.events.state import State

from refold_dispatch.config import Settings
from refold_dispatch.dispatcher import Dispatcher
from refold_dispatch.message import TRIGGER_EVENT_TASK, UPSERT_LINKED_ACCOUNT_TASK
from tests.support import TEST_API_KEY, RedisServer, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

FAST = {"REFOLD_RETRY_SCHEDULE": "[1,1,1]", "REFOLD_RETRY_JITTER": "0", "REFOLD_QUICK_RETRY_ATTEMPTS": "1"}


class FlowerLikeMonitor:
    """Celery's event receiver feeding Celery's ``State`` on a thread, as Flower's ``EventsState`` does."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery("monitor", broker=broker_url)
        self.state = State()
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)
            self.state.event(event)

    def _run(self) -> None:
        with self.app.connection() as connection:
            receiver = self.app.events.Receiver(connection, handlers={"*": self._on_event})
            while not self._stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)
                except TimeoutError:
                    continue

    def start(self, client: redis.Redis) -> None:
        self._thread.start()
        # Subscribed once Redis counts the receiver's pattern subscription to the events exchange.
        wait_for(lambda: int(client.execute_command("PUBSUB", "NUMPAT")) > 0, timeout=10, what="the monitor")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.app.close()

    def task_events(self, task_id: str) -> Counter[str]:
        with self._lock:
            return Counter(e["type"] for e in self.events if e.get("uuid") == task_id)

    def task(self, task_id: str) -> Any:
        with self._lock:
            return self.state.tasks.get(task_id)


@pytest.fixture
def monitor(redis_server: RedisServer, real_redis: redis.Redis) -> Iterator[FlowerLikeMonitor]:
    watching = FlowerLikeMonitor(redis_server.url)
    watching.start(real_redis)
    yield watching
    watching.stop()


def wait_task_state(monitor: FlowerLikeMonitor, task_id: str, state: str) -> Any:
    def reached() -> bool:
        task = monitor.task(task_id)
        return task is not None and task.state == state

    wait_for(reached, timeout=30, what=f"task {task_id} to read {state} (events: {monitor.task_events(task_id)})")
    return monitor.task(task_id)


def test_flower_sees_each_job_as_one_task_with_each_step_once(
    redis_server: RedisServer,
    sandbox: Any,
    real_redis: redis.Redis,
    start_worker: Callable[..., WorkerProcess],
    monitor: FlowerLikeMonitor,
) -> None:
    worker = start_worker("w1", **FAST)
    # What Flower broadcasts every few seconds: it must not switch Celery's duplicate task events on.
    replies = monitor.app.control.enable_events(reply=True, timeout=5)
    assert replies and all("always on" in str(reply) for reply in replies), replies

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, api_key=TEST_API_KEY, redis_url=redis_server.url, base_url=sandbox.url
    )
    with Dispatcher(settings) as dispatcher:
        upsert = dispatcher.upsert_linked_account("acct-flower", name="Flower Ltd")
        delivered = dispatcher.trigger_event("order.created", "acct-flower", {"n": 1})
        dead = dispatcher.trigger_event("report.generated", "acct-flower", {"n": 2})  # unknown to Refold: 404

        task = wait_task_state(monitor, delivered.job_id, "SUCCESS")
        assert task.name == TRIGGER_EVENT_TASK
        assert task.worker.hostname.startswith("w1@")
        assert task.runtime is not None and task.runtime > 0
        assert "'delivered'" in task.result
        assert "order.created" in task.kwargs and "payload_bytes" in task.kwargs  # the description, not the payload
        assert monitor.task_events(delivered.job_id) == Counter(
            {"task-sent": 1, "task-received": 1, "task-started": 1, "task-succeeded": 1}
        )
        assert wait_task_state(monitor, upsert.job_id, "SUCCESS").name == UPSERT_LINKED_ACCOUNT_TASK

        failed = wait_task_state(monitor, dead.job_id, "FAILURE")
        assert "DeadLetteredError" in failed.exception and "permanent" in failed.exception
        assert monitor.task_events(dead.job_id)["task-failed"] == 1

        # A retry reads as RETRY, then the next attempt under the same task id succeeds.
        sandbox.admin.set_faults(error_rate=1.0)
        retried = dispatcher.trigger_event("order.created", "acct-flower", {"n": 3})
        wait_task_state(monitor, retried.job_id, "RETRY")
        sandbox.admin.set_faults(error_rate=0.0)
        wait_task_state(monitor, retried.job_id, "SUCCESS")
        counts = monitor.task_events(retried.job_id)
        assert counts["task-retried"] >= 1
        assert counts["task-received"] == counts["task-started"] == counts["task-retried"] + 1
        assert counts["task-succeeded"] == 1

    for event in monitor.events:
        assert TEST_API_KEY not in repr(event)
    log = worker.log()
    assert TEST_API_KEY not in log
    # One line per attempt, ours; Celery's "succeeded in" line per task would only repeat it.
    assert log.count('"delivery_attempt"') >= 5
    assert "succeeded in" not in log and " received" in log
