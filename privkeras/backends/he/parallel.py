"""Every core for independent ciphertext groups: threads where SEAL runs them, else processes.

A batch larger than one packing block is several ciphertext groups that do
not depend on each other. `EvaluationPool` evaluates them concurrently, with
one of two executors, chosen by measuring rather than assuming:

- **threads**, when the SEAL bindings release the GIL during evaluation:
  no copies, no start-up;
- **processes** (`worker.py`), when they do not: `workers - 1` worker
  processes, each holding the public context and the packed program,
  receive a group's ciphertexts in SEAL's format over a pipe and answer
  with the outputs; the calling process is the last worker, evaluating a
  group itself whenever every worker is busy (on two cores, one worker and
  the caller: no third process competing for them).

`measure_thread_speedup` runs the same rotations on one thread and on `n`
threads; the pool picks threads only when they scale (at least 0.75 n).
The bindings in TenSEAL 0.3.18 hold the GIL (`tenseal/sealapi/*.cpp` has no
`gil_scoped_release`; measured 0.9x with two threads on the project
machine), so processes are what runs there today; a build that releases it
gets threads with no change here.

Example:

```python
pool = EvaluationPool()                       # every core; starts on first use
server = HEServer(model, pool=pool)
outputs = list(server.evaluate_many(batches, public))
pool.describe()   # {'executor': 'processes', 'workers': 2, 'processes': 1, ...}
pool.close()
```

Notes:
    Workers are the server's processes and hold what the server holds: the
    weights and public contexts, never a secret key. A worker that dies, or
    answers nothing within `timeout` seconds, is a `PartyError` naming it;
    workers exit when the pool's process closes their stdin or dies.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import selectors
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from privkeras.backends.he.errors import HEInputError
from privkeras.backends.he.wire import (
    FieldError,
    message_kind,
    pack_message,
    seal_from_bytes,
    seal_to_bytes,
    unpack_message,
)
from privkeras.backends.he.worker import BOOTSTRAP, FRAME
from privkeras.errors import PartyError

__all__ = ["EXECUTORS", "EvaluationPool", "available_cores", "measure_thread_speedup"]

EXECUTORS = ("auto", "threads", "processes")
#: Threads are chosen when `n` of them run at least this fraction of `n` times as fast as one.
THREAD_SCALING = 0.75
#: Start-up assumed before a pool has started once (measured on the project machine: 0.29 s,
#: the thread probe included); the measured value replaces it.
ASSUMED_START_SECONDS = 0.3


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def measure_thread_speedup(threads: int, rotations: int = 24) -> float:
    """How many times faster `threads` threads do `threads * rotations` SEAL rotations than one.

    About 0.1 s at N=4096. A value near `threads` means the bindings release
    the GIL; near 1, they hold it.
    """
    import tenseal.sealapi as sealapi

    n = 4096
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(sealapi.CoeffModulus.Create(n, [40, 30, 39]))
    context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    keys = sealapi.KeyGenerator(context)
    public, galois = sealapi.PublicKey(), sealapi.GaloisKeys()
    keys.create_public_key(public)
    keys.create_galois_keys([3], galois)
    plain = sealapi.Plaintext()
    sealapi.CKKSEncoder(context).encode(0.5, context.first_parms_id(), 2.0**30, plain)
    ct = sealapi.Ciphertext()
    sealapi.Encryptor(context, public).encrypt(plain, ct)
    evaluator = sealapi.Evaluator(context)

    def rotate(count: int) -> None:
        for _ in range(count):
            evaluator.rotate_vector(ct, 1, galois, sealapi.Ciphertext())

    rotate(2)
    start = time.perf_counter()
    rotate(threads * rotations)
    serial = time.perf_counter() - start
    workers = [threading.Thread(target=rotate, args=(rotations,)) for _ in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return serial / (time.perf_counter() - start)


class EvaluationPool:
    """Evaluates independent ciphertext groups on every core (see the module docstring).

    Args:
        workers: Concurrent evaluations, the calling process included; None
            for every available core.
        executor: `"auto"` (measure, then threads or processes), `"threads"`
            or `"processes"`.
        timeout: Seconds a worker may take for one group before it is
            declared dead (`PartyError`); starting and loading a context get
            at least a minute. May be changed between calls.
    """

    def __init__(self, workers: int | None = None, executor: str = "auto", timeout: float = 600.0):
        if executor not in EXECUTORS:
            raise ValueError(f"Expected executor in {list(EXECUTORS)}. Received: {executor!r}")
        workers = available_cores() if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"Expected workers a positive integer. Received: {workers!r}")
        self.workers = workers
        self.requested_executor = executor
        self.timeout = float(timeout)
        self.executor: str | None = None
        self.thread_speedup: float | None = None
        self.start_seconds: float | None = None
        self._backend: _Threads | _Processes | None = None
        self._lock = threading.Lock()

    # -- life cycle ------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._backend is not None

    def expected_start_seconds(self) -> float:
        """0 once started; the last measured start-up, or an assumption, before."""
        if self.started:
            return 0.0
        return self.start_seconds if self.start_seconds is not None else ASSUMED_START_SECONDS

    def start(self) -> None:
        """Chooses the executor (measuring thread scaling for `"auto"`) and starts it."""
        with self._lock:
            if self._backend is not None:
                return
            begin = time.perf_counter()
            executor = self.requested_executor
            if executor == "auto":
                self.thread_speedup = measure_thread_speedup(self.workers)
                scales = self.thread_speedup >= THREAD_SCALING * self.workers
                executor = "threads" if scales else "processes"
            self._backend = (
                _Threads(self.workers)
                if executor == "threads"
                else _Processes(self.workers - 1, self.timeout)  # the caller is the last
            )
            self.executor = executor
            self.start_seconds = time.perf_counter() - begin

    def close(self) -> None:
        """Stops the workers (a later use starts them again)."""
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    def __enter__(self) -> EvaluationPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """Executor, worker count and what was measured to choose it."""
        processes = {"threads": 0, "processes": self.workers - 1}.get(self.executor)
        return {
            "executor": self.executor,
            "workers": self.workers,
            "processes": processes,
            "thread_speedup": self.thread_speedup,
            "start_seconds": self.start_seconds,
        }

    def __repr__(self) -> str:
        return f"EvaluationPool(workers={self.workers}, executor={self.executor or 'not started'})"

    # -- evaluation --------------------------------------------------------------------------
    def map(self, program: Any, context: Any, groups: Iterable[Any]) -> Iterator[list[Any]]:
        """Output ciphertexts of `program` for each group of `EncryptedBatch`, in order.

        `groups` is consumed lazily, a few groups ahead of the results: a
        generator that encrypts each group overlaps encryption with
        evaluation.

        Raises:
            PartyError: A worker died, failed or timed out (named).
        """
        self.start()
        backend = self._backend
        backend.timeout = self.timeout  # the pool's current setting, for this map
        try:
            yield from backend.map(program, context, groups)
        finally:
            if getattr(backend, "broken", False):
                self.close()  # replies may be in flight: start clean next time


#: The least a worker is given to start, or to load a context and a program.
_SETUP_SECONDS = 60.0


class _Threads:
    def __init__(self, workers: int):
        self.workers = workers
        self.timeout: float | None = None  # threads are not declared dead
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, "privkeras-he")

    def map(self, program: Any, context: Any, groups: Iterable[Any]) -> Iterator[list[Any]]:
        ops = context.ops()
        pending: list[concurrent.futures.Future] = []
        for batch in groups:
            pending.append(self._executor.submit(program.apply, ops, batch.ciphertexts))
            while len(pending) > self.workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class _WorkerProcess:
    """One `worker.py` process: its pipes (non-blocking, every wait with a deadline)."""

    def __init__(self, index: int, root: str, timeout: float):
        self.index, self.timeout = index, timeout
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            bufsize=0,
        )
        self.input, self.output = self.process.stdin.fileno(), self.process.stdout.fileno()
        os.set_blocking(self.input, False)
        os.set_blocking(self.output, False)
        self.contexts: set[str] = set()
        self.programs: set[str] = set()

    @property
    def name(self) -> str:
        return f"HE evaluation worker {self.index} (pid {self.process.pid})"

    def _wait(self, fd: int, event: int, deadline: float, what: str) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(fd, event)
            if not selector.select(max(0.0, deadline - time.monotonic())):
                raise self.dead(f"no answer within {self.timeout:g} s ({what})")

    def send(self, message: bytes, deadline: float) -> None:
        """Writes one frame, waiting at most until `deadline` for the worker to read it."""
        data = memoryview(FRAME.pack(len(message)) + message)
        while data:
            self._wait(self.input, selectors.EVENT_WRITE, deadline, "it stopped reading")
            try:
                data = data[os.write(self.input, data[: 1 << 20]) :]
            except BlockingIOError:
                continue
            except OSError:
                raise self.dead("its input pipe closed") from None

    def _read(self, size: int, deadline: float) -> bytes:
        parts, left = [], size
        while left:
            self._wait(self.output, selectors.EVENT_READ, deadline, "it is still computing")
            try:
                part = os.read(self.output, min(left, 1 << 20))
            except BlockingIOError:
                continue
            if not part:
                raise self.dead("its output pipe closed")
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def receive(self, kind: str, deadline: float) -> list[bytes]:
        """The blobs of the next reply, which must be of `kind` (a `worker-error` raises)."""
        (length,) = FRAME.unpack(self._read(FRAME.size, deadline))
        frame = self._read(length, deadline)
        if message_kind(frame) == "worker-error":
            header, _ = unpack_message(frame, "worker-error", _ERROR)
            if header["type"] == "HEInputError":  # the group's bytes, not the worker
                raise HEInputError(header["message"])
            raise PartyError(f"{self.name} failed: {header['type']}: {header['message']}")
        return unpack_message(frame, kind, {})[1]

    def dead(self, what: str) -> PartyError:
        code = self.process.poll()
        self.log.seek(0)
        tail = self.log.read()[-2000:].decode(errors="replace").strip()
        return PartyError(
            f"{self.name} stopped answering: {what} (exit code {code}). Its last output: "
            f"{tail or '(none)'}"
        )


def _stop_all(workers: list[_WorkerProcess], grace: float = 2.0) -> None:
    """Closes every worker's input (they exit), then kills whatever is left after `grace`."""
    for worker in workers:
        with contextlib.suppress(OSError):
            worker.process.stdin.close()
    deadline = time.monotonic() + grace
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        worker.process.stdout.close()
        worker.log.close()


