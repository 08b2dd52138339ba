"""The core every engine shares: fixed-point codec, ring kernels, secure randomness.

The core imports no engine (an import-linter contract checks it).
"""

from privkeras.core.fixed_point import FixedPointCodec
from privkeras.core.kernels import RingKernels, get_kernels
from privkeras.core.random import SecureStream

__all__ = ["FixedPointCodec", "RingKernels", "SecureStream", "get_kernels"]
