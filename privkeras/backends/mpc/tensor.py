"""`SharedTensor`: a fixed-point real tensor secret-shared among the parties.

A `SharedTensor` is an immutable value: every operation returns a new one.
It holds one ring tensor per share component (see
`privkeras.backends.mpc.protocols.base`) at scale 2^f, f the runtime's
precision bits. Operations with public operands (Python numbers, numpy
arrays) are local; products of two shared operands, comparisons and the
approximations of `privkeras.backends.mpc.approximations` communicate.
Every product is truncated back to scale 2^f.

Range: a value must stay below 2^(63 - f) in magnitude (2^47 at f = 16),
and the untruncated product of a multiplication, matmul or convolution
(held at scale 2^(2f)) below 2^(62 - 2f) (2^30): beyond, the ring wraps
around and the result is garbage, not an error. A tensor whose `bound` is
known (a public bound on |value|: derived from the value when a runtime
with `track_bounds=True` shares it, as `privkeras.mpc`'s default runtime
does, or declared with `share(..., bound=)` / `with_bound`) propagates its
bound through every operation in O(1) (scalars and shapes: `x + y` adds the
bounds, `x @ w` multiplies them by the contracted size, or by `w`'s largest
column norm when `w` is public) and raises `PrecisionOverflowError` before
an operation whose worst case would leave the range. Untracked tensors (the
engines' default: they check whole models before any party works) are not
checked. `reveal(check_range=True)` also checks the opened values against
the bound, which catches a failed truncation.

Example:

```python
import numpy as np
from privkeras.backends.mpc.runtime import MPCRuntime

rt = MPCRuntime("pond", kernels="torch", seed=0)
x = rt.share(np.array([[1.0, -2.0]]), owner="alice")
w = rt.share(np.array([[0.5], [0.25]]), owner="bob")
y = (x @ w).relu() + 1.0
y.reveal(to="alice", what="y")        # array([[1.]])
```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from privkeras.backends.mpc.errors import MPCInputError
from privkeras.backends.mpc.protocols.base import Shares, product_shape
from privkeras.core.kernels import RingKernels, conv_output_padding
from privkeras.errors import format_received

if TYPE_CHECKING:
    from privkeras.backends.mpc.runtime import MPCRuntime

__all__ = ["SharedBit", "SharedTensor"]

Tensor = Any
#: A large negative real used to pad max-pooling windows (far below any activation).
_MAX_POOL_PAD = -(2.0**24)


class SharedTensor:
    """A secret-shared fixed-point tensor.

    Args:
        runtime: The `MPCRuntime` whose parties hold the shares.
        shares: One ring tensor per share component.
        bound: A public bound on |value|, or None when untracked (see `bound`).

    Users get shared tensors from `MPCRuntime.share` (or `privkeras.mpc.share`),
    never by calling this constructor.
    """

    __slots__ = ("_bound", "_mask", "_shape", "runtime", "shares")
    __array_priority__ = 1000  # numpy defers `ndarray @ shared` to __rmatmul__

    def __init__(self, runtime: MPCRuntime, shares: tuple[Tensor, ...], bound: float | None = None):
        self.runtime = runtime
        # None for each component no local party holds (`Shares` keeps the shape).
        self.shares = shares if isinstance(shares, Shares) else Shares(tuple(shares))
        self._bound = bound
        self._shape = self.shares.shape
        # A protocol's reusable mask of this value (Pond: a Beaver mask opened once),
        # set by the first product or comparison that opens one. Not part of the value.
        self._mask = None

    # -- basics ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        return int(np.prod(self._shape, dtype=np.int64))

    def __len__(self) -> int:
        return self._shape[0]

    def __repr__(self) -> str:
        return (
            f"SharedTensor(shape={self._shape}, protocol={self.runtime.protocol_name!r}, "
            f"kernels={self.runtime.kernels.name!r})"
        )

    def __bool__(self) -> bool:
        raise TypeError(
            "A SharedTensor has no truth value: its value is secret. "
            "Use comparisons (which return shared 0/1) with .where(), or reveal it."
        )

    @property
    def _k(self) -> RingKernels:
        return self.runtime.kernels

    @property
    def _protocol(self):
        return self.runtime.protocol

    def _new(self, shares, bound: float | None = None) -> SharedTensor:
        return SharedTensor(self.runtime, shares, bound)

    def _local(
        self, fn: Callable[..., Tensor], *others: SharedTensor, bound: float | None = None
    ) -> SharedTensor:
        result = self._new(
            self._protocol.local(fn, self.shares, *(o.shares for o in others)), bound
        )
        if not others and self._mask is not None:
            result._mask = self._mask.derive(fn)  # the mask of L(x) is L(mask)
        return result

    def _keep_mask(self, mask: Any) -> None:
        if self._mask is None and mask is not None:
            self._mask = mask

    def _coerce(self, other: Any) -> SharedTensor | Tensor:
        """Another operand as a SharedTensor of this runtime, or a public ring tensor."""
        if isinstance(other, SharedTensor):
            if other.runtime is not self.runtime:
                raise MPCInputError(
                    "Expected shared tensors of the same runtime. "
                    "Received: tensors shared by two different MPCRuntime objects"
                )
            return other
        return self.runtime.encode_public(other)

    # -- range -------------------------------------------------------------------------
    @property
    def bound(self) -> float | None:
        """A public bound on |value| of every element, or None when untracked.

        Derived by the owner from its values when a runtime with
        `track_bounds=True` shares them (the bound is then public metadata
        of the computation: it tells whoever sees it max |x|), declared with
        `share(..., bound=)` or `with_bound`, and propagated by every
        operation (see the module docstring).
        """
        return self._bound

    def with_bound(self, bound: float | None) -> SharedTensor:
        """The same shared value, declared to satisfy |value| <= bound (None: untracked).

        No party can check a declaration without learning the value: it is
        the caller's claim (for example that probabilities sum to at most
        1), verified only by `reveal(check_range=True)`.

        Raises:
            ValueError: Unless `bound` is None or a real in [0, 2^(63 - f)).
        """
        result = SharedTensor(self.runtime, self.shares, self.runtime.checked_bound(bound))
        result._mask = self._mask  # the same value: the same reusable mask
        return result

    def _sum_bound(self, other: Any, operand: Any, what: str) -> float | None:
        """The bound of self +/- other, checked against the value range (None if untracked)."""
        if self._bound is None:
            return None
        other_bound = operand._bound if isinstance(operand, SharedTensor) else _max_abs(other)
        if other_bound is None:
            return None
        bound = self._bound + other_bound
        self.runtime.require_bound(
            bound,
            what,
            product=False,
            received=f"|x| <= {self._bound:.6g}, |y| <= {other_bound:.6g}",
        )
        return bound

    # -- linear arithmetic -------------------------------------------------------------
    def __add__(self, other: Any) -> SharedTensor:
        operand = self._coerce(other)
        bound = self._sum_bound(other, operand, "x + y")
        if isinstance(operand, SharedTensor):
            return self._local(self._k.add, operand, bound=bound)
        return self._new(self._protocol.add_public(self.shares, operand), bound)

    __radd__ = __add__

    def __neg__(self) -> SharedTensor:
        return self._local(self._k.neg, bound=self._bound)

    def __sub__(self, other: Any) -> SharedTensor:
        operand = self._coerce(other)
        bound = self._sum_bound(other, operand, "x - y")
        if isinstance(operand, SharedTensor):
            return self._local(self._k.sub, operand, bound=bound)
        return self._new(self._protocol.add_public(self.shares, self._k.neg(operand)), bound)

    def __rsub__(self, other: Any) -> SharedTensor:
        return (-self) + other

    # -- products ----------------------------------------------------------------------
    def _product(self, other: Any, op: str, reverse: bool = False, **kwargs: Any) -> SharedTensor:
        k, f = self._k, self.runtime.codec.precision_bits
        protocol = self._protocol
        shared = isinstance(other, SharedTensor)
        other_shape = other.shape if shared else tuple(np.shape(other))
        left, right = (other_shape, self.shape) if reverse else (self.shape, other_shape)
        _check_operand_shapes(op, left, right, kwargs)
        integer = not shared and op == "mul" and _small_integer(other)
        bound = (
            None if self._bound is None else self._product_bound(other, op, left, integer, reverse)
        )
        if shared:
            self._coerce(other)
            x, y = (other, self) if reverse else (self, other)
            shares, (mask_x, mask_y) = protocol.product_truncated(
                x.shares, y.shares, op, f, masks=(x._mask, y._mask), **kwargs
            )
            x._keep_mask(mask_x)
            y._keep_mask(mask_y)
            return self._new(shares, bound)
        public = (
            k.from_numpy(np.asarray(other, dtype=np.int64))
            if integer
            else self.runtime.encode_public(other)
        )
        fn = _PUBLIC_PRODUCTS[op]
        shares = Shares(
            tuple(
                None
                if s is None
                else (fn(k, public, s, **kwargs) if reverse else fn(k, s, public, **kwargs))
                for s in self.shares
            ),
            product_shape(op, left, right, kwargs),
        )
        return self._new(shares if integer else protocol.truncate(shares, f), bound)

    def _product_bound(
        self, other: Any, op: str, left: tuple, integer: bool, reverse: bool
    ) -> float | None:
        """The bound of a product, checked before any party works (None if untracked).

        A shared operand y contributes |y|'s bound times the number of terms
        each output sums (1, the contracted size, KH * KW * C_in); a public
        one its largest L1 norm per output (of its encoding).
        """
        if isinstance(other, SharedTensor):
            if other._bound is None:
                return None
            if op == "mul":
                terms = 1
            elif op == "matmul":
                terms = int(left[-1])
            else:  # conv2d: KH * KW * C_in products per output
                terms = int(np.prod(other.shape[:3], dtype=np.int64))
            per_output = other._bound * terms
            received = f"|x| <= {self._bound:.6g}, |y| <= {other._bound:.6g}"
            if terms > 1:
                received += f", {terms} terms per output"
        else:
            f = None if integer else self.runtime.codec.precision_bits
            per_output = _public_norm(op, other, reverse, f)
            received = f"|x| <= {self._bound:.6g}, public operand of norm {per_output:.6g}"
        bound = self._bound * per_output
        what = {"mul": "x * y", "matmul": "x @ y", "conv2d": "conv2d(x, kernel)"}[op]
        self.runtime.require_bound(bound, what, product=not integer, received=received)
        return bound if integer else bound + 2.0 ** (1 - self.runtime.codec.precision_bits)

    def __mul__(self, other: Any) -> SharedTensor:
        return self._product(other, "mul")

    __rmul__ = __mul__

    def __matmul__(self, other: Any) -> SharedTensor:
        return self._product(other, "matmul")

    def __rmatmul__(self, other: Any) -> SharedTensor:
        return self._product(other, "matmul", reverse=True)

    def __truediv__(self, other: Any) -> SharedTensor:
        if isinstance(other, SharedTensor):
            return self * other.reciprocal()
        return self.div_public(other)

    def conv2d(
        self,
        kernel: Any,
        strides: Sequence[int] = (1, 1),
        padding: str = "VALID",
    ) -> SharedTensor:
        """2-D convolution, NHWC input and HWIO kernel (shared or public), as `tf.nn.conv2d`.

        Args:
            kernel: SharedTensor or numpy array of shape (KH, KW, C_in, C_out).
            strides: (stride_h, stride_w).
            padding: `"VALID"` or `"SAME"`.

        Returns:
            The (N, OH, OW, C_out) SharedTensor, truncated to scale 2^f.
        """
        if self.ndim != 4:
            raise MPCInputError(f"Expected an NHWC input of rank 4. Received: shape={self.shape}")
        return self._product(kernel, "conv2d", strides=tuple(strides), padding=padding.upper())

    def square(self) -> SharedTensor:
        """x * x (one masked value is opened, not two)."""
        return self * self

    def div_public(self, divisor: float | np.ndarray) -> SharedTensor:
        """x / divisor for a public divisor (one truncated product)."""
        divisor = np.asarray(divisor, dtype=np.float64)
        if np.any(divisor == 0):
            raise ZeroDivisionError(
                f"Expected a non-zero divisor. {format_received(divisor=divisor)}"
            )
        return self * (1.0 / divisor)

    def div_power_of_two(self, bits: int) -> SharedTensor:
        """x / 2^bits by the protocol's truncation (local for Pond), error about one ulp.

        Cheaper and more exact than `x * 2.0**-bits` for large `bits`: no
        public factor is encoded, so nothing below 2^-f is lost in it.

        Raises:
            ValueError: Unless `bits` is an integer in [0, 62].
        """
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 0 <= bits <= 62:
            raise ValueError(f"Expected bits to be an integer in [0, 62]. Received: bits={bits!r}")
        if bits == 0:
            return self
        bound = None
        if self._bound is not None:
            bound = self._bound / 2**bits + 2.0 ** (1 - self.runtime.codec.precision_bits)
        return self._new(self._protocol.truncate(self.shares, int(bits)), bound)

    # -- reductions -------------------------------------------------------------------------
    def sum(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> SharedTensor:
        k = self._k
        bound = None
        if self._bound is not None:
            terms = self._count(axis)
            bound = self._bound * terms
            self.runtime.require_bound(
                bound, "x.sum()", product=False, received=f"|x| <= {self._bound:.6g}, {terms} terms"
            )
        return self._local(lambda s: k.sum(s, axis=axis, keepdims=keepdims), bound=bound)

    def _count(self, axis: int | Sequence[int] | None) -> int:
        """How many elements a reduction over `axis` combines into each output."""
        if axis is None:
            return self.size
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        return int(np.prod([self.shape[a] for a in axes], dtype=np.int64))

    def mean(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> SharedTensor:
        return self.sum(axis, keepdims).div_public(self._count(axis))

    # -- shapes --------------------------------------------------------------------------------
    def reshape(self, *shape: Any) -> SharedTensor:
        shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape
        shape = _resolve_shape(shape, self.size)
        k = self._k
        return self._local(lambda s: k.reshape(s, shape), bound=self._bound)

    def transpose(self, perm: Sequence[int] | None = None) -> SharedTensor:
        k = self._k
        perm = tuple(reversed(range(self.ndim))) if perm is None else tuple(perm)
        return self._local(lambda s: k.transpose(s, perm), bound=self._bound)

    @property
    def T(self) -> SharedTensor:
        return self.transpose()

    def __getitem__(self, key: Any) -> SharedTensor:
        k = self._k
        return self._local(lambda s: k.getitem(s, key), bound=self._bound)

    def expand_dims(self, axis: int) -> SharedTensor:
        shape = list(self.shape)
        axis = axis if axis >= 0 else len(shape) + 1 + axis
        shape.insert(axis, 1)
        return self.reshape(tuple(shape))

    def broadcast_to(self, shape: Sequence[int]) -> SharedTensor:
        k = self._k
        return self._local(lambda s: k.broadcast_to(s, tuple(shape)), bound=self._bound)

    @staticmethod
    def concat(tensors: Sequence[SharedTensor], axis: int = 0) -> SharedTensor:
        first = _check_same_runtime(tensors)
        k = first._k
        return first._new(
            first._protocol.local(lambda *p: k.concat(p, axis), *(t.shares for t in tensors)),
            _largest_bound(tensors),
        )

    @staticmethod
    def stack(tensors: Sequence[SharedTensor], axis: int = 0) -> SharedTensor:
        first = _check_same_runtime(tensors)
        k = first._k
        return first._new(
            first._protocol.local(lambda *p: k.stack(p, axis), *(t.shares for t in tensors)),
            _largest_bound(tensors),
        )

    def pad(self, widths: Sequence[tuple[int, int]]) -> SharedTensor:
        """Zero padding; one (before, after) pair per axis."""
        k = self._k
        return self._local(lambda s: k.pad(s, widths), bound=self._bound)

    def extract_patches(
        self, kernel_size: Sequence[int], strides: Sequence[int] = (1, 1), padding: str = "VALID"
    ) -> SharedTensor:
        """Sliding windows of an NHWC tensor as (N, OH, OW, KH * KW, C); zero padded."""
        k = self._k
        return self._local(
            lambda s: k.extract_patches(s, tuple(kernel_size), tuple(strides), padding.upper()),
            bound=self._bound,
        )

    def map_linear(self, fn: Callable[[RingKernels, Tensor], Tensor]) -> SharedTensor:
        """Applies `fn(kernels, share)` to every share.

        `fn` must be linear over the ring (sums, sign changes, integer
        multiples, gathers, reshapes, zero padding...): for such functions
        the shares of the result are the results on the shares. The result
        is untracked (`bound` None): `fn` may sum elements.
        """
        k = self._k
        return self._local(lambda s: fn(k, s))

    # -- comparisons -------------------------------------------------------------------------------
    def negative_bit(self) -> SharedBit:
        """The secret bit [x < 0] per element, from one exact secure comparison.

        Returns:
            A `SharedBit` of this tensor's shape: multiply tensors by it with
            `SharedBit.times` (exact), or turn it into shared 0.0/1.0 with
            `SharedBit.to_tensor`.
        """
        shares, mask = self._protocol.negative_bit_with_mask(self.shares)
        self._keep_mask(mask)  # a later product of x reuses the mask the comparison opened
        return SharedBit(self.runtime, shares, self.shape, tracked=self._bound is not None)

    def positive_bit(self) -> SharedBit:
        """The secret bit [x > 0] = [-x < 0] per element (one comparison); see `negative_bit`."""
        negated = -self
        bit = negated.negative_bit()
        if negated._mask is not None:
            self._keep_mask(negated._mask.derive(self._k.neg))
        return bit

    def drelu(self) -> SharedTensor:
        """Shared 1.0 where x > 0, else 0.0 (the derivative of ReLU)."""
        return self.positive_bit().to_tensor()

    def relu(self) -> SharedTensor:
        """max(x, 0), exact: one comparison and one multiplication by the shared bit."""
        (product,) = self.positive_bit().times(self)
        return product

    def relu_with_derivative(self) -> tuple[SharedTensor, SharedTensor]:
        """(relu(x), drelu(x)) from one comparison, for backpropagation."""
        (product,), bit = self.positive_bit()._times((self,), with_bit=True)
        return product, bit

    def _less_than(self, other: Any) -> SharedTensor:
        return (self - other).negative_bit().to_tensor()

    def __lt__(self, other: Any) -> SharedTensor:
        return self._less_than(other)

    def __gt__(self, other: Any) -> SharedTensor:
        return (-self)._less_than(-_as_operand(other))

    def __le__(self, other: Any) -> SharedTensor:
        return 1.0 - (self > other)

    def __ge__(self, other: Any) -> SharedTensor:
        return 1.0 - (self < other)

    def where(self, condition: SharedTensor, other: Any) -> SharedTensor:
        """condition ? self : other, for a shared 0.0/1.0 condition."""
        return condition * (self - other) + other

    def abs(self) -> SharedTensor:
        """|x|: x - 2 x [x < 0]."""
        (product,) = self.negative_bit().times(self)
        return (self - 2 * product)._rebound(self._bound)

    def _rebound(self, bound: float | None) -> SharedTensor:
        """Sets a tighter bound on a tensor this class just made (never on a caller's)."""
        self._bound = bound
        return self

    # -- max and argmax ---------------------------------------------------------------------------
    def _max_last_axis(self, with_argmax: bool) -> tuple[SharedTensor, SharedTensor | None]:
        """Tournament over the last axis: ceil(log2 n) comparisons in sequence.

        The one-hot index is kept as (n, *shape): the comparison bits, of
        shape `shape[:-1] + (width,)`, broadcast against it.
        """
        n = self.shape[-1]
        values, index = self, None
        if with_argmax:
            eye = np.eye(n).reshape((n,) + (1,) * (self.ndim - 1) + (n,))
            index = self.runtime.share_public(np.broadcast_to(eye, (n, *self.shape)))
            index._rebound(None if self._bound is None else 1.0)
        while values.shape[-1] > 1:
            width = values.shape[-1]
            half = width // 2
            a, b = values[..., :half], values[..., half : 2 * half]
            difference = a - b
            bit = difference.negative_bit()  # 1 where a < b: take b
            xs = [-difference]  # b - a, with the mask the comparison opened
            if with_argmax:
                ia, ib = index[..., :half], index[..., half : 2 * half]
                xs.append(ib - ia)
            products = bit.times(*xs)
            new_values = (a + products[0])._rebound(values._bound)  # max(a, b)
            if with_argmax:
                new_index = (ia + products[1])._rebound(index._bound)
            if width % 2:
                new_values = SharedTensor.concat([new_values, values[..., 2 * half :]], axis=-1)
                if with_argmax:
                    new_index = SharedTensor.concat([new_index, index[..., 2 * half :]], axis=-1)
            values = new_values
            if with_argmax:
                index = new_index
        if not with_argmax:
            return values[..., 0], None
        onehot = index[..., 0]  # (n, *shape[:-1])
        return values[..., 0], onehot.transpose((*range(1, self.ndim), 0))

    def _moved_to_last(self, axis: int) -> tuple[SharedTensor, list[int]]:
        axis = axis % self.ndim
        perm = [a for a in range(self.ndim) if a != axis] + [axis]
        return self.transpose(perm), perm

    def max(self, axis: int = -1, keepdims: bool = False) -> SharedTensor:
        """Maximum along `axis` (exact, ceil(log2 n) sequential comparisons)."""
        moved, _ = self._moved_to_last(axis)
        values, _ = moved._max_last_axis(with_argmax=False)
        return values.expand_dims(axis) if keepdims else values

    def argmax(self, axis: int = -1) -> SharedTensor:
        """One-hot shared 0.0/1.0 of the position of the maximum along `axis` (first on ties)."""
        moved, perm = self._moved_to_last(axis)
        _, onehot = moved._max_last_axis(with_argmax=True)
        inverse = list(np.argsort(perm))
        return onehot.transpose(inverse)

    def max_with_argmax(self, axis: int = -1) -> tuple[SharedTensor, SharedTensor]:
        """(max along axis, one-hot argmax with the input's shape)."""
        moved, perm = self._moved_to_last(axis)
        values, onehot = moved._max_last_axis(with_argmax=True)
        return values, onehot.transpose(list(np.argsort(perm)))

    # -- pooling -------------------------------------------------------------------------------------
    def _pool_patches(self, pool_size, strides, padding, pad_value: float) -> SharedTensor:
        if self.ndim != 4:
            raise MPCInputError(f"Expected an NHWC input of rank 4. Received: shape={self.shape}")
        pool_size = tuple(pool_size)
        strides = tuple(pool_size if strides is None else strides)
        patches = self.extract_patches(pool_size, strides, padding)
        if padding.upper() == "SAME" and pad_value:
            valid = _valid_window_mask(self.shape, pool_size, strides)
            if not valid.all():
                patches = patches + np.where(valid, 0.0, pad_value)
        return patches

    def max_pool2d_with_mask(
        self,
        pool_size: Sequence[int] = (2, 2),
        strides: Sequence[int] | None = None,
        padding: str = "VALID",
    ) -> tuple[SharedTensor, SharedTensor]:
        """Max pooling (NHWC) and the one-hot mask of each window's maximum.

        Returns:
            `(output, mask)`: output (N, OH, OW, C) and mask (N, OH, OW,
            KH * KW, C), 1.0 at the position that won each window.
        """
        patches = self._pool_patches(pool_size, strides, padding, _MAX_POOL_PAD)
        values, mask = patches.max_with_argmax(axis=3)
        return values._rebound(self._pooled_bound(values)), mask

    def max_pool2d(
        self,
        pool_size: Sequence[int] = (2, 2),
        strides: Sequence[int] | None = None,
        padding: str = "VALID",
    ) -> SharedTensor:
        """Max pooling (NHWC), as `keras.layers.MaxPooling2D`."""
        patches = self._pool_patches(pool_size, strides, padding, _MAX_POOL_PAD)
        values = patches.max(axis=3)
        return values._rebound(self._pooled_bound(values))

    def _pooled_bound(self, values: SharedTensor) -> float | None:
        """A window's maximum is one of its valid cells while they stay above the padding."""
        if self._bound is not None and self._bound < -_MAX_POOL_PAD:
            return self._bound
        return values._bound

    def avg_pool2d(
        self,
        pool_size: Sequence[int] = (2, 2),
        strides: Sequence[int] | None = None,
        padding: str = "VALID",
    ) -> SharedTensor:
        """Average pooling (NHWC); SAME padding averages over the valid entries only."""
        patches = self._pool_patches(pool_size, strides, padding, 0.0)
        total = patches.sum(axis=3)
        strides = tuple(pool_size if strides is None else strides)
        if padding.upper() == "VALID":
            return total.div_public(float(np.prod(pool_size)))
        counts = _valid_window_mask(self.shape, tuple(pool_size), strides).sum(axis=3)
        return total * (1.0 / counts)

    # -- approximations (documented in approximations.py) -------------------------------------------
    def exp(self) -> SharedTensor:
        from privkeras.backends.mpc import approximations

        return approximations.exp(self)

    def reciprocal(self) -> SharedTensor:
        from privkeras.backends.mpc import approximations

        return approximations.reciprocal(self)

    def sigmoid(self) -> SharedTensor:
        from privkeras.backends.mpc import approximations

        return approximations.sigmoid(self)

    def tanh(self) -> SharedTensor:
        from privkeras.backends.mpc import approximations

        return approximations.tanh(self)

    def softmax(self, axis: int = -1) -> SharedTensor:
        from privkeras.backends.mpc import approximations

        return approximations.softmax(self, axis)

    def log(self) -> SharedTensor:
        from privkeras.backends.mpc import approximations

        return approximations.log(self)

    # -- revealing ---------------------------------------------------------------------------------------
    def reveal(
        self, to: str = "caller", what: str = "value", check_range: bool | float = False
    ) -> np.ndarray:
        """The plaintext value, sent to `to` and logged in `runtime.reveal_log`.

        Args:
            to: Who receives the value.
            what: What it is, for the log.
            check_range: True to raise `PrecisionOverflowError` if an opened
                value exceeds this tensor's `bound` (a wrapped product or a
                failed truncation is off by about 2^(64 - f)); a number to
                check against that limit instead.
        """
        return self.runtime.reveal(self, to=to, what=what, check_range=check_range)


class SharedBit:
    """A secret bit per element, the result of an exact secure comparison.

    Made by `SharedTensor.negative_bit()` ([x < 0]) and `positive_bit()`
    ([x > 0]); not by calling this constructor. The bit stays in the
    protocol's binary sharing (no party learns it): it has no arithmetic of
    its own, only the two conversions below, which is what sign-dependent
    approximations (|x|, the sign of a reciprocal, a mirrored sigmoid) need.

    Args:
        runtime: The `MPCRuntime` whose parties hold the bit.
        shares: The bit's binary share components, as the protocol returned them.
        shape: Its shape (that of the compared tensor).
        tracked: Whether the compared tensor had a bound.

    Example:

    ```python
    negative = x.negative_bit()          # [x < 0], one comparison
    (x_neg,) = negative.times(x)         # x [x < 0], exact
    absolute = x - 2 * x_neg             # |x|
    ```
    """

    __slots__ = ("runtime", "shape", "shares", "tracked")

    def __init__(
        self,
        runtime: MPCRuntime,
        shares: tuple[Tensor, ...],
        shape: tuple[int, ...],
        tracked: bool = False,
    ):
        self.runtime = runtime
        self.shares = shares  # kept as the protocol made it (its type may mark the sharing)
        self.shape = tuple(shape)
        #: Whether tensors made from the bit carry a bound (1.0), as the compared tensor did.
        self.tracked = tracked

    def __repr__(self) -> str:
        return f"SharedBit(shape={self.shape}, protocol={self.runtime.protocol_name!r})"

    def __bool__(self) -> bool:
        raise TypeError("A SharedBit has no truth value: it is secret. Use .times() or reveal it.")

    def times(self, *tensors: SharedTensor) -> tuple[SharedTensor, ...]:
        """`t * bit` for each shared `t`, exact (no truncation), all in one round of products.

        Args:
            *tensors: SharedTensors of the same runtime whose shapes broadcast
                with the bit's.

        Returns:
            One product per tensor, in order.

        Raises:
            MPCInputError: For tensors of another runtime or shapes that do not broadcast.
        """
        products, _ = self._times(tensors, with_bit=False)
        return products

    def to_tensor(self) -> SharedTensor:
        """The bit as a shared fixed-point 0.0 / 1.0 (one conversion round)."""
        protocol, k = self.runtime.protocol, self.runtime.kernels
        f = self.runtime.codec.precision_bits
        arith = protocol.bit_to_arithmetic(self.shares)
        bound = 1.0 if self.tracked else None
        shifted = self.runtime.protocol.local(lambda s: k.shift_left(s, f), arith)
        return SharedTensor(self.runtime, shifted, bound)

    def reveal(self, to: str = "caller", what: str = "bit") -> np.ndarray:
        """The plaintext 0.0 / 1.0 values, opened to `to` and logged (see `SharedTensor.reveal`)."""
        return self.to_tensor().reveal(to=to, what=what)

    def _times(
        self, tensors: Sequence[SharedTensor], with_bit: bool
    ) -> tuple[tuple[SharedTensor, ...], SharedTensor | None]:
        """The products and, if asked, the bit as a fixed-point tensor from the same round."""
        for tensor in tensors:
            if not isinstance(tensor, SharedTensor) or tensor.runtime is not self.runtime:
                raise MPCInputError(
                    "Expected SharedTensors of the bit's runtime. "
                    f"Received: {type(tensor).__name__}"
                    + ("" if not isinstance(tensor, SharedTensor) else " of another runtime")
                )
            if tensor.shape != self.shape:
                _check_operand_shapes("mul", self.shape, tensor.shape, {})
        products, arith, masks = self.runtime.protocol.multiply_by_bit(
            self.shares, [t.shares for t in tensors], [t._mask for t in tensors], with_bit=with_bit
        )
        for tensor, mask in zip(tensors, masks):
            tensor._keep_mask(mask)
        results = tuple(SharedTensor(self.runtime, p, t._bound) for p, t in zip(products, tensors))
        if not with_bit:
            return results, None
        k, f = self.runtime.kernels, self.runtime.codec.precision_bits
        bit = self.runtime.protocol.local(lambda s: k.shift_left(s, f), arith)
        return results, SharedTensor(self.runtime, bit, 1.0 if self.tracked else None)


_PUBLIC_PRODUCTS: dict[str, Callable[..., Tensor]] = {
    "mul": lambda k, a, b: k.mul(a, b),
    "matmul": lambda k, a, b: k.matmul(a, b),
    "conv2d": lambda k, a, b, strides=(1, 1), padding="VALID": k.conv2d(a, b, strides, padding),
}


def _numpy(value: Any) -> Any:
    """A public operand (numbers, numpy, torch or tf tensors) as numpy."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return value.numpy()
    return value


def _max_abs(value: Any) -> float:
    """max |value| of a public operand."""
    return float(np.max(np.abs(np.asarray(_numpy(value), dtype=np.float64)), initial=0.0))


def _public_norm(op: str, value: Any, reverse: bool, precision_bits: int | None) -> float:
    """The largest L1 norm that one output of a product with a public operand sums over.

    Computed on the operand as the parties use it: rounded to the nearest
    2^-precision_bits (None: an exact integer multiple).
    """
    magnitudes = np.abs(np.asarray(_numpy(value), dtype=np.float64))
    if precision_bits is not None:
        magnitudes = np.rint(magnitudes * 2.0**precision_bits) / 2.0**precision_bits
    if op == "mul":
        return float(np.max(magnitudes, initial=0.0))
    if op == "conv2d":  # HWIO kernel: one output channel sums KH * KW * C_in terms
        return float(np.max(np.sum(magnitudes, axis=(0, 1, 2)), initial=0.0))
    if magnitudes.ndim == 1:
        return float(np.sum(magnitudes))
    # x @ W sums a column of W; W @ x sums a row.
    return float(np.max(np.sum(magnitudes, axis=-1 if reverse else -2), initial=0.0))


def _largest_bound(tensors: Sequence[SharedTensor]) -> float | None:
    bounds = [t._bound for t in tensors]
    return None if any(b is None for b in bounds) else max(bounds)


def _as_operand(value: Any) -> Any:
    return value if isinstance(value, SharedTensor) else np.asarray(value, dtype=np.float64)


def _small_integer(value: Any) -> bool:
    """Whether a public operand is made of integers small enough to multiply exactly."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.ndarray, np.number)):
        return False
    array = np.asarray(value)
    if array.dtype.kind not in "iuf" or array.size == 0:
        return False
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        return False
    return bool(np.all(array == np.round(array)) and np.max(np.abs(array)) < 2**20)


def _check_operand_shapes(op: str, left: tuple, right: tuple, kwargs: dict) -> None:
    """Refuses mismatched operands before any party does work (or draws randomness)."""
    if op == "mul":
        try:
            np.broadcast_shapes(left, right)
        except ValueError:
            raise MPCInputError(
                f"Expected shapes that broadcast. {format_received(left=left, right=right)}"
            ) from None
    elif op == "matmul":
        if len(left) < 1 or len(right) < 1 or left[-1] != right[-2 if len(right) > 1 else 0]:
            raise MPCInputError(
                "Expected the inner dimensions of a matmul to match. "
                f"{format_received(left=left, right=right)}"
            )
    elif op == "conv2d" and (len(right) != 4 or right[2] != left[-1]):
        raise MPCInputError(
            "Expected an HWIO kernel whose input channels match the input's "
            f"{left[-1]}. {format_received(input=left, kernel=right)}"
        )


def _resolve_shape(shape: tuple, size: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if shape.count(-1) > 1:
        raise MPCInputError(f"Expected at most one -1 in a shape. {format_received(shape=shape)}")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        shape = tuple(size // known if s == -1 else s for s in shape)
    if int(np.prod(shape, dtype=np.int64)) != size:
        raise MPCInputError(
            f"Expected a shape with {size} elements. {format_received(shape=shape)}"
        )
    return shape


def _check_same_runtime(tensors: Sequence[SharedTensor]) -> SharedTensor:
    tensors = list(tensors)
    if not tensors or not all(isinstance(t, SharedTensor) for t in tensors):
        raise TypeError("Expected a non-empty sequence of SharedTensor.")
    if any(t.runtime is not tensors[0].runtime for t in tensors):
        raise MPCInputError("Expected shared tensors of the same runtime.")
    return tensors[0]


def _valid_window_mask(shape, pool_size, strides) -> np.ndarray:
    """1.0 where a pooling window (SAME padding) covers a real input, shape (1, OH, OW, KK, 1)."""
    _, h, w, _ = shape
    oh, top, _ = conv_output_padding(h, pool_size[0], strides[0], "SAME")
    ow, left, _ = conv_output_padding(w, pool_size[1], strides[1], "SAME")
    rows = np.arange(oh)[:, None] * strides[0] - top + np.arange(pool_size[0])[None, :]
    cols = np.arange(ow)[:, None] * strides[1] - left + np.arange(pool_size[1])[None, :]
    valid_r = (rows >= 0) & (rows < h)  # (OH, KH)
    valid_c = (cols >= 0) & (cols < w)  # (OW, KW)
    valid = valid_r[:, None, :, None] & valid_c[None, :, None, :]  # (OH, OW, KH, KW)
    return valid.reshape(1, oh, ow, -1, 1).astype(np.float64)