class _Processes:
    def __init__(self, workers: int, timeout: float):
        root = str(Path(__file__).resolve().parents[3])  # the directory holding privkeras/
        self.timeout = timeout
        self.broken = False
        self.workers = [_WorkerProcess(i, root, timeout) for i in range(workers)]
        self._finalizer = weakref.finalize(self, _stop_all, self.workers)
        deadline = time.monotonic() + max(timeout, _SETUP_SECONDS)
        for worker in self.workers:
            worker.receive("worker-ready", deadline)

    def close(self) -> None:
        self._finalizer()

    def _prepare(self, worker: _WorkerProcess, program: Any, context: Any) -> tuple[str, str]:
        """Sends the context and the program the first time this worker needs them."""
        context_id = _context_id(context)
        program_id = f"{program.graph.fingerprint()}:{program.block}:{program.slots}"
        deadline = time.monotonic() + max(self.timeout, _SETUP_SECONDS)  # loads 20-40 MB of keys
        if context_id not in worker.contexts:
            message = pack_message("worker-context", {"id": context_id}, [context.to_bytes()])
            worker.send(message, deadline)
            worker.receive("worker-result", deadline)
            worker.contexts.add(context_id)
        if program_id not in worker.programs:
            header = {
                "id": program_id,
                "slots": program.slots,
                "block": program.block,
                "zero_threshold": program.zero_threshold,
            }
            message = pack_message("worker-program", header, [program.graph.to_bytes()])
            worker.send(message, deadline)
            worker.receive("worker-result", deadline)
            worker.programs.add(program_id)
        return program_id, context_id

    def map(self, program: Any, context: Any, groups: Iterable[Any]) -> Iterator[list[Any]]:
        """Sends groups to idle workers; evaluates one itself whenever all are busy."""
        self.broken = True  # until every worker is known to be idle again
        ids = {w.index: self._prepare(w, program, context) for w in self.workers}
        self.broken = False
        idle = list(self.workers)
        busy: dict[int, tuple[_WorkerProcess, float]] = {}  # group -> worker, deadline
        done: dict[int, list[Any]] = {}
        source, submitted, next_out = iter(groups), 0, 0
        try:
            while True:
                batch = next(source, None)
                if batch is not None and idle:
                    self._send(idle.pop(0), ids, batch, submitted, busy)
                elif batch is not None:  # every worker busy: this process takes the group
                    done[submitted] = program.apply(context.ops(), batch.ciphertexts)
                submitted += batch is not None
                done.update(self._answers(busy, idle, context, wait=batch is None))
                while next_out in done:
                    next_out += 1
                    yield done.pop(next_out - 1)
                if batch is None and not busy:
                    return
        except PartyError:
            self.broken = True
            raise
        finally:
            self.broken = self.broken or bool(busy)  # abandoned with answers in flight

    def _send(self, worker: _WorkerProcess, ids: dict, batch: Any, group: int, busy: dict) -> None:
        worker.timeout = self.timeout
        program_id, context_id = ids[worker.index]
        blobs = batch.serialized or [seal_to_bytes(c) for c in batch.ciphertexts]
        header = {"program": program_id, "context": context_id}
        deadline = time.monotonic() + self.timeout
        busy[group] = (worker, deadline)
        worker.send(pack_message("worker-evaluate", header, blobs), deadline)

    def _answers(self, busy: dict, idle: list, context: Any, wait: bool) -> dict[int, list[Any]]:
        """Output ciphertexts of the groups answered (waiting for one if `wait`)."""
        import tenseal.sealapi as sealapi

        if not busy:
            return {}
        answers = self._collect(busy, idle, timeout=None if wait else 0.0)
        seal_context = context.seal_context
        return {
            group: [seal_from_bytes(sealapi.Ciphertext, seal_context, b) for b in blobs]
            for group, blobs in answers.items()
        }

    @staticmethod
    def _collect(busy: dict, idle: list, timeout: float | None) -> dict[int, list[bytes]]:
        """Reads the answers ready within `timeout` (None: the first deadline) among busy workers."""
        first_deadline = min(d for _, d in busy.values())
        wait = max(0.0, first_deadline - time.monotonic()) if timeout is None else timeout
        with selectors.DefaultSelector() as selector:
            for group, (worker, _) in busy.items():
                selector.register(worker.output, selectors.EVENT_READ, group)
            events = selector.select(wait)
        if not events and time.monotonic() >= first_deadline:
            worker = min(busy.values(), key=lambda item: item[1])[0]
            raise worker.dead(f"no answer within {worker.timeout:g} s (it is still computing)")
        answers = {}
        for key, _ in events:
            worker, deadline = busy.pop(key.data)
            answers[key.data] = worker.receive("worker-result", deadline)
            idle.append(worker)
        return answers


def _context_id(context: Any) -> str:
    """The key pair and the rotation steps its Galois keys cover."""
    steps = context.rotation_steps
    covered = "all" if steps is None else ",".join(map(str, sorted(steps)))
    return f"{context.fingerprint}:{hashlib.sha256(covered.encode()).hexdigest()[:8]}"


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise FieldError("a string")
    return value


_ERROR = {"type": _text, "message": _text}
