"""A node: one gRPC server per process, plus a client to its named peers.

Two primitives, for every engine:

- **Tagged messages** for protocol rounds: `send(dst, job, round, tensors,
  meta)` on one node, `recv(src, job, round, timeout=...)` on the other;
  `exchange(job, round, {dst: tensors}, expect=[src, ...])` sends a round's
  messages and waits for the ones expected. A message is keyed by (job,
  sender, round): early ones are buffered, late, duplicated or replayed ones
  refused and logged.
- **Calls**: `register(method, handler)` on the server, `call(peer, method,
  tensors, meta)` on the caller; a handler's error comes back as a typed
  error, never a hang.

Every wait has a deadline; a silent or dead peer is a `PartyError` naming it
and the step. The node serves the standard gRPC health service
(`grpc.health.v1.Health`), refuses new calls and drains in-flight ones on
`stop` (SIGTERM under `serve_forever`), and keeps jobs apart: several jobs run
at once, and one job's abort or failure does not touch another.

Example:

```python
import numpy as np
from privkeras.net import Credentials, Node, Reply

creds = Credentials.mutual_tls("certs/ca.pem", "certs/p0.pem", "certs/p0.key")
with Node("p0", listen="127.0.0.1:0", peers="cluster.json", credentials=creds) as node:
    node.register("echo", lambda request: Reply(request.tensors, request.meta))
    inbox = node.exchange("job-1", 0, {"p1": [np.arange(3)]}, expect=["p1"], timeout=30)
    inbox["p1"].tensors[0]
```
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from typing import Any

from privkeras import errors
from privkeras.core.registry import Registry
from privkeras.errors import AuthenticationError, PartyError, RemoteCallError, WireError
from privkeras.net import wire
from privkeras.net.certs import check_peer_name
from privkeras.net.client import (
    _ACK,
    ERROR_TYPE_KEY,
    FETCH_KEY,
    SERVICE,
    WINDOW_BYTES,
    Client,
    Reply,
    _tensor_list,
)
from privkeras.net.cluster import ClusterMap, format_address, is_loopback, parse_address
from privkeras.net.credentials import Credentials, peer_identities
from privkeras.net.mailbox import ByteBudget, Mailbox, MessageRefused
from privkeras.net.wire import DEFAULT_LIMITS, Frame, WireLimits

__all__ = ["Handler", "Node", "Request", "new_job_id"]

logger = logging.getLogger("privkeras.net")

#: Seconds a large reply waits for its caller to fetch the rest.
FETCH_TTL_S = 60.0
#: Threads kept free of calls for deliveries, fetches and health checks.
SPARE_THREADS = 8


def new_job_id() -> str:
    """A fresh, unguessable job id (jobs must never reuse ids: replays are refused by id)."""
    return uuid.uuid4().hex


@dataclasses.dataclass(frozen=True)
class Request:
    """A call as its handler sees it.

    Attributes:
        method: The called method.
        peer: The caller's name: proven by its certificate under mutual TLS,
            claimed (and token-checked) under token authentication.
        job: The job the call belongs to ("" if none).
        meta: The caller's metadata dict.
        tensors: The caller's tensors (writable numpy arrays).
    """

    method: str
    peer: str
    job: str
    meta: Mapping[str, Any]
    tensors: Sequence[Any]
    _context: Any = dataclasses.field(repr=False, default=None)

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline (None if it set none)."""
        return None if self._context is None else self._context.time_remaining()

    def is_active(self) -> bool:
        """False once the caller has gone away (cancelled, deadline passed)."""
        return True if self._context is None else self._context.is_active()


Handler = Callable[[Request], "Reply | None"]


@dataclasses.dataclass
class _StoredReply:
    owner: str
    chunks: list[bytes]
    nbytes: int
    expires: float


