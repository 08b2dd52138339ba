"""MPC serving: party processes serve an exported bundle's private predictions to many clients.

Who holds what:

- each compute party (`privkeras serve bundle/p0`, `.../p1`, ABY3's `.../p2`)
  holds its components of the weights (its bundle folder) and, per request,
  its components of the client's rows; Pond's dealer (`.../dealer`) holds
  nothing but the randomness it deals;
- a client holds its rows and its outputs: it secret-shares its rows itself
  (keys from `os.urandom`), sends each party only that party's components,
  and adds up the output components the parties send back to it.

A request, as the client makes it (`MPCServingClient.predict`): one
`serve.submit` call to every compute party at once, each carrying that
party's components of the rows and the request's id; each call returns when
that party's output component is ready.

1. The front (`p0`) queues the request in its `Batcher`: requests that
   arrive together become one batch, up to `max_batch_rows` rows or
   `max_delay`.
2. For each batch the front starts one job on the other roles (`serve.start`:
   the request ids and row counts, nothing secret; a request whose part has
   not reached a party yet is left out and tried again in a later batch, for
   up to 10 s) and runs its own part: every role
   stacks its components of the batch's rows, runs the lowered program
   forward (`SecureProgram.forward`, the same code as `model.predict`) on its
   weight components, and keeps, per request, its component of the outputs
   re-randomized with a fresh zero sharing (so that the client learns the
   outputs and nothing about the parties' shares).
3. Each party answers the client's call with its output component; the
   client adds them up. A request the front refuses (rate, size, queue) is
   dropped by the others too (`serve.drop`); one whose client went away is
   dropped at once, and anything left over after `request_ttl`.

`serve.submit` with `wait=False` only holds the part, for a later
`serve.result` with the request's ticket (random, one per party, so that no
party can claim another party's output).

Every party records each reveal (`predictions` to the requesting client) in
its own log (`serve.stats`); no party ever holds a row or an output in the
clear. A party that dies makes the batch fail with `PartyError` naming it,
within the deadline, on every other role; the others keep serving.

Notes:
    Semi-honest security as for the engine's protocols (Pond with a trusted
    dealer, ABY3 with an honest majority): parties follow the protocol, and
    no two of them (Pond: no party with the dealer) collude. A client is not
    trusted: it can only learn the outputs of its own rows (each party hands
    a request's output component only to a caller presenting that party's
    ticket); it can send inconsistent components (ABY3) and get garbage for
    its own rows, nothing else. The output re-randomization is the usual
    zero sharing (pseudo-random from pairwise keys, Mohassel and Rindal, CCS
    2018, section 2.2; Pond: one pairwise mask).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from privkeras.backends.mpc.bundles import ServedModel
from privkeras.backends.mpc.cluster import job_roles
from privkeras.backends.mpc.network import NetworkCommunicator
from privkeras.backends.mpc.placement import Placement
from privkeras.errors import (
    AuthenticationError,
    InvalidInputError,
    PartyError,
    PrecisionOverflowError,
    PrivkerasError,
)

if TYPE_CHECKING:
    from privkeras.backends.mpc.runtime import MPCRuntime
    from privkeras.serving.batching import Pending
    from privkeras.serving.bundle import Manifest
    from privkeras.serving.limits import ServingLimits

__all__ = ["MPCServer", "MPCServingBackend", "MPCServingClient"]

logger = logging.getLogger("privkeras.serving")

_HEX = re.compile(r"^[0-9a-f]{32}$")
#: Reveal records a server keeps for `serve.stats`.
_REVEALS_KEPT = 256
#: How often a waiting call checks that its client is still there (an answer wakes it at once).
_POLL_S = 0.25
#: Seconds a party waits, when a batch starts, for a request's part still on its way
#: (a client sends every party its part at once: the front's job may come first).
_ARRIVAL_WAIT = 0.2
#: Seconds before a request whose part was missing is tried again, in a later batch.
_RETRY_DELAY = 0.1
#: Seconds (at most; also at most half the timeout and the request TTL) a request whose
#: part has not reached every party is tried again; after that it fails (its client
#: skipped a party, or that party lost it).
_ARRIVAL_TIMEOUT = 10.0


# -- requests a server holds ----------------------------------------------------------------------
class _Held:
    """One client request on one party: its components in, its output component out."""

    __slots__ = (
        "done",
        "error",
        "expires",
        "id",
        "nbytes",
        "output",
        "parts",
        "peer",
        "rows",
        "state",
        "ticket",
    )

    def __init__(self, request_id: str, peer: str, ticket: str, rows: int, parts, ttl: float):
        self.id, self.peer, self.ticket, self.rows, self.parts = (
            request_id,
            peer,
            ticket,
            rows,
            parts,
        )
        self.nbytes = sum(int(p.nbytes) for p in parts)
        self.expires = time.monotonic() + ttl
        self.state = "waiting"  # waiting -> running -> done | failed
        self.output: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class HeldRequests:
    """What one server holds for clients, bounded in bytes and in time.

    Args:
        server: The server's role (for messages).
        max_bytes: Bytes of inputs and outputs held at once.
        ttl: Seconds a request is kept for a client that does not come back.
    """

    def __init__(self, server: str, max_bytes: int, ttl: float):
        self.server, self.max_bytes, self.ttl = server, max_bytes, ttl
        self._held: dict[str, _Held] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

    def add(self, held: _Held) -> None:
        """Raises PartyError for a request id in use or beyond the byte budget."""
        with self._lock:
            if held.id in self._held:
                raise PartyError(
                    f"Expected a new request id. Received: {held.id[:8]}... (in use on "
                    f"{self.server!r})"
                )
            if self._bytes + held.nbytes > self.max_bytes:
                raise PartyError(
                    f"Server {self.server!r} is busy: it holds {self._bytes} bytes of requests "
                    f"(limit {self.max_bytes})."
                )
            self._held[held.id] = held
            self._bytes += held.nbytes
            self._arrived.notify_all()

    def claim(
        self, requests: Sequence[tuple[str, int]], wait: float = 0.0
    ) -> tuple[list[_Held], list[str]]:
        """Marks waiting requests as running, in order; returns them and the ids it lacks.

        Args:
            requests: `(id, rows)` in batch order.
            wait: Seconds to wait for requests still on their way (a client sends
                every party its part at once: the front's job may come first).
        """
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                found = [self._held.get(rid) for rid, _ in requests]
                missing = [
                    rid
                    for (rid, rows), held in zip(requests, found)
                    if held is None or held.state != "waiting" or held.rows != rows
                ]
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    break
                self._arrived.wait(left)
            if missing:
                return [], missing
            for held in found:
                held.state = "running"
            return found, []

    def get(self, request_id: str) -> _Held | None:
        with self._lock:
            return self._held.get(request_id)

    def release(self, helds: Sequence[_Held]) -> None:
        """Puts requests of a cancelled job back (a later batch takes them)."""
        with self._lock:
            for held in helds:
                if held.state == "running":
                    held.state = "waiting"

    def finish(self, held: _Held, output: np.ndarray | None) -> None:
        with self._lock:
            counted = held.id in self._held and self._held[held.id] is held
            if counted:
                self._bytes -= held.nbytes
            held.parts, held.output, held.state = [], output, "done"
            held.nbytes = 0 if output is None else int(output.nbytes)
            if counted:
                self._bytes += held.nbytes
            held.expires = time.monotonic() + self.ttl
        held.done.set()

    def fail(self, held: _Held, error: BaseException) -> None:
        with self._lock:
            if held.state == "done":
                return
            held.state, held.error = "failed", error
            held.expires = time.monotonic() + self.ttl
        held.done.set()

    def take_result(self, request_id: str, peer: str, ticket: str, timeout: float) -> np.ndarray:
        """Waits for a request's output component and hands it over, once.

        Raises:
            AuthenticationError: Another client's request, or a wrong ticket.
            PartyError: Unknown request, its batch failed, or not done in time.
        """
        with self._lock:
            held = self._held.get(request_id)
        if held is None:
            raise PartyError(
                f"Expected a request held by {self.server!r}. Received: unknown request "
                f"{request_id[:8]}... (never sent, already taken, or expired)"
            )
        if held.peer != peer or not hmac.compare_digest(held.ticket, ticket):
            raise AuthenticationError(
                f"Expected the ticket of request {request_id[:8]}... from the client that sent "
                f"it. Received: a wrong ticket from {peer!r}"
            )
        if not held.done.wait(max(0.0, timeout)):
            raise PartyError(
                f"Server {self.server!r} did not finish request {request_id[:8]}... within "
                f"{timeout:.1f} s."
            )
        self.drop(request_id)
        if held.error is not None:
            raise held.error
        return held.output

    def drop(self, request_id: str) -> None:
        with self._lock:
            held = self._held.pop(request_id, None)
            if held is not None:
                self._bytes -= held.nbytes
                held.parts = []

    def sweep(self) -> int:
        """Drops requests whose client did not come back in time; returns how many."""
        now = time.monotonic()
        with self._lock:
            expired = [
                h.id for h in self._held.values() if h.state != "running" and h.expires < now
            ]
        for request_id in expired:
            self.drop(request_id)
        if expired:
            logger.info("%s dropped %d requests nobody came back for", self.server, len(expired))
        return len(expired)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"held_requests": len(self._held), "held_bytes": self._bytes}


# -- the server -----------------------------------------------------------------------------------
class MPCServer:
    """One role of a served MPC bundle, on its `privkeras.net.Node`.

    Args:
        model: The role's loaded `ServedModel`.
        node: The role's (unstarted) node, named after the role.
        limits: `ServingLimits`.
        timeout: Seconds any network wait of a job or request may take.
    """

    def __init__(self, model: ServedModel, node: Any, limits: ServingLimits, timeout: float):
        from privkeras.core.kernels import get_kernels
        from privkeras.serving.batching import Batcher
        from privkeras.serving.limits import RateLimiter

        self.model, self.node, self.limits, self.timeout = model, node, limits, float(timeout)
        manifest = model.manifest
        self.role, self.roles, self.front = model.role, manifest.roles, manifest.data["front"]
        self.others = [r for r in self.roles if r != self.role]
        self.kernels = get_kernels(_kernel_library(manifest.engine))
        self.held = HeldRequests(self.role, limits.max_held_bytes, limits.request_ttl)
        self.rates = RateLimiter(limits.rate, limits.burst)
        self.reveals: collections.deque = collections.deque(maxlen=_REVEALS_KEPT)
        self.draining = False
        self._jobs: dict[str, _PartyJob] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.batcher = None
        if self.role == self.front:
            self._calls = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, len(self.others) * limits.max_parallel_batches),
                thread_name_prefix="privkeras-front",
            )
            self._drops = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="privkeras-drops"
            )
            self.batcher = Batcher(
                self._run_batch,
                max_rows=limits.max_batch_rows,
                max_delay=limits.max_delay,
                workers=limits.max_parallel_batches,
                max_queued=limits.max_queued,
                name=self.role,
            )
        for method, handler in {
            "serve.info": self._info,
            "serve.submit": self._submit,
            "serve.result": self._result,
            "serve.start": self._start,
            "serve.cancel": self._cancel,
            "serve.drop": self._drop,
            "serve.stats": self._stats,
        }.items():
            node.register(method, handler)
        threading.Thread(target=self._janitor, name="privkeras-janitor", daemon=True).start()

    # -- handlers for clients -------------------------------------------------------------
    def _info(self, request: Any) -> Any:
        from privkeras.net import Reply

        addresses = {self.role: self.node.address}
        for role in self.others:
            with contextlib.suppress(PrivkerasError):
                addresses[role] = self.node.peers.address(role)
        meta = {
            "digest": self.model.manifest.digest,
            "role": self.role,
            "front": self.front,
            "addresses": addresses,
            "limits": self.limits.public(),
        }
        return Reply([np.frombuffer(self.model.manifest.raw, dtype=np.uint8)], meta)

    def _submit(self, request: Any) -> Any:

        if self.draining:
            raise PartyError(f"Server {self.role!r} is shutting down: it takes no new requests.")
        if not self.model.components:
            raise InvalidInputError(
                f"Expected requests at a compute party. Received: serve.submit at {self.role!r}, "
                "which holds no shares"
            )
        request_id, ticket = _hex(request.meta, "id"), _hex(request.meta, "ticket")
        try:
            return self._take_request(request, request_id, ticket)
        except PrivkerasError as error:
            if self.role == self.front:  # the others hold the client's parts: let them go
                self._drop_others([request_id], error)
            raise

    def _take_request(self, request: Any, request_id: str, ticket: str) -> Any:
        from privkeras.net import Reply

        rows = _int(request.meta, "rows", 1, self.limits.max_request_rows)
        enqueue, wait = request.meta.get("enqueue", False), request.meta.get("wait", True)
        if not isinstance(enqueue, bool) or (enqueue and self.role != self.front):
            raise InvalidInputError(
                f"Expected enqueue=True only at the front server {self.front!r}. "
                f"Received: enqueue={enqueue!r} at {self.role!r}"
            )
        if not isinstance(wait, bool):
            raise InvalidInputError(f"Expected wait to be a bool. Received: wait={wait!r}")
        self.rates.check(request.peer, self.role)
        parts = self._parts(request.tensors, rows)
        held = _Held(request_id, request.peer, ticket, rows, parts, self.limits.request_ttl)
        self.held.add(held)
        if enqueue:
            try:
                pending = self.batcher.submit(held, rows)
            except PrivkerasError:
                self.held.drop(request_id)
                raise
            output, batch = self._wait(pending, request)
            return Reply([output], {"batch_requests": batch})
        if not wait:  # held for a later serve.result
            return Reply([], {"ok": True})
        return Reply([self._await_output(held, request)])

    def _await_output(self, held: _Held, request: Any) -> np.ndarray:
        """Waits for a held request's output component; a client that goes away frees it."""
        deadline = time.monotonic() + self.timeout + self.limits.max_delay + 5.0
        left = request.time_remaining()
        if left is not None:
            deadline = min(deadline, time.monotonic() + left)
        while not held.done.wait(_POLL_S):
            gone, late = not request.is_active(), time.monotonic() > deadline
            if gone or late:
                if held.state == "waiting":
                    self.held.drop(held.id)
                raise PartyError(
                    "The client went away."
                    if gone
                    else f"Server {self.role!r} did not run request {held.id[:8]}... in time."
                )
        self.held.drop(held.id)
        if held.error is not None:
            raise held.error
        return held.output

    def _drop_others(self, request_ids: Sequence[str], error: BaseException) -> None:
        """Tells the other compute parties (in the background) to fail these requests."""
        reason = str(error)[:300]
        for role in self.others:
            if self.model.manifest.data["mpc"]["parties"][role]["components"]:
                self._drops.submit(self._drop_at, role, list(request_ids), reason)

    def _drop_at(self, role: str, request_ids: list[str], reason: str) -> None:
        try:
            meta = {"ids": request_ids, "reason": reason}
            self.node.call(role, "serve.drop", meta=meta, timeout=2.0)
        except PrivkerasError as error:
            logger.info("could not tell %r to drop %d requests: %s", role, len(request_ids), error)

    def _parts(self, tensors: Sequence[Any], rows: int) -> list[np.ndarray]:
        shape = (rows, *self.model.input_shape)
        if len(tensors) != len(self.model.components) or any(
            t.dtype != np.int64 or tuple(t.shape) != shape for t in tensors
        ):
            got = [(str(t.dtype), tuple(t.shape)) for t in tensors][:4]
            raise InvalidInputError(
                f"Expected {len(self.model.components)} int64 share component(s) of shape "
                f"{shape} at {self.role!r}. Received: {got}"
            )
        return [np.ascontiguousarray(t) for t in tensors]

    def _wait(self, pending: Pending, request: Any) -> tuple[np.ndarray, int]:
        """Waits for the request's batch; a client that goes away is taken out of the queue."""
        held = pending.payload
        deadline = time.monotonic() + self.timeout + self.limits.max_delay + 5.0
        while not pending.finished:
            if not request.is_active():
                if self.batcher.cancel(pending):
                    self.held.drop(held.id)
                    logger.info("%s: a client went away; request dropped", self.role)
                raise PartyError("The client went away.")
            if time.monotonic() > deadline:
                raise PartyError(f"Server {self.role!r} did not run the request in time.")
            pending.wait_done(_POLL_S)
        try:
            output = pending.wait(0)
        finally:
            self.held.drop(held.id)
        return output, pending.batch_size

    def _result(self, request: Any) -> Any:
        from privkeras.net import Reply

        request_id, ticket = _hex(request.meta, "id"), _hex(request.meta, "ticket")
        left = request.time_remaining()
        wait = self.timeout if left is None else min(self.timeout, left)
        return Reply([self.held.take_result(request_id, request.peer, ticket, wait)])

    def _stats(self, request: Any) -> Any:
        from privkeras.net import Reply

        stats: dict[str, Any] = {
            "role": self.role,
            **self.held.stats(),
            "running_jobs": len(self._jobs),
            "busy": self.busy(),
            "draining": self.draining,
            "reveals": [list(r) for r in self.reveals],
        }
        if self.batcher is not None:
            stats.update(queued=self.batcher.queued, **self.batcher.stats)
        return Reply([], stats)

    # -- handlers for the front --------------------------------------------------------------
    def _from_front(self, request: Any) -> None:
        if request.peer != self.front or self.role == self.front:
            raise AuthenticationError(
                f"Expected jobs from the front server {self.front!r}. "
                f"Received: {request.method} from {request.peer!r}"
            )
        if not request.job:
            raise InvalidInputError(f"Expected a job id with {request.method}. Received: none")

    def _start(self, request: Any) -> Any:
        from privkeras.net import Reply

        self._from_front(request)
        if request.meta.get("digest") != self.model.manifest.digest:
            raise PartyError(
                f"Expected a job for the bundle {self.role!r} serves (manifest "
                f"{self.model.manifest.digest[:12]}). Received: one for manifest "
                f"{str(request.meta.get('digest'))[:12]}: the servers serve different bundles"
            )
        requests = _request_list(request.meta.get("requests"), self.limits)
        if self.model.components:
            helds, missing = self.held.claim(requests, wait=min(_ARRIVAL_WAIT, self.timeout))
            if missing:
                return Reply([], {"missing": missing})
        else:
            helds = []
        job = _PartyJob(self, request.job, helds, [rows for _, rows in requests])
        with self._lock:
            if request.job in self._jobs:
                self.held.release(helds)
                raise PartyError(f"Expected a new job id. Received: {request.job[:8]} (running)")
            self._jobs[request.job] = job
        job.thread.start()
        return Reply([], {"ok": True})

    def _drop(self, request: Any) -> Any:
        """The front refused a request: fail it here too (its client waits for it)."""
        if request.peer != self.front or self.role == self.front:
            raise AuthenticationError(
                f"Expected serve.drop from the front server {self.front!r}. "
                f"Received: one from {request.peer!r}"
            )
        ids = request.meta.get("ids")
        if not isinstance(ids, list) or len(ids) > self.limits.max_queued:
            raise InvalidInputError(
                f"Expected ids as a list of at most {self.limits.max_queued}. "
                f"Received: {type(ids).__name__}"
            )
        reason = str(request.meta.get("reason", "refused by the front server"))[:300]
        for request_id in ids:
            held = self.held.get(_hex({"id": request_id}, "id"))
            if held is not None and held.state == "waiting":
                self.held.fail(held, PartyError(f"The front server refused the request: {reason}"))

    def _cancel(self, request: Any) -> Any:
        self._from_front(request)
        with self._lock:
            job = self._jobs.get(request.job)
        if job is not None:
            job.cancelled = True
            self.node.abort(request.job, str(request.meta.get("reason", "cancelled"))[:300])

    # -- jobs ---------------------------------------------------------------------------------
    def run_job(self, job: str, parts: list[list[np.ndarray]], rows: Sequence[int], peers):
        """This role's part of one batch; returns its output component per request (None: dealer).

        Args:
            job: The job id (every role uses the front's).
            parts: Per request, this role's input components.
            rows: Rows per request.
            peers: Per request, `(client name, request id)` for the reveal log.
        """
        parties = [r for r in self.roles if r != "dealer"]
        comm = NetworkCommunicator(
            parties, Placement({self.role}), self.node, job, self.kernels, self.timeout
        )
        try:
            runtime = serving_runtime(self.model, self.kernels, comm)
            outputs = run_batch(self.model, runtime, parts, rows)
            comm.flush()  # every message this role sent was accepted
        finally:
            self.node.close_job(job)
        for part, count, (client, request_id) in zip(outputs, rows, peers):
            if part is not None:  # the dealer sends clients nothing
                to = f"client:{client}/{request_id[:8]}"
                self.reveals.append(("predictions", to, [count, *self.model.output_shape]))
        return outputs

    def _run_batch(self, batch: list[Pending]) -> None:
        """The front's batch: start the job on the other roles, run its own part, answer."""
        from privkeras.net import new_job_id

        while batch:
            job = new_job_id()
            helds = [p.payload for p in batch]
            for held in helds:
                held.state = "running"
            requests = [[h.id, h.rows] for h in helds]
            started, missing = self._start_others(job, requests, batch)
            if started is None:
                return
            if missing:
                self._cancel_others(job, started, "a party lacks some of the batch's inputs")
                patience = min(_ARRIVAL_TIMEOUT, self.timeout / 2, self.limits.request_ttl)
                late = time.monotonic() - patience
                for pending in batch:
                    pending.payload.state = "waiting"
                    if pending.payload.id not in missing:
                        continue
                    if pending.arrived > late:  # its part may still be on its way: later
                        self.batcher.requeue(pending, _RETRY_DELAY)
                        continue
                    failure = PartyError(missing[pending.payload.id])
                    pending.fail(failure)
                    self._drop_others([pending.payload.id], failure)
                batch = [p for p in batch if p.payload.id not in missing]
                continue
            try:
                outputs = self.run_job(
                    job, [h.parts for h in helds], [h.rows for h in helds],
                    [(h.peer, h.id) for h in helds],
                )  # fmt: skip
            except BaseException as error:
                failure = _as_party_error(error, self.role)
                self.node.abort(job, f"party {self.role!r} gave up the job: {failure}", self.others)
                for pending in batch:
                    pending.fail(failure)
                return
            for pending, output in zip(batch, outputs):
                pending.finish(output)
            return

    def _start_others(self, job: str, requests, batch) -> tuple[list[str] | None, dict[str, str]]:
        meta = {"digest": self.model.manifest.digest, "requests": requests}
        calls = {
            role: self._calls.submit(
                self.node.call, role, "serve.start", meta=meta, job=job, timeout=self.timeout
            )
            for role in self.others
        }
        started, missing, failure = [], {}, None
        for role, call in calls.items():
            try:
                reply = call.result()
            except BaseException as error:
                failure = failure or _as_party_error(error, self.role)
                continue
            lacking = reply.meta.get("missing") or []
            if not lacking:
                started.append(role)
            for rid in lacking:
                missing.setdefault(
                    str(rid),
                    f"Server {role!r} has no inputs of request {str(rid)[:8]}... (never sent, "
                    "expired, or the server restarted); send the request again",
                )
        if failure is not None:
            self._cancel_others(job, started, str(failure))
            for pending in batch:
                pending.fail(failure)
            self._drop_others([p.payload.id for p in batch], failure)
            return None, {}
        return started, missing

    def _cancel_others(self, job: str, roles: Sequence[str], reason: str) -> None:
        for role in roles:
            try:
                self.node.call(
                    role, "serve.cancel", meta={"reason": reason[:300]}, job=job, timeout=5.0
                )
            except PrivkerasError as error:
                logger.info("could not cancel job %s on %r: %s", job[:8], role, error)

    # -- life cycle ------------------------------------------------------------------------------
    def _janitor(self) -> None:
        while not self._closed.wait(1.0):
            self.held.sweep()

    def busy(self) -> bool:
        """Whether this role holds requests, runs jobs, or (the front) has batches to run."""
        batching = self.batcher is not None and self.batcher.busy
        return bool(self._jobs) or self.held.stats()["held_requests"] > 0 or batching

    def drain(self, timeout: float) -> None:
        """Takes no new requests; lets those in flight finish (up to `timeout` s).

        The front runs the batches it queued; every other role serves until it
        holds nothing and the front has nothing left to run (or is gone), so
        that stopping every role at once still finishes the requests in flight.
        """
        self.draining = True
        if self.batcher is not None:
            self.batcher.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.busy() and (self.role == self.front or not self._front_busy()):
                break
            time.sleep(0.05)
        self._closed.set()

    def _front_busy(self) -> bool:
        try:
            stats = self.node.call(self.front, "serve.stats", timeout=2.0).meta
        except PrivkerasError:
            return False  # gone: it runs nothing that needs this role
        return bool(stats.get("busy"))


class _PartyJob:
    """A batch job on a role other than the front: its thread and how it ends."""

    def __init__(self, server: MPCServer, job: str, helds: list[_Held], rows: list[int]):
        self.server, self.job, self.helds, self.rows = server, job, helds, rows
        self.cancelled = False
        self.thread = threading.Thread(
            target=self._run, name=f"privkeras-serve-{job[:8]}", daemon=True
        )

    def _run(self) -> None:
        server = self.server
        peers = [(h.peer, h.id) for h in self.helds] or [("", "")] * len(self.rows)
        try:
            outputs = server.run_job(self.job, [h.parts for h in self.helds], self.rows, peers)
            for held, output in zip(self.helds, outputs):
                server.held.finish(held, output)
        except BaseException as error:
            if self.cancelled:
                server.held.release(self.helds)
                return
            failure = _as_party_error(error, server.role)
            logger.warning("job %s failed: %s", self.job[:8], failure)
            server.node.abort(
                self.job, f"party {server.role!r} gave up the job: {failure}", server.others
            )
            for held in self.helds:
                server.held.fail(held, failure)
        finally:
            with server._lock:
                server._jobs.pop(self.job, None)


def serving_runtime(model: ServedModel, kernels: Any, communicator: Any) -> MPCRuntime:
    """A job's runtime among the servers only, with fresh stream keys agreed among them.

    Unlike a driver's job, no caller or model owner takes part: the weights'
    shares come from the bundles and the clients' from their requests.
    """
    from privkeras.backends.mpc.protocols.streams import agree_stream_keys, job_labels
    from privkeras.backends.mpc.runtime import MPCRuntime

    roles = job_roles(model.protocol)
    keys = agree_stream_keys(communicator, job_labels(model.protocol, ()), roles)
    return MPCRuntime(
        model.protocol,
        kernels=kernels,
        precision_bits=model.precision_bits,
        seed=None,
        communicator=communicator,
        keys=keys,
    )


def run_batch(
    model: ServedModel, runtime: MPCRuntime, parts: list[list[np.ndarray]], rows: Sequence[int]
) -> list[np.ndarray | None]:
    """One role's computation of a batch: stack the requests' rows, run the program, split.

    Args:
        model: The role's `ServedModel` (its weight components).
        runtime: The job's runtime, whose placement is this role alone.
        parts: Per request, this role's input components (none for the dealer).
        rows: Rows per request.

    Returns:
        Per request, this role's re-randomized output component (None for the dealer).
    """
    from privkeras.backends.mpc.protocols.base import Shares
    from privkeras.backends.mpc.tensor import SharedTensor

    total = int(sum(rows))
    if model.components:
        inputs = model.inputs(runtime, parts, total)
    else:
        shape = (total, *model.input_shape)
        inputs = SharedTensor(runtime, Shares((None,) * model.num_components, shape))
    outputs, _ = model.program.forward(inputs, model.params(runtime))
    starts = np.cumsum([0, *rows[:-1]]).tolist()
    return [
        output_part(runtime, outputs[start : start + count], model.role)
        for start, count in zip(starts, rows)
    ]


def output_part(runtime: MPCRuntime, outputs: Any, role: str) -> np.ndarray | None:
    """This party's component of `outputs`, re-randomized by a fresh zero sharing (None: dealer).

    Pond: p0 adds r and p1 subtracts r, r from the key they share. ABY3: party
    i adds F(k_i) - F(k_{i+1}) (k_j is the key of parties j and j - 1): the
    three masks add up to zero. The client adds the parties' parts and gets
    the outputs; each part alone is uniform.
    """
    if role not in runtime.parties:
        return None
    i = runtime.parties.index(role)
    own = np.asarray(runtime.kernels.to_numpy(outputs.shares[i]), dtype=np.int64)
    shape, streams = own.shape, runtime.streams
    if runtime.protocol_name == "pond":
        mask = streams.pair(0, 1).ring(shape)
        return own + mask if i == 0 else own - mask
    n = len(runtime.parties)
    mine = streams.pair(i, (i - 1) % n).ring(shape)
    theirs = streams.pair((i + 1) % n, i).ring(shape)
    return own + mine - theirs


def _kernel_library(engine: str) -> str:
    """The ring-kernel library of an MPC engine, read from the engine registry."""
    from privkeras.backends.registry import available_engines

    return getattr(available_engines().get(engine), "kernels", "numpy")


def _as_party_error(error: BaseException, role: str) -> PrivkerasError:
    if isinstance(error, PrivkerasError):
        return error
    return PartyError(f"Party {role!r} failed the batch: {type(error).__name__}: {error}")


def _hex(meta: Mapping[str, Any], name: str) -> str:
    value = meta.get(name)
    if not isinstance(value, str) or not _HEX.match(value):
        raise InvalidInputError(
            f"Expected {name} as 32 lowercase hex digits. Received: {name}={str(value)[:40]!r}"
        )
    return value


def _int(meta: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = meta.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInputError(
            f"Expected {name} in [{low}, {high}]. Received: {name}={str(value)[:40]!r}"
        )
    return value


def _request_list(value: Any, limits: ServingLimits) -> list[tuple[str, int]]:
    if not isinstance(value, list) or not 1 <= len(value) <= limits.max_queued:
        raise InvalidInputError(
            f"Expected a list of 1 to {limits.max_queued} [id, rows] pairs. Received: "
            f"{type(value).__name__}"
        )
    requests = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise InvalidInputError(f"Expected [id, rows] pairs. Received: {str(item)[:60]!r}")
        requests.append(
            (
                _hex({"id": item[0]}, "id"),
                _int({"rows": item[1]}, "rows", 1, limits.max_request_rows),
            )
        )
    return requests


# -- the client -------------------------------------------------------------------------------------
class MPCServingClient:
    """The client of an MPC bundle: shares its rows, reconstructs its outputs.

    Made by `pk.serving.connect(...)`; see `privkeras.serving.ServingClient`.

    Args:
        manifest: The bundle's (public) manifest fields.
        digest: The manifest's digest (the servers must serve this one).
        transport: A `privkeras.net.Client` that reaches every compute party.
        limits: The front's public limits (`max_request_rows`).
        timeout: Default seconds of one prediction.
    """

    def __init__(
        self,
        manifest: Mapping[str, Any],
        digest: str,
        transport: Any,
        limits: Mapping[str, Any],
        timeout: float,
    ):
        from privkeras.core.fixed_point import FixedPointCodec

        config = manifest["mpc"]
        self.transport, self.digest, self.timeout = transport, digest, float(timeout)
        self.front = manifest["front"]
        self.holdings = {
            role: tuple(entry["components"])
            for role, entry in config["parties"].items()
            if entry["components"]
        }
        self.num_components = int(config["components"])
        self.codec = FixedPointCodec(precision_bits=int(config["precision_bits"]))
        self.bound = float(manifest["input"]["bound"])
        self.max_rows = int(limits.get("max_request_rows", 1))
        self._calls = concurrent.futures.ThreadPoolExecutor(
            max_workers=8 * len(self.holdings), thread_name_prefix="privkeras-client"
        )

    def predict_batch(self, values: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """Private predictions of `values` (float64, already checked), as float32."""
        deadline = time.monotonic() + (self.timeout if timeout is None else float(timeout))
        outputs = [
            self._request(values[start : start + self.max_rows], deadline)
            for start in range(0, len(values), self.max_rows)
        ]
        return np.concatenate(outputs, axis=0)

    def _request(self, rows: np.ndarray, deadline: float) -> np.ndarray:
        peak = float(np.max(np.abs(rows))) if rows.size else 0.0
        if peak > self.bound:
            raise PrecisionOverflowError(
                f"Expected inputs with |x| <= {self.bound:g} (the bound the model owner exported "
                f"with, so that every layer stays within the fixed-point ring). Received: "
                f"max |x| = {peak:g}"
            )
        components = share_rows(self.codec.encode(rows, name="x"), self.num_components)
        request_id = secrets.token_hex(16)
        tickets = {role: secrets.token_hex(16) for role in self.holdings}
        roles = list(self.holdings)

        sending = [threading.Event() for role in roles if role != self.front]

        def submit(role: str, enqueue: bool, sent: threading.Event | None = None):
            meta = {
                "id": request_id,
                "ticket": tickets[role],
                "rows": len(rows),
                "enqueue": enqueue,
            }
            tensors = [components[c] for c in self.holdings[role]]
            if sent is not None:
                sent.set()
            else:  # the front last: the others' parts are on their way before it batches
                for event in sending:
                    event.wait(max(0.0, deadline - time.monotonic()))
            return self.transport.call(role, "serve.submit", tensors, meta, timeout=_left(deadline))

        others = [role for role in roles if role != self.front]
        # The front's call is queued after the others' (the pool runs calls in order):
        # its wait for them to be on their way never holds a worker they need.
        calls = {
            role: self._calls.submit(submit, role, False, e) for role, e in zip(others, sending)
        }
        calls[self.front] = self._calls.submit(submit, self.front, True)
        concurrent.futures.wait(
            calls.values(),
            timeout=max(0.0, deadline - time.monotonic()) + 1.0,
            return_when=concurrent.futures.FIRST_EXCEPTION,
        )
        failures = [c.exception() for c in calls.values() if c.done() and c.exception()]
        if failures:
            # The call to a dead, stalled or refusing party names it; the front's error
            # about a batch that failed elsewhere comes second.
            named = [f for f in failures if "front server refused" not in str(f)]
            raise (named or failures)[0]
        if not all(c.done() for c in calls.values()):
            raise PartyError(
                f"Expected every party's output component within the deadline. Received: "
                f"none from {sorted(r for r, c in calls.items() if not c.done())}"
            )
        parts = [calls[role].result().tensors[0] for role in roles]
        return reconstruct(parts, self.codec)

    def close(self) -> None:
        self._calls.shutdown(wait=False)


def share_rows(encoded: np.ndarray, num_components: int) -> list[np.ndarray]:
    """Additive components of int64 ring values: all but the last uniform (os.urandom keys)."""
    from privkeras.core.random import SecureStream

    stream = SecureStream()  # the client's own, fresh for every request
    components = [stream.ring(encoded.shape) for _ in range(num_components - 1)]
    last = np.array(encoded, dtype=np.int64)
    for component in components:
        last -= component  # wraps around mod 2^64, as the ring does
    return [*components, last]


def reconstruct(parts: Sequence[np.ndarray], codec: Any) -> np.ndarray:
    """The outputs from the parties' output components, decoded to float32.

    Raises:
        PartyError: Components of another type or shape than the first's.
    """
    total = np.array(parts[0], dtype=np.int64)
    for part in parts[1:]:
        if part.dtype != np.int64 or part.shape != total.shape:
            raise PartyError(
                f"Expected output components of shape {total.shape} (int64). "
                f"Received: {part.dtype} {part.shape}"
            )
        total += part
    return codec.decode(total).astype(np.float32)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise PartyError(
            "Expected a private prediction before the deadline. Received: none in time"
        )
    return left


# -- what `privkeras.serving` reaches through the registry ---------------------------------------
class MPCServingBackend:
    """The MPC engine's serving side, as `privkeras.serving` uses it (through the registry)."""

    kind = "mpc"

    @staticmethod
    def front(manifest: Manifest) -> str:
        return manifest.data["front"]

    @staticmethod
    def start_server(
        manifest: Manifest, role: str, node: Any, limits: ServingLimits, timeout: float
    ) -> MPCServer:
        """Loads the role's bundle (digests first) and registers its handlers on `node`."""
        return MPCServer(ServedModel(manifest, role), node, limits, timeout)

    @staticmethod
    def connect(
        manifest: Manifest, transport: Any, info: Mapping[str, Any], timeout: float
    ) -> MPCServingClient:
        return MPCServingClient(
            manifest.data, manifest.digest, transport, info.get("limits", {}), timeout
        )
