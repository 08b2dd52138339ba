"""Low-level secure computation: secret-share tensors and compute on them.

As in TF-Encrypted and CrypTen, a few lines give a shared tensor that
supports `+ - * @`, `conv2d`, `relu`, comparisons, `sum`, `reshape`,
`transpose`, slicing and `.reveal()`. The parties are simulated in this
process (see `privkeras.backends.mpc.runtime.MPCRuntime`).

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
"""

from __future__ import annotations

from typing import Any

from privkeras.backends.mpc.local import LocalPartyCluster, local_cluster
from privkeras.backends.mpc.runtime import MPCRuntime, RevealRecord
from privkeras.backends.mpc.tensor import SharedTensor

__all__ = [
    "LocalPartyCluster",
    "MPCRuntime",
    "RevealRecord",
    "SharedTensor",
    "get_runtime",
    "local_cluster",
    "reveal",
    "set_runtime",
    "share",
]

_default_runtime: MPCRuntime | None = None


def get_runtime() -> MPCRuntime:
    """The default runtime used by `share`; created on first use.

    The default is Pond on the kernels of the Keras backend (torch kernels
    under the torch backend, tensorflow kernels otherwise), keys from
    `os.urandom`, with range tracking on (see the module docstring).
    """
    global _default_runtime
    if _default_runtime is None:
        _default_runtime = MPCRuntime(
            protocol="pond", kernels=_default_kernels(), track_bounds=True
        )
    return _default_runtime


def set_runtime(runtime: MPCRuntime | None) -> None:
    """Makes `runtime` the default for `share` (None: make a fresh one next time).

    Example:

    ```python
    pk.mpc.set_runtime(pk.mpc.MPCRuntime("aby3", kernels="torch", track_bounds=True))
    ```
    """
    global _default_runtime
    if runtime is not None and not isinstance(runtime, MPCRuntime):
        raise TypeError(f"Expected an MPCRuntime or None. Received: {type(runtime).__name__}")
    _default_runtime = runtime


def share(
    x: Any,
    owner: str = "caller",
    name: str = "x",
    runtime: MPCRuntime | None = None,
    bound: float | None = None,
) -> SharedTensor:
    """Secret-shares `x` among the parties of `runtime` (the default one if None).

    Args:
        x: Array-like of reals.
        owner: Who holds the plaintext (for the communication count and the log).
        name: What to call `x` in errors.
        runtime: The runtime to use; `get_runtime()` by default.
        bound: A public bound on |x| to declare (checked against `x` by its
            owner); None derives it from `x` when the runtime tracks bounds.
            A derived bound is public metadata: it tells max |x|; declare a
            data-independent bound where that matters.

    Returns:
        A `SharedTensor`.

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
    x: SharedTensor, to: str = "caller", what: str = "value", check_range: bool | float = False
) -> Any:
    """Opens a shared tensor to `to`; same as `x.reveal(to, what, check_range)`."""
    if not isinstance(x, SharedTensor):
        raise TypeError(f"Expected a SharedTensor. Received: {type(x).__name__}")
    return x.reveal(to=to, what=what, check_range=check_range)


def _default_kernels() -> str:
    try:
        import keras

        return "torch" if keras.backend.backend() == "torch" else "tensorflow"
    except ImportError:  # pragma: no cover - keras is a dependency
        return "numpy"
