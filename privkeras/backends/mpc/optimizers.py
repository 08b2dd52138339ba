"""SGD (with momentum and Nesterov momentum) on secret-shared parameters.

The update is Keras's `keras.optimizers.SGD` rule, with public
hyper-parameters and shared parameters, gradients and momentum buffers:

    m = momentum * m - lr * g
    w = w + m                       (or w + momentum * m - lr * g, Nesterov)
    w = w - lr * g                  (momentum == 0)

The learning rate may be a `keras.optimizers.schedules.LearningRateSchedule`:
it is evaluated in plaintext at each step (the step count is public).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import keras

from privkeras.errors import CapabilityError

if TYPE_CHECKING:
    from privkeras.backends.mpc.tensor import SharedTensor

__all__ = ["SecureSGD", "get_optimizer"]


def _is_neutral(option: str, value: Any) -> bool:
    """Whether a Keras optimizer option is at its "off" value."""
    if option == "use_ema":
        return value is False
    if option == "gradient_accumulation_steps":
        return value in (None, 1)
    if option == "weight_decay":
        return not value
    return value is None


#: Keras optimizer options the secure SGD does not implement.
_UNSUPPORTED_OPTIONS = (
    "weight_decay",
    "clipnorm",
    "global_clipnorm",
    "clipvalue",
    "use_ema",
    "gradient_accumulation_steps",
    "loss_scale_factor",
)


@dataclasses.dataclass(frozen=True)
class SecureSGD:
    """Keras SGD on shares.

    Args:
        learning_rate: A float or a `LearningRateSchedule` (called on the step).
        momentum: In [0, 1].
        nesterov: Use Nesterov momentum.
    """

    learning_rate: Any = 0.01
    momentum: float = 0.0
    nesterov: bool = False

    def learning_rate_at(self, step: int) -> float:
        """The (public) learning rate of step `step` (0-based)."""
        rate = self.learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            rate = keras.ops.convert_to_numpy(rate(step))
        return float(rate)

    def apply(
        self,
        params: dict[Any, SharedTensor],
        grads: dict[Any, SharedTensor],
        momenta: dict[Any, SharedTensor],
        step: int,
        grad_scale: float,
    ) -> tuple[dict[Any, SharedTensor], dict[Any, SharedTensor]]:
        """One update; returns `(new_params, new_momenta)`.

        Args:
            params: Shared parameters by key.
            grads: Unscaled shared gradients by key (the true gradient is
                `grad_scale * grads[key]`); keys missing here are not updated.
            momenta: Shared momentum buffers by key (empty before the first step).
            step: The 0-based step number (for schedules).
            grad_scale: Public factor of the gradients (see `SecureLoss.scale`).
        """
        rate = self.learning_rate_at(step) * grad_scale
        new_params, new_momenta = dict(params), dict(momenta)
        for key, grad in grads.items():
            step_size = grad * rate
            if self.momentum == 0:
                new_params[key] = params[key] - step_size
                continue
            previous = momenta.get(key)
            m = -step_size if previous is None else previous * self.momentum - step_size
            new_momenta[key] = m
            if self.nesterov:
                new_params[key] = params[key] + m * self.momentum - step_size
            else:
                new_params[key] = params[key] + m
        return new_params, new_momenta


def get_optimizer(optimizer: Any, engine: str) -> SecureSGD:
    """The secure version of a compiled Keras optimizer.

    Raises:
        CapabilityError: For an optimizer other than `keras.optimizers.SGD`,
            or SGD with an option the secure version does not implement.
    """
    # Keras's own SGD (some Keras backends use a backend subclass of it); a user
    # subclass may change the update rule, so it is refused.
    keras_sgd = isinstance(optimizer, keras.optimizers.SGD) and type(
        optimizer
    ).__module__.startswith("keras.")
    if not keras_sgd:
        received = type(optimizer).__name__ if optimizer is not None else None
        raise CapabilityError(
            f"Engine {engine!r} trains with keras.optimizers.SGD (momentum and Nesterov "
            f"included) only. Received: optimizer={received}"
        )
    config = optimizer.get_config()
    changed = {
        option: config[option]
        for option in _UNSUPPORTED_OPTIONS
        if option in config and not _is_neutral(option, config[option])
    }
    if changed:
        raise CapabilityError(
            f"Engine {engine!r} trains with plain SGD; these options are not implemented "
            f"under MPC. Received: {changed}"
        )
    rate = config["learning_rate"]
    if isinstance(rate, dict):
        rate = keras.optimizers.schedules.deserialize(rate)
    return SecureSGD(rate, float(config["momentum"]), bool(config["nesterov"]))
