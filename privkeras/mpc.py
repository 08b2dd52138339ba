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
"""

from __future__ import annotations

from typing import Any

from privkeras.backends.mpc.runtime import MPCRuntime, RevealRecord
from privkeras.backends.mpc.tensor import SharedTensor

__all__ = [
    "MPCRuntime",
    "RevealRecord",
    "SharedTensor",
    "get_runtime",
    "reveal",
    "set_runtime",
    "share",
]

_default_runtime: MPCRuntime | None = None


def get_runtime() -> MPCRuntime:
    """The default runtime used by `share`; created on first use.

    The default is Pond on the kernels of the Keras backend (torch kernels
    under the torch backend, tensorflow kernels otherwise), keys from
    `os.urandom`.
    """
    global _default_runtime
    if _default_runtime is None:
        _default_runtime = MPCRuntime(protocol="pond", kernels=_default_kernels())
    return _default_runtime


def set_runtime(runtime: MPCRuntime | None) -> None:
    """Makes `runtime` the default for `share` (None: make a fresh one next time).

    Example:

    ```python
    pk.mpc.set_runtime(pk.mpc.MPCRuntime("aby3", kernels="torch", seed=0))
    ```
    """
    global _default_runtime
    if runtime is not None and not isinstance(runtime, MPCRuntime):
        raise TypeError(f"Expected an MPCRuntime or None. Received: {type(runtime).__name__}")
    _default_runtime = runtime


def share(
    x: Any, owner: str = "caller", name: str = "x", runtime: MPCRuntime | None = None
) -> SharedTensor:
    """Secret-shares `x` among the parties of `runtime` (the default one if None).

    Args:
        x: Array-like of reals.
        owner: Who holds the plaintext (for the communication count and the log).
        name: What to call `x` in errors.
        runtime: The runtime to use; `get_runtime()` by default.

    Returns:
        A `SharedTensor`.

    Raises:
        PrecisionOverflowError: If `x` has NaN, infinities or values out of
            the fixed-point range.

    Example:

    ```python
    x = pk.mpc.share([1.0, -1.0])
    (x > 0).reveal()      # array([1., 0.])
    ```
    """
    return (runtime or get_runtime()).share(x, owner=owner, name=name)


def reveal(x: SharedTensor, to: str = "caller", what: str = "value") -> Any:
    """Opens a shared tensor to `to`; same as `x.reveal(to, what)`."""
    if not isinstance(x, SharedTensor):
        raise TypeError(f"Expected a SharedTensor. Received: {type(x).__name__}")
    return x.reveal(to=to, what=what)


def _default_kernels() -> str:
    try:
        import keras

        return "torch" if keras.backend.backend() == "torch" else "tensorflow"
    except ImportError:  # pragma: no cover - keras is a dependency
        return "numpy"
