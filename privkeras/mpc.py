"""Low-level secure computation: secret-share tensors and compute on them.

As in TF-Encrypted and CrypTen, a few lines give a shared tensor that
supports `+ - * @`, `conv2d`, `relu`, comparisons, `sum`, `reshape`,
`transpose`, slicing and `.reveal()`. By default the parties are simulated
in this process (see `privkeras.backends.mpc.runtime.MPCRuntime`); with
`connect` they are separate processes (`privkeras party`), and the same
lines run unchanged (see "Across processes" below).

Example:

```python
import numpy as np
import privkeras as pk

x = pk.mpc.share(np.array([[1.0, -2.0], [3.0, 0.5]]))
w = pk.mpc.share(np.eye(2) * 0.5, owner="bob")
y = (x @ w).relu()
y.reveal()                       # array([[0.5 , 0.  ], [1.5 , 0.25]])
pk.mpc.get_runtime().communicator.rounds
```

## Range

Shared values are fixed-point numbers in the ring Z_2^64 with f fractional
bits (`precision_bits`, 16 by default; resolution 2^-f):

- a value (shared, public operand or result) must satisfy |x| < 2^(63 - f)
  (2^47, about 1.4e14, at f = 16); `share` refuses larger inputs;
- a product `x * y`, `x @ y` or `conv2d` is held at scale 2^(2f) before it
  is truncated back, so each output's untruncated sum must satisfy
  |sum of x_i y_i| < 2^(62 - 2f) (2^30, about 1.07e9, at f = 16: one bit
  below what the ring holds, 2^(63 - 2f));
- beyond these the ring wraps around and the result is garbage: 2^16 * 2^16
  is 2^32, which is not below 2^30, and wraps to 0. Truncation can also fail
  (probability about |x y| 2^(2f - 64) per element, see
  docs/mpc-protocols.md), which is one reason to keep products small.

The default runtime here tracks bounds (`MPCRuntime(track_bounds=True)`):
`share` derives a public bound on |x| from the value (or takes `bound=`),
every operation propagates bounds in O(1) and raises
`PrecisionOverflowError` before a product or sum whose worst case would
leave the range, and `reveal(check_range=True)` checks the opened values
against their bound. A runtime made with `MPCRuntime(...)` tracks only
tensors shared with a `bound=` unless given `track_bounds=True`.

```python
x = pk.mpc.share([2.0**16])
x * x                            # PrecisionOverflowError: |x * y| could reach 4.29e+09 ...
```

## Across processes

`connect` opens a *session* with party processes; make it the default
runtime (or pass `runtime=session`) and every line above works as in one
process: each operation is sent to every party as a small command (its
name from a fixed list, the ids of its shared operands, its public
arguments; no pickle, no code), then every process runs the same protocol
step on its own shares. The driver (this process) holds no share: it is
every role that is not a compute party (`"caller"`, `"alice"`...), sends the
shares of what those roles share, and receives what is revealed to them.
With the same seed, a session gives the in-process results bit for bit, with
the same rounds and bytes (`session.stats()` adds up every process's counts).

```python
with pk.mpc.local_cluster("aby3") as cluster:
    with pk.mpc.connect("aby3", cluster.parties) as session:
        pk.mpc.set_runtime(session)
        x = pk.mpc.share(np.array([[1.0, -2.0], [3.0, 0.5]]))
        w = pk.mpc.share(np.eye(2) * 0.5, owner="bob")   # bob: this process too
        y = (x @ w).relu()
        y.reveal()                   # array([[0.5 , 0.  ], [1.5 , 0.25]])
        y.reveal(to="p0")            # None here: the value went to party p0 only
        session.stats().rounds
    pk.mpc.set_runtime(None)
```

What differs: `reveal(to=<a compute party>)` returns None here (the value
goes only to that party); `share(x, owner="p0")` hands `x` to party p0 first
(it becomes p0's input); `map_linear` (which takes a Python function) is
refused with `CapabilityError`; the static `concat` and `stack` of a
session's tensors are `SessionTensor.concat` and `SessionTensor.stack`; a
bound derived from a value (max |x|, no `bound=` given) is sent to every
party as the public metadata it is documented to be. A party that dies is a `PartyError` naming it
within `timeout`; after one, the session refuses further operations: close
it and connect again. A party drops a session it hears nothing from for
`idle_timeout` seconds. See docs/policies/mpc.md, "Low-level API across
processes".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from privkeras.backends.mpc.local import LocalPartyCluster, local_cluster
from privkeras.backends.mpc.runtime import MPCRuntime, RevealRecord
from privkeras.backends.mpc.session import MPCSession, SessionBit, SessionTensor
from privkeras.backends.mpc.tensor import SharedTensor

__all__ = [
    "LocalPartyCluster",
    "MPCRuntime",
    "MPCSession",
    "RevealRecord",
    "SessionBit",
    "SessionTensor",
    "SharedTensor",
    "connect",
    "get_runtime",
    "local_cluster",
    "reveal",
    "set_runtime",
    "share",
]

_default_runtime: MPCRuntime | MPCSession | None = None


def get_runtime() -> MPCRuntime | MPCSession:
    """The default runtime used by `share`; created on first use.

    The default is Pond on the kernels of the Keras backend (torch kernels
    under the torch backend, tensorflow kernels otherwise), keys from
    `os.urandom`, with range tracking on (see the module docstring), all
    parties in this process; or the session given to `set_runtime`.
    """
    global _default_runtime
    if _default_runtime is None:
        _default_runtime = MPCRuntime(
            protocol="pond", kernels=_default_kernels(), track_bounds=True
        )
    return _default_runtime


def set_runtime(runtime: MPCRuntime | MPCSession | None) -> None:
    """Makes `runtime` the default for `share` (None: make a fresh one next time).

    Example:

    ```python
    pk.mpc.set_runtime(pk.mpc.MPCRuntime("aby3", kernels="torch", track_bounds=True))
    pk.mpc.set_runtime(pk.mpc.connect("pond", parties={...}))   # parties as processes
    ```
    """
    global _default_runtime
    if runtime is not None and not isinstance(runtime, (MPCRuntime, MPCSession)):
        raise TypeError(
            f"Expected an MPCRuntime, an MPCSession or None. Received: {type(runtime).__name__}"
        )
    _default_runtime = runtime


def connect(
    protocol: str = "pond",
    parties: Mapping[str, str] | None = None,
    *,
    seed: int | None = None,
    timeout: float = 30.0,
    kernels: str | None = None,
    precision_bits: int = 16,
    track_bounds: bool = True,
    idle_timeout: float = 600.0,
    credentials: Any = None,
) -> MPCSession:
    """Opens a session of the low-level API with party processes (`privkeras party`).

    Args:
        protocol: `"pond"` (parties p0, p1 and the dealer) or `"aby3"` (p0, p1, p2).
        parties: `{role: "host:port"}` for every role of `protocol`, as
            `MPC(parties=...)` takes (`pk.mpc.local_cluster(...).parties`).
        seed: None for fresh keys agreed between the processes, or an int
            that makes every share reproducible (tests only: warns).
        timeout: Seconds any wait on a party may take before `PartyError`.
        kernels: This process's ring kernels (`"numpy"`, `"torch"`,
            `"tensorflow"`); the Keras backend's by default, as `get_runtime`.
        precision_bits: Fractional bits of the fixed-point encoding.
        track_bounds: Range tracking, on as in the in-process default. A bound
            derived from a value (max |x|, where `share` gets no `bound=`) is
            public metadata that every party now receives: declare a
            data-independent `bound=`, or pass False, where max |x| is secret.
        idle_timeout: Seconds the parties keep a session that sends nothing.
        credentials: The driver's `privkeras.net.Credentials`; by default those
            `local_cluster` registered, or the environment's (`PRIVKERAS_CERTS`...).

    Returns:
        An open `MPCSession`: a context manager, closed on exit.

    Raises:
        PrivacyPolicyError: Missing or wrong addresses, or bad settings, before
            any process is contacted.
        PartyError, AuthenticationError: A party cannot be reached or refuses.

    Example:

    ```python
    with pk.mpc.local_cluster("pond") as cluster:
        with pk.mpc.connect("pond", cluster.parties) as session:
            x = pk.mpc.share([1.0, -1.0], runtime=session)
            (x > 0).reveal()      # array([1., 0.])
    ```
    """
    from privkeras.backends.mpc.network import NetworkCluster
    from privkeras.errors import PrivacyPolicyError
    from privkeras.policies import MPC

    if parties is None:
        raise PrivacyPolicyError(
            "Expected parties={role: 'host:port'} for connect (pk.mpc.local_cluster(...)"
            ".parties starts them on loopback). Received: parties=None (the in-process "
            "runtime needs no connect: pk.mpc.share uses it by default)"
        )
    policy = MPC(
        protocol=protocol,
        parties=parties,
        seed=seed,
        timeout=timeout,
        precision_bits=precision_bits,
    )
    cluster = NetworkCluster(policy, credentials=credentials)
    try:
        return MPCSession(
            cluster,
            protocol,
            kernels=kernels or _default_kernels(),
            precision_bits=precision_bits,
            seed=seed,
            track_bounds=track_bounds,
            idle_timeout=idle_timeout,
            close_cluster=True,
        )
    except BaseException:
        cluster.close()
        raise


def share(
    x: Any,
    owner: str = "caller",
    name: str = "x",
    runtime: MPCRuntime | MPCSession | None = None,
    bound: float | None = None,
) -> SharedTensor | SessionTensor:
    """Secret-shares `x` among the parties of `runtime` (the default one if None).

    Args:
        x: Array-like of reals.
        owner: Who holds the plaintext (for the communication count and the log).
            In a session, a name outside the compute parties runs in this process;
            a compute party (`"p0"`) is handed `x` first, as its own input.
        name: What to call `x` in errors.
        runtime: The runtime (or session) to use; `get_runtime()` by default.
        bound: A public bound on |x| to declare (checked against `x` by its
            owner); None derives it from `x` when the runtime tracks bounds.
            A derived bound is public metadata: it tells max |x|; declare a
            data-independent bound where that matters.

    Returns:
        A `SharedTensor` (a `SessionTensor` in a session: the same operations).

    Raises:
        PrecisionOverflowError: If `x` has NaN, infinities, values out of
            the fixed-point range or beyond `bound`.

    Example:

    ```python
    x = pk.mpc.share([1.0, -1.0])
    (x > 0).reveal()      # array([1., 0.])
    ```
    """
    return (runtime or get_runtime()).share(x, owner=owner, name=name, bound=bound)


def reveal(
    x: SharedTensor | SessionTensor,
    to: str = "caller",
    what: str = "value",
    check_range: bool | float = False,
) -> Any:
    """Opens a shared tensor to `to`; same as `x.reveal(to, what, check_range)`.

    Returns the values where `to` runs in this process; in a session, None
    when `to` is a compute party (the value went to it only).
    """
    if not isinstance(x, (SharedTensor, SessionTensor)):
        raise TypeError(f"Expected a SharedTensor or SessionTensor. Received: {type(x).__name__}")
    return x.reveal(to=to, what=what, check_range=check_range)


def _default_kernels() -> str:
    try:
        import keras

        return "torch" if keras.backend.backend() == "torch" else "tensorflow"
    except ImportError:  # pragma: no cover - keras is a dependency
        return "numpy"
