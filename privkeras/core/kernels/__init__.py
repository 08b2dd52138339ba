"""Ring kernels: exact Z_2^64 arithmetic on numpy, torch and tensorflow.

`get_kernels(name)` returns the kernels of one library; each library is
imported only when its kernels are first asked for.

Example:

```python
import numpy as np
from privkeras.core.kernels import get_kernels

k = get_kernels("torch")
a = k.from_numpy(np.array([2**62], dtype=np.int64))
k.to_numpy(k.add(a, a))   # array([-9223372036854775808]): wraps mod 2^64
route = k.matmul_route(w, w)   # "native", "limbs" or "bytes", timed on this machine
route.reason                   # 'fastest when timed here (native 0.21 ms, limbs ...)'
```
"""

from __future__ import annotations

from typing import Any

from privkeras.core.kernels.base import (
    MATMUL_METHODS,
    RingKernels,
    as_ring_numpy,
    conv_output_padding,
    matmul_shape,
)
from privkeras.core.kernels.limbs import KARATSUBA_MAX_DEPTH, MAX_EXACT_DEPTH
from privkeras.core.kernels.routes import RouteChoice

__all__ = [
    "KARATSUBA_MAX_DEPTH",
    "KERNEL_LIBRARIES",
    "MATMUL_METHODS",
    "MAX_EXACT_DEPTH",
    "RingKernels",
    "RouteChoice",
    "as_ring_numpy",
    "conv_output_padding",
    "get_kernels",
    "kernels_for",
    "library_of",
    "matmul_shape",
]


def _numpy_kernels() -> type[RingKernels]:
    from privkeras.core.kernels.numpy import NumpyKernels

    return NumpyKernels


def _torch_kernels() -> type[RingKernels]:
    from privkeras.core.kernels.torch import TorchKernels

    return TorchKernels


def _tensorflow_kernels() -> type[RingKernels]:
    from privkeras.core.kernels.tensorflow import TensorFlowKernels

    return TensorFlowKernels


#: Library name -> the loader of its kernels class (each library is imported on first use).
_KERNEL_CLASSES = {
    "numpy": _numpy_kernels,
    "torch": _torch_kernels,
    "tensorflow": _tensorflow_kernels,
}

#: Names accepted by `get_kernels`.
KERNEL_LIBRARIES = tuple(_KERNEL_CLASSES)

_CACHE: dict[tuple, RingKernels] = {}


def get_kernels(name: str, **options: Any) -> RingKernels:
    """The (shared, stateless) kernels of library `name`.

    Args:
        name: One of `KERNEL_LIBRARIES`.
        **options: Constructor options of that library's kernels, e.g.
            `matmul_method="limbs"` or, for torch, `device="cuda"`.

    Returns:
        A cached `RingKernels` instance (one per name and options).

    Raises:
        ValueError: For an unknown library or option value.

    Example:

    ```python
    k = get_kernels("torch")
    k.to_numpy(k.matmul(k.from_numpy(a), k.from_numpy(b)))
    ```
    """
    if name not in _KERNEL_CLASSES:
        raise ValueError(
            f"Expected a kernel library in {list(KERNEL_LIBRARIES)}. Received: name={name!r}"
        )
    key = (name, *sorted((k, str(v)) for k, v in options.items()))
    if key not in _CACHE:
        _CACHE[key] = _KERNEL_CLASSES[name]()(**options)
    return _CACHE[key]


def library_of(value: Any) -> str:
    """Which tensor library `value` belongs to: numpy, torch or tensorflow."""
    module = type(value).__module__.split(".")[0]
    if module == "numpy" or not hasattr(value, "shape"):
        return "numpy"
    if module == "torch":
        return "torch"
    if module in ("tensorflow", "tf_keras"):
        return "tensorflow"
    raise TypeError(
        f"Expected a numpy array, torch tensor or tf tensor. Received: {type(value).__name__}"
    )


def kernels_for(value: Any) -> RingKernels:
    """The kernels of the library that `value` belongs to."""
    return get_kernels(library_of(value))
