"""The DP-SGD train step, backend-neutral; autodiff comes from the backend files.

One step, on a batch of any size (Poisson batches vary, and may be empty):

1. Forward pass layer by layer. Layers with a fast clipping rule expose the
   tensor the rule needs (Dense and Conv2D: the pre-activation `z`);
   other trainable layers expose their output.
2. Per-example losses (`PerExampleLoss`), summed: ONE backward pass gives the
   gradient of the sum with respect to every exposed tensor. Weight
   gradients are never formed for the batch as a whole.
3. Each layer's rule turns (layer input, exposed gradient) into per-example
   squared norms; their sum over layers is each example's squared global
   norm, which gives the clip factors `c_i = min(1, C / norm_i)`.
4. Each rule forms `sum_i c_i grad_i` directly; Gaussian noise of standard
   deviation `noise_multiplier * C` is added per coordinate; the result is
   divided by the expected batch size (1 for a loss with `reduction="sum"`).
5. Weight-regularization gradients (data-independent) are added, the
   optimizer applies the update, and Keras's metrics are updated.

`tensorflow.py` and `torch.py` subclass `DPTrainer` with `train_step`
(the backward pass) and the two per-example primitives of
`clipping.PerExampleGradientSource`. Keras compiles the step as it compiles
its own: once, in a `tf.function` with a dynamic batch dimension, under
TensorFlow; eagerly under torch.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

from privkeras.backends.dpsgd import clipping
from privkeras.backends.dpsgd.noise import HostNoise
from privkeras.backends.dpsgd.per_example_loss import PerExampleLoss
from privkeras.errors import EngineNotAvailableError, UnsupportedLayerError

__all__ = ["DPTrainer", "LayerPlan", "StepConfig", "Tap", "make_trainer"]

#: Keras backend -> "module:class" of its trainer (imported on demand).
TRAINERS: dict[str, str] = {
    "tensorflow": "privkeras.backends.dpsgd.tensorflow:TensorFlowDPTrainer",
    "torch": "privkeras.backends.dpsgd.torch:TorchDPTrainer",
}


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What one DP-SGD step needs to know.

    Args:
        l2_norm_clip: C.
        noise_multiplier: sigma; noise std is `sigma * C` per coordinate.
        divisor: The noisy clipped sum is divided by this (expected batch size).
        secure_noise: Draw the noise from a `SecureStream` (host, numpy).
        fast_clipping: Use the registered fast rules (False: per-example fallback for all).
    """

    l2_norm_clip: float
    noise_multiplier: float
    divisor: float
    secure_noise: bool = False
    fast_clipping: bool = True


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """A top-level layer of the model and the rule that clips it (None: no weights)."""

    layer: keras.layers.Layer
    rule: clipping.ClippingRule | None
    fallback_reason: str | None = None


@dataclasses.dataclass
class Tap:
    """What the forward pass keeps for one trainable layer."""

    plan: LayerPlan
    inputs: Any
    tensor: Any


