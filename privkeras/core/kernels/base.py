"""The ring-kernel interface: arithmetic in Z_2^64 on one tensor library.

Ring elements are int64 tensors read as two's-complement representatives of
Z_2^64. Every operation wraps around exactly mod 2^64; the three
implementations (numpy, torch, tensorflow) return bit-identical results for
the same inputs, which the tests check over random shapes and values.

Protocol code is written once against `RingKernels` and runs on any library.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from privkeras.core.kernels.limbs import (
    KARATSUBA_MAX_DEPTH,
    MAX_EXACT_DEPTH,
    limb_matmul,
    prepare_limb_operand,
)
from privkeras.core.kernels.prepared import PreparedOperands
from privkeras.core.kernels.routes import (
    MIN_TIMED_VOLUME,
    PROBE_VOLUME,
    PROBE_VOLUME_UNKEPT,
    RouteChoice,
    RouteTable,
    forced_route,
    route_cache_mode,
    shape_class,
)

__all__ = [
    "MATMUL_METHODS",
    "RingKernels",
    "as_ring_numpy",
    "conv_output_padding",
    "matmul_shape",
    "matmul_volume",
]

Tensor = Any

#: Ways every library can multiply ring matrices: "native" int64 matmul,
#: "limbs" (exact float64 GEMMs, see `limbs.py`), or "auto" (the fastest exact
#: route for the library, device and shape class, timed on this machine the
#: first time it is met; see `routes.py`). Libraries may add routes.
MATMUL_METHODS = ("auto", "native", "limbs")


def as_ring_numpy(array: Any) -> np.ndarray:
    """A fresh C-contiguous int64 copy of an integer array (uint64 is reinterpreted bit for bit).

    Raises:
        TypeError: For float, complex, object or string arrays, which would be
            truncated silently (encode reals with `FixedPointCodec` instead).
    """
    array = np.asarray(array)
    if array.dtype == np.uint64:
        return np.ascontiguousarray(array).view(np.int64).copy()
    if array.dtype.kind not in "biu":
        raise TypeError(
            "Expected an integer array of ring elements (encode reals with FixedPointCodec). "
            f"Received: an array of dtype {array.dtype}"
        )
    return np.array(array, dtype=np.int64, order="C", copy=True)


def matmul_shape(a_shape: Sequence[int], b_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of `a @ b` for operands of at least two axes, batch axes broadcast.

    Raises:
        ValueError: If an operand has fewer than two axes, the inner sizes
            differ or the batch axes do not broadcast.
    """
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if len(a_shape) < 2 or len(b_shape) < 2 or a_shape[-1] != b_shape[-2]:
        raise ValueError(
            "Expected operands of shapes (..., m, k) and (..., k, n). "
            f"Received: shapes {a_shape} and {b_shape}"
        )
    a_batch, b_batch = a_shape[:-2], b_shape[:-2]
    if a_batch == b_batch or not b_batch or not a_batch:  # the common cases, without numpy
        return (*(a_batch or b_batch), a_shape[-2], b_shape[-1])
    try:
        batch = np.broadcast_shapes(a_batch, b_batch)
    except ValueError:
        raise ValueError(
            f"Expected batch axes that broadcast. Received: shapes {a_shape} and {b_shape}"
        ) from None
    return (*batch, a_shape[-2], b_shape[-1])


def matmul_volume(a_shape: Sequence[int], b_shape: Sequence[int]) -> int:
    """Multiply-adds in `a @ b`: batch * m * k * n (what "auto" matmul routes on)."""
    out = matmul_shape(a_shape, b_shape)
    return int(np.prod(out, dtype=np.int64)) * int(a_shape[-1])


