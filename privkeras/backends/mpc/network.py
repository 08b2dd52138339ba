"""MPC over gRPC: party processes, the driver's cluster, and the communicator between them.

Who runs where:

- each compute party, and Pond's dealer, is a long-lived `privkeras party`
  process: a `privkeras.net.Node` serving `PartyService`; it runs any number
  of jobs, one after another or at once, each on its own thread with a
  runtime that holds only its own role;
- the driver (the user's process: the caller and the model owner) is a
  `privkeras.net.Client`: it serves nothing. It starts a job on every party
  (`mpc.start`, the `JobSpec` as JSON), sends its own messages, and pulls the
  messages addressed to it (`mpc.pull`), so a driver behind a NAT works;
- `mpc.finish` returns a party's counters and reveal log when the job ends;
  `mpc.abort` ends a job on a party that is still waiting.

Messages between two processes are numbered per direction: the k-th message
from process A to process B is tagged (job, A, k). Every process runs the
same job code, so both ends agree on k; a late, duplicated or replayed
message is refused by the transport. A party that is killed, unreachable or
silent makes every waiting process fail with `PartyError` naming it within
the deadline (`MPC(timeout=...)`); the other parties abort the job and stay
up for the next one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from privkeras.backends.mpc.cluster import Cluster, JobReport, job_roles, make_runtime
from privkeras.backends.mpc.communicator import CommunicationStats, Communicator, Message
from privkeras.backends.mpc.jobs import JobSpec
from privkeras.backends.mpc.placement import Placement
from privkeras.errors import AuthenticationError, PartyError, PrivkerasError

if TYPE_CHECKING:
    from privkeras.backends.mpc.runtime import MPCRuntime, RevealRecord

__all__ = ["DRIVER", "NetworkCluster", "NetworkCommunicator", "PartyService", "use_credentials"]

logger = logging.getLogger("privkeras.mpc")

#: The driver's node name (its certificate's name under mutual TLS).
DRIVER = "driver"
#: Engine name -> kernel library.
_KERNELS = {"mpc-torch": "torch", "mpc-tfe": "tensorflow"}


def node_of(role: str, workers: Sequence[str] = ()) -> str:
    """The process a role runs in: parties, the dealer and workers in their own, others in the driver."""
    return role if role in ("p0", "p1", "p2", "dealer") or role in workers else DRIVER


class NetworkCommunicator(Communicator):
    """Carries one job's rounds between this process and the others over `privkeras.net`.

    Args:
        parties: Names of the compute parties.
        placement: The roles running in this process.
        endpoint: This process's `Node` (a party) or `Client` (the driver).
        job: The job id.
        kernels: The runtime's ring kernels (tensors cross as numpy arrays).
        timeout: Seconds any wait may take before `PartyError`.
        outbox: A party's store of messages for the driver, which pulls them.
        workers: Data owners sharing from their own worker processes.
    """

    def __init__(
        self,
        parties: Sequence[str],
        placement: Placement,
        endpoint: Any,
        job: str,
        kernels: Any,
        timeout: float,
        outbox: Outbox | None = None,
        workers: Sequence[str] = (),
    ):
        super().__init__(parties, placement)
        self.endpoint, self.job, self.kernels, self.timeout = endpoint, job, kernels, timeout
        self.outbox = outbox
        self.workers = tuple(workers)
        self._unconfirmed: list[Any] = []
        self.me = endpoint.name
        self._sent: dict[str, int] = {}
        self._received: dict[str, int] = {}

    def _next(self, counters: dict[str, int], peer: str) -> int:
        k = counters.get(peer, 0)
        counters[peer] = k + 1
        return k

    def _post(self, dst_role: str, arrays: list[Any], many: bool) -> Any:
        """Sends (or, to the driver, leaves for it to pull) one message; returns a pending send."""
        peer = node_of(dst_role, self.workers)
        k = self._next(self._sent, peer)
        meta = {"many": many}
        if peer == DRIVER:
            self.outbox.put(self.job, k, arrays, meta)
            return None
        return self.endpoint.send_async(peer, self.job, k, arrays, meta, timeout=self.timeout)

    def _take(
        self, src_role: str, step: str, timeout: float | None = None
    ) -> tuple[list[np.ndarray], bool]:
        peer = node_of(src_role, self.workers)
        k = self._next(self._received, peer)
        if self.me == DRIVER:
            frame = self.endpoint.call(
                peer, "mpc.pull", meta={"seq": k}, job=self.job, timeout=self.timeout + 5
            )
        else:
            wait = self.timeout if timeout is None else timeout
            frame = self.endpoint.recv(peer, self.job, k, timeout=wait, step=step)
        many = frame.meta.get("many")
        if not isinstance(many, bool):
            raise PartyError(f"Party {peer!r} sent a message without its layout ({step}).")
        return list(frame.tensors), many

    def _deliver(self, messages: list[Message], offline: bool) -> dict[tuple[str, str], Any]:
        here = self.placement.here
        k = self.kernels
        inbox: dict[tuple[str, str], Any] = {}
        pending = []
        for message in messages:
            if not here(message.src):
                continue
            if here(message.dst):
                inbox[message.src, message.dst] = message.payload
                continue
            many = isinstance(message.payload, (tuple, list))
            arrays = [_to_wire(k, t, w) for t, w in _items(message)]
            pending.append(self._post(message.dst, arrays, many))
        for message in messages:
            if here(message.dst) and not here(message.src):
                step = f"round {self.rounds}, {message.src} -> {message.dst}"
                arrays, many = self._take(message.src, step)
                tensors = [k.from_numpy(np.asarray(a, dtype=np.int64)) for a in arrays]
                inbox[message.src, message.dst] = tuple(tensors) if many else tensors[0]
        # A send is accepted once its receiver buffered it; waiting for that here would put
        # one more network hop in every round. Sends to one peer share an ordered stream,
        # so a failed one surfaces at the next round (a later send, or a receive from a
        # dead peer) and at `flush`, which the job calls before it ends.
        self._unconfirmed.extend(send for send in pending if send is not None)
        self._check_sends()
        return inbox

    def _check_sends(self) -> None:
        still = []
        for send in self._unconfirmed:
            if not send.done():
                still.append(send)
            elif send.error() is not None:
                raise send.error()
        self._unconfirmed = still

    def flush(self) -> None:
        """Waits until every message this process sent has been accepted (or raises why not)."""
        for send in self._unconfirmed:
            send.result()
        self._unconfirmed = []

    def send_control(self, src: str, dst: str, value: np.ndarray) -> None:
        send = self._post(dst, [np.ascontiguousarray(value)], False)
        if send is not None:
            send.result()

    def post_control(self, src: str, dst: str, value: np.ndarray) -> Any:
        return self._post(dst, [np.ascontiguousarray(value)], False)

    def receive_control(self, src: str, dst: str, timeout: float | None = None) -> np.ndarray:
        return self._take(src, f"control {src} -> {dst}", timeout)[0][0]


def _items(message: Message):
    payload = message.payload
    if isinstance(payload, (tuple, list)):
        widths = message.bits if isinstance(message.bits, tuple) else (message.bits,) * len(payload)
        return list(zip(payload, widths))
    return [(payload, message.bits if isinstance(message.bits, int) else message.bits[0])]


def _to_wire(kernels: Any, tensor: Any, width: int) -> Any:
    from privkeras.net.wire import bits

    array = np.ascontiguousarray(kernels.to_numpy(tensor))
    # Single bits travel packed eight to a byte; a one-position word of a comparison
    # (a bit kept at another position) travels whole.
    if width == 1 and array.size and array.min() >= 0 and array.max() <= 1:
        return bits(array)
    return array


class Outbox:
    """A party's messages for the driver, kept until the driver pulls them (per job, in order)."""

    def __init__(self):
        self._items: dict[tuple[str, int], list[Any]] = {}
        self._aborted: dict[str, str] = {}
        self._cond = threading.Condition()

    def put(self, job: str, k: int, arrays: list[Any], meta: dict[str, Any]) -> None:
        with self._cond:
            self._items[job, k] = (arrays, meta)
            self._cond.notify_all()

    def take(self, job: str, k: int, timeout: float) -> tuple[list[Any], dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while (job, k) not in self._items:
                if job in self._aborted:
                    raise PartyError(self._aborted[job])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PartyError(
                        f"message {k} of job {job!r} was not ready within {timeout:g} s"
                    )
                self._cond.wait(left)
            return self._items.pop((job, k))

    def abort(self, job: str, reason: str) -> None:
        with self._cond:
            self._aborted[job] = reason
            self._cond.notify_all()

    def close(self, job: str) -> None:
        with self._cond:
            for key in [key for key in self._items if key[0] == job]:
                del self._items[key]
            self._aborted.pop(job, None)


# -- the party process ---------------------------------------------------------------------------
class PartyService:
    """What a `privkeras party` node serves: MPC jobs, each on its own thread.

    Args:
        node: The party's started or unstarted `privkeras.net.Node`; its name
            is the party's role (`p0`, `p1`, `p2` or `dealer`).
        timeout: Seconds any wait of a job may take.
    """

    def __init__(self, node: Any, timeout: float = 30.0, allow_seeded_jobs: bool = False):
        self.node, self.timeout = node, timeout
        self.allow_seeded_jobs = allow_seeded_jobs
        self.outbox = Outbox()
        self._jobs: dict[str, _PartyJob] = {}
        self._lock = threading.Lock()
        node.register("mpc.start", self._start)
        node.register("mpc.pull", self._pull)
        node.register("mpc.finish", self._finish)
        node.register("mpc.abort", self._abort)

    def _start(self, request: Any) -> Any:
        from privkeras.net import Reply

        if not request.job:
            raise PartyError("Expected a job id with mpc.start. Received: none")
        if request.peer != DRIVER:
            raise AuthenticationError(
                f"Expected jobs from {DRIVER!r}. Received: mpc.start from {request.peer!r}"
            )
        spec = JobSpec.from_json(_spec_bytes(request.tensors))
        refuse_seeded(spec, self.allow_seeded_jobs, f"party {self.node.name!r}")
        if self.node.name not in job_roles(spec.protocol):
            raise PartyError(
                f"Expected a {spec.protocol} job for one of {list(job_roles(spec.protocol))}. "
                f"Received: a job for this node {self.node.name!r}"
            )
        with self._lock:
            if request.job in self._jobs:
                raise PartyError(f"Expected a new job id. Received: {request.job!r} (running)")
            job = self._jobs[request.job] = _PartyJob(self, request.job, spec)
        job.start()
        logger.info("job %s started (%s %s)", request.job[:8], spec.protocol, spec.kind)
        return Reply([], {"ok": True})

    def _job(self, request: Any) -> _PartyJob:
        with self._lock:
            job = self._jobs.get(request.job)
        if job is None:
            raise PartyError(f"Expected a running job. Received: unknown job {request.job[:8]!r}")
        return job

    def _pull(self, request: Any) -> Any:
        from privkeras.net import Reply

        seq = request.meta.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise PartyError(f"Expected a message number with mpc.pull. Received: seq={seq!r}")
        arrays, meta = self.outbox.take(request.job, seq, self.timeout)
        return Reply(arrays, meta)

    def _finish(self, request: Any) -> Any:
        from privkeras.net import Reply

        job = self._job(request)
        job.thread.join(self.timeout)
        with self._lock:
            self._jobs.pop(request.job, None)
        self.node.close_job(request.job)
        self.outbox.close(request.job)
        if job.thread.is_alive():
            raise PartyError(
                f"Party {self.node.name!r} did not finish the job within {self.timeout:g} s."
            )
        if job.error is not None:
            raise job.error
        return Reply([], job.report())

    def _abort(self, request: Any) -> Any:
        from privkeras.net import Reply

        reason = str(request.meta.get("reason", "aborted by the driver"))[:500]
        self.node.abort(request.job, reason)
        self.outbox.abort(request.job, reason)
        return Reply([], {"ok": True})


class _PartyJob:
    """One job on one party: its thread, its runtime, and how it ended."""

    def __init__(self, service: PartyService, job: str, spec: JobSpec):
        self.service, self.job, self.spec = service, job, spec
        self.runtime: MPCRuntime | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"privkeras-job-{job[:8]}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        from privkeras.backends.mpc import party
        from privkeras.core.kernels import get_kernels

        service, node = self.service, self.service.node
        try:
            kernels = get_kernels(_KERNELS.get(self.spec.engine, "numpy"))
            parties = [r for r in job_roles(self.spec.protocol) if r != "dealer"]
            comm = NetworkCommunicator(
                parties,
                Placement({node.name}),
                node,
                self.job,
                kernels,
                service.timeout,
                service.outbox,
                workers=tuple(self.spec.workers),
            )
            self.runtime = make_runtime(self.spec, kernels, comm)
            party.run_job(self.spec, self.runtime)
            comm.flush()
            logger.info("job %s done", self.job[:8])
        except BaseException as error:
            self.error = (
                error
                if isinstance(error, PrivkerasError)
                else PartyError(
                    f"Party {node.name!r} failed the job: {type(error).__name__}: {error}"
                )
            )
            reason = f"party {node.name!r} gave up the job: {self.error}"
            logger.warning("job %s failed: %s", self.job[:8], self.error)
            others = [r for r in job_roles(self.spec.protocol) if r != node.name]
            node.abort(self.job, reason, peers=others)
            service.outbox.abort(self.job, reason)

    def report(self) -> dict[str, Any]:
        stats = self.runtime.communicator.snapshot()
        return {
            "stats": {
                "rounds": stats.rounds,
                "bytes_per_party": dict(stats.bytes_per_party),
                "messages": stats.messages,
                "offline_bytes": stats.offline_bytes,
            },
            "reveals": [[r.what, r.to, list(r.shape)] for r in self.runtime.reveal_log],
        }


def refuse_seeded(spec: JobSpec, allowed: bool, who: str) -> None:
    """Refuses a job whose keys all derive from a public seed, unless the process is a test's.

    With `MPC(seed=...)` every process derives every key from the seed, so each
    party could compute everyone's shares: fine for a test's reproducible run,
    never with real secrets. A party or worker takes such jobs only when started
    with `--allow-seeded-jobs` (`local_cluster` does, for tests).

    Raises:
        PartyError: For a seeded job in a process that does not allow them.
    """
    if spec.seed is not None and not allowed:
        raise PartyError(
            f"Expected a job without MPC(seed=...): {who} derives no key from a seed it "
            "did not agree (start it with --allow-seeded-jobs for tests). Received: a seeded job"
        )


def _spec_bytes(tensors: Sequence[Any]) -> bytes:
    if len(tensors) != 1 or np.asarray(tensors[0]).dtype != np.uint8:
        raise PartyError("Expected the job as one uint8 tensor of JSON. Received: something else")
    return np.asarray(tensors[0]).tobytes()


# -- the driver ------------------------------------------------------------------------------------
_CREDENTIALS: list[tuple[frozenset[str], Any]] = []


@contextlib.contextmanager
def use_credentials(credentials: Any, addresses: Mapping[str, str] | None = None):
    """Makes `credentials` the driver's for jobs on `addresses` (any cluster if None) while open.

    `pk.mpc.local_cluster` uses it for its development certificates. Otherwise
    the driver reads `PRIVKERAS_CERTS` (a `privkeras certs` folder, using its
    `driver` certificate), or `PRIVKERAS_CA`, `PRIVKERAS_CERT`, `PRIVKERAS_KEY`
    and `PRIVKERAS_TOKEN`.
    """
    entry = (frozenset((addresses or {}).values()), credentials)
    _CREDENTIALS.append(entry)
    try:
        yield credentials
    finally:
        _CREDENTIALS.remove(entry)


def driver_credentials(addresses: Mapping[str, str]) -> Any:
    """The driver's credentials for a cluster (see `use_credentials`).

    Raises:
        AuthenticationError: None were given and the environment names none.
    """
    import os

    from privkeras.net import Credentials

    wanted = frozenset(addresses.values())
    for known, credentials in reversed(_CREDENTIALS):
        if not known or known == wanted:
            return credentials
    folder = os.environ.get("PRIVKERAS_CERTS")
    ca, cert, key = (os.environ.get(f"PRIVKERAS_{n}") for n in ("CA", "CERT", "KEY"))
    if folder:
        ca = ca or os.path.join(folder, "ca.pem")
        cert = cert or os.path.join(folder, f"{DRIVER}.pem")
        key = key or os.path.join(folder, f"{DRIVER}.key")
    if ca is None and not os.environ.get("PRIVKERAS_TOKEN"):
        raise AuthenticationError(
            "Expected the driver's credentials for the MPC parties: PRIVKERAS_CERTS (a "
            "`privkeras certs` folder), or PRIVKERAS_CA/PRIVKERAS_CERT/PRIVKERAS_KEY, or "
            "PRIVKERAS_TOKEN. Received: none (pk.mpc.local_cluster sets them for you)"
        )
    return Credentials.from_files(ca=ca, cert=cert, key=key)


class NetworkCluster(Cluster):
    """The driver's view of party processes named by `MPC(parties={...})`.

    Args:
        policy: The `MPC` policy (its `parties`, `protocol` and `timeout`).
        credentials: The driver's credentials (default: `driver_credentials`).

    Raises:
        PrivacyPolicyError: The parties do not match the protocol's.
    """

    def __init__(self, policy: Any, credentials: Any = None):
        from privkeras.errors import PrivacyPolicyError

        self.policy = policy
        self.addresses = dict(policy.parties)
        expected = set(job_roles(policy.protocol))
        if set(self.addresses) != expected:
            raise PrivacyPolicyError(
                f"Expected MPC(parties=...) to name exactly {sorted(expected)} for protocol "
                f"{policy.protocol!r}. Received: {sorted(self.addresses)}"
            )
        self.timeout = float(getattr(policy, "timeout", 30.0))
        self.credentials = credentials
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from privkeras.net import Client

            credentials = self.credentials or driver_credentials(self.addresses)
            self._client = Client(
                DRIVER, self.addresses, credentials=credentials, timeout=self.timeout
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @contextlib.contextmanager
    def job(self, spec: JobSpec, kernels: Any, driver_roles: Sequence[str]) -> Iterator[MPCRuntime]:
        from privkeras.core.kernels import get_kernels
        from privkeras.net import new_job_id

        kernels = get_kernels(kernels) if isinstance(kernels, str) else kernels
        client = self.client
        job = new_job_id()
        roles = job_roles(spec.protocol)
        payload = [np.frombuffer(spec.to_json().encode(), dtype=np.uint8)]
        started = []
        sharing: list[threading.Thread] = []
        failed: dict[str, BaseException] = {}
        try:
            for role in roles:
                client.call(role, "mpc.start", payload, job=job, timeout=self.timeout)
                started.append(role)
            for index, owner in enumerate(spec.owners):
                if owner in spec.workers:
                    sharing.append(
                        self._worker_shares(spec, job, payload, owner, index, started, failed)
                    )
            parties = [r for r in roles if r != "dealer"]
            comm = NetworkCommunicator(
                parties, Placement(driver_roles), client, job, kernels, self.timeout,
                workers=tuple(spec.workers),
            )  # fmt: skip
            driver = make_runtime(spec, kernels, comm)
            yield driver
            comm.flush()
            for thread in sharing:
                thread.join(self.timeout + 5)
            if failed:
                raise next(iter(failed.values()))
            reports = {
                role: client.call(role, "mpc.finish", job=job, timeout=self.timeout + 5).meta
                for role in roles
            }
        except BaseException as error:
            first = next(iter(failed.values()), None)
            _abort(client, job, started, str(first or error))
            if first is None or first is error:
                raise
            raise first from error
        self.last_report = _report(driver, reports)

    def describe_worker(self, owner: str, address: str) -> dict[str, Any]:
        """A worker's `mpc.describe`: rows, row and label shapes, max |x| (nothing else)."""
        self.client.peers.add(owner, address)
        return dict(self.client.call(owner, "mpc.describe", timeout=self.timeout).meta)

    def _worker_shares(self, spec, job, payload, owner, index, started, failed) -> threading.Thread:
        """Asks `owner`'s worker to share its rows with the job's parties (on a thread)."""
        client = self.client
        client.peers.add(owner, spec.workers[owner])

        def run() -> None:
            try:
                client.call(
                    owner, "mpc.share", payload, meta={"index": index, "parties": self.addresses},
                    job=job, timeout=self.timeout + 5,
                )  # fmt: skip
            except BaseException as error:
                failed[owner] = (
                    error
                    if isinstance(error, PrivkerasError)
                    else PartyError(f"Data owner {owner!r} could not share its rows: {error}")
                )
                _abort(client, job, started, f"data owner {owner!r} did not share: {error}")

        thread = threading.Thread(target=run, name=f"privkeras-share-{owner}", daemon=True)
        thread.start()
        return thread


def _abort(client: Any, job: str, roles: Sequence[str], reason: str) -> None:
    for role in roles:
        with contextlib.suppress(PrivkerasError):
            client.call(role, "mpc.abort", meta={"reason": reason[:400]}, job=job, timeout=2)


def _report(driver: MPCRuntime, reports: Mapping[str, Mapping[str, Any]]) -> JobReport:
    from privkeras.backends.mpc.runtime import RevealRecord

    snapshots = [driver.communicator.snapshot()]
    logs: dict[str, list[RevealRecord]] = {"driver": driver.reveal_log}
    for role, report in reports.items():
        s = report["stats"]
        per_party = {str(k): int(v) for k, v in s["bytes_per_party"].items()}
        snapshots.append(
            CommunicationStats(
                rounds=int(s["rounds"]),
                bytes_sent=sum(per_party.values()),
                bytes_per_party=per_party,
                messages=int(s["messages"]),
                offline_bytes=int(s["offline_bytes"]),
            )
        )
        logs[role] = [
            RevealRecord(str(w), str(t), tuple(shape)) for w, t, shape in report["reveals"]
        ]
    return JobReport(stats=CommunicationStats.total(snapshots), reveal_logs=logs)
