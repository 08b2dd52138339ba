"""The inbox of tagged messages: buffered early, refused when late, duplicated or replayed.

Every message is keyed by `(job, sender, round)`. A message that arrives
before its receiver asks for it is buffered; `get` blocks until it arrives
or the deadline passes. Each key is delivered at most once: a second message
with a key already delivered (a duplicate or a replay), one whose receiver
already gave up waiting (late), and one for a job already closed are refused
with `MessageRefused` and logged, and never reach the protocol.

Jobs are isolated: each has its own buffer, settled keys and abort state; one
job's failure or abort wakes only that job's waiters. Buffered bytes count
against a node-wide `ByteBudget`, so peers cannot exhaust memory.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from privkeras.errors import PartyError, format_received
from privkeras.net.wire import Frame

__all__ = ["ByteBudget", "Mailbox", "MessageRefused"]

logger = logging.getLogger("privkeras.net")

#: How many closed job ids are remembered (messages for them are refused).
CLOSED_JOBS_KEPT = 8192


class MessageRefused(PartyError):
    """A message was refused: duplicate, replayed, late, for a closed job, or over budget.

    Attributes:
        reason: "duplicate", "late", "closed", "aborted", "budget" or "stopping".
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class ByteBudget:
    """Bytes a node holds for its peers (buffered messages, responses, frames in transit)."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def acquire(self, nbytes: int, what: str) -> None:
        """Reserves `nbytes`, or raises `MessageRefused(reason="budget")`."""
        with self._lock:
            if self._used + nbytes > self.limit:
                raise MessageRefused(
                    f"Expected {what} to fit the node's buffer budget of {self.limit} bytes "
                    f"({self._used} in use). " + format_received(bytes=nbytes),
                    "budget",
                )
            self._used += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used = max(0, self._used - nbytes)


@dataclasses.dataclass
class _Buffered:
    frame: Frame
    nbytes: int


@dataclasses.dataclass
class _JobBox:
    buffered: dict[tuple[str, int], _Buffered] = dataclasses.field(default_factory=dict)
    settled: dict[tuple[str, int], str] = dataclasses.field(default_factory=dict)
    waiters: dict[tuple[str, int], threading.Event] = dataclasses.field(default_factory=dict)
    aborted: tuple[str, str] | None = None
    touched: float = dataclasses.field(default_factory=time.monotonic)


class Mailbox:
    """Tagged messages of every job on one node.

    Args:
        budget: Where buffered bytes are counted.
        job_ttl: Seconds after which an idle job's unclaimed messages are dropped.
    """

    def __init__(self, budget: ByteBudget, job_ttl: float = 600.0):
        self.budget = budget
        self.job_ttl = float(job_ttl)
        self._lock = threading.Lock()
        self._jobs: dict[str, _JobBox] = {}
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._stopping: str | None = None
        self._last_sweep = time.monotonic()

    # -- arriving ---------------------------------------------------------------------------
    def put(self, frame: Frame, nbytes: int) -> None:
        """Buffers `frame` (whose `nbytes` the caller reserved in the budget).

        On refusal the reservation stays the caller's to release.

        Raises:
            MessageRefused: The key was already delivered or given up, the job
                is closed or aborted, or the node is stopping.
        """
        key = (frame.sender, frame.round)
        with self._lock:
            self._sweep_idle_jobs()
            box = self._box_for(frame.job, frame.sender)
            if key in box.settled or key in box.buffered:
                reason = "late" if box.settled.get(key) == "expired" else "duplicate"
                raise MessageRefused(
                    f"Refused a {'late' if reason == 'late' else 'duplicated or replayed'} "
                    f"message from {frame.sender!r} for job {frame.job!r}, round {frame.round}",
                    reason,
                )
            box.buffered[key] = _Buffered(frame, nbytes)
            box.touched = time.monotonic()
            waiter = box.waiters.get(key)
        if waiter is not None:
            waiter.set()

    def abort(self, job: str, by: str, reason: str) -> None:
        """Marks `job` aborted by `by`; its waiters wake with a `PartyError`."""
        with self._lock:
            if job in self._closed:
                return
            box = self._jobs.setdefault(job, _JobBox())
            if box.aborted is None:
                box.aborted = (by, reason[:500])
            waiters = list(box.waiters.values())
        for waiter in waiters:
            waiter.set()

    # -- waiting --------------------------------------------------------------------------
    def get(
        self,
        job: str,
        sender: str,
        round_: int,
        deadline: float,
        *,
        wake: threading.Event | None = None,
        interrupted: Callable[[], BaseException | None] | None = None,
        step: str | None = None,
    ) -> Frame:
        """Waits for the message `(job, sender, round_)` until `deadline` (time.monotonic).

        Args:
            wake: An event to wait on (set by the mailbox on arrival; others
                may set it too, with `interrupted` telling why).
            interrupted: Called after each wake-up; an exception it returns is raised.
            step: What the caller was doing, for the error message.

        Raises:
            PartyError: Nothing arrived in time, the job was aborted, or the node stops.
        """
        key = (sender, round_)
        event = wake or threading.Event()
        with self._lock:
            if self._stopping is not None:
                raise PartyError(f"Stopped waiting for {sender!r} in job {job!r}: {self._stopping}")
            if job in self._closed:
                raise PartyError(
                    f"Expected an open job to receive from {sender!r}. Received: job={job!r} "
                    "(closed on this node)"
                )
            box = self._jobs.setdefault(job, _JobBox())
            if key in box.settled:
                raise PartyError(
                    f"Expected each message to be received once. Received: a second recv of the "
                    f"message from {sender!r} for job {job!r}, round {round_}"
                )
            if box.waiters.get(key) not in (None, event):
                raise PartyError(
                    f"Expected one receiver for the message from {sender!r} for job {job!r}, "
                    f"round {round_}. Received: a second recv for it"
                )
            box.waiters[key] = event
        try:
            while True:
                with self._lock:
                    frame = self._take(job, box, key)
                    if frame is not None:
                        return frame
                    failure = self._failure(job, box, sender, round_, step)
                if failure is not None:
                    raise failure
                if interrupted is not None and (error := interrupted()) is not None:
                    raise error
                left = deadline - time.monotonic()
                if left <= 0:
                    with self._lock:
                        frame = self._take(job, box, key)
                        if frame is not None:
                            return frame
                        box.settled[key] = "expired"
                    raise PartyError(
                        f"Expected a message from {sender!r} for job {job!r}, round {round_}"
                        f"{f' ({step})' if step else ''} before the deadline. Received: nothing "
                        f"(the peer is dead, unreachable, stalled, or not in this job)"
                    )
                event.wait(left)
                event.clear()
        finally:
            with self._lock:
                if box.waiters.get(key) is event:
                    del box.waiters[key]

    # -- ending -----------------------------------------------------------------------------
    def close_job(self, job: str) -> int:
        """Forgets `job`: frees its buffer; later messages for it are refused. Returns bytes freed."""
        with self._lock:
            box = self._jobs.pop(job, None)
            self._remember_closed(job)
            waiters = list(box.waiters.values()) if box else []
        for waiter in waiters:
            waiter.set()
        return self._free(box)

    def stop(self, reason: str) -> None:
        """Refuses every message from now on and wakes every waiter."""
        with self._lock:
            self._stopping = reason
            waiters = [w for box in self._jobs.values() for w in box.waiters.values()]
        for waiter in waiters:
            waiter.set()

    def pending(self, job: str) -> list[tuple[str, int]]:
        """(sender, round) of the messages of `job` buffered and not yet received."""
        with self._lock:
            box = self._jobs.get(job)
            return sorted(box.buffered) if box else []

    def jobs(self) -> list[str]:
        with self._lock:
            return sorted(self._jobs)

    # -- internals (lock held) ----------------------------------------------------------------
    def _box_for(self, job: str, sender: str) -> _JobBox:
        if self._stopping is not None:
            raise MessageRefused(f"Refused a message for job {job!r}: {self._stopping}", "stopping")
        if job in self._closed:
            raise MessageRefused(
                f"Refused a message from {sender!r} for job {job!r}, which is closed", "closed"
            )
        box = self._jobs.get(job)
        if box is None:
            box = self._jobs[job] = _JobBox()
        elif box.aborted is not None:
            raise MessageRefused(
                f"Refused a message from {sender!r} for job {job!r}, aborted by "
                f"{box.aborted[0]!r}: {box.aborted[1]}",
                "aborted",
            )
        return box

    def _take(self, job: str, box: _JobBox, key: tuple[str, int]) -> Frame | None:
        item = box.buffered.pop(key, None)
        if item is None:
            return None
        box.settled[key] = "received"
        box.touched = time.monotonic()
        self.budget.release(item.nbytes)
        return item.frame

    def _failure(self, job, box, sender, round_, step) -> PartyError | None:
        where = f"job {job!r}, round {round_}{f' ({step})' if step else ''}"
        if self._stopping is not None:
            return PartyError(f"Stopped waiting for {sender!r} in {where}: {self._stopping}")
        if box.aborted is not None:
            by, reason = box.aborted
            return PartyError(
                f"Job {job!r} was aborted by {by!r} while waiting for {sender!r} "
                f"in {where}: {reason}"
            )
        if self._jobs.get(job) is not box:
            return PartyError(f"Job {job!r} was closed while waiting for {sender!r} in {where}")
        return None

    def _remember_closed(self, job: str) -> None:
        self._closed[job] = None
        self._closed.move_to_end(job)
        while len(self._closed) > CLOSED_JOBS_KEPT:
            self._closed.popitem(last=False)

    def _free(self, box: _JobBox | None) -> int:
        if box is None:
            return 0
        freed = sum(item.nbytes for item in box.buffered.values())
        box.buffered.clear()
        self.budget.release(freed)
        return freed

    def _sweep_idle_jobs(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < 1.0:
            return
        self._last_sweep = now
        for job, box in list(self._jobs.items()):
            if not box.waiters and now - box.touched > self.job_ttl:
                senders = sorted({sender for sender, _ in box.buffered})
                del self._jobs[job]
                self._remember_closed(job)
                freed = self._free(box)
                if freed or senders:
                    logger.warning(
                        "dropped job %r after %.0f s idle: %d bytes of unclaimed messages from %s",
                        job,
                        self.job_ttl,
                        freed,
                        senders,
                    )
