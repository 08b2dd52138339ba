"""Per-example gradient norms and clipped sums, registered per Keras layer type.

DP-SGD needs, for every example i, the global L2 norm of its gradient, and
then the sum over i of the gradients scaled by `min(1, C / norm_i)`. The slow,
obvious way computes every example's gradient. For the layers that hold most
of a network's weights, much less is needed:

- `Dense` and `Conv2D` compute `z = a W + b` (a convolution after its input
  is unfolded into patches). With the layer input `a` and the gradient `g`
  of the loss with respect to `z`, taken for the whole batch in ONE backward
  pass, example i's kernel gradient is `a_i^T g_i`. Its squared norm is
  `|a_i|^2 |g_i|^2` when `a_i` is a vector, and `sum_{t,s} (a_it . a_is)
  (g_it . g_is)` for sequences and patches (the ghost norm of Goodfellow,
  2015, and Li et al., 2022), or `|a_i^T g_i|^2` directly when that is
  cheaper. The clipped sum is `a^T (c * g)`, with no second backward pass:
  this is book-keeping (Bu et al., "Differentially Private Optimization on
  Large Model at Small Cost", ICML 2023).
- `Embedding` outputs rows of its table; example i's gradient is a scatter
  of `g_i` into the rows it looked up, with squared norm
  `sum_{t,s} [id_t = id_s] (g_t . g_s)` and clipped sum a segment sum.
- Any other layer with trainable weights falls back to per-example
  gradients of that layer alone, vectorized over the batch by the backend
  (`tf.GradientTape.jacobian` with pfor, `torch.autograd.grad` with
  `is_grads_batched`), from the same backward pass's output gradient.

A rule says how a layer type runs forward (exposing the tensor whose gradient
it needs) and how it turns (input, output gradient) into `PerExampleGrads`.
Rules are found by exact layer type: a subclass that overrides `call` must not
inherit a rule that re-implements the parent's `call`.

Example:

```python
from privkeras.backends.dpsgd import clipping

@clipping.register_clipping_rule(MyLayer)
class MyLayerRule(clipping.ClippingRule):
    ...
```
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import keras
from keras import ops

from privkeras.core.registry import Registry
from privkeras.errors import UnsupportedLayerError

__all__ = [
    "RULES",
    "ClippingRule",
    "EmbeddingGrads",
    "LinearGrads",
    "MaterializedGrads",
    "PerExampleGradientSource",
    "PerExampleGrads",
    "clip_factors",
    "register_clipping_rule",
    "registered_rules",
    "rule_for",
    "same_padding",
    "unregister_clipping_rule",
]


class PerExampleGradientSource(abc.ABC):
    """What a rule needs from the Keras backend (implemented in tensorflow.py, torch.py).

    `array_ops` is the namespace the per-example math runs on: `keras.ops` by
    default; a backend may give a faster one with the same functions
    (`sum`, `square`, `sqrt`, `matmul`, `tensordot`, `transpose`, `reshape`,
    `cast`, `equal`, `take`, `segment_sum`, `maximum`, `minimum`, `add`). Under
    torch, `keras.ops` converts every argument on every call: about 10 us a
    call, 1 ms per MLP step.
    """

    array_ops: Any = ops

    @abc.abstractmethod
    def extract_patches(self, inputs: Any, layer: keras.layers.Conv2D) -> tuple[Any, Any]:
        """Channels-last patches `(B, out_h, out_w, kh * kw * c_in)` of `inputs` as
        `layer` convolves them, and the column order: None for the kernel's
        `(kh, kw, c_in)` order, else `order[r]` is the column of kernel row r."""

    def per_example_conv_kernels(self, inputs: Any, output_grad: Any, layer: Any) -> Any:
        """Per-example kernel gradients `(B, kh, kw, c_in, c_out)` of a channels-last
        `Conv2D` when the backend has a faster way than patches, else None."""
        return None

    @abc.abstractmethod
    def per_example_gradients(
        self, layer: keras.layers.Layer, inputs: Any, output_grad: Any
    ) -> list[Any]:
        """Gradients `(B, *variable.shape)` of each example's `<layer(x_i), g_i>`
        with respect to `layer.trainable_variables`, vectorized over the batch."""


# -- per-example gradients, implicit or explicit ------------------------------------------


class PerExampleGrads(abc.ABC):
    """One layer's per-example gradients, possibly never materialized."""

    @abc.abstractmethod
    def squared_norms(self) -> Any:
        """`(B,)`: each example's squared L2 norm over the layer's variables."""

    @abc.abstractmethod
    def weighted_sum(self, weights: Any) -> list[Any]:
        """`sum_i weights_i * grad_i`, one tensor per variable, in the rule's order."""