class Node(Client):
    """One process's endpoint: a gRPC server plus a client to its named peers.

    Args:
        name: This node's peer name (under mutual TLS, its certificate's name).
        listen: `host:port` to bind; port 0 lets the OS choose (see `address`).
            A specific interface only: `0.0.0.0` and `::` are refused.
        peers: The cluster map (dict, JSON file path or `ClusterMap`).
        credentials: `Credentials` (mutual TLS, token over TLS, or insecure).
        limits: Wire limits.
        timeout: Default deadline, in seconds, of sends, receives and calls.
        allowed_peers: If given, only these names may send or call.
        max_concurrent_calls: Calls served at once; more get a "busy" error.
        max_message_streams: Peers streaming messages at once (each holds a
            server thread); more fall back to one call per message.
        max_buffered_bytes: Bytes held for peers at once (early messages,
            frames in transit, large replies).
        job_ttl: Seconds after which an idle job's unclaimed messages are dropped.

    Raises:
        PartyError: `listen` is not a specific `host:port`.
        AuthenticationError: The credentials do not fit (see `Client`).
    """

    def __init__(
        self,
        name: str,
        *,
        listen: str = "127.0.0.1:0",
        peers: Mapping[str, str] | str | ClusterMap | None = None,
        credentials: Credentials,
        limits: WireLimits = DEFAULT_LIMITS,
        timeout: float = 30.0,
        allowed_peers: Iterable[str] | None = None,
        max_concurrent_calls: int = 16,
        max_message_streams: int = 16,
        max_buffered_bytes: int = 1 << 30,
        job_ttl: float = 600.0,
    ):
        super().__init__(name, peers, credentials=credentials, limits=limits, timeout=timeout)
        self._host, self._port = parse_address(listen, what="listen")
        self.allowed_peers = None if allowed_peers is None else frozenset(allowed_peers)
        self.max_concurrent_calls = int(max_concurrent_calls)
        self.max_message_streams = int(max_message_streams)
        self._stream_slots = threading.BoundedSemaphore(self.max_message_streams)
        self.budget = ByteBudget(max_buffered_bytes)
        self.mailbox = Mailbox(self.budget, job_ttl)
        self.handlers: Registry[str, Handler] = Registry("method", unknown_error=RemoteCallError)
        self.address: str | None = None
        self._server = None
        self._health = None
        self._call_slots = threading.BoundedSemaphore(self.max_concurrent_calls)
        self._active = threading.Condition()
        self._active_calls = 0
        self._draining = False
        self._stopped = threading.Event()
        self._replies: dict[str, _StoredReply] = {}
        self._replies_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Node(name={self.name!r}, address={self.address!r}, mode={self.credentials.mode!r})"

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> Node:
        """Binds and starts serving. Returns self; `address` is the bound `host:port`.

        Raises:
            PartyError: The address cannot be bound (port in use, not this host's).
        """
        if self._server is not None:
            return self
        grpc = self._grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        size = self.limits.max_message_bytes
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.max_concurrent_calls + self.max_message_streams + SPARE_THREADS,
                thread_name_prefix=f"privkeras-{self.name}",
            ),
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.http2.lookahead_bytes", WINDOW_BYTES),
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ],
        )
        server.add_generic_rpc_handlers([self._generic_handler()])
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        target = format_address(self._host, self._port)
        if not is_loopback(self._host) and self.credentials.insecure:
            logger.warning(
                "node %r serves PLAIN TEXT on a non-loopback address %s", self.name, target
            )
        port = self._bind(server, target)
        server.start()
        self._server = server
        self.address = format_address(self._host, port)
        for service in ("", SERVICE):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        logger.info("node %r serving on %s (%s)", self.name, self.address, self.credentials.mode)
        return self

    def _bind(self, server: Any, target: str) -> int:
        try:
            credentials = self.credentials.server_credentials()
            if credentials is None:
                port = server.add_insecure_port(target)
            else:
                port = server.add_secure_port(target, credentials)
        except RuntimeError:
            port = 0
        if port:
            return port
        reason = "cannot be bound"
        probe = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET)
        try:
            probe.bind((self._host, self._port))
        except OSError as error:
            reason = error.strerror or str(error)
        finally:
            probe.close()
        raise PartyError(
            f"Expected a free address to listen on for node {self.name!r}. "
            f"Received: listen={target!r} ({reason})"
        )

    def stop(self, grace: float = 5.0) -> None:
        """Stops: refuses new calls, lets in-flight calls finish for up to `grace` s, then closes.

        Deliveries keep being accepted during the grace period, so that jobs in
        flight can finish their rounds.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._draining = True
        deadline = time.monotonic() + grace
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        with self._active:
            while self._active_calls and time.monotonic() < deadline:
                self._active.wait(max(0.0, deadline - time.monotonic()))
            unfinished = self._active_calls
        if unfinished:
            logger.warning(
                "node %r stops with %d calls unfinished after %.1f s", self.name, unfinished, grace
            )
        self.mailbox.stop(f"node {self.name!r} is stopping")
        self.close()  # our message streams to peers end here; theirs to us when the server stops
        if self._server is not None:
            self._server.stop(grace=min(0.25, max(0.0, deadline - time.monotonic()))).wait()
        logger.info("node %r stopped", self.name)

    def serve_forever(self, *, grace: float = 5.0, parent_pid: int | None = None) -> None:
        """Serves until SIGTERM or SIGINT (or until `parent_pid` exits), then `stop(grace)`."""
        self.start()
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
        while not stop.wait(0.5) and not self._stopped.is_set():
            if parent_pid is not None and os.getppid() != parent_pid:
                logger.warning(
                    "node %r: parent process %d is gone; stopping", self.name, parent_pid
                )
                break
        self.stop(grace)

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- tagged messages ------------------------------------------------------------------------
    def recv(
        self,
        src: str,
        job: str,
        round: int,
        *,
        timeout: float | None = None,
        step: str | None = None,
    ) -> Frame:
        """Waits for the message of `job`, `round` from `src` (buffered if it came early).

        Raises:
            PartyError: Nothing came before the deadline (naming `src`, the job,
                the round and `step`), the job was aborted or closed, or the node stops.
        """
        deadline = time.monotonic() + self._timeout(timeout)
        return self.mailbox.get(job, src, round, deadline, step=step)

    def exchange(
        self,
        job: str,
        round: int,
        outgoing: Mapping[str, Any],
        expect: Iterable[str],
        *,
        timeout: float | None = None,
        step: str | None = None,
    ) -> dict[str, Frame]:
        """One round: sends `outgoing[dst]` to each dst, then waits for one message from each of `expect`.

        Args:
            outgoing: `{dst: tensors}` where tensors is a list of arrays, one
                array, or a `Reply(tensors, meta)` to send metadata too.
            expect: Peers this node receives from in this round.

        Returns:
            `{src: Frame}` for every src in `expect`.

        Raises:
            PartyError: A send failed for good or a message did not come before
                the (shared) deadline; the error names the peer and `step`.
        """
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        wake = threading.Event()
        pending = {}
        for dst, payload in outgoing.items():
            tensors, meta = _payload(payload)
            send = self.send_async(dst, job, round, tensors, meta, timeout=timeout)
            send.add_done_callback(lambda s: wake.set() if s.error() is not None else None)
            pending[dst] = send

        def interrupted() -> BaseException | None:
            return next((s.error() for s in pending.values() if s.error() is not None), None)

        inbox = {}
        for src in expect:
            try:
                inbox[src] = self.mailbox.get(
                    job, src, round, deadline, wake=wake, interrupted=interrupted, step=step
                )
            except PartyError as error:
                failed = pending.get(src)
                if (
                    failed is not None
                    and failed.error() is not None
                    and failed.error() is not error
                ):
                    raise PartyError(
                        f"{error} Sending to it failed too: {failed.error()}"
                    ) from None
                raise
        for send in pending.values():
            send.result()
        return inbox

    def abort(
        self, job: str, reason: str, peers: Iterable[str] = (), *, timeout: float = 2.0
    ) -> None:
        """Gives up `job`: local waiters wake with a `PartyError`, and `peers` are told.

        Telling peers is best effort (they may be the ones that died).
        """
        self.mailbox.abort(job, self.name, reason)
        sends = []
        for peer in peers:
            try:
                sends.append(
                    self.send_async(
                        peer, job, 0, (), {"reason": reason[:500]}, timeout=timeout, kind=wire.ABORT
                    )
                )
            except PartyError as error:
                logger.info("could not tell %r that job %r aborted: %s", peer, job, error)
        for send in sends:
            try:
                send.result()
            except PartyError as error:
                logger.info("could not tell %r that job %r aborted: %s", send.dst, job, error)

    def close_job(self, job: str) -> None:
        """Forgets `job` on this node: buffered messages are dropped, later ones refused."""
        self.mailbox.close_job(job)

    # -- calls --------------------------------------------------------------------------------
    def register(self, method: str, handler: Handler, *, replace: bool = False) -> Handler:
        """Serves `method` with `handler(request) -> Reply | None` (runs in a server thread).

        Raises:
            RegistrationError: `method` is taken and `replace` is False.
        """
        wire._encode_text("method", method, wire.MAX_METHOD_BYTES)
        if not method:
            raise ValueError("Expected a non-empty method name. Received: method=''")
        return self.handlers.register(method, handler, replace=replace)

    # -- gRPC handlers ------------------------------------------------------------------------
    def _generic_handler(self):
        grpc = self._grpc
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Deliver": grpc.unary_unary_rpc_method_handler(lambda r, c: self._deliver([r], c)),
                "DeliverStream": grpc.stream_unary_rpc_method_handler(self._deliver),
                "Call": grpc.unary_unary_rpc_method_handler(lambda r, c: self._call([r], c)),
                "CallStream": grpc.stream_unary_rpc_method_handler(self._call),
                "Fetch": grpc.unary_stream_rpc_method_handler(self._fetch),
                "Messages": grpc.stream_stream_rpc_method_handler(self._messages),
            },
        )

    def _deliver(self, chunks: Iterable[bytes], context: Any) -> bytes:
        self._require_token(context)
        refusal = self._accept_message(chunks, context)
        if refusal is not None:
            self._refuse(context, *refusal)
        return b""

    def _messages(self, requests: Iterable[bytes], context: Any):
        """The long-lived message stream: chunks of message after message in, one ack per message out."""
        self._require_token(context)
        if not self._stream_slots.acquire(blocking=False):
            self._refuse(
                context,
                "RESOURCE_EXHAUSTED",
                PartyError(
                    f"Node {self.name!r} serves {self.max_message_streams} message streams."
                ),
            )
        assembler, index, skip, refusal = None, 0, 0, None
        try:
            for chunk in requests:
                if skip:  # the rest of a message refused on its first chunk
                    skip -= 1
                    if not skip:
                        yield _ack(index, refusal)
                        index += 1
                    continue
                if assembler is None:
                    assembler = wire.ChunkAssembler(
                        self.limits, reserve=lambda n: self.budget.acquire(n, "a message")
                    )
                try:
                    assembler.add(chunk)
                except MessageRefused as error:  # over budget: skip it, stay in step
                    count = wire.chunk_count(chunk)
                    assembler, refusal = None, self._logged(context, "RESOURCE_EXHAUSTED", error)
                    skip = count - 1
                    if not skip:
                        yield _ack(index, refusal)
                        index += 1
                    continue
                except WireError as error:  # message boundaries are lost: end the stream
                    self.budget.release(assembler.total)
                    assembler = None
                    self._refuse(
                        context,
                        "INVALID_ARGUMENT",
                        WireError(f"Refused a malformed message: {error}"),
                    )
                if assembler.complete:
                    done, assembler = assembler, None
                    yield _ack(index, self._file_assembled(done, context))
                    index += 1
        finally:
            if assembler is not None:
                self.budget.release(assembler.total)
            self._stream_slots.release()

    def _file_assembled(self, assembler: wire.ChunkAssembler, context: Any):
        try:
            frame = assembler.frame()
        except WireError as error:
            self.budget.release(assembler.total)
            return self._logged(
                context, "INVALID_ARGUMENT", WireError(f"Refused a malformed message: {error}")
            )
        return self._file(frame, assembler.total, context)

    def _accept_message(self, chunks: Iterable[bytes], context: Any):
        """Decodes one message or abort frame and files it; returns a refusal (code, error) or None."""
        try:
            frame, nbytes = self._decode(chunks, "message")
        except (WireError, MessageRefused) as error:
            code = "RESOURCE_EXHAUSTED" if isinstance(error, MessageRefused) else "INVALID_ARGUMENT"
            return self._logged(context, code, error)
        return self._file(frame, nbytes, context)

    def _file(self, frame: Frame, nbytes: int, context: Any):
        """Puts a decoded message in the mailbox (or applies an abort); returns a refusal or None."""
        refusal = self._sender_refusal(context, frame, (wire.MESSAGE, wire.ABORT))
        if refusal is None:
            try:
                if frame.kind == wire.MESSAGE:
                    self.mailbox.put(frame, nbytes)
                    return None
                reason = str(frame.meta.get("reason", ""))
                logger.warning("job %r aborted by %r: %s", frame.job, frame.sender, reason)
                self.mailbox.abort(frame.job, frame.sender, reason)
            except MessageRefused as error:
                code = "RESOURCE_EXHAUSTED" if error.reason == "budget" else "FAILED_PRECONDITION"
                refusal = (code, error)
        self.budget.release(nbytes)
        return None if refusal is None else self._logged(context, *refusal)

    def _logged(self, context: Any, code: str, error: BaseException):
        logger.warning("node %r refused a message from %s: %s", self.name, context.peer(), error)
        return code, error

    def _call(self, chunks: Iterable[bytes], context: Any) -> bytes:
        self._require_token(context)
        if self._draining:
            self._refuse(
                context, "UNAVAILABLE", PartyError(f"Node {self.name!r} is shutting down.")
            )
        if not self._call_slots.acquire(blocking=False):
            self._refuse(
                context,
                "RESOURCE_EXHAUSTED",
                PartyError(
                    f"Node {self.name!r} is busy: {self.max_concurrent_calls} calls running."
                ),
            )
        with self._active:
            self._active_calls += 1
        nbytes = 0
        try:
            frame, nbytes = self._receive(chunks, context, "request")
            refusal = self._sender_refusal(context, frame, (wire.REQUEST,))
            if refusal is not None:
                self._refuse(context, *refusal)
            return self._answer(frame, context)
        finally:
            self.budget.release(nbytes)
            self._call_slots.release()
            with self._active:
                self._active_calls -= 1
                self._active.notify_all()

    def _answer(self, frame: Frame, context: Any) -> bytes:
        try:
            handler = self.handlers.get(frame.method)
        except RemoteCallError as error:
            self._refuse(context, "UNIMPLEMENTED", error)
        request = Request(frame.method, frame.sender, frame.job, frame.meta, frame.tensors, context)
        try:
            reply = handler(request)
            reply = Reply() if reply is None else reply
            if not isinstance(reply, Reply):
                raise TypeError(
                    f"Expected the handler of {frame.method!r} to return a Reply or None. "
                    f"Received: {type(reply).__name__}"
                )
            response = Frame(
                wire.RESPONSE,
                frame.job,
                0,
                self.name,
                frame.sender,
                "",
                reply.meta,
                _tensor_list(reply.tensors),
            )
            chunks = wire.encode(response, self.limits)
        except Exception as error:
            logger.warning(
                "handler %r failed for %r: %s: %s",
                frame.method,
                frame.sender,
                type(error).__name__,
                error,
            )
            logger.debug("handler %r traceback", frame.method, exc_info=True)
            self._refuse(context, "UNKNOWN", error, log=False)
        if len(chunks) > 1:
            try:
                fetch_id = self._store_reply(frame.sender, chunks[1:])
            except MessageRefused as error:
                self._refuse(context, "RESOURCE_EXHAUSTED", error)
            context.set_trailing_metadata(((FETCH_KEY, fetch_id),))
        return chunks[0]

    def _fetch(self, request: bytes, context: Any):
        self._require_token(context)
        frame, nbytes = self._receive([request], context, "fetch")
        self.budget.release(nbytes)
        refusal = self._sender_refusal(context, frame, (wire.FETCH,))
        if refusal is not None:
            self._refuse(context, *refusal)
        with self._replies_lock:
            stored = self._replies.get(str(frame.meta.get("id")))
            if stored is not None and stored.owner == frame.sender:
                del self._replies[str(frame.meta.get("id"))]
            else:
                stored = None
        if stored is None:
            self._refuse(
                context,
                "NOT_FOUND",
                PartyError("Expected a pending reply id. Received: unknown id"),
            )
        self.budget.release(stored.nbytes)
        yield from stored.chunks

    def _store_reply(self, owner: str, chunks: list[bytes]) -> str:
        nbytes = sum(len(chunk) for chunk in chunks)
        now = time.monotonic()
        with self._replies_lock:
            for key, stored in list(self._replies.items()):
                if stored.expires < now:
                    del self._replies[key]
                    self.budget.release(stored.nbytes)
                    logger.warning("dropped a reply to %r that was never fetched", stored.owner)
            self.budget.acquire(nbytes, "a reply")
            fetch_id = secrets.token_hex(16)
            self._replies[fetch_id] = _StoredReply(owner, chunks, nbytes, now + FETCH_TTL_S)
        return fetch_id

    # -- checks -------------------------------------------------------------------------------
    def _decode(self, chunks: Iterable[bytes], what: str) -> tuple[Frame, int]:
        """Reassembles one frame, its bytes reserved in the budget (the caller releases them).

        Raises:
            WireError: Malformed (nothing stays reserved).
            MessageRefused: Over the budget (nothing reserved).
        """
        assembler = wire.ChunkAssembler(
            self.limits, reserve=lambda n: self.budget.acquire(n, f"a {what}")
        )
        try:
            for chunk in chunks:
                if assembler.complete:
                    raise WireError("Expected no chunk after the last one. Received: one more")
                assembler.add(chunk)
            return assembler.frame(), assembler.total
        except MessageRefused:
            raise
        except WireError as error:
            self.budget.release(assembler.total)
            raise WireError(f"Refused a malformed {what}: {error}") from None
        except BaseException:
            self.budget.release(assembler.total)
            raise

    def _receive(self, chunks: Iterable[bytes], context: Any, what: str) -> tuple[Frame, int]:
        """`_decode`, ending the RPC with a typed status on failure."""
        try:
            return self._decode(chunks, what)
        except MessageRefused as error:
            self._refuse(context, "RESOURCE_EXHAUSTED", error)
        except WireError as error:
            self._refuse(context, "INVALID_ARGUMENT", error)

    def _require_token(self, context: Any) -> None:
        if not self.credentials.token_matches(context.invocation_metadata()):
            self._refuse(
                context,
                "UNAUTHENTICATED",
                AuthenticationError(
                    "Expected the cluster's token. Received: a missing or wrong token"
                ),
            )

    def _sender_refusal(self, context: Any, frame: Frame, kinds: tuple[int, ...]):
        """Why a decoded frame is refused, as (status code name, error), or None."""
        if frame.kind not in kinds:
            return "INVALID_ARGUMENT", WireError(
                f"Expected a frame of kind {[wire.KINDS[k] for k in kinds]}. "
                f"Received: kind={wire.KINDS[frame.kind]}"
            )
        try:
            check_peer_name(frame.sender)
        except ValueError as error:
            return "INVALID_ARGUMENT", WireError(f"Refused a frame: {error}")
        if self.credentials.mode == "mtls":
            names = peer_identities(context.auth_context())
            if frame.sender not in names:
                return "PERMISSION_DENIED", AuthenticationError(
                    f"Expected frames from the certificate's own name {sorted(names)}. "
                    f"Received: sender={frame.sender!r}"
                )
        if self.allowed_peers is not None and frame.sender not in self.allowed_peers:
            return "PERMISSION_DENIED", AuthenticationError(
                f"Expected a sender in {sorted(self.allowed_peers)}. Received: sender={frame.sender!r}"
            )
        if frame.receiver != self.name:
            return "FAILED_PRECONDITION", PartyError(
                f"Expected frames for {self.name!r}. Received: receiver={frame.receiver!r}"
            )
        return None

    def _refuse(self, context: Any, code: str, error: BaseException, *, log: bool = True) -> None:
        """Ends the RPC with `code`; the caller re-raises `error`'s type (see `client.rpc_error`)."""
        if log:
            logger.warning("node %r refused a call from %s: %s", self.name, context.peer(), error)
        context.set_trailing_metadata(((ERROR_TYPE_KEY, _error_type_name(error)),))
        context.abort(getattr(self._grpc.StatusCode, code), str(error)[:4000])


def _ack(index: int, refusal) -> bytes:
    """The ack of message `index` on a stream: accepted, or refused with the error's type and text."""
    if refusal is None:
        return _ACK.pack(index, 0)
    error = refusal[1]
    return _ACK.pack(index, 1) + f"{_error_type_name(error)}\n{str(error)[:2000]}".encode()


def _error_type_name(error: BaseException) -> str:
    """The nearest privkeras error class in `error`'s MRO, else its own type's name."""
    for cls in type(error).__mro__:
        if getattr(errors, cls.__name__, None) is cls:
            return cls.__name__
    return type(error).__name__


def _payload(payload: Any) -> tuple[list[Any], Mapping[str, Any]]:
    if isinstance(payload, Reply):
        return _tensor_list(payload.tensors), payload.meta
    return _tensor_list(payload), {}