def _shift_amount(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 0:
        raise ValueError(f"Expected a shift of bits >= 0 (an int). Received: bits={bits!r}")
    return int(bits)


def conv_output_padding(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int, int]:
    """Output size and (before, after) padding of one spatial axis, as TensorFlow computes them.

    Args:
        size: Input size along the axis.
        kernel: Kernel size along the axis.
        stride: Stride along the axis, >= 1.
        padding: "VALID" or "SAME" (either case).

    Returns:
        `(output_size, pad_before, pad_after)`.
    """
    padding = padding.upper() if isinstance(padding, str) else padding
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
    """Exact Z_2^64 arithmetic and shape operations on one tensor library.

    Args:
        matmul_method: How `matmul` (and so `conv2d`) multiplies: one of
            `MATMUL_METHODS` or a library-specific extra. `"auto"` picks the
            fastest exact route for the operands; every route returns the
            same bits.

    Operations never modify their inputs. Shift amounts are Python ints
    >= 0; shifting by 64 or more gives the mathematical result (0, or the
    sign for an arithmetic right shift) on every library.
    """

    name: str

    def __init__(self, matmul_method: str = "auto"):
        methods = tuple(self._matmul_routes())
        if matmul_method not in methods:
            raise ValueError(
                f"Expected matmul_method in {list(methods)}. Received: matmul_method={matmul_method!r}"
            )
        self.matmul_method = matmul_method
        #: The measured route decisions of these kernels (see `routes.py`).
        self.routes = RouteTable(self.name, self._library_version(), self._synchronize)
        #: Splits kept for operands that are multiplied again (see `prepare`).
        self.prepared = PreparedOperands(self._operand_version)
        self._timing = threading.local()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(matmul_method={self.matmul_method!r})"

    # -- conversion ---------------------------------------------------------------
    @abc.abstractmethod
    def from_numpy(self, array: np.ndarray) -> Tensor:
        """Copies an integer numpy array into this library as int64 (bits unchanged).

        Raises:
            TypeError: For non-integer arrays (see `as_ring_numpy`).
        """

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
        wrapped = np.array(int(value) % 2**64, dtype=np.uint64).view(np.int64)
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

    def matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """Matrix product over the last two axes (leading axes broadcast).

        Args:
            a: Ring tensor of shape (..., m, k).
            b: Ring tensor of shape (..., k, n).

        Returns:
            `a @ b` mod 2^64, of shape (..., m, n), by the route `matmul_route` names.

        Raises:
            ValueError: If the shapes do not multiply.
        """
        a_shape, b_shape = self.shape(a), self.shape(b)
        out_shape = matmul_shape(a_shape, b_shape)
        if 0 in out_shape or a_shape[-1] == 0:  # nothing to multiply: no route to time
            return self.zeros(out_shape)
        route = self.matmul_route(a, b)
        self.prepared.note(a)
        self.prepared.note(b)
        return self._matmul_routes()[route](a, b)

    def matmul_route(self, a: Tensor, b: Tensor) -> RouteChoice:
        """The route `matmul(a, b)` takes, and why (a `RouteChoice`, which is a `str`).

        With `matmul_method="auto"` the route is the fastest of
        `matmul_candidates(a, b)` as timed on this machine the first time
        this shape class was met (see `routes.py`); otherwise it is
        `matmul_method`.
        """
        if self.matmul_method != "auto":
            return RouteChoice(
                self.matmul_method, "configured", f"matmul_method={self.matmul_method!r}"
            )
        a_shape, b_shape = self.shape(a), self.shape(b)
        reused = self._is_reused(b, "right")
        memo_key = (a_shape, b_shape, reused, *self._context_key(a, b))
        environment = (forced_route(), route_cache_mode())
        known = self.routes.memo.get(memo_key)
        if known is not None and known[0] == environment:
            return known[1]
        out = matmul_shape(a_shape, b_shape)
        batch = int(np.prod(out[:-2], dtype=np.int64))
        key = (
            "matmul",
            *self._context_key(a, b),
            *shape_class(batch, a_shape[-2], a_shape[-1], b_shape[-1]),
            reused,
        )
        names = self.matmul_candidates(a, b)
        choice = self._choose(
            key,
            names,
            lambda: {name: self._matmul_probe(name, a, b) for name in names},
            self._static_matmul_route(a, b),
            (a, b),
            matmul_volume(a_shape, b_shape),
        )
        if self._can_time(a, b) and len(self.routes.memo) < 4096:
            self.routes.memo[memo_key] = (environment, choice.cached())
        return choice

    def matmul_candidates(self, a: Tensor, b: Tensor) -> list[str]:
        """The exact routes "auto" chooses among for these operands (library and device dependent)."""
        return ["native", "limbs"]

    def matmul_limbs(self, a: Tensor, b: Tensor, depth_chunk: int = MAX_EXACT_DEPTH) -> Tensor:
        """`a @ b` mod 2^64 from exact float64 GEMMs on limbs (see `limbs.py`).

        The route used where int64 matmul is slow or missing (CUDA), callable
        on any device so that tests can check it on CPU. `depth_chunk` (at most
        `MAX_EXACT_DEPTH`) bounds the depth multiplied in one float64 GEMM; the
        route never exceeds `KARATSUBA_MAX_DEPTH`. Splits of operands seen
        before (or named by `prepare`) are reused.
        """
        matmul_shape(self.shape(a), self.shape(b))
        if not 1 <= depth_chunk <= MAX_EXACT_DEPTH:
            return limb_matmul(self, a, b, depth_chunk)  # raises the documented ValueError
        return self._matmul_limbs(a, b, chunk=min(depth_chunk, KARATSUBA_MAX_DEPTH))

    def prepare(self, tensor: Tensor) -> Tensor:
        """Marks `tensor` as an operand of many products (a weight): its splits are kept.

        The split into limbs (or bytes) is made on the first product that needs
        it and reused for as long as `tensor` lives unchanged; without
        `prepare` that happens from the second product on. Returns `tensor`.
        """
        self.prepared.pin(tensor)
        return tensor

    def limb_operand(self, tensor: Tensor, side: str, chunk: int = KARATSUBA_MAX_DEPTH, owner=None):
        """The `limbs.LimbOperand` of `tensor` (kept for reused tensors; see `prepare`).

        Args:
            tensor: A ring operand.
            side: "left" or "right" in the product.
            chunk: Depth per chunk.
            owner: The tensor whose identity the split is kept under (default
                `tensor`; conv2d keeps the split of its reshaped kernel under the kernel).
        """
        owner = tensor if owner is None else owner
        return self._kept(
            owner,
            ("limbs", side, chunk, self.shape(tensor)),
            lambda transient: self._split_for_limbs(tensor, side, chunk, transient),
        )

    def _split_for_limbs(self, tensor: Tensor, side: str, chunk: int, transient: bool = False):
        """`limbs.prepare_limb_operand` (libraries override it with a fused version).

        `transient` splits are dropped after the call, so they may live in scratch buffers.
        """
        return prepare_limb_operand(self, tensor, side, chunk)

    def _matmul_limbs(self, a, b, chunk: int = KARATSUBA_MAX_DEPTH, b_owner=None):
        left = self.limb_operand(a, "left", chunk)
        right = self.limb_operand(b, "right", chunk, owner=b_owner)
        return self._limb_product(left, right, chunk)

    def _limb_product(self, left, right, chunk: int):
        """`limbs.limb_matmul` of two split operands (libraries may run it as one graph)."""
        return limb_matmul(self, left, right, chunk)

    def _matmul_routes(self) -> dict[str, Any]:
        """Route name -> function(a, b, b_owner=None); "auto" resolves to one of the others."""
        return {
            "auto": None,
            "native": lambda a, b, b_owner=None: self._matmul_native(a, b),
            "limbs": lambda a, b, b_owner=None: self._matmul_limbs(a, b, b_owner=b_owner),
        }

    def _static_matmul_route(self, a: Tensor, b: Tensor) -> str:
        """The route "auto" takes when measurement is off (PRIVKERAS_ROUTE_CACHE=off)."""
        return "native"

    @abc.abstractmethod
    def _matmul_native(self, a: Tensor, b: Tensor) -> Tensor:
        """The library's own int64 matmul (which wraps mod 2^64)."""

    # -- the float64 interface the limb routes are built on -------------------------
    @abc.abstractmethod
    def to_float64(self, a: Tensor) -> Tensor:
        """int64 -> float64 of the same library (exact for the small limbs it is given)."""

    @abc.abstractmethod
    def float_matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """float64 matmul with broadcast batch axes (BLAS / cuBLAS)."""

    @abc.abstractmethod
    def float_to_ring(self, a: Tensor) -> Tensor:
        """float64 holding exact integers of magnitude at most 2^53 -> int64."""

    # -- measured routes and kept splits (library hooks) ------------------------------
    def _context_key(self, *tensors: Tensor) -> tuple:
        """What besides shapes changes timings (device, threads): part of each route key."""
        return ()

    def _library_version(self) -> str:
        return ""

    def _synchronize(self) -> None:
        """Waits for queued work (accelerators), so that timings are real."""
        return None

    def _operand_version(self, tensor: Tensor) -> int | None:
        """A version that changes with every write to `tensor`, or None: splits not kept."""
        return None

    def _can_time(self, *tensors: Tensor) -> bool:
        """Whether these operands hold values now (not symbolic graph tensors)."""
        return True

    def _is_reused(self, tensor: Tensor, side: str) -> bool:
        return self.prepared.is_reused(tensor)

    def _kept(self, owner: Tensor, key: tuple, make):
        timing = getattr(self._timing, "on", False)
        keep = None
        if timing:  # timing runs record no sighting; a reused operand's split is kept
            keep = self.prepared.is_reused(owner)
        return self.prepared.get(owner, key, make, keep=keep)

    def _choose(self, key, names, make_candidates, static: str, tensors, volume) -> RouteChoice:
        if volume < MIN_TIMED_VOLUME and static in names and forced_route() is None:
            known = self.routes.lookup(key)  # a larger product of this class was timed
            if known is not None:
                return known.cached()
            return RouteChoice(
                static,
                "static",
                f"below {MIN_TIMED_VOLUME} multiply-adds: timing costs more than a route saves",
                shape_class=key,
            )
        if not self._can_time(*tensors):
            known = self.routes.lookup(key)
            if known is not None:
                return known.cached()
            return RouteChoice(static, "static", "graph tensors cannot be timed", shape_class=key)

        def timed_candidates():
            return {name: self._timed_run(fn) for name, fn in make_candidates().items()}

        choice = self.routes.choose(key, timed_candidates, static, names)
        if choice.source == "measured":  # splits made while timing routes that lost go
            for tensor in tensors:
                self.prepared.discard(tensor, lambda k: k[0] == str(choice))
        return choice

    def _timed_run(self, fn):
        def run():
            self._timing.on = True
            try:
                return fn()
            finally:
                self._timing.on = False

        return run

    def _matmul_probe(self, route: str, a: Tensor, b: Tensor):
        """A zero-argument run of `route` on (a slice of the rows of) these operands.

        Slicing the rows scales every cost but the split of `b`: where `b` is
        split on every call (not reused), only products beyond
        `PROBE_VOLUME_UNKEPT` are sliced, so that the split is charged fairly.
        """
        fn = self._matmul_routes()[route]
        a_shape, b_shape = self.shape(a), self.shape(b)
        volume = matmul_volume(a_shape, b_shape)
        limit = PROBE_VOLUME if self._is_reused(b, "right") else PROBE_VOLUME_UNKEPT
        if volume > limit and not self._is_reused(a, "left") and a_shape[-2] > 1:
            rows = max(1, int(a_shape[-2] * limit // volume))
            a = self.getitem(a, (Ellipsis, slice(0, rows), slice(None)))
        return lambda: fn(a, b)

    @abc.abstractmethod
    def sum(
        self, a: Tensor, axis: int | Sequence[int] | None = None, keepdims: bool = False
    ) -> Tensor: ...

    # -- bits ----------------------------------------------------------------------
    def shift_left(self, a: Tensor, bits: int) -> Tensor:
        """`a * 2^bits` mod 2^64."""
        bits = _shift_amount(bits)
        return self._shift_left(a, bits) if bits < 64 else self.sub(a, a)

    def shift_right_arithmetic(self, a: Tensor, bits: int) -> Tensor:
        """Sign-extending right shift (floor division by 2^bits)."""
        return self._shift_right_arithmetic(a, min(_shift_amount(bits), 63))

    def shift_right_logical(self, a: Tensor, bits: int) -> Tensor:
        """Zero-filling right shift of the 64-bit pattern."""
        bits = _shift_amount(bits)
        if bits >= 64:
            return self.sub(a, a)
        if bits == 0:
            return self.add(a, self.constant(0))
        shifted = self._shift_right_arithmetic(a, bits)
        return self.bitwise_and(shifted, self.constant((1 << (64 - bits)) - 1))

    @abc.abstractmethod
    def _shift_left(self, a: Tensor, bits: int) -> Tensor:
        """Left shift by `bits` in [0, 63]."""

    @abc.abstractmethod
    def _shift_right_arithmetic(self, a: Tensor, bits: int) -> Tensor:
        """Arithmetic right shift by `bits` in [0, 63]."""

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
        if (
            isinstance(index, bool)
            or not isinstance(index, (int, np.integer))
            or not 0 <= index < 64
        ):
            raise ValueError(f"Expected a bit index in [0, 63]. Received: index={index!r}")
        return self.bitwise_and(self.shift_right_logical(a, int(index)), self.constant(1))

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
        _, h, w, _ = self.shape(x)
        kh, kw = kernel_size
        sh, sw = strides
        oh, top, bottom = conv_output_padding(h, kh, sh, padding)
        ow, left, right = conv_output_padding(w, kw, sw, padding)
        if top or bottom or left or right:
            x = self.pad(x, [(0, 0), (top, bottom), (left, right), (0, 0)])
        windows = [
            self.getitem(
                x,
                (
                    slice(None),
                    slice(i, i + sh * (oh - 1) + 1, sh),
                    slice(j, j + sw * (ow - 1) + 1, sw),
                    slice(None),
                ),
            )
            for i in range(kh)
            for j in range(kw)
        ]
        return self.stack(windows, axis=3)

    def conv2d(
        self,
        x: Tensor,
        kernel: Tensor,
        strides: int | Sequence[int] = (1, 1),
        padding: str = "VALID",
    ) -> Tensor:
        """2-D convolution mod 2^64: NHWC input, HWIO kernel, as `tf.nn.conv2d`.

        Args:
            x: Ring tensor of shape (N, H, W, C).
            kernel: Ring tensor of shape (KH, KW, C, C_out).
            strides: One int or (stride_h, stride_w), each >= 1.
            padding: "VALID" or "SAME" (TensorFlow's split of odd padding).

        Returns:
            The ring tensor of shape (N, OH, OW, C_out).

        Raises:
            ValueError: For mismatched ranks or channels, bad strides or padding.
        """
        strides = _pair_of_strides(strides)
        x_shape, k_shape = self.shape(x), self.shape(kernel)
        if len(x_shape) != 4 or len(k_shape) != 4 or x_shape[3] != k_shape[2]:
            raise ValueError(
                "Expected an NHWC input and an HWIO kernel with matching channels. "
                f"Received: shapes {x_shape} and {k_shape}"
            )
        padding = padding.upper() if isinstance(padding, str) else padding
        conv_output_padding(x_shape[1], k_shape[0], strides[0], padding)  # validates
        conv_output_padding(x_shape[2], k_shape[1], strides[1], padding)
        route = self.conv2d_route(x, kernel, strides, padding)
        self.prepared.note(kernel)
        return self._conv2d_by(route, x, kernel, strides, padding)

    def conv2d_route(
        self,
        x: Tensor,
        kernel: Tensor,
        strides: int | Sequence[int] = (1, 1),
        padding: str = "VALID",
    ) -> RouteChoice:
        """The route `conv2d` takes: im2col into a matmul route, or the library's direct conv.

        "auto" times the candidates per configuration (input shape class,
        kernel shape, strides, padding) on this machine, as `matmul_route` does.
        """
        strides = _pair_of_strides(strides)
        padding = padding.upper() if isinstance(padding, str) else padding
        if self.matmul_method != "auto":
            return RouteChoice(
                self.matmul_method, "configured", f"matmul_method={self.matmul_method!r}"
            )
        n, h, w, c = self.shape(x)
        key = (
            "conv2d",
            *self._context_key(x, kernel),
            *shape_class(n),
            h,
            w,
            c,
            *self.shape(kernel),
            *strides,
            padding,
            self._is_reused(kernel, "right"),
        )
        names = self.conv2d_candidates(x, kernel)
        kh, kw, c_in, c_out = self.shape(kernel)
        volume = n * h * w * kh * kw * c_in * c_out // (strides[0] * strides[1])

        def candidates():  # the routes differ in the GEMM only: patches are made once
            patches = self.extract_patches(x, (kh, kw), strides, padding)
            cols = self.reshape(patches, (-1, kh * kw * c_in))
            weights = self.reshape(kernel, (kh * kw * c_in, c_out))
            rows = self.shape(cols)[0]
            if rows * kh * kw * c_in * c_out > PROBE_VOLUME:  # timed on a slice of the rows
                keep = max(1, rows * PROBE_VOLUME // (rows * kh * kw * c_in * c_out))
                cols = self.getitem(cols, (slice(0, keep), slice(None)))
            routes = self._matmul_routes()
            return {
                name: (lambda fn=routes[name]: fn(cols, weights, b_owner=kernel)) for name in names
            }

        static = self._static_conv2d_route(x, kernel)
        return self._choose(key, names, candidates, static, (x, kernel), volume)

    def conv2d_candidates(self, x: Tensor, kernel: Tensor) -> list[str]:
        """The routes "auto" chooses among for a convolution: the GEMM routes of im2col."""
        kh, kw, c, c_out = self.shape(kernel)
        n = self.shape(x)[0]
        probe = self.zeros((max(n, 1), kh * kw * c))
        return self.matmul_candidates(probe, self.zeros((kh * kw * c, c_out)))

    def _static_conv2d_route(self, x: Tensor, kernel: Tensor) -> str:
        return "native"

    def _conv2d_direct(self, x, kernel, strides, padding):
        raise ValueError(f"Expected a conv2d route of {self.name}. Received: 'direct'")

    def _conv2d_by(self, route, x, kernel, strides, padding):
        if route == "direct":
            return self._conv2d_direct(x, kernel, strides, padding)
        kh, kw, c_in, c_out = self.shape(kernel)
        n = self.shape(x)[0]
        patches = self.extract_patches(x, (kh, kw), strides, padding)
        _, oh, ow, _, _ = self.shape(patches)
        cols = self.reshape(patches, (n * oh * ow, kh * kw * c_in))
        weights = self.reshape(kernel, (kh * kw * c_in, c_out))
        out = self._matmul_routes()[route](cols, weights, b_owner=kernel)
        return self.reshape(out, (n, oh, ow, c_out))


def _pair_of_strides(strides: int | Sequence[int]) -> tuple[int, int]:
    pair = (strides, strides) if isinstance(strides, (int, np.integer)) else tuple(strides)
    if len(pair) != 2 or any(
        isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in pair
    ):
        raise ValueError(f"Expected strides of one or two ints >= 1. Received: strides={strides!r}")
    return int(pair[0]), int(pair[1])