def _sum_squares(x: Any, xp: Any = ops) -> Any:
    axes = tuple(range(1, len(x.shape)))
    return xp.sum(xp.square(x), axis=axes) if axes else xp.square(x)


class LinearGrads(PerExampleGrads):
    """Per-example gradients of `z = a @ W (+ b)`.

    Args:
        inputs: `a`, `(B, k)` or `(B, T, k)` (T positions share W).
        output_grad: `g = dL/dz`, `(B, p)` or `(B, T, p)`.
        kernel_shape: Shape to give the `(k, p)` kernel gradient.
        bias: Whether the layer has a bias (gradient `sum_t g_t`).
        strategy: For `(B, T, k)` inputs: `"ghost"` (Gram matrices, cost
            `T^2 (k + p)` per example), `"materialize"` (`a_i^T g_i`, cost
            `T k p` and `k p` memory), or `"auto"` to take the one measured faster.
        row_order: If the k columns of `inputs` are permuted, `row_order[r]`
            is the column holding kernel row r.
        xp: The array namespace (`keras.ops` or a faster one with its names).
    """

    STRATEGIES: ClassVar[tuple[str, ...]] = ("auto", "ghost", "materialize")
    #: Largest per-example kernel (k * p floats) that "auto" materializes.
    MAX_MATERIALIZED: ClassVar[int] = 1 << 20

    def __init__(
        self,
        inputs,
        output_grad,
        kernel_shape,
        bias: bool,
        strategy: str = "auto",
        row_order: Any = None,
        xp: Any = ops,
    ):
        if strategy not in self.STRATEGIES:
            raise ValueError(
                f"Expected strategy in {list(self.STRATEGIES)}. Received: strategy={strategy!r}"
            )
        self.xp = xp
        self.a, self.g = inputs, output_grad
        self.kernel_shape = tuple(kernel_shape)
        self.row_order = row_order
        self.bias = bias
        self.sequence = len(inputs.shape) == 3
        k, p = int(inputs.shape[-1]), int(output_grad.shape[-1])
        self.k, self.p = k, p
        if strategy == "auto":
            # Both pay B T k p for the clipped sum. Ghost adds B T^2 (k + p) in batched
            # Gram products; materialize forms B small (k, p) products and passes over
            # B k p numbers three times. Timed on both backends (conv layers of the MNIST
            # CNN), ghost wins when T (k + p) < 1.5 k p: T^2 (k + p) is cheaper than the
            # many small products, until T grows.
            t = int(inputs.shape[1]) if self.sequence else 1
            small = k * p <= self.MAX_MATERIALIZED
            strategy = "ghost" if t * (k + p) < 1.5 * k * p or not small else "materialize"
        self.strategy = strategy
        self._per_example_kernel = None

    def _kernels(self):
        if self._per_example_kernel is None:  # (B, k, p), built once per step
            self._per_example_kernel = self.xp.matmul(self.xp.transpose(self.a, (0, 2, 1)), self.g)
        return self._per_example_kernel

    def _bias_rows(self):
        return self.xp.sum(self.g, axis=1) if self.sequence else self.g

    def squared_norms(self):
        if not self.sequence:
            # |a_i|^2 |g_i|^2 for the kernel, |g_i|^2 for the bias: one pass over g.
            g_squared = _sum_squares(self.g, self.xp)
            a_squared = _sum_squares(self.a, self.xp)
            return (a_squared + 1.0) * g_squared if self.bias else a_squared * g_squared
        if self.strategy == "materialize":
            norms = _sum_squares(self._kernels(), self.xp)
        else:
            gram_a = self.xp.matmul(self.a, self.xp.transpose(self.a, (0, 2, 1)))
            gram_g = self.xp.matmul(self.g, self.xp.transpose(self.g, (0, 2, 1)))
            norms = self.xp.sum(gram_a * gram_g, axis=(1, 2))
        if self.bias:
            norms = norms + _sum_squares(self._bias_rows(), self.xp)
        return norms

    def weighted_sum(self, weights):
        xp = self.xp
        bias = None
        if not self.sequence:
            scaled = self.g * weights[:, None]  # shared by the kernel and the bias
            kernel = xp.matmul(xp.transpose(self.a), scaled)
            bias = xp.sum(scaled, axis=0) if self.bias else None
        elif self.strategy == "materialize":
            kernel = xp.tensordot(weights, self._kernels(), axes=1)
        else:
            scaled = xp.reshape(self.g * weights[:, None, None], (-1, self.p))
            kernel = xp.matmul(xp.transpose(xp.reshape(self.a, (-1, self.k))), scaled)
            bias = xp.sum(scaled, axis=0) if self.bias else None
        if self.row_order is not None:  # Norms ignore the order; the sum must not.
            kernel = xp.take(kernel, self.row_order, axis=0)
        grads = [xp.reshape(kernel, self.kernel_shape)]
        if self.bias:
            if bias is None:
                bias = xp.sum(self._bias_rows() * weights[:, None], axis=0)
            grads.append(bias)
        return grads


