"""Ring kernels: exact Z_2^64 arithmetic on numpy, torch and tensorflow.

`get_kernels(name)` returns the kernels of one library; each library is
imported only when its kernels are first asked for.

Example:

```python
from privkeras.core.kernels import get_kernels

k = get_kernels("torch")
a = k.from_numpy(np.array([2**62], dtype=np.int64))
k.to_numpy(k.add(a, a))   # array([-9223372036854775808]): wraps mod 2^64
```
"""

from __future__ import annotations

from typing import Any

from privkeras.core.kernels.base import RingKernels, conv_output_padding

__all__ = ["KERNEL_LIBRARIES", "RingKernels", "conv_output_padding", "get_kernels", "kernels_for"]

#: Names accepted by `get_kernels`.
KERNEL_LIBRARIES = ("numpy", "torch", "tensorflow")

_CACHE: dict[str, RingKernels] = {}


def _make(name: str) -> RingKernels:
    if name == "numpy":
        from privkeras.core.kernels.numpy import NumpyKernels

        return NumpyKernels()
    if name == "torch":
        from privkeras.core.kernels.torch import TorchKernels

        return TorchKernels()
    if name == "tensorflow":
        from privkeras.core.kernels.tensorflow import TensorFlowKernels

        return TensorFlowKernels()
    raise ValueError(
        f"Expected a kernel library in {list(KERNEL_LIBRARIES)}. Received: name={name!r}"
    )


def get_kernels(name: str) -> RingKernels:
    """The (shared, stateless) kernels of library `name`."""
    if name not in _CACHE:
        _CACHE[name] = _make(name)
    return _CACHE[name]


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
