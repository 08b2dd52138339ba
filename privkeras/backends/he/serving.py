"""HE serving: one server evaluates clients' ciphertexts; each client holds its own keys.

Who holds what:

- the server (`privkeras serve bundle_he`) holds the model and, per client
  session, that client's public context (public, relinearization and Galois
  keys): it can compute on the client's ciphertexts, never decrypt them;
- a client holds its secret key (made when it connects, never sent), its
  rows and its outputs.

A session, as the client makes it (`HEServingClient`):

1. `serve.spec` per packing the bundle offers: the server's public packing
   specs (checked against the manifest's fingerprints).
2. `serve.register`: the client's public context, once: one set of Galois
   keys for every packing's rotations. The server keeps at most
   `max_sessions` contexts (the least recently used idle one goes first;
   its client registers again on its next request) and drops one idle for
   `request_ttl` x 20 seconds.
3. `serve.predict`: one encrypted group (up to a packing's block of rows)
   in, the encrypted outputs back. Requests that a client's threads make
   at the same time are coalesced by the client into one group, up to the
   largest block (`max_batch_rows`) or `max_delay`: the SIMD slots carry
   them for the cost of one (batching per client: ciphertexts under
   different keys cannot share slots).

Notes:
    CKKS (Cheon, Kim, Kim and Song, ASIACRYPT 2017) through SEAL: the server
    sees ciphertexts under the client's key and the client's public keys,
    which reveal nothing about the rows under the RLWE assumption. The
    server is trusted to evaluate the model it was given (CKKS has no
    integrity); the client learns the model's outputs on its rows, as with
    any prediction service. See docs/policies/he.md.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from privkeras.backends.he.bundles import SERVER, ServedHEModel
from privkeras.backends.he.errors import HEInputError
from privkeras.errors import InvalidInputError, PartyError, PrivkerasError

if TYPE_CHECKING:
    from privkeras.serving.bundle import Manifest
    from privkeras.serving.limits import ServingLimits

__all__ = ["HEModelServer", "HEServingBackend", "HEServingClient"]

logger = logging.getLogger("privkeras.serving")

_HEX = re.compile(r"^[0-9a-f]{32}$")
#: A session idle this many request TTLs is forgotten.
_SESSION_TTLS = 20


class _Session:
    __slots__ = ("context", "last_used", "lock", "nbytes", "peer")

    def __init__(self, peer: str, context: Any, nbytes: int):
        self.peer, self.context, self.nbytes = peer, context, nbytes
        self.last_used = time.monotonic()
        self.lock = threading.Lock()  # one evaluation at a time per session


class HESessions:
    """Clients' public contexts, bounded in number, bytes and idle time.

    Args:
        server: The server's name (for messages).
        max_sessions: Contexts kept at once.
        max_bytes: Bytes of serialized contexts kept at once.
        idle_ttl: Seconds after which an idle session is dropped.
    """

    def __init__(self, server: str, max_sessions: int, max_bytes: int, idle_ttl: float):
        self.server, self.max_sessions, self.max_bytes = server, max_sessions, max_bytes
        self.idle_ttl = idle_ttl
        self._sessions: collections.OrderedDict[str, _Session] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, peer: str, context: Any, nbytes: int) -> str:
        """Keeps a context; returns its session id. Makes room by dropping idle sessions.

        Raises:
            PartyError: Every kept session is busy and there is no room.
        """
        self.sweep()
        with self._lock:
            while self._sessions and (
                len(self._sessions) >= self.max_sessions
                or sum(s.nbytes for s in self._sessions.values()) + nbytes > self.max_bytes
            ):
                idle = next((k for k, s in self._sessions.items() if not s.lock.locked()), None)
                if idle is None:
                    raise PartyError(
                        f"Server {self.server!r} is busy: {len(self._sessions)} client sessions "
                        "are evaluating; try again."
                    )
                del self._sessions[idle]
                logger.info("%s dropped an idle session to make room", self.server)
            session_id = secrets.token_hex(16)
            self._sessions[session_id] = _Session(peer, context, nbytes)
            return session_id

    def get(self, session_id: str, peer: str) -> _Session:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.peer != peer:
                raise PartyError(
                    f"Expected a session registered with {self.server!r}. Received: unknown "
                    f"session {session_id[:8]}... (expired or dropped: register again)"
                )
            self._sessions.move_to_end(session_id)
            session.last_used = time.monotonic()
            return session

    def drop(self, session_id: str, peer: str) -> None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.peer == peer:
                del self._sessions[session_id]

    def sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            for key in [
                k
                for k, s in self._sessions.items()
                if now - s.last_used > self.idle_ttl and not s.lock.locked()
            ]:
                del self._sessions[key]

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "sessions": len(self._sessions),
                "session_bytes": sum(s.nbytes for s in self._sessions.values()),
            }


class HEModelServer:
    """The server of an HE bundle on its `privkeras.net.Node`.

    Args:
        model: The loaded `ServedHEModel`.
        node: The (unstarted) node named `server`.
        limits: `ServingLimits` (request rows, rate, sessions, parallel evaluations).
        timeout: Seconds a request may wait for an evaluation slot.
    """

    def __init__(self, model: ServedHEModel, node: Any, limits: ServingLimits, timeout: float):
        from privkeras.serving.limits import RateLimiter

        self.model, self.node, self.limits, self.timeout = model, node, limits, float(timeout)
        self.sessions = HESessions(
            node.name,
            limits.max_sessions,
            limits.max_held_bytes,
            max(60.0, limits.request_ttl * _SESSION_TTLS),
        )
        self.rates = RateLimiter(limits.rate, limits.burst)
        self._slots = threading.BoundedSemaphore(limits.max_parallel_batches)
        self._active = 0
        self._active_lock = threading.Lock()
        self.stats = {"requests": 0, "rows": 0, "largest": 0}
        self.draining = False
        for method, handler in {
            "serve.info": self._info,
            "serve.spec": self._spec,
            "serve.register": self._register,
            "serve.predict": self._predict,
            "serve.close": self._close,
            "serve.stats": self._stats,
        }.items():
            node.register(method, handler)

    def _info(self, request: Any) -> Any:
        from privkeras.net import Reply

        meta = {
            "digest": self.model.manifest.digest,
            "role": SERVER,
            "front": SERVER,
            "addresses": {SERVER: self.node.address},
            "limits": self.limits.public(),
        }
        return Reply([np.frombuffer(self.model.manifest.raw, dtype=np.uint8)], meta)

    def _spec(self, request: Any) -> Any:
        from privkeras.net import Reply

        block = request.meta.get("block")
        if isinstance(block, bool) or block not in self.model.specs:
            raise InvalidInputError(
                f"Expected block in {sorted(self.model.specs)}. Received: block={str(block)[:40]!r}"
            )
        return Reply([np.frombuffer(self.model.specs[block].to_bytes(), dtype=np.uint8)])

    def _register(self, request: Any) -> Any:
        from privkeras.backends.he.context import PublicContext
        from privkeras.net import Reply

        self._accepting(request)
        data = _one_blob(request.tensors, "public context")
        context = PublicContext.from_bytes(data)  # strict: a secret context is refused
        if context.parameters != self.model.server.parameters:
            raise InvalidInputError(
                f"Expected a context for {self.model.server.parameters}. Received: one for "
                f"{context.parameters}"
            )
        if not context.covers(set(self.model.rotation_steps)):
            raise InvalidInputError(
                f"Expected Galois keys for rotation steps {self.model.rotation_steps} (the "
                "bundle's client spec lists them). Received: a context without some"
            )
        session = self.sessions.add(request.peer, context, len(data))
        logger.info("session %s registered (%d bytes of public keys)", session[:8], len(data))
        return Reply([], {"session": session})

    def _predict(self, request: Any) -> Any:
        from privkeras.backends.he.context import EncryptedBatch
        from privkeras.net import Reply

        self._accepting(request)
        session_id = request.meta.get("session")
        if not isinstance(session_id, str) or not _HEX.match(session_id):
            raise InvalidInputError(
                f"Expected a session id (32 hex digits). Received: {str(session_id)[:40]!r}"
            )
        session = self.sessions.get(session_id, request.peer)
        data = _one_blob(request.tensors, "ciphertexts")
        batch = EncryptedBatch.from_bytes(data, session.context)
        if batch.n_samples > self.limits.max_request_rows:
            raise InvalidInputError(
                f"Expected at most {self.limits.max_request_rows} rows per request. "
                f"Received: n_samples={batch.n_samples}"
            )
        if not self._slots.acquire(timeout=self.timeout):
            raise PartyError(
                f"Server {SERVER!r} is busy: no evaluation slot in {self.timeout:g} s."
            )
        try:
            with self._active_lock:
                self._active += 1
            with session.lock:
                outputs = self.model.server.evaluate(batch, session.context)
        finally:
            with self._active_lock:
                self._active -= 1
            self._slots.release()
        with self._active_lock:
            self.stats["requests"] += 1
            self.stats["rows"] += batch.n_samples
            self.stats["largest"] = max(self.stats["largest"], batch.n_samples)
        return Reply([np.frombuffer(outputs.to_bytes(), dtype=np.uint8)])

    def _close(self, request: Any) -> Any:
        session_id = request.meta.get("session")
        if isinstance(session_id, str):
            self.sessions.drop(session_id, request.peer)

    def _stats(self, request: Any) -> Any:
        from privkeras.net import Reply

        with self._active_lock:
            stats = {**self.stats, "running": self._active}
        return Reply(
            [],
            {
                "role": SERVER,
                **stats,
                **self.sessions.stats(),
                "busy": stats["running"] > 0,
                "draining": self.draining,
                "holds_secret_key": bool(getattr(self.model.server, "has_secret_key", True)),
            },
        )

    def _accepting(self, request: Any) -> None:
        if self.draining:
            raise PartyError(f"Server {SERVER!r} is shutting down: it takes no new requests.")
        self.rates.check(request.peer, SERVER)

    def drain(self, timeout: float) -> None:
        """Takes no new requests; lets evaluations in flight finish (up to `timeout` s)."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._active_lock:
                if not self._active:
                    return
            time.sleep(0.05)