class DPTrainer(clipping.PerExampleGradientSource, abc.ABC):
    """The DP-SGD step for one model, one fit.

    Args:
        model: The (built) Keras model.
        config: The step's constants.
        loss: Per-example losses of the compiled loss.

    Raises:
        UnsupportedLayerError: When a trainable variable belongs to no layer
            that a rule can clip.
    """

    def __init__(self, model: keras.Model, config: StepConfig, loss: PerExampleLoss):
        self.model = model
        self.config = config
        self.loss = loss
        self.plan = [self._plan_layer(layer) for layer in model.layers]
        self._check_coverage()
        self._variables = list(model.trainable_variables)
        self._noise_size = sum(int(np.prod(v.shape)) for v in self._variables)
        # The noise of the mean: sigma C on the sum, divided as the sum is.
        std = config.noise_multiplier * config.l2_norm_clip / config.divisor
        self._noise_std = std
        self._host_noise = None
        self._noise_seed = None
        if std > 0 and (config.secure_noise or self.prefers_host_noise()):
            # One step ahead in a thread only when the step runs elsewhere (secure noise
            # for a GPU model): on CPU the thread competes with the step's own threads
            # and cost more than the 0.6 ms draw it hid (torch MLP: 1.32x -> 1.25x).
            self._host_noise = HostNoise(self._noise_size, std, ahead=not self.prefers_host_noise())
        elif std > 0:
            warnings.warn(
                "DP-SGD draws this model's noise in the step from the Keras backend's "
                "generator (an accelerator or XLA model), which is fast but NOT "
                "cryptographically secure: whoever learns its state can subtract the noise. "
                "Pass DPSGD(secure_noise=True) to draw it from the host's AES-CTR stream.",
                UserWarning,
                stacklevel=2,
            )
            self._noise_seed = keras.random.SeedGenerator()

    def close(self) -> None:
        """Releases the background noise thread (after fit)."""
        if self._host_noise is not None:
            self._host_noise.close()

    # -- planning ---------------------------------------------------------------------
    def _plan_layer(self, layer: keras.layers.Layer) -> LayerPlan:
        if not layer.trainable_variables:
            return LayerPlan(layer, None)
        rule, reason = clipping.rule_for(layer, fast=self.config.fast_clipping)
        return LayerPlan(layer, rule, reason)

    def _check_coverage(self) -> None:
        covered = {
            id(v) for p in self.plan if p.rule is not None for v in p.rule.variables(p.layer)
        }
        missing = [v.path for v in self.model.trainable_variables if id(v) not in covered]
        if missing:
            raise UnsupportedLayerError(
                "DP-SGD clips per layer, so every trainable variable must belong to a layer "
                f"of the model. Expected none outside. Received variables: {missing}"
            )

    def describe(self) -> dict[str, str]:
        """Layer name -> how its per-example gradients are handled."""
        out = {}
        for p in self.plan:
            if p.rule is not None:
                out[p.layer.name] = p.rule.technique + (
                    f" ({p.fallback_reason})" if p.fallback_reason else ""
                )
        return out

    # -- the step, in backend-neutral pieces --------------------------------------------
    def forward(self, x: Any) -> tuple[list[Tap], Any]:
        """Training-mode forward pass; returns the taps and the predictions."""
        taps, hidden = [], x
        for p in self.plan:
            if p.rule is None:
                hidden = p.layer(hidden, training=True)
                continue
            tensor, outputs = p.rule.forward(p.layer, hidden)
            taps.append(Tap(p, hidden, tensor))
            hidden = outputs
        return taps, hidden

    def private_gradients(self, taps: list[Tap], tap_grads: list[Any]) -> list[Any]:
        """Clipped, summed, noised, scaled gradients aligned with the trainable variables."""
        return self.add_noise(self.clipped_sums(taps, tap_grads))

    def clipped_sums(self, taps: list[Tap], tap_grads: list[Any]) -> list[Any]:
        """`sum_i c_i grad_i / divisor` per trainable variable, `c_i = min(1, C / |grad_i|)`.

        The division is folded into the per-example factors (B numbers) rather
        than applied to the sums (one pass over every weight).
        """
        views = []
        for tap, grad in zip(taps, tap_grads):
            if grad is None:
                grad = ops.zeros_like(tap.tensor)
            views.append((tap, self._per_example(tap, grad)))
        squared = None
        for _, view in views:
            part = view.squared_norms()
            squared = part if squared is None else squared + part
        factors = clipping.clip_factors(squared, self.config.l2_norm_clip, self.array_ops)
        factors = factors * (1.0 / self.config.divisor)
        by_variable = {}
        for tap, view in views:
            variables = tap.plan.rule.variables(tap.plan.layer)
            for variable, grad in zip(variables, view.weighted_sum(factors)):
                by_variable[id(variable)] = grad
        return [by_variable[id(v)] for v in self._variables]

    def add_noise(self, means: list[Any]) -> list[Any]:
        """`means + N(0, (sigma C / divisor)^2)` per coordinate (nothing without noise)."""
        if self._noise_std == 0:
            return means
        return [self.array_ops.add(mean, noise) for mean, noise in zip(means, self.noise())]

    def _per_example(self, tap: Tap, grad: Any) -> clipping.PerExampleGrads:
        layer = tap.plan.layer
        try:
            return tap.plan.rule.per_example(layer, tap.inputs, grad, self)
        except UnsupportedLayerError:
            raise
        except Exception as error:  # The backend could not vectorize this layer.
            raise UnsupportedLayerError(
                f"DP-SGD could not compute per-example gradients of layer {layer.name!r} "
                f"({type(layer).__name__}) by {tap.plan.rule.technique}: "
                f"{type(error).__name__}: {error}"
            ) from error

    def noise(self) -> list[Any]:
        """N(0, (sigma C / divisor)^2) per coordinate of every trainable variable.

        From the host sampler (`HostNoise`) with `secure_noise` or when the
        backend prefers it; otherwise from the backend's generator.
        """
        std = self._noise_std
        if self._host_noise is not None:
            flat = self.host_noise(self._host_noise)
        else:
            flat = self.step_noise(self._noise_size, std)
        if flat is None:
            return [
                keras.random.normal(v.shape, stddev=std, dtype=v.dtype, seed=self._noise_seed)
                for v in self._variables
            ]
        noises, start = [], 0
        for v in self._variables:
            size = int(np.prod(v.shape))
            noises.append(self.array_ops.reshape(flat[start : start + size], tuple(v.shape)))
            start += size
        return noises

    def step_noise(self, size: int, std: float) -> Any:
        """A flat tensor of `size` N(0, std^2) drawn in the step, or None for Keras's
        generator per variable."""
        return None

    def regularization(self) -> Any:
        """Sum of the weight regularizers (data-independent), or None."""
        terms = [v.regularizer(v) for v in self._variables if getattr(v, "regularizer", None)]
        return ops.sum(ops.stack(terms)) if terms else None

    def finish(self, x, y, y_pred, sample_weight, losses, grads, regularization, reg_grads):
        """Applies the update and updates Keras's loss tracker and metrics."""
        if reg_grads is not None:
            grads = [g if r is None else g + r for g, r in zip(grads, reg_grads)]
        self.apply(grads)
        real = ops.greater_equal(sample_weight, 0.0)
        count = ops.sum(ops.cast(real, losses.dtype))
        total = ops.sum(losses)
        loss = total if self.loss.sums else total / ops.maximum(count, 1.0)
        if regularization is not None:
            loss = loss + regularization
        tracker = getattr(self.model, "_loss_tracker", None)
        if tracker is not None:
            tracker.update_state(loss, sample_weight=count)
        x, y, y_pred, sample_weight = self.real_rows(real, x, y, y_pred, sample_weight)
        return self.model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def real_rows(self, real: Any, *tensors: Any) -> tuple[Any, ...]:
        """The rows of `tensors` that are real examples (placeholders are dropped)."""
        return tensors

    def apply(self, grads: list[Any]) -> None:
        self.model.optimizer.apply(grads, self._variables)

    # -- backend hooks ---------------------------------------------------------------------
    @abc.abstractmethod
    def train_step(self, data: Any) -> dict[str, Any]:
        """One DP-SGD step on `data = (x, y, sample_weight)`; returns the logs."""

    @abc.abstractmethod
    def prefers_host_noise(self) -> bool:
        """Whether the host sampler beats the backend's generator (CPU models)."""

    @abc.abstractmethod
    def host_noise(self, source: HostNoise) -> Any:
        """A flat tensor holding `source.take()`, taken inside the step."""

    @abc.abstractmethod
    def batches(self, source: Any) -> Any:
        """What `keras_fit` iterates, from a `sampling.SampledBatches`."""


def make_trainer(
    keras_backend: str, model: keras.Model, config: StepConfig, loss: PerExampleLoss
) -> DPTrainer:
    """The trainer of `keras_backend` (imported on demand).

    Raises:
        EngineNotAvailableError: For a Keras backend without a DP-SGD trainer.
    """
    if keras_backend not in TRAINERS:
        raise EngineNotAvailableError(
            f"DP-SGD has trainers for Keras backends {sorted(TRAINERS)}. "
            f"Received: keras_backend={keras_backend!r}"
        )
    module, name = TRAINERS[keras_backend].split(":")
    return getattr(importlib.import_module(module), name)(model, config, loss)
