"""Sessions: the low-level API (`pk.mpc.share`, `SharedTensor`) with the parties elsewhere.

`model.predict` and `fit` know their whole program up front, so one job
carries it to the parties (`JobSpec`). The low-level API is interactive: the
user's next expression is known only when it runs. A session is one
long-lived job (`JobSpec(kind="session")`) in which the driver, before it
runs a user-level operation on its own tensors, sends that operation as a
small *command* to every role (each compute party and Pond's dealer). Every
role runs the same `SharedTensor` method on its own shares, so every process
runs the same protocol code in the same order, exactly as the jobs of the
engine do (see `placement`).

- A command names one operation of an explicit allowlist (`OPERATIONS`),
  its shared operands by id, and its public arguments (numbers, strings,
  shapes, slices, numpy arrays in binary): JSON and raw array bytes, never
  pickle. It travels on the job's own numbered channels as control (like
  `runtime.broadcast`): it is not protocol traffic and is not counted.
- The driver runs what the parties decode, from the same bytes: the same
  public arguments give the same bounds, the same errors and the same rounds.
  A command that fails everywhere before any message (a shape mismatch, a
  range check) leaves the session usable, as in one process.
- The driver's placement is every role but the compute parties' and the
  dealer's (`Placement.all_but`), so any name the user shares as
  (`owner="alice"`) runs here. Without a seed, the stream keys such an
  owner shares with the parties are agreed the first time it shares.
- `share(x, owner="p0")` (a compute party's input) hands `x` to that party
  first, over the job's channel, and to no one else: in one process too, the
  owner is who holds the plaintext.
- Tensors the driver frees (garbage collection) are freed on the parties
  with the next command; `close()` ends the session everywhere; a party that
  hears nothing for `idle_timeout` seconds drops it.
- A malformed command (an unknown operation or tensor, arguments that do not
  bind) fails the session on the party: the driver sees a typed error at its
  next wait on that party or at `close()`. A dead party is a `PartyError`
  naming it within the deadline.

Example:

```python
from privkeras.backends.mpc.cluster import ThreadCluster
from privkeras.backends.mpc.session import MPCSession

with MPCSession(ThreadCluster(), "aby3", seed=0) as session:
    x = session.share([[1.0, -2.0]], owner="alice")
    y = (x @ [[0.5], [0.25]]).relu()
    y.reveal(to="alice")                 # array([[0.]])
    session.stats().rounds
```
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import inspect
import json
import logging
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from privkeras.backends.mpc.cluster import job_roles
from privkeras.backends.mpc.communicator import CommunicationStats
from privkeras.backends.mpc.errors import MPCInputError
from privkeras.backends.mpc.jobs import JobSpec
from privkeras.backends.mpc.placement import Placement, Remote
from privkeras.backends.mpc.protocols.streams import agree_stream_keys, job_labels
from privkeras.backends.mpc.roles import CALLER, MODEL_OWNER
from privkeras.backends.mpc.runtime import MPCRuntime, get_protocol
from privkeras.backends.mpc.tensor import SharedBit, SharedTensor
from privkeras.core.kernels import KERNEL_LIBRARIES, RingKernels, get_kernels
from privkeras.errors import PartyError, PrivacyPolicyError

__all__ = [
    "COMPUTE_ROLES",
    "OPERATIONS",
    "MPCSession",
    "PublicTensor",
    "SessionBit",
    "SessionCommandError",
    "SessionTensor",
    "serve_session",
]

logger = logging.getLogger("privkeras.mpc")

#: Version of the command format; a party refuses any other.
COMMAND_FORMAT = 1
#: The roles that run in processes of their own; every other name runs in the driver.
COMPUTE_ROLES = ("p0", "p1", "p2", "dealer")
_MAGIC = b"PKS\x01"
_MAX_HEADER_BYTES = 1 << 20
_MAX_ARRAYS = 64
_MAX_DEPTH = 16
_MAX_TEXT = 256
_MAX_NAME = 64
_DTYPES = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
}
_ENGINES = {"torch": "mpc-torch", "tensorflow": "mpc-tfe"}


class SessionCommandError(MPCInputError):
    """A session command a party cannot take: unknown operation or tensor, malformed arguments."""


# -- what a command may run ---------------------------------------------------------------------
def _share(
    runtime: MPCRuntime,
    owner: str,
    name: str,
    shape: list[int],
    bound: float | None,
    agree: bool,
    value: np.ndarray | None = None,
) -> SharedTensor:
    """`runtime.share` as every role runs it: the owner with its value, the others with its shape."""
    shape = _checked_shape(shape)
    if not isinstance(owner, str) or not isinstance(name, str) or not isinstance(agree, bool):
        raise SessionCommandError("Expected a share command with owner, name and agree.")
    if bound is not None and not isinstance(bound, (int, float)):
        raise SessionCommandError(f"Expected a share bound to be a number. Received: {bound!r}")
    if agree and runtime.seed is None:
        _agree_owner_keys(runtime, owner)
    if value is None:
        if runtime.here(owner) and owner in COMPUTE_ROLES:
            raise SessionCommandError(f"Expected the value of {owner!r}'s input. Received: none")
        held: Any = Remote(shape)
    else:
        held = value
        if tuple(np.shape(value)) != shape:
            raise SessionCommandError(
                f"Expected a value of shape {shape}. Received: shape={np.shape(value)}"
            )
    return runtime.share(held, owner=owner, name=name, bound=bound)


def _share_public(runtime: MPCRuntime, value: Any, name: str = "public value") -> SharedTensor:
    return runtime.share_public(value, name=name)


def _concat(runtime: MPCRuntime, tensors: list, axis: int = 0) -> SharedTensor:
    return SharedTensor.concat(tensors, axis)


def _stack(runtime: MPCRuntime, tensors: list, axis: int = 0) -> SharedTensor:
    return SharedTensor.stack(tensors, axis)


@dataclasses.dataclass(frozen=True)
class Operation:
    """One operation a command may run.

    Attributes:
        on: What it is called on: `"tensor"` (a `SharedTensor`), `"bit"` (a
            `SharedBit`) or `"session"` (the runtime).
        function: The method (or function of the runtime) every role calls.
        signature: Its signature, which every command's arguments must bind to.
    """

    on: str
    function: Callable[..., Any]
    signature: inspect.Signature


def _operation(on: str, function: Callable[..., Any]) -> Operation:
    return Operation(on, function, inspect.signature(function))


#: The allowlist: every operation a command may name, and the function it runs.
OPERATIONS: dict[str, Operation] = {
    "session.share": _operation("session", _share),
    "session.share_public": _operation("session", _share_public),
    "session.concat": _operation("session", _concat),
    "session.stack": _operation("session", _stack),
    "tensor.__add__": _operation("tensor", SharedTensor.__add__),
    "tensor.__radd__": _operation("tensor", SharedTensor.__radd__),
    "tensor.__sub__": _operation("tensor", SharedTensor.__sub__),
    "tensor.__rsub__": _operation("tensor", SharedTensor.__rsub__),
    "tensor.__neg__": _operation("tensor", SharedTensor.__neg__),
    "tensor.__mul__": _operation("tensor", SharedTensor.__mul__),
    "tensor.__rmul__": _operation("tensor", SharedTensor.__rmul__),
    "tensor.__matmul__": _operation("tensor", SharedTensor.__matmul__),
    "tensor.__rmatmul__": _operation("tensor", SharedTensor.__rmatmul__),
    "tensor.__truediv__": _operation("tensor", SharedTensor.__truediv__),
    "tensor.__lt__": _operation("tensor", SharedTensor.__lt__),
    "tensor.__gt__": _operation("tensor", SharedTensor.__gt__),
    "tensor.__le__": _operation("tensor", SharedTensor.__le__),
    "tensor.__ge__": _operation("tensor", SharedTensor.__ge__),
    "tensor.__getitem__": _operation("tensor", SharedTensor.__getitem__),
    "tensor.abs": _operation("tensor", SharedTensor.abs),
    "tensor.argmax": _operation("tensor", SharedTensor.argmax),
    "tensor.avg_pool2d": _operation("tensor", SharedTensor.avg_pool2d),
    "tensor.broadcast_to": _operation("tensor", SharedTensor.broadcast_to),
    "tensor.conv2d": _operation("tensor", SharedTensor.conv2d),
    "tensor.div_power_of_two": _operation("tensor", SharedTensor.div_power_of_two),
    "tensor.div_public": _operation("tensor", SharedTensor.div_public),
    "tensor.drelu": _operation("tensor", SharedTensor.drelu),
    "tensor.exp": _operation("tensor", SharedTensor.exp),
    "tensor.expand_dims": _operation("tensor", SharedTensor.expand_dims),
    "tensor.extract_patches": _operation("tensor", SharedTensor.extract_patches),
    "tensor.log": _operation("tensor", SharedTensor.log),
    "tensor.max": _operation("tensor", SharedTensor.max),
    "tensor.max_pool2d": _operation("tensor", SharedTensor.max_pool2d),
    "tensor.max_pool2d_with_mask": _operation("tensor", SharedTensor.max_pool2d_with_mask),
    "tensor.max_with_argmax": _operation("tensor", SharedTensor.max_with_argmax),
    "tensor.mean": _operation("tensor", SharedTensor.mean),
    "tensor.negative_bit": _operation("tensor", SharedTensor.negative_bit),
    "tensor.pad": _operation("tensor", SharedTensor.pad),
    "tensor.positive_bit": _operation("tensor", SharedTensor.positive_bit),
    "tensor.reciprocal": _operation("tensor", SharedTensor.reciprocal),
    "tensor.relu": _operation("tensor", SharedTensor.relu),
    "tensor.relu_with_derivative": _operation("tensor", SharedTensor.relu_with_derivative),
    "tensor.reshape": _operation("tensor", SharedTensor.reshape),
    "tensor.reveal": _operation("tensor", SharedTensor.reveal),
    "tensor.sigmoid": _operation("tensor", SharedTensor.sigmoid),
    "tensor.softmax": _operation("tensor", SharedTensor.softmax),
    "tensor.square": _operation("tensor", SharedTensor.square),
    "tensor.sum": _operation("tensor", SharedTensor.sum),
    "tensor.tanh": _operation("tensor", SharedTensor.tanh),
    "tensor.transpose": _operation("tensor", SharedTensor.transpose),
    "tensor.where": _operation("tensor", SharedTensor.where),
    "tensor.with_bound": _operation("tensor", SharedTensor.with_bound),
    "bit.times": _operation("bit", SharedBit.times),
    "bit.to_tensor": _operation("bit", SharedBit.to_tensor),
    "bit.reveal": _operation("bit", SharedBit.reveal),
}
#: Operations whose receiver may fail on its own after the messages (a range check).
_REVEALS = frozenset({"tensor.reveal", "bit.reveal"})


def _agree_owner_keys(runtime: MPCRuntime, owner: str) -> None:
    """Fresh keys for the streams a new data owner shares with the parties (unseeded sessions)."""
    protocol = runtime.protocol_name
    labels = [label for label in job_labels(protocol, [owner]) if label.startswith("owner/")]
    keys = agree_stream_keys(runtime.communicator, labels, (*job_roles(protocol), owner))
    runtime.streams.add_keys(keys)


# -- the command codec ----------------------------------------------------------------------------
class PublicTensor:
    """A public operand that was a torch or TensorFlow tensor, rebuilt from its array.

    Shared tensors read such operands through `.numpy()` and treat them as
    tensors (not as numpy arrays: a tensor of integers is encoded, not
    multiplied exactly); this stand-in is read the same way, so every role
    computes what one process computes with the user's tensor.
    """

    __slots__ = ("_array",)

    def __init__(self, array: np.ndarray):
        self._array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape

    def numpy(self) -> np.ndarray:
        return self._array

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self._array if dtype is None else self._array.astype(dtype)

    def __repr__(self) -> str:
        return f"PublicTensor(shape={self.shape}, dtype={self._array.dtype})"


class _Encoder:
    """Turns one call's arguments into JSON, with arrays apart and shared operands by id."""

    def __init__(self, session: MPCSession):
        self.session = session
        self.arrays: list[np.ndarray] = []
        self.refs: dict[int, SharedTensor | SharedBit] = {}

    def value(self, value: Any, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise MPCInputError(f"Expected arguments nested at most {_MAX_DEPTH} deep.")
        if isinstance(value, (SessionTensor, SessionBit)):
            if value._session is not self.session:
                raise MPCInputError(
                    "Expected shared tensors of the same runtime. "
                    "Received: tensors of two different sessions"
                )
            self.refs[value._id] = value._value
            return {"bit" if isinstance(value, SessionBit) else "tensor": value._id}
        if isinstance(value, (SharedTensor, SharedBit)):
            raise MPCInputError(
                "Expected shared tensors of the same runtime. Received: a tensor of an "
                "in-process MPCRuntime in an operation of a session"
            )
        if isinstance(value, np.ndarray):
            return {"array": self._array(value)}
        if isinstance(value, np.generic):
            return {"scalar": self._array(np.asarray(value))}
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            if len(value) > _MAX_TEXT:
                raise MPCInputError(
                    f"Expected strings of at most {_MAX_TEXT} characters in a session "
                    f"operation. Received: {len(value)} characters"
                )
            return value
        if isinstance(value, (tuple, list)):
            kind = "tuple" if isinstance(value, tuple) else "list"
            return {kind: [self.value(item, depth + 1) for item in value]}
        if isinstance(value, slice):
            return {
                "slice": [self.value(v, depth + 1) for v in (value.start, value.stop, value.step)]
            }
        if value is Ellipsis:
            return {"ellipsis": True}
        if hasattr(value, "detach") or hasattr(value, "numpy"):  # a torch or TensorFlow tensor
            return {"public": self._array(_tensor_numpy(value))}
        raise TypeError(
            "Expected public values (numbers, strings, shapes, slices, numpy, torch or "
            "TensorFlow arrays) or tensors of this session. "
            f"Received: {type(value).__name__}"
        )

    def _array(self, array: np.ndarray) -> int:
        name = array.dtype.name
        if name not in _DTYPES:
            raise TypeError(
                f"Expected a public array of a numeric dtype {sorted(_DTYPES)}. "
                f"Received: dtype={array.dtype}"
            )
        if len(self.arrays) >= _MAX_ARRAYS:
            raise MPCInputError(f"Expected at most {_MAX_ARRAYS} public arrays in one operation.")
        self.arrays.append(np.array(array, dtype=_DTYPES[name], order="C"))  # keeps 0-d
        return len(self.arrays) - 1

    def resolve(self, tensor_id: Any, kind: type) -> Any:
        return self.refs[tensor_id]


def encode_message(header: Mapping[str, Any], arrays: Sequence[np.ndarray] = ()) -> np.ndarray:
    """One command as bytes: a magic, the JSON header (with its array table), the arrays."""
    header = {**header, "arrays": [[a.dtype.name, list(a.shape)] for a in arrays]}
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > _MAX_HEADER_BYTES:
        raise MPCInputError(
            f"Expected a session command under {_MAX_HEADER_BYTES} bytes of JSON. "
            f"Received: {len(text)} bytes (pass large public operands as numpy arrays)"
        )
    parts = [_MAGIC, len(text).to_bytes(4, "little"), text, *(a.tobytes() for a in arrays)]
    return np.frombuffer(b"".join(parts), dtype=np.uint8)


def decode_message(message: Any) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The header and arrays of one command.

    Raises:
        SessionCommandError: For anything but a well-formed command of this format.
    """
    data = np.asarray(message)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise SessionCommandError(
            f"Expected a command as bytes. Received: dtype={data.dtype}, shape={data.shape}"
        )
    raw = data.tobytes()
    if len(raw) < 8 or raw[:4] != _MAGIC:
        raise SessionCommandError("Expected a session command. Received: other bytes")
    size = int.from_bytes(raw[4:8], "little")
    if size > _MAX_HEADER_BYTES or 8 + size > len(raw):
        raise SessionCommandError(f"Expected a header within the command. Received: {size} bytes")
    try:
        header = json.loads(raw[8 : 8 + size].decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise SessionCommandError(f"Expected a JSON header. Received: {error}") from None
    if not isinstance(header, dict) or header.get("format") != COMMAND_FORMAT:
        raise SessionCommandError(
            f"Expected a command of format {COMMAND_FORMAT}. "
            f"Received: format={header.get('format') if isinstance(header, dict) else None!r}"
        )
    return header, _read_arrays(header.get("arrays"), raw, 8 + size)


def _read_arrays(table: Any, raw: bytes, offset: int) -> list[np.ndarray]:
    if not isinstance(table, list) or len(table) > _MAX_ARRAYS:
        raise SessionCommandError(f"Expected an array table. Received: {type(table).__name__}")
    arrays = []
    for entry in table:
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and entry[0] in _DTYPES
            and isinstance(entry[1], list)
        ):
            raise SessionCommandError(f"Expected [dtype, shape] entries. Received: {entry!r:.80}")
        dtype, shape = _DTYPES[entry[0]], _checked_shape(entry[1])
        count = int(np.prod(shape, dtype=np.int64))
        end = offset + count * dtype.itemsize
        if end > len(raw):
            raise SessionCommandError(
                "Expected the command's arrays in full. Received: fewer bytes"
            )
        view = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape)
        arrays.append(np.array(view, dtype=dtype.newbyteorder("=")))
        offset = end
    if offset != len(raw):
        raise SessionCommandError(
            f"Expected no bytes after the arrays. Received: {len(raw) - offset}"
        )
    return arrays


def _decode(value: Any, arrays: list[np.ndarray], resolve: Callable, depth: int = 0) -> Any:
    """A public argument (or shared operand) from its JSON form."""
    if depth > _MAX_DEPTH:
        raise SessionCommandError(f"Expected arguments nested at most {_MAX_DEPTH} deep.")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if len(value) > _MAX_TEXT:
            raise SessionCommandError(f"Expected strings of at most {_MAX_TEXT} characters.")
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((kind, item),) = value.items()
        if kind in ("tensor", "bit"):
            return resolve(item, SharedTensor if kind == "tensor" else SharedBit)
        if kind in ("array", "scalar", "public"):
            if not _is_index(item) or item >= len(arrays):
                raise SessionCommandError(f"Expected an array index. Received: {item!r:.40}")
            array = arrays[item]
            if kind == "scalar":
                return array[()] if array.ndim == 0 else _bad(value)
            return array if kind == "array" else PublicTensor(array)
        if kind in ("tuple", "list") and isinstance(item, list):
            items = [_decode(v, arrays, resolve, depth + 1) for v in item]
            return tuple(items) if kind == "tuple" else items
        if kind == "slice" and isinstance(item, list) and len(item) == 3:
            parts = [_decode(v, arrays, resolve, depth + 1) for v in item]
            if not all(p is None or isinstance(p, (int, np.integer)) for p in parts):
                _bad(value)
            return slice(*parts)
        if kind == "ellipsis" and item is True:
            return Ellipsis
    return _bad(value)


def _bad(value: Any) -> Any:
    raise SessionCommandError(f"Expected a session argument. Received: {str(value)[:80]}")


def decode_call(
    header: Mapping[str, Any],
    arrays: list[np.ndarray],
    resolve: Callable[[Any, type], Any],
    runtime: MPCRuntime,
) -> tuple[str, Operation, Any, list[Any], dict[str, Any]]:
    """The operation, receiver and arguments a command names, bound to its signature.

    Raises:
        SessionCommandError: For an operation outside `OPERATIONS`, a receiver
            of the wrong kind, or arguments that do not bind.
    """
    op = header.get("op")
    operation = OPERATIONS.get(op) if isinstance(op, str) else None
    if operation is None:
        raise SessionCommandError(
            f"Expected an operation of the session's allowlist. Received: op={str(op)[:80]!r}"
        )
    args, kwargs = header.get("args", []), header.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise SessionCommandError(f"Expected a list of args and a dict of kwargs for {op}.")
    if operation.on == "session":
        if header.get("self") is not None:
            raise SessionCommandError(f"Expected no receiver for {op}.")
        first = runtime
    else:
        kind = SharedTensor if operation.on == "tensor" else SharedBit
        first = _decode(header.get("self"), arrays, resolve)
        if not isinstance(first, kind):
            raise SessionCommandError(f"Expected a {kind.__name__} receiver for {op}.")
    args = [_decode(a, arrays, resolve) for a in args]
    kwargs = {_kwarg_name(k): _decode(v, arrays, resolve) for k, v in kwargs.items()}
    try:
        operation.signature.bind(first, *args, **kwargs)
    except TypeError as error:
        raise SessionCommandError(f"Expected the arguments of {op}. Received: {error}") from None
    return op, operation, first, args, kwargs


def _kwarg_name(name: Any) -> str:
    if not isinstance(name, str) or not name.isidentifier() or len(name) > _MAX_NAME:
        raise SessionCommandError(f"Expected keyword names. Received: {str(name)[:40]!r}")
    return name


def _checked_shape(shape: Any) -> tuple[int, ...]:
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) > 32
        or not all(_is_index(d) and d < 2**40 for d in shape)
    ):
        raise SessionCommandError(f"Expected a shape of ints >= 0. Received: {str(shape)[:80]}")
    return tuple(shape)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _results(value: Any) -> list[SharedTensor | SharedBit]:
    """The shared values an operation returned, in order (none for a reveal)."""
    if isinstance(value, (SharedTensor, SharedBit)):
        return [value]
    if isinstance(value, tuple) and all(isinstance(v, (SharedTensor, SharedBit)) for v in value):
        return list(value)
    return []


def _tensor_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value.numpy())


def _stats_message(stats: CommunicationStats) -> np.ndarray:
    fields = {
        "rounds": stats.rounds,
        "bytes_per_party": dict(stats.bytes_per_party),
        "messages": stats.messages,
        "offline_bytes": stats.offline_bytes,
    }
    return np.frombuffer(json.dumps(fields).encode(), dtype=np.uint8)


def _stats_from(message: Any, role: str) -> CommunicationStats:
    try:
        fields = json.loads(np.asarray(message, dtype=np.uint8).tobytes())
        per_party = {str(k): int(v) for k, v in fields["bytes_per_party"].items()}
        return CommunicationStats(
            rounds=int(fields["rounds"]),
            bytes_sent=sum(per_party.values()),
            bytes_per_party=per_party,
            messages=int(fields["messages"]),
            offline_bytes=int(fields["offline_bytes"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise PartyError(f"Party {role!r} sent malformed counters: {error}") from None


def _counters(runtime: MPCRuntime) -> tuple[int, int, int]:
    comm = runtime.communicator
    snapshot = comm.snapshot()
    return snapshot.rounds, snapshot.messages, snapshot.offline_bytes


# -- the driver -------------------------------------------------------------------------------------
def _session_spec(
    protocol: str, kernels: Any, precision_bits: int, seed: Any, idle_timeout: Any
) -> tuple[JobSpec, RingKernels]:
    """The session's job and kernels, or `PrivacyPolicyError` before any party is contacted."""
    get_protocol(protocol)
    if isinstance(kernels, str):
        if kernels not in KERNEL_LIBRARIES:
            raise PrivacyPolicyError(
                f"Expected kernels in {list(KERNEL_LIBRARIES)}. Received: kernels={kernels!r}"
            )
        kernels = get_kernels(kernels)
    valid_idle = isinstance(idle_timeout, (int, float)) and not isinstance(idle_timeout, bool)
    if not valid_idle or not 0 < idle_timeout <= 86400:
        raise PrivacyPolicyError(
            f"Expected idle_timeout in (0, 86400] seconds. Received: idle_timeout={idle_timeout!r}"
        )
    spec = JobSpec(
        kind="session",
        engine=_ENGINES.get(kernels.name, "mpc-numpy"),
        protocol=protocol,
        precision_bits=precision_bits,
        seed=seed,
        model="",
        input_shape=(),
    )
    try:
        spec.check()
    except ValueError as error:
        raise PrivacyPolicyError(f"Expected a valid session. Received: {error}") from None
    return spec, kernels


class MPCSession:
    """The low-level API with the parties in other processes (or threads): a runtime for `pk.mpc`.

    Quacks like an `MPCRuntime` for the low-level API: `share`,
    `share_public`, `reveal`, and the tensors it returns support every
    `SharedTensor` operation; each runs on every party as a command (see the
    module docstring). `pk.mpc.connect` opens one with party processes.

    Args:
        cluster: Where the parties run: a `NetworkCluster` (party processes)
            or a `ThreadCluster` (threads of this process, for tests).
        protocol: `"pond"` or `"aby3"`.
        kernels: The driver's ring kernels (name or `RingKernels`); the
            parties use the same library.
        precision_bits: Fractional bits of the fixed-point encoding.
        seed: None for keys agreed freshly between the processes, or an int
            that makes every share reproducible (tests only: not secure).
        track_bounds: Whether shared values carry public bounds checked
            before each operation (as `pk.mpc`'s in-process default does).
        idle_timeout: Seconds a party waits for the next command before it
            drops the session.
        close_cluster: Whether `close()` also closes `cluster` (its client).

    Raises:
        PrivacyPolicyError: For an unknown protocol or kernel library, or bad
            precision, seed or idle timeout.
        PartyError, AuthenticationError: A party cannot be reached or refuses.

    Example:

    ```python
    with pk.mpc.local_cluster("aby3") as cluster:
        with pk.mpc.connect("aby3", cluster.parties) as session:
            x = pk.mpc.share(np.ones((2, 2)), runtime=session)
            (x @ x).reveal()          # array([[2., 2.], [2., 2.]])
    ```
    """

    def __init__(
        self,
        cluster: Any,
        protocol: str = "pond",
        *,
        kernels: str | RingKernels = "numpy",
        precision_bits: int = 16,
        seed: int | None = None,
        track_bounds: bool = True,
        idle_timeout: float = 600.0,
        close_cluster: bool = False,
    ):
        spec, kernels = _session_spec(protocol, kernels, precision_bits, seed, idle_timeout)
        self._cluster, self._close_cluster = cluster, close_cluster
        self._roles = job_roles(protocol)
        self._lock = threading.RLock()
        self._freed: collections.deque[int] = collections.deque()
        self._next_id = 0
        self._owners = {CALLER, MODEL_OWNER}  # their keys are agreed when the job starts
        self._closed, self._broken = False, None
        #: The `JobReport` of the session (counters and reveal logs of every process) once closed.
        self.report = None
        self._job = cluster.job(spec, kernels, Placement.all_but(COMPUTE_ROLES))
        self._runtime: MPCRuntime = self._job.__enter__()
        self._runtime.track_bounds = bool(track_bounds)
        try:
            hello = {"track_bounds": bool(track_bounds), "idle_timeout": float(idle_timeout)}
            self._send(encode_message({"format": COMMAND_FORMAT, "op": "hello", "kwargs": hello}))
        except BaseException as error:
            self._closed = True
            self._job.__exit__(type(error), error, error.__traceback__)
            raise

    # -- what a runtime offers ------------------------------------------------------------------
    @property
    def protocol_name(self) -> str:
        return self._runtime.protocol_name

    @property
    def parties(self) -> tuple[str, ...]:
        """Names of the compute parties."""
        return self._runtime.parties

    @property
    def roles(self) -> tuple[str, ...]:
        """The processes every command goes to: the compute parties, and Pond's dealer."""
        return self._roles

    @property
    def codec(self):
        return self._runtime.codec

    @property
    def kernels(self) -> RingKernels:
        return self._runtime.kernels

    @property
    def seed(self) -> int | None:
        return self._runtime.seed

    @property
    def track_bounds(self) -> bool:
        return self._runtime.track_bounds

    @property
    def communicator(self):
        """The driver's communicator: rounds of the session, bytes the driver sent (see `stats`)."""
        return self._runtime.communicator

    @property
    def reveal_log(self) -> list:
        """The driver's reveal log (every reveal of the session, whoever received it)."""
        return self._runtime.reveal_log

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._broken else "open"
        return f"MPCSession(protocol={self.protocol_name!r}, roles={list(self._roles)}, {state})"

    def share(
        self, value: Any, owner: str = "caller", name: str = "x", bound: float | None = None
    ) -> SessionTensor:
        """Secret-shares `value` held by `owner` among the parties (see `MPCRuntime.share`).

        An owner outside the compute parties runs in this process and sends
        only the shares; `owner="p0"` (a compute party) hands `value` to that
        party first, as its own input.

        Raises:
            PrecisionOverflowError: For NaN, infinite or out-of-range values,
                or values beyond `bound`, before any party hears of them.
            MPCInputError: For an owner name that is not a role of this session.
        """
        owner = self._role_name(owner, "owner")
        runtime = self._runtime
        with self._lock:
            self._require_usable()
            encoded = runtime.encode_public(value, name=str(name))
            declared = runtime.share_bound(value, bound, str(name))
            local = runtime.here(owner)
            kwargs = {
                "owner": owner,
                "name": str(name)[:_MAX_TEXT],
                "shape": [int(d) for d in runtime.kernels.shape(encoded)],
                "bound": declared,
                "agree": local and runtime.seed is None and owner not in self._owners,
            }
            header, message = self._encode("session.share", None, (), kwargs)
            messages = {}
            if not local:  # a compute party's input: only that party gets the value
                values = np.asarray(
                    _tensor_numpy(value) if _is_tensor(value) else value, np.float64
                )
                _, messages[owner] = self._encode(
                    "session.share", None, (), {**kwargs, "value": values}, header["free"]
                )
            self._send(message, messages)
            if kwargs["agree"]:  # every process agrees the owner's keys as part of this command
                self._owners.add(owner)
            held = value if local else None
            shared = self._run("session.share", lambda: _share(runtime, **kwargs, value=held))
            return self._wrap(shared, header["out"])

    def share_public(self, value: Any, name: str = "public value") -> SessionTensor:
        """A public value as a trivial sharing (see `MPCRuntime.share_public`)."""
        return self._call("session.share_public", None, (value,), {"name": name})

    def reveal(
        self,
        x: SessionTensor,
        to: str = "caller",
        what: str = "value",
        check_range: bool | float = False,
    ) -> np.ndarray | None:
        """Opens `x` to `to`: the values here if `to` runs in this process, None if it is a party."""
        if not isinstance(x, SessionTensor) or x._session is not self:
            raise TypeError("Expected a SessionTensor of this session.")
        return x.reveal(to=to, what=what, check_range=check_range)

    def stats(self) -> CommunicationStats:
        """The session's counters so far, gathered from every process (as one process counts them).

        Raises:
            PartyError: A party did not answer within the deadline.
        """
        with self._lock:
            self._require_usable()
            _, message = self._encode("session.stats", None, (), {})
            try:
                self._send(message)
                comm = self._runtime.communicator
                snapshots = [comm.snapshot()] + [
                    _stats_from(comm.receive_control(role, CALLER), role) for role in self._roles
                ]
            except BaseException as error:
                self._broken = error
                raise
            return CommunicationStats.total(snapshots)

    # -- ending -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Ends the session on every party and collects `report`.

        Raises:
            PrivkerasError: The error a party failed the session with (a
                malformed command, a peer that died), typed as it raised it.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                error = self._broken
                if error is not None:  # the driver raised it already: tell the parties, quietly
                    with contextlib.suppress(Exception):
                        self._job.__exit__(type(error), error, error.__traceback__)
                    return
                refused = None
                try:
                    self._send(encode_message({"format": COMMAND_FORMAT, "op": "close"}))
                except PartyError as failure:  # a party ended the session: its error says why
                    refused = failure
                self._job.__exit__(None, None, None)  # raises a party's own error, typed
                self.report = self._cluster.last_report
                if refused is not None:
                    raise refused
            finally:
                if self._close_cluster:
                    self._cluster.close()

    def __enter__(self) -> MPCSession:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- commands ---------------------------------------------------------------------------------
    def _call(
        self, op: str, receiver: Any, args: tuple = (), kwargs: Mapping[str, Any] | None = None
    ) -> Any:
        """Sends `op` to every party, then runs it here on what the parties decode."""
        with self._lock:
            self._require_usable()
            encoder = _Encoder(self)
            header, message = self._encode(op, receiver, args, kwargs or {}, encoder=encoder)
            try:
                _, operation, first, args, kwargs = decode_call(
                    *decode_message(message), encoder.resolve, self._runtime
                )
            except BaseException:
                self._freed.extend(header["free"])  # nothing was sent: free them next time
                raise
            self._send(message)
            result = self._run(op, lambda: operation.function(first, *args, **kwargs))
            return self._wrap(result, header["out"])

    def _encode(
        self,
        op: str,
        receiver: Any,
        args: tuple,
        kwargs: Mapping[str, Any],
        free: list[int] | None = None,
        encoder: _Encoder | None = None,
    ) -> tuple[dict[str, Any], np.ndarray]:
        encoder = encoder or _Encoder(self)
        header = {
            "format": COMMAND_FORMAT,
            "op": op,
            "self": None if receiver is None else encoder.value(receiver),
            "args": [encoder.value(a) for a in args],
            "kwargs": {k: encoder.value(v) for k, v in kwargs.items()},
            "out": self._next_id,
            "free": [],
        }
        message = encode_message(header, encoder.arrays)  # refuses what cannot travel
        header["free"] = self._drain_freed() if free is None else free
        if header["free"]:
            message = encode_message(header, encoder.arrays)
        return header, message

    def _send(self, message: np.ndarray, special: Mapping[str, np.ndarray] | None = None) -> None:
        comm = self._runtime.communicator
        try:
            pending = [
                comm.post_control(CALLER, role, (special or {}).get(role, message))
                for role in self._roles
            ]
            for send in pending:  # the parties accept in parallel: one round trip, not three
                if send is not None:
                    send.result()
        except BaseException as error:
            self._broken = error
            raise

    def _run(self, op: str, operation: Callable[[], Any]) -> Any:
        """Runs the driver's side of `op`; a failure after messages breaks the session."""
        before = _counters(self._runtime)
        try:
            return operation()
        except PartyError as error:
            self._broken = error
            raise
        except Exception as error:
            if _counters(self._runtime) != before and op not in _REVEALS:
                self._broken = error
            raise
        except BaseException as error:  # interrupted: the parties may be mid-protocol
            self._broken = error
            raise

    def _wrap(self, result: Any, out: int) -> Any:
        items = _results(result)
        wrapped = [
            SessionTensor(self, out + i, v)
            if isinstance(v, SharedTensor)
            else SessionBit(self, out + i, v)
            for i, v in enumerate(items)
        ]
        self._next_id = out + len(items)
        if not items:
            return result
        return tuple(wrapped) if isinstance(result, tuple) else wrapped[0]

    def _release(self, tensor_id: int) -> None:
        """A finalizer: the parties drop `tensor_id` with the next command (never sends itself)."""
        if not self._closed:
            self._freed.append(tensor_id)

    def _drain_freed(self) -> list[int]:
        freed = []
        while self._freed:
            freed.append(self._freed.popleft())
        return sorted(freed)

    def _require_usable(self) -> None:
        if self._closed:
            raise MPCInputError("Expected an open session. Received: a closed one")
        if self._broken is not None:
            raise PartyError(
                "Expected a working session. Received: one that failed earlier "
                f"({type(self._broken).__name__}: {self._broken}); close it and connect again"
            )

    def _role_name(self, name: Any, what: str) -> str:
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME or "/" in name:
            raise MPCInputError(
                f"Expected {what} to be a role name: a string of 1 to {_MAX_NAME} characters "
                f"without '/'. Received: {what}={name!r}"
            )
        if name in COMPUTE_ROLES and name not in self._roles:
            raise MPCInputError(
                f"Expected {what} to be one of this session's processes {list(self._roles)} or a "
                f"name outside {list(COMPUTE_ROLES)}. Received: {what}={name!r}"
            )
        return name


def _is_tensor(value: Any) -> bool:
    return not isinstance(value, np.ndarray) and (
        hasattr(value, "detach") or hasattr(value, "numpy")
    )


class SessionTensor:
    """A tensor of a session: every `SharedTensor` operation, run by every party.

    Each operation is sent to the parties as a command, then run on the
    driver's own `SharedTensor` (which holds no share component: the driver
    follows the computation and receives what is revealed to it). Made by
    `MPCSession.share` (or `pk.mpc.share(..., runtime=session)`), never by
    calling this constructor.
    """

    __slots__ = ("__weakref__", "_id", "_session", "_value")
    __array_priority__ = 1000  # numpy defers `ndarray @ tensor` to __rmatmul__

    def __init__(self, session: MPCSession, tensor_id: int, value: SharedTensor):
        self._session, self._id, self._value = session, tensor_id, value
        weakref.finalize(self, session._release, tensor_id)

    def _op(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return self._session._call(op, self, args, kwargs)

    # -- basics ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._value.shape

    @property
    def ndim(self) -> int:
        return self._value.ndim

    @property
    def size(self) -> int:
        return self._value.size

    @property
    def bound(self) -> float | None:
        """A public bound on |value| (see `SharedTensor.bound`)."""
        return self._value.bound

    @property
    def runtime(self) -> MPCSession:
        return self._session

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"SessionTensor(shape={self.shape}, protocol={self._session.protocol_name!r})"

    def __bool__(self) -> bool:
        raise TypeError(
            "A SessionTensor has no truth value: its value is secret. "
            "Use comparisons (which return shared 0/1) with .where(), or reveal it."
        )

    # -- arithmetic -----------------------------------------------------------------------------
    def __add__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__add__", other)

    def __radd__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__radd__", other)

    def __sub__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__sub__", other)

    def __rsub__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__rsub__", other)

    def __neg__(self) -> SessionTensor:
        return self._op("tensor.__neg__")

    def __mul__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__mul__", other)

    def __rmul__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__rmul__", other)

    def __matmul__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__matmul__", other)

    def __rmatmul__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__rmatmul__", other)

    def __truediv__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__truediv__", other)

    def conv2d(self, kernel: Any, strides: Sequence[int] = (1, 1), padding: str = "VALID"):
        """2-D convolution (see `SharedTensor.conv2d`)."""
        return self._op("tensor.conv2d", kernel, strides=strides, padding=padding)

    def square(self) -> SessionTensor:
        return self._op("tensor.square")

    def div_public(self, divisor: Any) -> SessionTensor:
        return self._op("tensor.div_public", divisor)

    def div_power_of_two(self, bits: int) -> SessionTensor:
        return self._op("tensor.div_power_of_two", bits)

    def with_bound(self, bound: float | None) -> SessionTensor:
        return self._op("tensor.with_bound", bound)

    # -- reductions and shapes --------------------------------------------------------------------
    def sum(self, axis: Any = None, keepdims: bool = False) -> SessionTensor:
        return self._op("tensor.sum", axis, keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> SessionTensor:
        return self._op("tensor.mean", axis, keepdims)

    def reshape(self, *shape: Any) -> SessionTensor:
        return self._op("tensor.reshape", *shape)

    def transpose(self, perm: Sequence[int] | None = None) -> SessionTensor:
        return self._op("tensor.transpose", perm)

    @property
    def T(self) -> SessionTensor:
        return self.transpose()

    def __getitem__(self, key: Any) -> SessionTensor:
        return self._op("tensor.__getitem__", key)

    def expand_dims(self, axis: int) -> SessionTensor:
        return self._op("tensor.expand_dims", axis)

    def broadcast_to(self, shape: Sequence[int]) -> SessionTensor:
        return self._op("tensor.broadcast_to", shape)

    def pad(self, widths: Sequence[tuple[int, int]]) -> SessionTensor:
        return self._op("tensor.pad", widths)

    def extract_patches(
        self, kernel_size: Sequence[int], strides: Sequence[int] = (1, 1), padding: str = "VALID"
    ) -> SessionTensor:
        return self._op("tensor.extract_patches", kernel_size, strides, padding)

    @staticmethod
    def concat(tensors: Sequence[SessionTensor], axis: int = 0) -> SessionTensor:
        return _session_of(tensors)._call("session.concat", None, (list(tensors),), {"axis": axis})

    @staticmethod
    def stack(tensors: Sequence[SessionTensor], axis: int = 0) -> SessionTensor:
        return _session_of(tensors)._call("session.stack", None, (list(tensors),), {"axis": axis})

    def map_linear(self, fn: Any) -> SessionTensor:
        """Not across processes: `fn` is Python code, which a command never carries."""
        from privkeras.errors import CapabilityError

        raise CapabilityError(
            "Expected an operation a session can send to its parties. Received: map_linear, "
            "whose function cannot travel (commands carry no code); compose reshape, "
            "transpose, slicing, sum and products instead"
        )

    # -- comparisons ----------------------------------------------------------------------------------
    def negative_bit(self) -> SessionBit:
        return self._op("tensor.negative_bit")

    def positive_bit(self) -> SessionBit:
        return self._op("tensor.positive_bit")

    def drelu(self) -> SessionTensor:
        return self._op("tensor.drelu")

    def relu(self) -> SessionTensor:
        return self._op("tensor.relu")

    def relu_with_derivative(self) -> tuple[SessionTensor, SessionTensor]:
        return self._op("tensor.relu_with_derivative")

    def __lt__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__lt__", other)

    def __gt__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__gt__", other)

    def __le__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__le__", other)

    def __ge__(self, other: Any) -> SessionTensor:
        return self._op("tensor.__ge__", other)

    def where(self, condition: SessionTensor, other: Any) -> SessionTensor:
        return self._op("tensor.where", condition, other)

    def abs(self) -> SessionTensor:
        return self._op("tensor.abs")

    def max(self, axis: int = -1, keepdims: bool = False) -> SessionTensor:
        return self._op("tensor.max", axis, keepdims)

    def argmax(self, axis: int = -1) -> SessionTensor:
        return self._op("tensor.argmax", axis)

    def max_with_argmax(self, axis: int = -1) -> tuple[SessionTensor, SessionTensor]:
        return self._op("tensor.max_with_argmax", axis)

    # -- pooling and approximations ----------------------------------------------------------------------
    def max_pool2d(self, pool_size=(2, 2), strides=None, padding: str = "VALID") -> SessionTensor:
        return self._op("tensor.max_pool2d", pool_size, strides, padding)

    def max_pool2d_with_mask(
        self, pool_size=(2, 2), strides=None, padding: str = "VALID"
    ) -> tuple[SessionTensor, SessionTensor]:
        return self._op("tensor.max_pool2d_with_mask", pool_size, strides, padding)

    def avg_pool2d(self, pool_size=(2, 2), strides=None, padding: str = "VALID") -> SessionTensor:
        return self._op("tensor.avg_pool2d", pool_size, strides, padding)

    def exp(self) -> SessionTensor:
        return self._op("tensor.exp")

    def reciprocal(self) -> SessionTensor:
        return self._op("tensor.reciprocal")

    def sigmoid(self) -> SessionTensor:
        return self._op("tensor.sigmoid")

    def tanh(self) -> SessionTensor:
        return self._op("tensor.tanh")

    def softmax(self, axis: int = -1) -> SessionTensor:
        return self._op("tensor.softmax", axis)

    def log(self) -> SessionTensor:
        return self._op("tensor.log")

    # -- revealing --------------------------------------------------------------------------------------------
    def reveal(
        self, to: str = "caller", what: str = "value", check_range: bool | float = False
    ) -> np.ndarray | None:
        """Opens the value to `to`: the values here if `to` runs in this process, else None.

        See `SharedTensor.reveal`; the value goes to `to` only.
        """
        to = self._session._role_name(to, "to")
        return self._op("tensor.reveal", to, str(what)[:_MAX_TEXT], check_range)


class SessionBit:
    """A secret bit of a session (see `SharedBit`): `times`, `to_tensor` and `reveal`."""

    __slots__ = ("__weakref__", "_id", "_session", "_value")

    def __init__(self, session: MPCSession, bit_id: int, value: SharedBit):
        self._session, self._id, self._value = session, bit_id, value
        weakref.finalize(self, session._release, bit_id)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._value.shape

    @property
    def runtime(self) -> MPCSession:
        return self._session

    def __repr__(self) -> str:
        return f"SessionBit(shape={self.shape}, protocol={self._session.protocol_name!r})"

    def __bool__(self) -> bool:
        raise TypeError("A SessionBit has no truth value: it is secret. Use .times() or reveal it.")

    def times(self, *tensors: SessionTensor) -> tuple[SessionTensor, ...]:
        """`t * bit` for each shared `t`, exact, in one round of products (see `SharedBit.times`)."""
        return self._session._call("bit.times", self, tensors, {})

    def to_tensor(self) -> SessionTensor:
        return self._session._call("bit.to_tensor", self, (), {})

    def reveal(self, to: str = "caller", what: str = "bit") -> np.ndarray | None:
        to = self._session._role_name(to, "to")
        return self._session._call("bit.reveal", self, (to, str(what)[:_MAX_TEXT]), {})


def _session_of(tensors: Sequence[Any]) -> MPCSession:
    tensors = list(tensors)
    if not tensors or not all(isinstance(t, SessionTensor) for t in tensors):
        raise TypeError("Expected a non-empty sequence of SessionTensor.")
    return tensors[0]._session


# -- the party ----------------------------------------------------------------------------------------------
def serve_session(runtime: MPCRuntime) -> None:
    """Runs a session as the one role of `runtime` (a compute party or the dealer) until it ends.

    Raises:
        SessionCommandError: For a malformed command (the session ends).
        PartyError: A peer failed, or no command came within the idle timeout.
    """
    SessionServer(runtime).serve()


class SessionServer:
    """A party's side of one session: its tensors by id, and the commands it runs on them.

    Args:
        runtime: The party's runtime of the session job (its placement holds one role).
    """

    def __init__(self, runtime: MPCRuntime):
        roles = runtime.placement.roles
        if roles is None or len(roles) != 1:
            raise ValueError(f"Expected a runtime of one role. Received: {runtime.placement!r}")
        (self.role,) = roles
        self.runtime = runtime
        self.timeout = float(getattr(runtime.communicator, "timeout", 30.0))
        self.idle_timeout = self.timeout
        #: The session's shared values this party holds, by id.
        self.values: dict[int, SharedTensor | SharedBit] = {}

    def serve(self) -> None:
        header, _ = self._next(self.timeout)
        self._hello(header)
        while True:
            header, arrays = self._next(self.idle_timeout)
            op = header.get("op")
            if op == "close":
                return
            self._free(header.get("free", []))
            if op == "session.stats":
                message = _stats_message(self.runtime.communicator.snapshot())
                self.runtime.communicator.send_control(self.role, CALLER, message)
                continue
            self._run(header, arrays)

    def _next(self, timeout: float) -> tuple[dict[str, Any], list[np.ndarray]]:
        try:
            message = self.runtime.communicator.receive_control(CALLER, self.role, timeout=timeout)
        except PartyError as error:
            raise PartyError(
                f"Party {self.role!r} stopped waiting for the session's next command "
                f"(idle timeout {timeout:g} s): {error}"
            ) from None
        return decode_message(message)

    def _hello(self, header: Mapping[str, Any]) -> None:
        options = header.get("kwargs")
        valid = (
            header.get("op") == "hello"
            and isinstance(options, dict)
            and isinstance(options.get("track_bounds"), bool)
            and isinstance(options.get("idle_timeout"), (int, float))
            and 0 < options["idle_timeout"] <= 86400
        )
        if not valid:
            raise SessionCommandError(f"Expected the session's hello. Received: {str(header)[:80]}")
        self.runtime.track_bounds = options["track_bounds"]
        self.idle_timeout = float(options["idle_timeout"])

    def _free(self, ids: Any) -> None:
        if not isinstance(ids, list) or not all(_is_index(i) for i in ids):
            raise SessionCommandError(
                f"Expected a list of tensor ids to free. Received: {ids!r:.80}"
            )
        for tensor_id in ids:
            self.values.pop(tensor_id, None)

    def _resolve(self, tensor_id: Any, kind: type) -> Any:
        value = self.values.get(tensor_id) if _is_index(tensor_id) else None
        if not isinstance(value, kind):
            raise SessionCommandError(
                f"Expected the id of a {kind.__name__} of this session. Received: {str(tensor_id)[:40]}"
            )
        return value

    def _run(self, header: Mapping[str, Any], arrays: list[np.ndarray]) -> None:
        op, operation, first, args, kwargs = decode_call(
            header, arrays, self._resolve, self.runtime
        )
        out = header.get("out")
        if not _is_index(out):
            raise SessionCommandError(f"Expected the id of the result. Received: out={out!r:.40}")
        before = _counters(self.runtime)
        try:
            result = operation.function(first, *args, **kwargs)
        except (PartyError, SessionCommandError):
            raise
        except Exception as error:
            if _counters(self.runtime) != before and op not in _REVEALS:
                raise PartyError(
                    f"Party {self.role!r} failed {op} after messages of it: "
                    f"{type(error).__name__}; the session cannot go on"
                ) from error
            # It failed here before any message, as on the driver (same code, same arguments).
            logger.info(
                "session %s failed on %s as on the driver: %s", op, self.role, type(error).__name__
            )
            return
        for index, value in enumerate(_results(result)):
            if out + index in self.values:
                raise SessionCommandError(
                    f"Expected a new id for a result. Received: {out + index}"
                )
            self.values[out + index] = value