class EmbeddingGrads(PerExampleGrads):
    """Per-example gradients of an embedding lookup `table[ids]`.

    Args:
        ids: Integer ids, `(B, ...)`.
        output_grad: `dL/d table[ids]`, `(B, ..., d)`.
        vocabulary_size: Rows of the table.
    """

    def __init__(self, ids, output_grad, vocabulary_size: int, xp: Any = ops):
        self.xp = xp
        d = int(output_grad.shape[-1])
        positions = math.prod(int(s) for s in ids.shape[1:])
        self.ids = self.xp.reshape(self.xp.cast(ids, "int32"), (-1, positions))
        self.g = self.xp.reshape(output_grad, (-1, positions, d))
        self.d, self.positions, self.vocabulary_size = d, positions, vocabulary_size

    def squared_norms(self):
        if self.positions == 1:
            return _sum_squares(self.g, self.xp)
        same_row = self.xp.cast(
            self.xp.equal(self.ids[:, :, None], self.ids[:, None, :]), self.g.dtype
        )
        gram_g = self.xp.matmul(self.g, self.xp.transpose(self.g, (0, 2, 1)))
        return self.xp.sum(same_row * gram_g, axis=(1, 2))

    def weighted_sum(self, weights):
        rows = self.xp.reshape(self.g * weights[:, None, None], (-1, self.d))
        table = self.xp.segment_sum(
            rows, self.xp.reshape(self.ids, (-1,)), num_segments=self.vocabulary_size
        )
        return [table]


