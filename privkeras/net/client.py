"""The calling side of the transport: channels to named peers, sends and calls with deadlines.

A `Client` reaches peers by name through a cluster map. It sends tagged
messages (`send`, `send_async`), calls methods that peers registered
(`call`), and checks their health. Every operation has a deadline; a peer
that is unreachable, silent, unauthenticated or failing becomes a typed
error that names it:

| what happened | error |
|---|---|
| TLS handshake failed, wrong certificate or name, bad token | `AuthenticationError` |
| no answer before the deadline, connection refused until then | `PartyError` |
| the peer's handler raised a privkeras error (e.g. `PrivacyBudgetExceededError`) | that same class |
| the peer's handler raised anything else | `RemoteCallError` |
| the peer sent bytes that are not a frame | `WireError` |

A `Node` (`privkeras.net.node`) is a client that also serves.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from privkeras import errors
from privkeras.errors import AuthenticationError, PartyError, RemoteCallError, WireError
from privkeras.net import wire
from privkeras.net.certs import check_peer_name
from privkeras.net.cluster import ClusterMap
from privkeras.net.credentials import Credentials
from privkeras.net.wire import DEFAULT_LIMITS, Frame, WireLimits

__all__ = ["SERVICE", "Client", "PendingSend", "Reply"]

logger = logging.getLogger("privkeras.net")
T = TypeVar("T")

SERVICE = "privkeras.net.v1.Transport"
ERROR_TYPE_KEY = "privkeras-error-type"
FETCH_KEY = "privkeras-fetch"
_TLS_FAILURE_MARKS = ("handshake", "certificate", "ssl_error", "hostname verification", "tsi_")
_RETRY_FIRST_S, _RETRY_MAX_S = 0.02, 0.5
_ACK = struct.Struct("<QB")
#: HTTP/2 stream window: a message of a few MiB flows without waiting for window updates
#: (gRPC's 64 KiB default cost 2.5 ms per 64 KiB round on loopback).
WINDOW_BYTES = 8 << 20


@dataclasses.dataclass(frozen=True)
class Reply:
    """What a handler returns, and what `exchange` sends when metadata goes along.

    Attributes:
        tensors: numpy arrays (or anything `np.asarray` takes, or `wire.bits(...)`).
        meta: A small JSON-serializable dict.
    """

    tensors: Sequence[Any] = ()
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Stubs:
    deliver: Any
    deliver_stream: Any
    call: Any
    call_stream: Any
    fetch: Any
    messages: Any
    channel: Any
    address: str


class Client:
    """Talks to named peers: tagged messages, calls, health checks.

    Args:
        name: This process's peer name (its certificate's name under mutual TLS).
        peers: The cluster map: a dict `{name: "host:port"}`, a path to a JSON
            file holding one, or a `ClusterMap`.
        credentials: How to authenticate (`Credentials.mutual_tls(...)`, ...).
        limits: Wire limits (chunk size, largest frame).
        timeout: Default deadline in seconds of every operation.

    Raises:
        AuthenticationError: Under mutual TLS, `name` is not the certificate's name.
    """

    def __init__(
        self,
        name: str,
        peers: Mapping[str, str] | str | ClusterMap | None = None,
        *,
        credentials: Credentials,
        limits: WireLimits = DEFAULT_LIMITS,
        timeout: float = 30.0,
    ):
        import grpc

        self._grpc = grpc
        self.name = check_peer_name(name)
        if not isinstance(credentials, Credentials):
            raise AuthenticationError(
                "Expected credentials to be a privkeras.net.Credentials. "
                + errors.format_received(credentials=type(credentials).__name__)
            )
        if credentials.mode == "mtls" and credentials.identity != name:
            raise AuthenticationError(
                f"Expected the certificate of {name!r}. Received: a certificate for "
                f"{credentials.identity!r}"
            )
        credentials.warn_if_insecure(name)
        self.credentials = credentials
        self.peers = peers if isinstance(peers, ClusterMap) else ClusterMap(peers)
        self.limits = limits
        self.timeout = _check_timeout(timeout)
        self._channel_credentials = credentials.channel_credentials()
        self._metadata = credentials.call_metadata()
        self._stubs: dict[str, _Stubs] = {}
        self._streams: dict[str, MessageStream] = {}
        self._no_streams_until: dict[str, float] = {}
        self._refusals: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, mode={self.credentials.mode!r})"

    # -- tagged messages --------------------------------------------------------------------
    def send(
        self,
        dst: str,
        job: str,
        round: int,
        tensors: Sequence[Any] = (),
        meta: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Sends one tagged message and waits until `dst` has accepted it.

        Raises:
            PartyError: `dst` is unreachable, refused the message (duplicate,
                late, closed job), or did not accept it before the deadline.
            AuthenticationError: `dst` could not be authenticated or refused us.
            WireError: The message cannot be encoded within the limits.
        """
        self.send_async(dst, job, round, tensors, meta, timeout=timeout).result()

    def send_async(
        self,
        dst: str,
        job: str,
        round: int,
        tensors: Sequence[Any] = (),
        meta: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        kind: int = wire.MESSAGE,
    ) -> PendingSend:
        """Starts sending one tagged message; `.result()` waits for `dst` to accept it."""
        frame = Frame(kind, job, round, self.name, dst, "", meta or {}, _tensor_list(tensors))
        chunks = wire.encode(frame, self.limits)
        deadline = time.monotonic() + self._timeout(timeout)
        return PendingSend(self, dst, f"message of job {job!r}, round {round}", chunks, deadline)

    # -- calls ----------------------------------------------------------------------------------
    def call(
        self,
        peer: str,
        method: str,
        tensors: Sequence[Any] = (),
        meta: Mapping[str, Any] | None = None,
        *,
        job: str = "",
        timeout: float | None = None,
    ) -> Frame:
        """Calls `method` on `peer` and returns its reply (`.tensors`, `.meta`).

        Requests and replies of any size up to `limits.max_frame_bytes` travel
        in chunks.

        Raises:
            The error the peer's handler raised if it is a privkeras error
            (same class, message prefixed with the peer and method),
            RemoteCallError for any other handler error, AuthenticationError,
            PartyError (unreachable, deadline), WireError (malformed reply).
        """
        frame = Frame(
            wire.REQUEST, job, 0, self.name, peer, method, meta or {}, _tensor_list(tensors)
        )
        chunks = wire.encode(frame, self.limits)
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        what = f"call {method!r}"

        def attempt(stubs: _Stubs, left: float):
            if len(chunks) == 1:
                return stubs.call.with_call(chunks[0], timeout=left, metadata=self._metadata)
            return stubs.call_stream.with_call(iter(chunks), timeout=left, metadata=self._metadata)

        response, rpc = self._invoke(peer, what, attempt, deadline, timeout)
        assembler = wire.ChunkAssembler(self.limits)
        try:
            assembler.add(response)
            if not assembler.complete:
                self._fetch_rest(peer, what, job, rpc, assembler, deadline, timeout)
            reply = assembler.frame()
        except WireError as error:
            raise WireError(
                f"Peer {peer!r} answered {what} with a malformed frame: {error}"
            ) from None
        if (reply.kind, reply.sender, reply.receiver) != (wire.RESPONSE, peer, self.name):
            raise WireError(
                f"Expected a response from {peer!r} to {self.name!r} for {what}. Received: "
                f"kind={wire.KINDS[reply.kind]}, sender={reply.sender!r}, receiver={reply.receiver!r}"
            )
        return reply

    def _fetch_rest(self, peer, what, job, rpc, assembler, deadline, timeout) -> None:
        fetch_id = dict(rpc.trailing_metadata() or ()).get(FETCH_KEY)
        if not fetch_id:
            raise WireError(
                f"Expected the rest of {peer!r}'s reply to be fetchable. Received: no id"
            )
        request = wire.encode(Frame(wire.FETCH, job, 0, self.name, peer, "", {"id": fetch_id}))[0]

        def attempt(stubs: _Stubs, left: float):
            for chunk in stubs.fetch(request, timeout=left, metadata=self._metadata):
                assembler.add(chunk)

        self._invoke(peer, f"{what} (rest of the reply)", attempt, deadline, timeout, retry=False)

    # -- health ---------------------------------------------------------------------------------
    def health(self, peer: str, *, timeout: float = 5.0, service: str = "") -> str:
        """The peer's gRPC health status: "SERVING", "NOT_SERVING", ...

        Raises:
            PartyError: The peer did not answer before `timeout`.
            AuthenticationError: The peer could not be authenticated.
        """
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        def attempt(stubs: _Stubs, left: float):
            stub = health_pb2_grpc.HealthStub(stubs.channel)
            request = health_pb2.HealthCheckRequest(service=service)
            return stub.Check(request, timeout=left, metadata=self._metadata)

        deadline = time.monotonic() + timeout
        response = self._invoke(peer, "health check", attempt, deadline, timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_healthy(self, peers: str | Iterable[str], *, timeout: float = 30.0) -> None:
        """Waits until every peer in `peers` reports SERVING.

        Raises:
            PartyError: A peer was not SERVING before `timeout`, naming it.
        """
        deadline = time.monotonic() + timeout
        for peer in [peers] if isinstance(peers, str) else list(peers):
            status = "UNKNOWN"
            while status != "SERVING":
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PartyError(
                        f"Expected peer {peer!r} to be SERVING within {timeout:.1f} s. "
                        f"Received: status={status}"
                    )
                status = self.health(peer, timeout=left)
                if status != "SERVING":
                    time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        """Closes every message stream and channel."""
        with self._lock:
            stubs, self._stubs = list(self._stubs.values()), {}
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.close()
        for item in stubs:
            item.channel.close()

    def _message_stream(self, peer: str, stubs: _Stubs) -> MessageStream | None:
        """The live message stream to `peer` (opened on first use or after it ended).

        None while `peer` refuses streams (it serves as many as it allows).
        """
        with self._lock:
            if self._no_streams_until.get(peer, 0.0) > time.monotonic():
                return None
            stream = self._streams.get(peer)
            if stream is None or not stream.alive or stream._address != stubs.address:
                if stream is not None:
                    stream.close()
                stream = self._streams[peer] = MessageStream(self, peer, stubs)
            return stream

    # -- internals ------------------------------------------------------------------------------
    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else _check_timeout(timeout)

    def _stubs_for(self, peer: str) -> _Stubs:
        address = self.peers.address(peer)
        with self._lock:
            stubs = self._stubs.get(peer)
            if stubs is not None and stubs.address == address:
                return stubs
            if stubs is not None:
                stubs.channel.close()
            stubs = self._stubs[peer] = self._new_stubs(peer, address)
            return stubs

    def _new_stubs(self, peer: str, address: str) -> _Stubs:
        grpc = self._grpc
        size = self.limits.max_message_bytes
        options = [
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            ("grpc.initial_reconnect_backoff_ms", 100),
            # Not grpc.min_reconnect_backoff_ms: gRPC takes it as the deadline of each
            # connection attempt, and at 100 ms TLS handshakes on a busy machine were cut
            # off ("handshaker shutdown"), surfacing as AuthenticationError.
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.enable_retries", 0),
            ("grpc.http2.lookahead_bytes", WINDOW_BYTES),
        ]
        if self._channel_credentials is None:
            channel = grpc.insecure_channel(address, options=options)
        else:
            options.append(("grpc.ssl_target_name_override", peer))
            channel = grpc.secure_channel(address, self._channel_credentials, options=options)
        base = f"/{SERVICE}/"
        return _Stubs(
            deliver=channel.unary_unary(base + "Deliver"),
            deliver_stream=channel.stream_unary(base + "DeliverStream"),
            call=channel.unary_unary(base + "Call"),
            call_stream=channel.stream_unary(base + "CallStream"),
            fetch=channel.unary_stream(base + "Fetch"),
            messages=channel.stream_stream(base + "Messages"),
            channel=channel,
            address=address,
        )

    def _certificate_refused(self, peer: str, address: str, error: Any, what: str):
        """An `AuthenticationError` if `peer` closed the connection over our certificate."""
        details = (getattr(error, "details", lambda: "")() or "").lower()
        if not (_not_connected(error) and "socket closed" in details):
            return None
        if self.credentials.insecure:
            return None
        key = (peer, address)
        now = time.monotonic()
        with self._lock:
            cached = self._refusals.get(key)
        if cached is None or cached[0] < now:
            from privkeras.net.credentials import tls_refusal

            cached = (now + 2.0, tls_refusal(address, peer, self.credentials))
            with self._lock:
                self._refusals[key] = cached
        if cached[1] is None:
            return None
        return AuthenticationError(
            f"Peer {peer!r} at {address} refused our certificate ({what}): {cached[1]}. "
            "Expected a certificate signed by the cluster's CA, for this process's name."
        )

    def _avoid_streams(self, peer: str, seconds: float = 30.0) -> None:
        with self._lock:
            self._no_streams_until[peer] = time.monotonic() + seconds

    def _invoke(
        self,
        peer: str,
        what: str,
        attempt: Callable[[_Stubs, float], T],
        deadline: float,
        timeout: float,
        *,
        retry: bool = True,
    ) -> T:
        """Runs `attempt(stubs, seconds_left)`, retrying while `peer` refuses connections."""
        delay = _RETRY_FIRST_S
        while True:
            stubs = self._stubs_for(peer)
            left = deadline - time.monotonic()
            if left <= 0:
                raise PartyError(f"Peer {peer!r} did not answer {what} within {timeout:.1f} s.")
            try:
                return attempt(stubs, left)
            except self._grpc.RpcError as error:
                refused = self._certificate_refused(peer, stubs.address, error, what)
                if refused is not None:
                    raise refused from None
                if retry and _not_connected(error) and deadline - time.monotonic() > delay:
                    time.sleep(delay)
                    delay = min(2 * delay, _RETRY_MAX_S)
                    continue
                raise rpc_error(error, peer, what, timeout, stubs.address) from None


class PendingSend:
    """A tagged message on its way; `result()` waits until the receiver accepted it.

    Messages go on the long-lived message stream to their receiver
    (`MessageStream`), or, if it serves no more streams, on a call each.
    While the receiver refuses connections (not started yet, restarting), the
    send is retried with backoff until its deadline, in the background.
    """

    def __init__(self, client: Client, dst: str, what: str, chunks: list[bytes], deadline: float):
        self.client, self.dst, self.what = client, dst, what
        self._chunks, self._deadline = chunks, deadline
        self._timeout = max(0.0, deadline - time.monotonic())
        self._delay = _RETRY_FIRST_S
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[PendingSend], None]] = []
        self._address = ""
        self._start()

    @property
    def chunks(self) -> list[bytes]:
        return self._chunks

    def _start(self) -> None:
        try:
            stubs = self.client._stubs_for(self.dst)
        except PartyError as error:  # not in the cluster map
            self._finish(error)
            return
        self._address = stubs.address
        stream = self.client._message_stream(self.dst, stubs)
        if stream is not None and stream.submit(self):
            return
        left = max(0.001, self._deadline - time.monotonic())
        metadata = self.client._metadata
        if len(self._chunks) == 1:
            future = stubs.deliver.future(self._chunks[0], timeout=left, metadata=metadata)
        else:
            future = stubs.deliver_stream.future(
                iter(self._chunks), timeout=left, metadata=metadata
            )
        future.add_done_callback(
            lambda f: self._failed(f.exception() if not f.cancelled() else None)
        )

    def _failed(self, error: Any) -> None:
        """Ends this attempt: success (None), retry later, or a typed error."""
        if error is None:
            self._finish(None)
        elif isinstance(error, BaseException) and not hasattr(error, "code"):
            self._finish(error)
        elif refused := self.client._certificate_refused(self.dst, self._address, error, self.what):
            self._finish(refused)
        elif _not_connected(error) and self._deadline - time.monotonic() > self._delay:
            timer = threading.Timer(self._delay, self._start)
            timer.daemon = True
            timer.start()
            self._delay = min(2 * self._delay, _RETRY_MAX_S)
        else:
            self._finish(rpc_error(error, self.dst, self.what, self._timeout, self._address))

    def _finish(self, error: BaseException | None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._error = error
            self._done.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback(self)

    def add_done_callback(self, callback: Callable[[PendingSend], None]) -> None:
        """Calls `callback(self)` once the send succeeded or failed for good."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def done(self) -> bool:
        return self._done.is_set()

    def error(self) -> BaseException | None:
        """The typed error the send ended with (None while running or on success)."""
        return self._error

    def result(self) -> None:
        """Waits until the receiver accepted the message; raises a typed error otherwise."""
        if not self._done.wait(max(0.0, self._deadline - time.monotonic())):
            self._finish(
                PartyError(
                    f"Peer {self.dst!r} did not accept the {self.what} within {self._timeout:.1f} s."
                )
            )
        if self._error is not None:
            raise self._error


class MessageStream:
    """One long-lived gRPC stream carrying the messages to one peer, chunk after chunk.

    Requests are the chunks of one message after another; the peer answers
    each whole message with an ack `index:u64 status:u8 | "ErrorType\nmessage"`
    (index: the message's place on this stream, from 0; status 0: accepted). Acks
    are read by a background thread that settles the `PendingSend`s, so a
    sender never waits for an ack before its next message. The stream ends
    after `idle_s` without traffic, and a new one is opened on the next send;
    if it breaks, unacknowledged sends are retried (connection refused) or
    fail with a typed error.
    """

    def __init__(self, client: Client, peer: str, stubs: _Stubs, idle_s: float = 30.0):
        self.peer, self._client, self._address = peer, client, stubs.address
        self._idle_s = idle_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[int, PendingSend] = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self.alive = True
        self._acked = False
        self._call = stubs.messages(self._requests(), metadata=client._metadata)
        self._reader = threading.Thread(
            target=self._read, name=f"privkeras-acks-{peer}", daemon=True
        )
        self._reader.start()

    def submit(self, send: PendingSend) -> bool:
        """Queues `send`; False if this stream has ended (open another)."""
        with self._lock:
            if not self.alive:
                return False
            self._pending[next(self._seq)] = send
            for chunk in send.chunks:  # a message's chunks stay together
                self._queue.put(chunk)
        return True

    def close(self) -> None:
        with self._lock:
            self.alive = False
        self._queue.put(None)

    def _requests(self):
        while True:
            try:
                item = self._queue.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    if self._pending or not self._queue.empty():
                        continue
                    self.alive = False
                return
            if item is None:
                return
            yield item

    def _read(self) -> None:
        error: Any = None
        try:
            for ack in self._call:
                self._settle(ack)
        except self._client._grpc.RpcError as rpc_failure:
            error = rpc_failure
        except WireError as malformed:
            error = malformed
            self._call.cancel()
        with self._lock:
            self.alive = False
            pending, self._pending = list(self._pending.values()), {}
        self._queue.put(None)
        if not self._acked and _stream_refused(error):
            # The peer serves no more streams (or none at all): one call per message.
            self._client._avoid_streams(self.peer)
            for send in pending:
                send._start()
            return
        for send in pending:
            send._failed(
                error
                or PartyError(f"Peer {self.peer!r} at {self._address} closed the message stream.")
            )

    def _settle(self, ack: bytes) -> None:
        if len(ack) < _ACK.size:
            raise WireError(f"Expected an ack of at least {_ACK.size} bytes. Received: {len(ack)}")
        seq, status = _ACK.unpack_from(ack)
        self._acked = True
        with self._lock:
            send = self._pending.pop(seq, None)
        if send is None:
            return
        if status == 0:
            send._failed(None)
            return
        type_name, _, message = bytes(ack[_ACK.size :]).decode("utf-8", "replace").partition("\n")
        send._failed(remote_error(type_name, message, self.peer, send.what))


# ----------------------------------------------------------------------------- error mapping


def rpc_error(error: Any, peer: str, what: str, timeout: float, address: str = "") -> Exception:
    """The privkeras error for a failed gRPC call to `peer` (see the module's table)."""
    import grpc

    code, details = error.code(), (error.details() or "")[:2000]
    remote_type = dict(error.trailing_metadata() or ()).get(ERROR_TYPE_KEY)
    if remote_type:
        return remote_error(remote_type, details, peer, what)
    at = f" at {address}" if address else ""
    if code == grpc.StatusCode.UNAVAILABLE and _is_tls_failure(details):
        return AuthenticationError(
            f"Could not authenticate peer {peer!r}{at} ({what}): the TLS handshake failed "
            f"(wrong CA, certificate or name). Received: {details}"
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AuthenticationError(f"Peer {peer!r}{at} refused us ({what}): {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PartyError(f"Peer {peer!r}{at} did not answer {what} within {timeout:.1f} s.")
    if code == grpc.StatusCode.UNAVAILABLE:
        return PartyError(f"Peer {peer!r}{at} is unreachable ({what}). Received: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return WireError(f"Peer {peer!r}{at} refused {what} as too large: {details}")
    return PartyError(f"Peer {peer!r}{at} failed {what}: {code.name}: {details}")


def remote_error(type_name: str, message: str, peer: str, what: str) -> Exception:
    """The error a peer reported by type name: the same privkeras class, else `RemoteCallError`."""
    cls = getattr(errors, type_name, None)
    if isinstance(cls, type) and issubclass(cls, errors.PrivkerasError):
        try:
            return cls(f"Peer {peer!r} ({what}): {message}")
        except TypeError:
            pass
    return RemoteCallError(f"Peer {peer!r} raised {type_name} in {what}: {message}")


def _not_connected(error: Any) -> bool:
    """Whether a call failed before reaching the peer (safe to retry)."""
    import grpc

    try:
        code, details = error.code(), (error.details() or "").lower()
        metadata = dict(error.trailing_metadata() or ())
    except AttributeError:
        return False
    return (
        code == grpc.StatusCode.UNAVAILABLE
        and ERROR_TYPE_KEY not in metadata
        and "failed to connect" in details
        and not _is_tls_failure(details)
    )


def _stream_refused(error: Any) -> bool:
    import grpc

    code = getattr(error, "code", None)
    return callable(code) and code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
    )


def _is_tls_failure(details: str) -> bool:
    details = details.lower()
    return any(mark in details for mark in _TLS_FAILURE_MARKS)


def _check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(
            f"Expected a timeout in seconds > 0. {errors.format_received(timeout=timeout)}"
        )
    return float(timeout)


def _tensor_list(tensors: Any) -> list[Any]:
    """A single array becomes a one-tensor list; a sequence is copied into a list."""
    if hasattr(tensors, "shape") or isinstance(tensors, wire.BitTensor):
        return [tensors]
    return list(tensors)
