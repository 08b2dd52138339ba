"""Fixed-point encoding of real numbers into the ring Z_2^64.

A real x is represented by the ring element round(x * 2^precision_bits)
(two's complement in an int64). Encoding refuses NaN, infinities and values
whose encoding would not fit, instead of wrapping silently.

Example:

```python
import numpy as np
from privkeras.core.fixed_point import FixedPointCodec

codec = FixedPointCodec(precision_bits=16)
ring = codec.encode(np.array([1.5, -2.25]))       # int64: [98304, -147456]
codec.decode(ring)                                # float64: [1.5, -2.25]
```
"""

from __future__ import annotations

from typing import Any

import numpy as np

from privkeras.core import kernels as _kernels
from privkeras.errors import PrecisionOverflowError

__all__ = ["FixedPointCodec"]

SUPPORTED_RING_BITS = (64,)
MAX_PRECISION_BITS = 40


class FixedPointCodec:
    """Encodes reals as fixed-point ring elements and back.

    Args:
        ring_bits: Bits of the ring; 64 (int64 tensors).
        precision_bits: Fractional bits f, in [1, 40]. Resolution is 2^-f;
            encodable magnitudes are below 2^(ring_bits - 1 - f).

    Encoding accepts numpy arrays, torch tensors, tf tensors and Python
    numbers, and returns int64 of the same library (numpy for Python numbers),
    on the same torch device. Decoding returns float64 the same way. Neither
    mutates its input.

    Raises:
        ValueError: For an unsupported `ring_bits` or `precision_bits`.
    """

    def __init__(self, ring_bits: int = 64, precision_bits: int = 16):
        if ring_bits not in SUPPORTED_RING_BITS:
            raise ValueError(
                f"Expected ring_bits in {list(SUPPORTED_RING_BITS)}. Received: ring_bits={ring_bits!r}"
            )
        if (
            isinstance(precision_bits, bool)
            or not isinstance(precision_bits, (int, np.integer))
            or not 1 <= precision_bits <= MAX_PRECISION_BITS
        ):
            raise ValueError(
                f"Expected precision_bits in [1, {MAX_PRECISION_BITS}]. "
                f"Received: precision_bits={precision_bits!r}"
            )
        self.ring_bits = ring_bits
        self.precision_bits = int(precision_bits)
        self.scale = 2**self.precision_bits
        #: Magnitudes at or above this cannot be encoded.
        self.max_abs = float(2 ** (ring_bits - 1 - self.precision_bits))

    def __repr__(self) -> str:
        return f"FixedPointCodec(ring_bits={self.ring_bits}, precision_bits={self.precision_bits})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FixedPointCodec) and (other.ring_bits, other.precision_bits) == (
            self.ring_bits,
            self.precision_bits,
        )

    def __hash__(self) -> int:
        return hash((self.ring_bits, self.precision_bits))

    def encode(self, x: Any, *, name: str = "x") -> Any:
        """Encodes reals into int64 ring elements of the same library.

        Args:
            x: Array, tensor or number.
            name: What to call `x` in error messages (a layer name, say).

        Returns:
            int64 ring elements round(x * 2^precision_bits), same library and shape.

        Raises:
            PrecisionOverflowError: For NaN, infinite or too large values.
        """
        library = _kernels.library_of(x)
        values = _as_float64_numpy(x)
        if not np.all(np.isfinite(values)):
            bad = values[~np.isfinite(values)].ravel()[0]
            raise PrecisionOverflowError(
                f"Expected finite values in {name}. Received: a value of {bad} "
                f"(of {int(np.sum(~np.isfinite(values)))} non-finite values)"
            )
        with np.errstate(over="ignore"):  # overflows become inf, refused just below
            scaled = np.rint(values * self.scale)
        if scaled.size and np.max(np.abs(scaled)) >= 2.0 ** (self.ring_bits - 1):
            worst = values.ravel()[int(np.argmax(np.abs(values)))]
            raise PrecisionOverflowError(
                f"Expected |{name}| < 2^{self.ring_bits - 1 - self.precision_bits} = "
                f"{self.max_abs:g} to fit {self!r}. Received: a value of {worst:g}"
            )
        return _like(np.asarray(scaled, dtype=np.int64), x, library)

    def decode(self, ring: Any) -> Any:
        """Decodes int64 ring elements into float64 of the same library.

        Args:
            ring: Integer array or tensor of ring elements (two's complement).

        Returns:
            float64 values ring / 2^precision_bits, same library, shape and device.

        Raises:
            TypeError: If `ring` is not an integer array or tensor.
        """
        library = _kernels.library_of(ring)
        values = np.asarray(_kernels.as_ring_numpy(_to_numpy(ring)) / self.scale, dtype=np.float64)
        return _like(values, ring, library)


def _to_numpy(x: Any) -> Any:
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):  # tensorflow
        return x.numpy()
    return x


def _as_float64_numpy(x: Any) -> np.ndarray:
    values = np.asarray(_to_numpy(x))
    if values.dtype.kind not in "biuf":
        raise TypeError(
            f"Expected real numbers to encode. Received: values of dtype {values.dtype}"
        )
    return np.array(values, dtype=np.float64, copy=True)


def _like(values: np.ndarray, reference: Any, library: str) -> Any:
    """`values` (a fresh numpy array) as a tensor of `reference`'s library and device."""
    if library == "torch":
        import torch

        return torch.from_numpy(values).to(reference.device)
    if library == "tensorflow":
        import tensorflow as tf

        return tf.constant(values)
    return values
