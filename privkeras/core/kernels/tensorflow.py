"""Ring kernels on TensorFlow int64 tensors (the TF-Encrypted style engine's arithmetic).

Everything runs on TensorFlow's own ops. TensorFlow's int64 matmul is a
plain Eigen loop and there is none on GPU, so "auto" times it against float64
GEMMs on limbs (`limbs.py`) per shape class on the machine at hand
(`routes.py`); GPU tensors take limbs. Inside graphs (`tf.function`),
where nothing can be timed, a route already measured for the shape class
is reused, else TensorFlow's int64 matmul. `matmul_method="torch"` still
hands eager CPU matmuls and convolutions to torch over DLPack (no copy), for
comparison; "auto" never takes it. Every route gives the same bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import gen_array_ops, gen_bitwise_ops, gen_math_ops

from privkeras.core.kernels.base import RingKernels, as_ring_numpy, conv_output_padding
from privkeras.core.kernels.limbs import LimbOperand, limb_matmul, prepare_limb_operand

__all__ = ["TensorFlowKernels"]


class TensorFlowKernels(RingKernels):
    """tf.int64 arithmetic; TensorFlow's int64 kernels wrap around mod 2^64.

    Args:
        matmul_method: "auto", "native" (TensorFlow's int64 matmul), "limbs"
            (float64 GEMMs in TensorFlow, the GPU route) or "torch" (torch's
            int64 matmul and convolution on the same CPU memory; eager CPU
            tensors only).
    """

    name = "tensorflow"

    def from_numpy(self, array: np.ndarray) -> tf.Tensor:
        return tf.constant(as_ring_numpy(array))

    def to_numpy(self, tensor: tf.Tensor) -> np.ndarray:
        return as_ring_numpy(tensor.numpy())

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, (tf.Tensor, tf.Variable))

    def constant(self, value: int, shape: Sequence[int] = ()) -> tf.Tensor:
        wrapped = int(np.array(int(value) % 2**64, dtype=np.uint64).view(np.int64))
        if not tf.executing_eagerly():
            return tf.fill(tuple(shape), tf.constant(wrapped, dtype=tf.int64))
        key = (wrapped, tuple(int(s) for s in shape))
        tensor = _CONSTANTS.get(key)
        if tensor is None:  # eager tensors are immutable: one per value and shape
            tensor = tf.fill(key[1], tf.constant(wrapped, dtype=tf.int64))
            if len(_CONSTANTS) < _MAX_CONSTANTS and tensor.shape.num_elements() <= 64:
                _CONSTANTS[key] = tensor
        return tensor

    # The generated ops skip the Python dispatch layers of tf.add & co. (half the cost
    # of an eager call on small tensors); they are the same kernels.
    def add(self, a, b):
        return gen_math_ops.add_v2(a, b)

    def sub(self, a, b):
        return gen_math_ops.sub(a, b)

    def neg(self, a):
        return gen_math_ops.neg(a)

    def mul(self, a, b):
        return gen_math_ops.mul(a, b)

    def _matmul_routes(self) -> dict[str, Any]:
        torch_route = {"torch": lambda a, b, b_owner=None: self._matmul_torch(a, b)}
        return {**super()._matmul_routes(), **torch_route}

    def matmul_candidates(self, a, b) -> list[str]:
        if _on_gpu(a) or _on_gpu(b):
            return ["limbs"]
        return ["native", "limbs"]

    def _static_matmul_route(self, a, b) -> str:
        return "limbs" if _on_gpu(a) or _on_gpu(b) else "native"

    def _context_key(self, *tensors) -> tuple:
        return ("gpu" if any(_on_gpu(t) for t in tensors) else "cpu",)

    def _library_version(self) -> str:
        return tf.__version__

    def _can_time(self, *tensors) -> bool:
        return all(_is_eager(t) for t in tensors)

    def _operand_version(self, tensor) -> int | None:
        # Eager tensors are immutable; variables and graph tensors are never kept.
        if isinstance(tensor, tf.Variable) or not _is_eager(tensor):
            return None
        return 0

    def _matmul_native(self, a, b):
        return tf.linalg.matmul(a, b)

    def _matmul_torch(self, a, b):
        torch_kernels = _delegate_kernels(a, b)
        return _from_torch(torch_kernels.matmul(_as_torch(a), _as_torch(b)))

    def conv2d(self, x, kernel, strides=(1, 1), padding="VALID"):
        """`RingKernels.conv2d`; on the "torch" route the whole convolution runs in torch."""
        if self.matmul_method == "torch":
            torch_kernels = _delegate_kernels(x, kernel)
            out = torch_kernels.conv2d(_as_torch(x), _as_torch(kernel), strides, padding)
            return _from_torch(out)
        return super().conv2d(x, kernel, strides, padding)

    def _split_for_limbs(self, tensor, side, chunk, transient=False):
        """The split as one graph per (shape, side, chunk): about twenty ops in one call.

        Timing runs ("auto" deciding) stay eager: tracing a graph per candidate
        shape would cost more than the decision it serves.
        """
        if not tf.executing_eagerly() or getattr(self._timing, "on", False):
            return prepare_limb_operand(self, tensor, side, chunk)
        shape = tuple(int(s) for s in tensor.shape)
        graph = self._graph(
            ("split", shape, side, chunk),
            lambda t: _limb_tensors(prepare_limb_operand(self, t, side, chunk)),
            [tf.TensorSpec(shape, tf.int64)],
        )
        if graph is None:
            return prepare_limb_operand(self, tensor, side, chunk)
        batched, paired = graph(tensor)
        return LimbOperand(side, shape, chunk, tuple(batched), tuple(paired))

    def _limb_product(self, left, right, chunk):
        """`limbs.limb_matmul` as one graph per shape: two GEMMs and the ring recombination."""
        if not tf.executing_eagerly() or getattr(self._timing, "on", False):
            return limb_matmul(self, left, right, chunk)
        tensors = (*_limb_tensors(left), *_limb_tensors(right))
        specs = [[tf.TensorSpec(t.shape, t.dtype) for t in group] for group in tensors]
        key = ("product", chunk, left.side, left.shape, right.shape)

        def product(lb, lp, rb, rp):
            l_op = LimbOperand("left", left.shape, chunk, tuple(lb), tuple(lp))
            r_op = LimbOperand("right", right.shape, chunk, tuple(rb), tuple(rp))
            return limb_matmul(self, l_op, r_op, chunk)

        graph = self._graph(key, product, specs)
        if graph is None:
            return limb_matmul(self, left, right, chunk)
        return graph(*tensors)

    def _graph(self, key, fn, signature):
        """A `tf.function` with a fixed input signature for `key`, from the second request on.

        The first request of a key returns None (run eagerly): tracing costs
        tens of milliseconds, worth it only for shapes that come back, as a
        layer's do in every batch.
        """
        graph = self._graphs.get(key)
        if graph is None:
            if len(self._graphs) >= _MAX_CONSTANTS:
                return None
            self._graphs[key] = False  # seen once
            return None
        if graph is False:
            graph = self._graphs[key] = tf.function(
                fn, input_signature=signature, autograph=False, reduce_retracing=False
            )
        return graph

    @property
    def _graphs(self) -> dict:
        graphs = self.__dict__.get("_graph_cache")
        if graphs is None:
            graphs = self.__dict__["_graph_cache"] = {}
        return graphs

    def to_float64(self, a):
        return tf.cast(a, tf.float64)

    def float_matmul(self, a, b):
        return tf.linalg.matmul(a, b)

    def float_to_ring(self, a):
        return tf.cast(a, tf.int64)

    def sum(self, a, axis=None, keepdims=False):
        axis = list(axis) if isinstance(axis, (list, tuple)) else axis
        return tf.reduce_sum(a, axis=axis, keepdims=keepdims)

    def _shift_left(self, a, bits):
        return gen_bitwise_ops.left_shift(a, self.constant(bits))

    def _shift_right_arithmetic(self, a, bits):
        return gen_bitwise_ops.right_shift(a, self.constant(bits))

    def bitwise_and(self, a, b):
        return gen_bitwise_ops.bitwise_and(a, b)

    def bitwise_or(self, a, b):
        return gen_bitwise_ops.bitwise_or(a, b)

    def bitwise_xor(self, a, b):
        return gen_bitwise_ops.bitwise_xor(a, b)

    def reshape(self, a, shape: Sequence[int]):
        return gen_array_ops.reshape(a, _index_constant(tuple(int(s) for s in shape)))

    def getitem(self, a, key):
        """Basic slicing and integer indexing, as one StridedSlice op with cached bounds."""
        spec = _strided_slice_spec(key, len(a.shape)) if tf.executing_eagerly() else None
        if spec is None:
            return a[key]
        begin, end, strides, shrink = spec
        return gen_array_ops.strided_slice(
            a,
            _index_constant(begin),
            _index_constant(end),
            _index_constant(strides),
            begin_mask=0,
            end_mask=0,
            shrink_axis_mask=shrink,
        )

    def extract_patches(self, x, kernel_size, strides=(1, 1), padding="VALID"):
        """Sliding windows as (N, OH, OW, KH * KW, C), by TensorFlow's own patch op."""
        n, h, w, c = (int(s) for s in x.shape)
        kh, kw = kernel_size
        sh, sw = strides
        padding = padding.upper() if isinstance(padding, str) else padding
        oh, *_ = conv_output_padding(h, kh, sh, padding)
        ow, *_ = conv_output_padding(w, kw, sw, padding)
        patches = tf.image.extract_patches(x, [1, kh, kw, 1], [1, sh, sw, 1], [1, 1, 1, 1], padding)
        return self.reshape(patches, (n, oh, ow, kh * kw, c))

    def transpose(self, a, perm=None):
        return tf.transpose(a, perm)

    def concat(self, tensors, axis=0):
        return tf.concat(list(tensors), axis=axis)

    def stack(self, tensors, axis=0):
        return tf.stack(list(tensors), axis=axis)

    def pad(self, a, widths):
        return tf.pad(a, [list(w) for w in widths])

    def broadcast_to(self, a, shape):
        return tf.broadcast_to(a, tuple(shape))


def _is_eager(tensor: Any) -> bool:
    return hasattr(tensor, "numpy") and tf.executing_eagerly()


def _on_gpu(tensor: Any) -> bool:
    return "GPU" in (getattr(tensor, "device", "") or "").upper()


def _can_delegate(*tensors: Any) -> bool:
    """Whether torch can work on these tensors' memory: eager, on CPU, non-empty."""
    return (
        all(_is_eager(t) and not _on_gpu(t) and t.shape.num_elements() for t in tensors)
        and _torch_cpu_kernels() is not None
    )


def _delegate_kernels(*tensors: Any) -> RingKernels:
    if not _can_delegate(*tensors):
        raise ValueError(
            'Expected non-empty eager CPU tensors and an importable torch for matmul_method="torch". '
            'Received: graph, GPU or empty tensors, or no torch; use "native" or "limbs"'
        )
    return _torch_cpu_kernels()


def _torch_cpu_kernels() -> RingKernels | None:
    """The torch CPU kernels, made on first use; None where torch is not installed."""
    global _TORCH_KERNELS
    if _TORCH_KERNELS is _UNSET:
        try:
            from privkeras.core.kernels.torch import TorchKernels
        except ImportError:
            _TORCH_KERNELS = None
        else:
            _TORCH_KERNELS = TorchKernels("cpu", matmul_method="native")
    return _TORCH_KERNELS


def _as_torch(tensor: Any) -> Any:
    """A torch view of an eager CPU tensor's memory (no copy)."""
    import torch

    return torch.from_dlpack(tf.experimental.dlpack.to_dlpack(tf.convert_to_tensor(tensor)))


def _from_torch(tensor: Any) -> tf.Tensor:
    import torch

    return tf.experimental.dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(tensor.contiguous()))


