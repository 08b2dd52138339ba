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

The noise takes one of two routes (`noise.py`), both keyed from `os.urandom`
at every `fit` (`start_run`): `"host"` sends the flat clipped mean to the
host, which returns the exactly rounded Gaussian mechanism (CPU models, and
every model with `secure_noise=True`); `"device"` brings random words from
the host's AES-CTR stream into the step and turns them into float64
Gaussians there (accelerator and XLA models, which cannot call the host
without a round trip).

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
from typing import Any

import keras
import numpy as np
from keras import ops

from privkeras.backends.dpsgd import clipping, noise, validation
from privkeras.backends.dpsgd.per_example_loss import PerExampleLoss
from privkeras.core.random import SecureStream
from privkeras.errors import EngineNotAvailableError, PrivacyPolicyError, UnsupportedLayerError

__all__ = ["NOISE_ROUTES", "DPTrainer", "LayerPlan", "StepConfig", "Tap", "make_trainer"]

#: Where the noise is made: "host" (exactly rounded, on the CPU) or "device" (in the step).
NOISE_ROUTES = ("host", "device")

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
        secure_noise: Take the host route on every device (refused under XLA).
        fast_clipping: Use the registered fast rules (False: per-example fallback for all).
        noise_route: Force a route of `NOISE_ROUTES` (None: chosen by device and compile mode).
    """

    l2_norm_clip: float
    noise_multiplier: float
    divisor: float
    secure_noise: bool = False
    fast_clipping: bool = True
    noise_route: str | None = None


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
        self._shapes = [tuple(v.shape) for v in self._variables]
        self._sizes = [int(np.prod(shape)) for shape in self._shapes]
        self._noise_size = sum(self._sizes)
        # The noise of the mean: sigma C on the sum, divided as the sum is.
        self._noise_std = config.noise_multiplier * config.l2_norm_clip / config.divisor
        self.noise_route = self._choose_noise_route()
        self._noise = None  # ExactGaussianNoise or NoiseWords, re-keyed by start_run
        self._host = None
        self._step_words = None  # the device route's words of the step being traced (TF)
        validation.keras_internal(model, "_loss_tracker", "the loss shown in the logs")

    def _choose_noise_route(self) -> str | None:
        if self._noise_std == 0:
            return None
        route = self.config.noise_route
        if route is None and self.config.secure_noise:
            route = "host"
        elif route is None:
            route = "host" if self.can_call_host() and not self.on_accelerator() else "device"
        if route not in NOISE_ROUTES:
            raise PrivacyPolicyError(
                f"Expected noise_route in {list(NOISE_ROUTES)}. Received: noise_route={route!r}"
            )
        if route == "host" and not self.can_call_host():
            raise PrivacyPolicyError(
                "DPSGD(secure_noise=True) adds the exactly rounded Gaussian mechanism on the "
                "host, which an XLA-compiled step cannot call. Expected compile(jit_compile="
                "False) with secure_noise=True. Received: jit_compile=True"
            )
        return route

    def start_run(self) -> None:
        """Keys this run's noise afresh from `os.urandom` (called at every `fit`)."""
        self.end_run()
        if self.noise_route is None:
            return
        stream = SecureStream()  # keyed from os.urandom
        if self.noise_route == "host":
            if isinstance(self._noise, noise.ExactGaussianNoise):
                self._noise.rekey(stream)  # the last run's buffers, a new key
            else:
                self._noise = noise.ExactGaussianNoise(self._noise_size, self._noise_std, stream)
            self._host = noise.HostNoise(self._noise.draw, ahead=self.host_draws_ahead())
        else:
            self._noise = noise.NoiseWords(self._noise_size, stream, self.device_word_buffers)
            self._host = noise.HostNoise(self._noise.take, ahead=self.draws_words_ahead())

    def end_run(self) -> None:
        """Releases the background noise threads, if any (after `fit`)."""
        if self._host is not None:
            self._host.close()
            self._host = None

    close = end_run

    @property
    def failure_per_step(self) -> float:
        """Per step, the probability that the sampler left the range where it is exact."""
        return 0.0 if self._noise is None else self._noise.failure_per_step

    def describe_noise(self) -> str:
        """How this run draws its noise, for `privacy_report()`."""
        if self.noise_route is None:
            return "none (noise_multiplier=0)"
        if self.noise_route == "host":
            return (
                "host: AES-256-CTR keyed from os.urandom; the exactly rounded Gaussian "
                "mechanism (float32 nearest to x + N(0, std^2))"
            )
        return (
            "device: AES-256-CTR words keyed from os.urandom, float64 Box-Muller in the step "
            "(104-bit radius uniform: tails to 12 sigma), rounded to float32"
        )

    def take_host(self) -> Any:
        """The current run's next host draw (stable across runs: traced steps call this):
        the device route's words, or the host route's `HostDraw`."""
        return self._host.take()

    def noised_by_host(self, x: np.ndarray) -> np.ndarray:
        """The host route: `RN32(x + std N)` for the flat clipped mean x, with this
        step's draw (drawn ahead)."""
        return self._noise.round_exactly(self.take_host(), x)

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
        """`RN32(means + N(0, (sigma C / divisor)^2))` per coordinate (nothing without noise)."""
        if self.noise_route is None:
            return means
        if self.noise_route == "host":
            return self.noised_on_host(means)
        normal = noise.gaussian_from_words(self.device_words(), self._noise_size, self.word_ops)
        flat = self.array_ops.cast(self.flatten(means), "float64")
        std = self._noise_std * (1.0 + 2.0**-50)  # as the host route: never below the stated std
        noised = self.array_ops.cast(self.array_ops.add(flat, normal * std), "float32")
        return self.unflatten(noised)

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

    # -- flat views of the trainable variables ------------------------------------------------
    def flatten(self, tensors: list[Any]) -> Any:
        """One flat tensor of `tensors` (aligned with the trainable variables)."""
        return ops.concatenate([ops.reshape(t, (-1,)) for t in tensors], axis=0)

    def unflatten(self, flat: Any) -> list[Any]:
        """The inverse of `flatten`."""
        out, start = [], 0
        for shape, size in zip(self._shapes, self._sizes):
            out.append(self.array_ops.reshape(flat[start : start + size], shape))
            start += size
        return out

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
        self.model._loss_tracker.update_state(loss, sample_weight=count)
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
    def on_accelerator(self) -> bool:
        """Whether the step runs on an accelerator (the device route is then the default)."""

    @abc.abstractmethod
    def can_call_host(self) -> bool:
        """Whether the step can call the host in the step (False under XLA)."""

    def draws_words_ahead(self) -> bool:
        """Whether the device route's words are drawn one step ahead in a thread."""
        return self.on_accelerator()

    @abc.abstractmethod
    def noised_on_host(self, means: list[Any]) -> list[Any]:
        """`means` noised by the host route inside the step: `noised_by_host` on the flat
        mean, as numpy."""

    @abc.abstractmethod
    def device_words(self) -> Any:
        """This step's `NoiseWords` words as a tensor on the step's device."""

    word_ops: Any = None  # the backend's namespace for `noise.gaussian_from_words`
    #: `NoiseWords` buffers: the one in use, the one ready, the one being drawn.
    device_word_buffers = 3

    def host_draws_ahead(self) -> bool:
        """Whether the host route draws the next step's `std N` (which does not depend on
        the gradients) in a background thread while the step computes: when the step runs
        on an accelerator and the host is idle. On CPU the thread competes with the step
        and with the in-step rounding for the cores and the GIL: measured, no faster."""
        return self.on_accelerator()

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
