"""Dynamic batching, rate limits and serving limits (no processes)."""

from __future__ import annotations

import threading
import time

import pytest

from privkeras.errors import InvalidInputError, PartyError
from privkeras.serving.batching import Batcher
from privkeras.serving.limits import RateLimiter, ServingLimits


class _Recorder:
    def __init__(self, hold: float = 0.0):
        self.batches: list[list[int]] = []
        self.hold = hold
        self.lock = threading.Lock()

    def __call__(self, batch):
        with self.lock:
            self.batches.append([p.payload for p in batch])
        time.sleep(self.hold)
        for pending in batch:
            pending.finish(pending.payload * 10)


def test_requests_that_arrive_together_run_as_one_batch():
    run = _Recorder()
    batcher = Batcher(run, max_rows=100, max_delay=0.2, workers=1)
    pendings = [batcher.submit(k, rows=2) for k in range(5)]
    assert [p.wait(5) for p in pendings] == [0, 10, 20, 30, 40]
    assert run.batches == [[0, 1, 2, 3, 4]]
    assert all(p.batch_size == 5 for p in pendings)
    assert batcher.stats == {"batches": 1, "requests": 5, "rows": 10, "largest": 5}


def test_a_full_batch_starts_at_once_and_a_large_request_runs_alone():
    run = _Recorder()
    batcher = Batcher(run, max_rows=4, max_delay=10.0, workers=1)
    started = time.monotonic()
    pendings = [batcher.submit(k, rows=2) for k in range(2)]  # 4 rows: full, no waiting
    for pending in pendings:
        pending.wait(5)
    assert time.monotonic() - started < 5
    big = batcher.submit(9, rows=7)
    assert big.wait(5) == 90
    assert run.batches == [[0, 1], [9]]


def test_under_load_batches_grow_while_one_runs():
    run = _Recorder(hold=0.3)
    batcher = Batcher(run, max_rows=64, max_delay=0.0, workers=1)
    first = batcher.submit(0, rows=1)
    time.sleep(0.1)  # the first batch is running: the next ones queue up behind it
    rest = [batcher.submit(k, rows=1) for k in range(1, 11)]
    for pending in [first, *rest]:
        pending.wait(5)
    assert run.batches == [[0], list(range(1, 11))]


def test_a_requeued_request_waits_its_delay_and_runs_in_a_later_batch():
    seen = []

    def run(batch):
        seen.append([p.payload for p in batch])
        for pending in batch:
            if pending.payload == "late" and len(seen) == 1:
                batcher.requeue(pending, delay=0.3)  # not everywhere yet: again, later
            else:
                pending.finish(time.monotonic())

    batcher = Batcher(run, max_rows=8, max_delay=0.05, workers=1)
    started = time.monotonic()
    late, fresh = batcher.submit("late", 1), batcher.submit("fresh", 1)
    assert fresh.wait(5) - started < 0.3
    assert late.wait(5) - started >= 0.3
    assert seen == [["late", "fresh"], ["late"]]


def test_cancel_queue_limit_close_and_failures():
    started = threading.Event()

    def slow(batch):
        started.set()
        time.sleep(0.3)
        for pending in batch:
            pending.finish(None)

    batcher = Batcher(slow, max_rows=1, max_delay=0.0, workers=1, max_queued=2)
    running = batcher.submit("a", 1)
    started.wait(5)
    queued = batcher.submit("b", 1)
    batcher.submit("c", 1)
    with pytest.raises(PartyError, match="2 requests are queued"):
        batcher.submit("d", 1)
    assert batcher.cancel(queued) and not batcher.cancel(running)
    assert batcher.queued == 1
    batcher.close()
    with pytest.raises(PartyError, match="shutting down"):
        batcher.submit("e", 1)
    running.wait(5)

    def broken(batch):
        raise RuntimeError("boom")

    failing = Batcher(broken, max_rows=8, max_delay=0.0)
    with pytest.raises(PartyError, match="failed a batch: boom"):
        failing.submit(1, 1).wait(5)

    forgetful = Batcher(lambda batch: None, max_rows=8, max_delay=0.0)
    with pytest.raises(PartyError, match="unanswered"):
        forgetful.submit(1, 1).wait(5)


def test_rate_limiter_allows_a_burst_then_the_rate():
    limiter = RateLimiter(rate=20.0, burst=5)
    for _ in range(5):
        limiter.check("alice", "p0")
    with pytest.raises(PartyError, match=r"rate limit of 20 requests/s \(burst 5\)"):
        limiter.check("alice", "p0")
    limiter.check("bob", "p0")  # buckets are per client
    time.sleep(0.12)
    limiter.check("alice", "p0")
    RateLimiter(rate=None).check("anyone", "p0")


def test_limits_are_validated_and_travel_as_flags():
    from privkeras.cli.main import build_parser
    from privkeras.serving.server import limits_from_args

    for bad in (
        {"max_batch_rows": 0},
        {"max_delay": -1},
        {"rate": 0},
        {"burst": 0},
        {"max_request_rows": 2.5},
    ):
        with pytest.raises(InvalidInputError, match="Expected"):
            ServingLimits(**bad)
    limits = ServingLimits(max_batch_rows=7, max_delay=0.25, rate=3.0, burst=4, request_ttl=9.0)
    args = build_parser().parse_args(["serve", "bundle", *limits.flags()])
    assert limits_from_args(args) == limits