def _one_blob(tensors: Any, what: str) -> bytes:
    if len(tensors) != 1 or np.asarray(tensors[0]).dtype != np.uint8 or tensors[0].ndim != 1:
        raise HEInputError(
            f"Expected the {what} as one 1-D uint8 tensor. Received: "
            f"{[(str(t.dtype), tuple(t.shape)) for t in tensors][:3]}"
        )
    return np.asarray(tensors[0]).tobytes()


# -- the client -----------------------------------------------------------------------------------
class HEServingClient:
    """The client of an HE bundle: makes the keys, encrypts, decrypts; coalesces its requests.

    Made by `pk.serving.connect(...)`; see `privkeras.serving.ServingClient`.

    Args:
        manifest: The bundle's public `Manifest`.
        transport: A `privkeras.net.Client` that reaches the server.
        info: The server's `serve.info` metadata (its limits).
        timeout: Default seconds of one prediction.
    """

    def __init__(self, manifest: Manifest, transport: Any, info: Mapping[str, Any], timeout: float):
        from privkeras.backends.he.client import HEClient
        from privkeras.backends.he.program import PackingSpec
        from privkeras.serving.batching import Batcher
        from privkeras.serving.bundle import BundleError

        self.transport, self.timeout = transport, float(timeout)
        config = manifest.data["he"]
        limits = dict(info.get("limits") or {})
        self.specs = {}
        for packing in config["packings"]:
            reply = transport.call(SERVER, "serve.spec", meta={"block": packing["block"]})
            spec = PackingSpec.from_bytes(bytes(np.asarray(reply.tensors[0], np.uint8)))
            if spec.fingerprint != packing["spec"]:
                raise BundleError(
                    f"Expected the server's packing for block {packing['block']} to be "
                    f"{packing['spec']} (the manifest's). Received: {spec.fingerprint}"
                )
            self.specs[spec.block] = spec
        first = next(iter(self.specs.values()))
        self.keys = HEClient(first.parameters)  # the secret key is made here and stays here
        steps = sorted({s for spec in self.specs.values() for s in spec.rotation_steps})
        self._context = self.keys.public_context(rotation_steps=steps).to_bytes()
        self._session: str | None = None
        self._session_lock = threading.Lock()
        self._register()
        largest = max(self.specs)
        max_rows = max(1, min(largest, int(limits.get("max_request_rows", largest))))
        self.max_rows = max_rows
        self.batcher = Batcher(
            self._run,
            max_rows=max_rows,
            max_delay=float(limits.get("max_delay", 0.005) or 0.005),
            workers=2,
            max_queued=4096,
            name="client",
        )

    def _register(self) -> None:
        reply = self.transport.call(
            SERVER, "serve.register", [np.frombuffer(self._context, np.uint8)], timeout=self.timeout
        )
        self._session = str(reply.meta["session"])

    def predict_batch(self, values: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """Private predictions of `values` (float64, already checked), as float32."""
        timeout = self.timeout if timeout is None else float(timeout)
        pending = [
            self.batcher.submit(
                values[start : start + self.max_rows], len(values[start : start + self.max_rows])
            )
            for start in range(0, len(values), self.max_rows)
        ]
        deadline = time.monotonic() + timeout
        return np.concatenate(
            [p.wait(max(0.0, deadline - time.monotonic())) for p in pending], axis=0
        )

    def _run(self, batch: list[Any]) -> None:
        rows = np.concatenate([p.payload for p in batch], axis=0)
        block = min((b for b in self.specs if b >= len(rows)), default=max(self.specs))
        spec = self.specs[block]
        data = self.keys.encrypt_to_bytes(rows, spec)
        reply = self._call_predict(data, block)
        from privkeras.backends.he.context import EncryptedBatch

        outputs = EncryptedBatch.from_bytes(
            bytes(np.asarray(reply.tensors[0], np.uint8)), self.keys
        )
        y = self.keys.decrypt(outputs, spec).astype(np.float32)
        start = 0
        for pending in batch:
            pending.finish(y[start : start + pending.rows])
            start += pending.rows

    def _call_predict(self, data: bytes, block: int) -> Any:
        for attempt in (0, 1):
            session = self._session
            try:
                return self.transport.call(
                    SERVER, "serve.predict", [np.frombuffer(data, np.uint8)],
                    meta={"session": session, "block": block}, timeout=self.timeout,
                )  # fmt: skip
            except PartyError as error:
                if attempt or "register again" not in str(error):
                    raise
                with self._session_lock:  # the server dropped our session: register once more
                    if self._session == session:
                        self._register()
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.batcher.close()
        if self._session is not None:
            with contextlib.suppress(PrivkerasError):
                self.transport.call(
                    SERVER, "serve.close", meta={"session": self._session}, timeout=1
                )
            self._session = None


class HEServingBackend:
    """The HE engine's serving side, as `privkeras.serving` uses it (through the registry)."""

    kind = "he"

    @staticmethod
    def front(manifest: Manifest) -> str:
        return SERVER

    @staticmethod
    def start_server(
        manifest: Manifest, role: str, node: Any, limits: ServingLimits, timeout: float
    ) -> HEModelServer:
        """Loads the bundle (digests first) and registers the server's methods on `node`."""
        from privkeras.serving.bundle import BundleError

        if role != SERVER:
            raise BundleError(f"Expected role {SERVER!r} for an HE bundle. Received: {role!r}")
        return HEModelServer(ServedHEModel(manifest), node, limits, timeout)

    @staticmethod
    def connect(
        manifest: Manifest, transport: Any, info: Mapping[str, Any], timeout: float
    ) -> HEServingClient:
        return HEServingClient(manifest, transport, info, timeout)
