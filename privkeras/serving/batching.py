"""Dynamic batching: requests that arrive together run as one batch.

A `Batcher` keeps a queue of pending requests and `workers` threads. A free
worker takes the oldest request, waits until `max_delay` has passed since it
arrived or `max_rows` rows are queued, takes requests in arrival order up to
`max_rows` rows (always at least one), and runs them as one batch. While
batches run, new requests queue up: under load each batch is as large as
allowed, which is what makes throughput grow with the number of clients (as
TensorFlow Serving's batching does with `max_batch_size` and
`batch_timeout_micros`).

Example:

```python
batcher = Batcher(run, max_rows=64, max_delay=0.005, workers=2)
pending = batcher.submit(request, rows=3)     # from a server thread
pending.wait(timeout=30)                       # what `run` set with pending.finish(...)
```
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from privkeras.errors import PartyError

__all__ = ["Batcher", "Pending"]


class Pending:
    """One request in a batcher: its payload, rows, and how it ended.

    Attributes:
        payload: What the server queued (the batch function receives it).
        rows: Rows of the request.
        arrived: `time.monotonic()` when it was queued.
    """

    __slots__ = (
        "_done",
        "arrived",
        "batch_size",
        "error",
        "not_before",
        "owner",
        "payload",
        "result",
        "rows",
        "state",
    )

    def __init__(self, payload: Any, rows: int):
        self.payload, self.rows = payload, rows
        self.arrived = time.monotonic()
        self.not_before = 0.0  # a requeued request waits until then
        self.owner: object | None = None  # the batch that runs it now
        self.state = "queued"  # queued -> running -> done | failed; or cancelled
        self.result: Any = None
        self.error: BaseException | None = None
        self.batch_size = 0
        self._done = threading.Event()

    def finish(self, result: Any) -> None:
        self.result, self.state = result, "done"
        self._done.set()

    def fail(self, error: BaseException) -> None:
        if self.state not in ("done", "failed"):
            self.error, self.state = error, "failed"
            self._done.set()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait_done(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds for the answer; returns whether it came."""
        return self._done.wait(timeout)

    def wait(self, timeout: float) -> Any:
        """Waits for the batch's answer; returns the result or raises its error.

        Raises:
            PartyError: Nothing came within `timeout` seconds.
        """
        if not self._done.wait(timeout):
            raise PartyError(f"Expected an answer within {timeout:.1f} s. Received: none")
        if self.error is not None:
            raise self.error
        return self.result


class Batcher:
    """Runs queued requests in batches on worker threads.

    Args:
        run: `run(batch)` with a list of `Pending`; it must finish or fail each.
        max_rows: Most rows a batch takes (a larger single request runs alone).
        max_delay: Seconds the oldest request waits for company.
        workers: Batches that run at once.
        max_queued: Requests queued at most; `submit` refuses more.
        name: The server's name, for errors and thread names.
    """

    def __init__(
        self,
        run: Callable[[list[Pending]], None],
        *,
        max_rows: int,
        max_delay: float,
        workers: int = 1,
        max_queued: int = 1024,
        name: str = "server",
    ):
        self.run, self.max_rows, self.max_delay = run, int(max_rows), float(max_delay)
        self.max_queued, self.name = int(max_queued), name
        self._queue: collections.deque[Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._running = 0
        #: Batches run, requests they held, and the largest batch (in requests).
        self.stats = {"batches": 0, "requests": 0, "rows": 0, "largest": 0}
        self._threads = [
            threading.Thread(target=self._work, name=f"privkeras-batch-{name}-{i}", daemon=True)
            for i in range(int(workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, payload: Any, rows: int) -> Pending:
        """Queues one request.

        Raises:
            PartyError: The batcher is closed or `max_queued` requests wait already.
        """
        pending = Pending(payload, rows)
        with self._cond:
            if self._closed:
                raise PartyError(f"Server {self.name!r} is shutting down.")
            if len(self._queue) >= self.max_queued:
                raise PartyError(
                    f"Server {self.name!r} is busy: {self.max_queued} requests are queued."
                )
            self._queue.append(pending)
            self._cond.notify_all()
        return pending

    def cancel(self, pending: Pending) -> bool:
        """Takes a request out of the queue if no batch took it yet; returns whether it did."""
        with self._cond:
            if pending.state != "queued":
                return False
            pending.state = "cancelled"
            with contextlib.suppress(ValueError):
                self._queue.remove(pending)
            return True

    def requeue(self, pending: Pending, delay: float = 0.0) -> None:
        """Puts a request a batch took back at the head of the queue, for a batch after `delay` s."""
        with self._cond:
            pending.state, pending.owner = "queued", None
            pending.not_before = time.monotonic() + delay
            self._queue.appendleft(pending)
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def busy(self) -> bool:
        """Whether a request is queued or a batch is running."""
        with self._cond:
            return bool(self._queue) or self._running > 0

    def close(self) -> None:
        """Refuses new requests; queued ones still run. Workers end once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _take(self) -> list[Pending] | None:
        with self._cond:
            while True:
                now = time.monotonic()
                ready = [p for p in self._queue if p.not_before <= now]
                if not ready:
                    if not self._queue and self._closed:
                        return None
                    soonest = min((p.not_before - now for p in self._queue), default=None)
                    self._cond.wait(soonest)
                    continue
                rows = sum(p.rows for p in ready)
                left = ready[0].arrived + self.max_delay - now
                if rows >= self.max_rows or left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            batch, rows, owner = [], 0, object()
            for pending in ready:
                if batch and rows + pending.rows > self.max_rows:
                    break
                self._queue.remove(pending)
                pending.state, pending.owner = "running", owner
                batch.append(pending)
                rows += pending.rows
            self._running += 1
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            owner = batch[0].owner
            try:
                self._record(batch)
                self.run(batch)
            except BaseException as error:  # never lose a waiter, whatever `run` did
                failure = (
                    error
                    if isinstance(error, PartyError)
                    else PartyError(f"Server {self.name!r} failed a batch: {error}")
                )
                for pending in batch:
                    if pending.state == "running" and pending.owner is owner:
                        pending.fail(failure)
            finally:
                for pending in batch:  # not answered, not requeued (another batch may run it)
                    if pending.state == "running" and pending.owner is owner:
                        pending.fail(PartyError(f"Server {self.name!r} left a request unanswered."))
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()

    def _record(self, batch: Sequence[Pending]) -> None:
        fresh = [p for p in batch if not p.not_before]  # a requeued request counts once
        with self._cond:
            self.stats["batches"] += 1
            self.stats["requests"] += len(fresh)
            self.stats["rows"] += sum(p.rows for p in fresh)
            self.stats["largest"] = max(self.stats["largest"], len(batch))
        for pending in batch:
            pending.batch_size = len(batch)
