"""The ring-kernel interface: arithmetic in Z_2^64 on one tensor library.

Ring elements are int64 tensors read as two's-complement representatives of
Z_2^64. Every operation wraps around exactly mod 2^64; the three
implementations (numpy, torch, tensorflow) return bit-identical results for
the same inputs, which the tests check over random shapes and values.

Protocol code is written once against `RingKernels` and runs on any library.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["RingKernels", "conv_output_padding"]

Tensor = Any


def conv_output_padding(
    size: int, kernel: int, stride: int, padding: str
) -> tuple[int, int, int]:
    """Output size and (before, after) padding of one spatial axis, as TensorFlow computes them.

    Returns:
        `(output_size, pad_before, pad_after)`.
    """
    if padding == "VALID":
        if size < kernel:
            raise ValueError(
                f"Expected an input of at least the kernel size with VALID padding. "
                f"Received: size={size}, kernel={kernel}"
            )
        return (size - kernel) // stride + 1, 0, 0
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return out, total // 2, total - total // 2
    raise ValueError(f"Expected padding 'SAME' or 'VALID'. Received: padding={padding!r}")


class RingKernels(abc.ABC):
    """Exact Z_2^64 arithmetic and shape operations on one tensor library."""

    name: str

    # -- conversion ---------------------------------------------------------------
    @abc.abstractmethod
    def from_numpy(self, array: np.ndarray) -> Tensor:
        """Copies an int64 numpy array into this library (bits unchanged)."""

    @abc.abstractmethod
    def to_numpy(self, tensor: Tensor) -> np.ndarray:
        """Copies a ring tensor into a new int64 numpy array."""

    @abc.abstractmethod
    def is_tensor(self, value: Any) -> bool:
        """Whether `value` is a tensor of this library."""

    def shape(self, tensor: Tensor) -> tuple[int, ...]:
        return tuple(int(s) for s in tensor.shape)

    def zeros(self, shape: Sequence[int]) -> Tensor:
        return self.from_numpy(np.zeros(tuple(shape), dtype=np.int64))

    def constant(self, value: int, shape: Sequence[int] = ()) -> Tensor:
        """A tensor filled with the ring element `value` (taken mod 2^64)."""
        wrapped = np.array(value % 2**64, dtype=np.uint64).view(np.int64)
        return self.from_numpy(np.full(tuple(shape), wrapped, dtype=np.int64))

    # -- arithmetic mod 2^64 ---------------------------------------------------------
    @abc.abstractmethod
    def add(self, a: Tensor, b: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def sub(self, a: Tensor, b: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def neg(self, a: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        """Elementwise product with broadcasting."""

    @abc.abstractmethod
    def matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """Matrix product over the last two axes (leading axes broadcast)."""

    @abc.abstractmethod
    def sum(self, a: Tensor, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor: ...

    # -- bits ----------------------------------------------------------------------
    @abc.abstractmethod
    def shift_left(self, a: Tensor, bits: int) -> Tensor: ...

    @abc.abstractmethod
    def shift_right_arithmetic(self, a: Tensor, bits: int) -> Tensor:
        """Sign-extending right shift (floor division by 2^bits)."""

    @abc.abstractmethod
    def shift_right_logical(self, a: Tensor, bits: int) -> Tensor:
        """Zero-filling right shift of the 64-bit pattern."""

    @abc.abstractmethod
    def bitwise_and(self, a: Tensor, b: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def bitwise_or(self, a: Tensor, b: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def bitwise_xor(self, a: Tensor, b: Tensor) -> Tensor: ...

    def bitwise_not(self, a: Tensor) -> Tensor:
        return self.bitwise_xor(a, self.constant(-1))

    def bit(self, a: Tensor, index: int) -> Tensor:
        """Bit `index` (0 = least significant) of each element, as int64 0 or 1."""
        if not 0 <= index < 64:
            raise ValueError(f"Expected a bit index in [0, 63]. Received: index={index}")
        return self.bitwise_and(self.shift_right_logical(a, index), self.constant(1))

    # -- shapes --------------------------------------------------------------------
    @abc.abstractmethod
    def reshape(self, a: Tensor, shape: Sequence[int]) -> Tensor: ...

    @abc.abstractmethod
    def transpose(self, a: Tensor, perm: Sequence[int] | None = None) -> Tensor: ...

    @abc.abstractmethod
    def concat(self, tensors: Sequence[Tensor], axis: int = 0) -> Tensor: ...

    @abc.abstractmethod
    def stack(self, tensors: Sequence[Tensor], axis: int = 0) -> Tensor: ...

    @abc.abstractmethod
    def pad(self, a: Tensor, widths: Sequence[tuple[int, int]]) -> Tensor:
        """Zero padding; `widths` has one (before, after) pair per axis."""

    @abc.abstractmethod
    def broadcast_to(self, a: Tensor, shape: Sequence[int]) -> Tensor: ...

    def getitem(self, a: Tensor, key: Any) -> Tensor:
        """Basic slicing and integer indexing (`a[key]`)."""
        return a[key]

    # -- convolution (shared by all libraries: patches + one matmul) ---------------
    def extract_patches(
        self,
        x: Tensor,
        kernel_size: Sequence[int],
        strides: Sequence[int] = (1, 1),
        padding: str = "VALID",
    ) -> Tensor:
        """Sliding windows of an NHWC tensor as (N, OH, OW, KH * KW, C)."""
        n, h, w, c = self.shape(x)
        kh, kw = kernel_size
        sh, sw = strides
        oh, top, bottom = conv_output_padding(h, kh, sh, padding)
        ow, left, right = conv_output_padding(w, kw, sw, padding)
        if top or bottom or left or right:
            x = self.pad(x, [(0, 0), (top, bottom), (left, right), (0, 0)])
        windows = [
            self.getitem(
                x,
                (slice(None), slice(i, i + sh * (oh - 1) + 1, sh),
                 slice(j, j + sw * (ow - 1) + 1, sw), slice(None)),
            )
            for i in range(kh)
            for j in range(kw)
        ]
        return self.stack(windows, axis=3)

    def conv2d(
        self,
        x: Tensor,
        kernel: Tensor,
        strides: Sequence[int] = (1, 1),
        padding: str = "VALID",
    ) -> Tensor:
        """2-D convolution mod 2^64: NHWC input, HWIO kernel, as `tf.nn.conv2d`."""
        kh, kw, c_in, c_out = self.shape(kernel)
        n, h, w, c = self.shape(x)
        if c != c_in:
            raise ValueError(
                f"Expected input channels to match the kernel's {c_in}. Received: {c}"
            )
        patches = self.extract_patches(x, (kh, kw), strides, padding)
        _, oh, ow, _, _ = self.shape(patches)
        cols = self.reshape(patches, (n * oh * ow, kh * kw * c_in))
        out = self.matmul(cols, self.reshape(kernel, (kh * kw * c_in, c_out)))
        return self.reshape(out, (n, oh, ow, c_out))
