"""What a model server accepts: batch sizes and delays, request sizes, rates, memory, lifetimes.

`ServingLimits` is one frozen set of limits, given to `privkeras serve` as
flags (`--max-batch-rows`, `--max-delay-ms`, ...) and to
`pk.serving.local_servers(...)` as keyword arguments. `RateLimiter` is the
token bucket each server keeps per client name.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from privkeras.errors import InvalidInputError, PartyError

__all__ = ["RateLimiter", "ServingLimits"]


@dataclasses.dataclass(frozen=True)
class ServingLimits:
    """Limits of one model server.

    Attributes:
        max_batch_rows: Rows of concurrent requests run together in one
            protocol run (MPC) or one request's rows per encrypted group (HE).
        max_delay: Seconds the first request of a batch waits for others
            (0: a batch starts as soon as a worker is free).
        max_request_rows: Rows one request may carry; more is an `InvalidInputError`.
        max_queued: Requests waiting for a batch; more are refused (`PartyError`).
        rate: Requests per second each client name may send (None: unlimited).
        burst: Requests a client may send at once above `rate` (default 2 x rate).
        request_ttl: Seconds a server keeps a request's inputs or outputs for
            a client that does not come back for them.
        max_held_bytes: Bytes of clients' inputs and outputs a server holds at once.
        max_parallel_batches: Batches (MPC jobs) that run at once.
        max_sessions: Client sessions (HE public contexts) a server keeps.
    """

    max_batch_rows: int = 128
    max_delay: float = 0.005
    max_request_rows: int = 128
    max_queued: int = 1024
    rate: float | None = None
    burst: int | None = None
    request_ttl: float = 30.0
    max_held_bytes: int = 256 << 20
    max_parallel_batches: int = 2
    max_sessions: int = 64

    def __post_init__(self):
        positive_ints = (
            "max_batch_rows",
            "max_request_rows",
            "max_queued",
            "max_held_bytes",
            "max_parallel_batches",
            "max_sessions",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(
                    f"Expected {name} to be a positive integer. Received: {name}={value!r}"
                )
        for name in ("max_delay", "request_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidInputError(
                    f"Expected {name} in seconds >= 0. Received: {name}={value!r}"
                )
        if self.rate is not None and (isinstance(self.rate, bool) or not self.rate > 0):
            raise InvalidInputError(f"Expected rate > 0 or None. Received: rate={self.rate!r}")
        if self.burst is not None and (isinstance(self.burst, bool) or self.burst < 1):
            raise InvalidInputError(f"Expected burst >= 1 or None. Received: burst={self.burst!r}")

    def public(self) -> dict[str, Any]:
        """What clients are told (so that they refuse too-large requests before sending)."""
        return {
            "max_request_rows": self.max_request_rows,
            "max_batch_rows": self.max_batch_rows,
            "max_delay": self.max_delay,
            "rate": self.rate,
        }

    def flags(self) -> list[str]:
        """These limits as `privkeras serve` flags."""
        argv = [
            "--max-batch-rows", str(self.max_batch_rows),
            "--max-delay-ms", repr(self.max_delay * 1000.0),
            "--max-request-rows", str(self.max_request_rows),
            "--max-queued", str(self.max_queued),
            "--request-ttl", repr(float(self.request_ttl)),
            "--max-held-mb", repr(self.max_held_bytes / (1 << 20)),
            "--max-parallel-batches", str(self.max_parallel_batches),
            "--max-sessions", str(self.max_sessions),
        ]  # fmt: skip
        if self.rate is not None:
            argv += ["--rate-limit", repr(float(self.rate))]
        if self.burst is not None:
            argv += ["--burst", str(self.burst)]
        return argv


class RateLimiter:
    """A token bucket per client name: `rate` requests per second, `burst` at once.

    Args:
        rate: Tokens per second (None: every request passes).
        burst: Bucket size (default 2 x rate, at least 1).
        max_clients: Buckets kept; the longest idle ones are dropped beyond it.
    """

    def __init__(self, rate: float | None, burst: int | None = None, max_clients: int = 4096):
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1.0, 2.0 * (rate or 0.0)))
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str, server: str) -> None:
        """Takes one token of `client`'s bucket.

        Raises:
            PartyError: The bucket is empty (the message says the rate and when to retry).
        """
        if self.rate is None:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise PartyError(
                    f"Server {server!r} refused a request from {client!r}: rate limit of "
                    f"{self.rate:g} requests/s (burst {self.burst:g}) exceeded; retry in "
                    f"{wait:.2f} s."
                )
            self._buckets[client] = (tokens - 1.0, now)  # re-inserted: most recent last
            while len(self._buckets) > self.max_clients:
                self._buckets.pop(next(iter(self._buckets)))