class MaterializedGrads(PerExampleGrads):
    """Explicit per-example gradients, `(B, *variable.shape)` per variable."""

    def __init__(self, grads: Sequence[Any], xp: Any = ops):
        self.xp = xp
        self.grads = list(grads)

    def squared_norms(self):
        norms = None
        for grad in self.grads:
            part = _sum_squares(grad, self.xp)
            norms = part if norms is None else norms + part
        return norms

    def weighted_sum(self, weights):
        return [self.xp.tensordot(weights, grad, axes=1) for grad in self.grads]


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """Keras's "same" padding along one axis: (before, after), the extra pixel after."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + effective - size)
    return total // 2, total - total // 2


def clip_factors(squared_norms: Any, l2_norm_clip: float, xp: Any = ops) -> Any:
    """`min(1, C / norm_i)` per example (1 for a zero gradient)."""
    norms = xp.sqrt(xp.maximum(squared_norms, 0.0))
    return xp.minimum(1.0, l2_norm_clip / xp.maximum(norms, 1e-12))


# -- rules ------------------------------------------------------------------------------


def _with_mask_of(outputs: Any, inputs: Any) -> Any:
    """Carries a Keras mask from inputs to outputs, as `Layer.__call__` does."""
    from keras.src.backend.common import masking  # Keras keeps masks on tensors.

    mask = masking.get_keras_mask(inputs)
    if mask is not None:
        masking.set_keras_mask(outputs, mask)
    return outputs


class ClippingRule(abc.ABC):
    """How one layer type runs forward and yields its per-example gradients.

    `forward` returns `(tap, outputs)`: `tap` is the tensor whose gradient the
    single backward pass computes for this layer; `per_example` turns the
    layer input and that gradient into `PerExampleGrads` over
    `variables(layer)`.
    """

    #: Short name for reports: which technique the rule uses.
    technique: ClassVar[str]

    def refusal(self, layer: keras.layers.Layer) -> str | None:
        """Why this rule cannot serve `layer` (then the fallback does), or None."""
        return None

    def variables(self, layer: keras.layers.Layer) -> list[Any]:
        return list(layer.trainable_variables)

    @abc.abstractmethod
    def forward(self, layer: keras.layers.Layer, inputs: Any) -> tuple[Any, Any]:
        """`(tap, outputs)` for a training-mode forward pass."""

    @abc.abstractmethod
    def per_example(
        self,
        layer: keras.layers.Layer,
        inputs: Any,
        tap_grad: Any,
        source: PerExampleGradientSource,
    ) -> PerExampleGrads:
        """Per-example gradients of `variables(layer)`."""


#: Fast rules by exact layer type (a layer without one falls back to per-example gradients).
RULES: Registry[type, ClippingRule] = Registry("clipping rule", unknown_error=UnsupportedLayerError)


def register_clipping_rule(layer_type: type, *, replace: bool = False):
    """Class decorator registering a `ClippingRule` for exactly `layer_type`.

    Raises:
        RegistrationError: For a layer type that already has a rule (unless `replace`).
    """

    def _register(rule_cls: type[ClippingRule]) -> type[ClippingRule]:
        RULES.register(layer_type, rule_cls(), replace=replace)
        return rule_cls

    return _register


def unregister_clipping_rule(layer_type: type) -> None:
    """Removes the rule of `layer_type` (for tests and plugins)."""
    RULES.unregister(layer_type)


def registered_rules() -> dict[str, str]:
    """Layer type name -> technique, for the layers with a fast rule."""
    return {cls.__name__: rule.technique for cls, rule in RULES.items()}


def _trainable_rank2_kernel_refusal(layer) -> str | None:
    if layer.lora_enabled:
        return "LoRA is enabled"
    if layer.quantization_mode:
        return f"it is quantized ({layer.quantization_mode})"
    if not layer.kernel.trainable or (layer.bias is not None and not layer.bias.trainable):
        return "some of its weights are frozen"
    return None


@register_clipping_rule(keras.layers.Dense)
class DenseRule(ClippingRule):
    """Book-keeping for `Dense` on inputs of any rank (positions share the kernel)."""

    technique = "book-keeping"

    def refusal(self, layer):
        return _trainable_rank2_kernel_refusal(layer)

    def variables(self, layer):
        return [layer.kernel] + ([layer.bias] if layer.bias is not None else [])

    def forward(self, layer, inputs):
        inputs = ops.cast(inputs, layer.compute_dtype)
        z = ops.matmul(inputs, layer.kernel)
        if layer.bias is not None:
            z = ops.add(z, layer.bias)
        outputs = layer.activation(z) if layer.activation is not None else z
        return z, _with_mask_of(outputs, inputs)

    def per_example(self, layer, inputs, tap_grad, source):
        xp = source.array_ops
        inputs = xp.cast(inputs, layer.compute_dtype)
        if len(inputs.shape) > 3:  # (B, d1, ..., k): every position shares the kernel.
            positions = math.prod(int(s) for s in inputs.shape[1:-1])
            inputs = xp.reshape(inputs, (-1, positions, int(inputs.shape[-1])))
            tap_grad = xp.reshape(tap_grad, (-1, positions, int(tap_grad.shape[-1])))
        return LinearGrads(inputs, tap_grad, layer.kernel.shape, layer.bias is not None, xp=xp)


@register_clipping_rule(keras.layers.Conv2D)
class Conv2DRule(ClippingRule):
    """Book-keeping for `Conv2D`: patches of the input against the output gradient."""

    technique = "book-keeping"

    def refusal(self, layer):
        if layer.groups != 1:
            return f"groups={layer.groups}"
        return _trainable_rank2_kernel_refusal(layer)

    def variables(self, layer):
        return [layer.kernel] + ([layer.bias] if layer.use_bias else [])

    def forward(self, layer, inputs):
        inputs = ops.cast(inputs, layer.compute_dtype)
        z = layer.convolution_op(inputs, layer.kernel)
        if layer.use_bias:
            shape = (1, 1, 1, layer.filters)
            if layer.data_format == "channels_first":
                shape = (1, layer.filters, 1, 1)
            z = ops.add(z, ops.reshape(layer.bias, shape))
        outputs = layer.activation(z) if layer.activation is not None else z
        return z, outputs

    def per_example(self, layer, inputs, tap_grad, source):
        xp = source.array_ops
        inputs = xp.cast(inputs, layer.compute_dtype)
        if layer.data_format == "channels_first":
            inputs = xp.transpose(inputs, (0, 2, 3, 1))
            tap_grad = xp.transpose(tap_grad, (0, 2, 3, 1))
        kernels = source.per_example_conv_kernels(inputs, tap_grad, layer)
        if kernels is not None:
            bias = [xp.sum(tap_grad, axis=(1, 2))] if layer.use_bias else []
            return MaterializedGrads([kernels, *bias], xp=xp)
        patches, order = source.extract_patches(inputs, layer)
        positions = int(patches.shape[1]) * int(patches.shape[2])
        patches = xp.reshape(patches, (-1, positions, int(patches.shape[-1])))
        tap_grad = xp.reshape(tap_grad, (-1, positions, layer.filters))
        return LinearGrads(
            patches, tap_grad, layer.kernel.shape, layer.use_bias, row_order=order, xp=xp
        )


@register_clipping_rule(keras.layers.Embedding)
class EmbeddingRule(ClippingRule):
    """Gram-matrix norms and a segment-sum for `Embedding`."""

    technique = "ghost norm"

    def refusal(self, layer):
        if layer.lora_enabled:
            return "LoRA is enabled"
        if layer.quantization_mode:
            return f"it is quantized ({layer.quantization_mode})"
        return None

    def variables(self, layer):
        return [layer.embeddings]

    def forward(self, layer, inputs):
        outputs = layer(inputs)  # The layer's own call: a lookup, and the mask.
        return outputs, outputs

    def per_example(self, layer, inputs, tap_grad, source):
        return EmbeddingGrads(inputs, tap_grad, layer.input_dim, xp=source.array_ops)


class PerExampleFallbackRule(ClippingRule):
    """Any layer: per-example gradients of the layer alone, vectorized by the backend."""

    technique = "per-example (vectorized)"

    def forward(self, layer, inputs):
        outputs = layer(inputs, training=True)
        return outputs, outputs

    def per_example(self, layer, inputs, tap_grad, source):
        grads = source.per_example_gradients(layer, inputs, tap_grad)
        return MaterializedGrads(grads, xp=source.array_ops)


FALLBACK = PerExampleFallbackRule()


def rule_for(layer: keras.layers.Layer, fast: bool = True) -> tuple[ClippingRule, str | None]:
    """The rule for `layer` and, when it is the fallback, why.

    Args:
        layer: A layer with trainable variables.
        fast: False sends every layer to the per-example fallback (for checks).

    Returns:
        `(rule, reason)`; `reason` is None when a fast rule serves the layer.
    """
    if not fast:
        return FALLBACK, "fast clipping is off"
    if type(layer) not in RULES:
        return FALLBACK, f"no fast rule for {type(layer).__name__}"
    rule = RULES.get(type(layer))
    refusal = rule.refusal(layer)
    if refusal is not None:
        return FALLBACK, refusal
    return rule, None