def _limb_tensors(operand: LimbOperand) -> tuple[list, list]:
    return list(operand.batched), list(operand.paired)


def _index_constant(values: tuple[int, ...]) -> Any:
    """A cached int64 index vector (shapes, slice bounds): eager tensors are immutable."""
    tensor = _INDEX_CONSTANTS.get(values)
    if tensor is None:
        tensor = tf.constant(values, dtype=tf.int64)
        if len(_INDEX_CONSTANTS) < _MAX_CONSTANTS and tf.executing_eagerly():
            _INDEX_CONSTANTS[values] = tensor
    return tensor


def _strided_slice_spec(key: Any, rank: int):
    """(begin, end, strides, shrink mask) for a key of ints, slices and one Ellipsis, or None.

    Bounds are resolved against nothing: negative ints and open slices are
    left to StridedSlice by using its masks only where exact, so the spec
    covers what the protocols use (ints >= 0, slices with int or None
    bounds and step 1 or more); anything else falls back to `a[key]`.
    """
    key = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        return None
    if Ellipsis in key:
        at = key.index(Ellipsis)
        fill = rank - (len(key) - 1)
        if fill < 0:
            return None
        key = key[:at] + (slice(None),) * fill + key[at + 1 :]
    if len(key) > rank:
        return None
    key = key + (slice(None),) * (rank - len(key))
    begin, end, strides, shrink = [], [], [], 0
    big = 2**62
    for axis, k in enumerate(key):
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            if k < 0:
                return None
            begin.append(int(k))
            end.append(int(k) + 1)
            strides.append(1)
            shrink |= 1 << axis
        elif isinstance(k, slice):
            step = 1 if k.step is None else k.step
            start, stop = k.start, k.stop
            if not isinstance(step, int) or step < 1:
                return None
            if any(v is not None and (not isinstance(v, int) or v < 0) for v in (start, stop)):
                return None
            begin.append(0 if start is None else start)
            end.append(big if stop is None else stop)
            strides.append(step)
        else:
            return None
    return tuple(begin), tuple(end), tuple(strides), shrink


_CONSTANTS: dict[tuple, Any] = {}
_INDEX_CONSTANTS: dict[tuple, Any] = {}
#: Most cached constants (shapes, slice bounds, scalars) kept per process.
_MAX_CONSTANTS = 4096
_UNSET: Any = object()
_TORCH_KERNELS: Any = _UNSET
