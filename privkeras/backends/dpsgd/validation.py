"""Checks that a model and a fit request suit DP-SGD, before any step is taken."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import keras

from privkeras.errors import (
    EngineNotAvailableError,
    PrivacyPolicyError,
    UnsupportedLayerError,
    format_received,
)

__all__ = [
    "check_batch_size",
    "check_delta",
    "check_layers",
    "check_model_options",
    "keras_internal",
]

#: The Keras release whose private attributes DP-SGD was written and tested against.
TESTED_KERAS = "3.15"


def keras_internal(owner: object, name: str, purpose: str):
    """`owner.<name>`, a private Keras attribute DP-SGD relies on, or a loud refusal.

    A refusal or a metric that depends on a private attribute must not switch
    itself off when a Keras release renames it: DP-SGD then refuses to run.

    Raises:
        EngineNotAvailableError: Naming the attribute, what it is for, and the
            installed and tested Keras versions.
    """
    try:
        return getattr(owner, name)
    except AttributeError:
        raise EngineNotAvailableError(
            f"DP-SGD reads Keras's private attribute {type(owner).__name__}.{name} "
            f"({purpose}), which Keras {keras.version()} does not have. Expected Keras "
            f"{TESTED_KERAS}, with which privkeras was tested. Received: keras={keras.version()}"
        ) from None


#: Layer types that mix examples of a batch in training mode, with what to use instead.
BATCH_COUPLING_LAYERS: dict[type, str] = {
    keras.layers.BatchNormalization: (
        "it normalizes each example with statistics of the whole batch, so one example's "
        "gradient depends on the others and clipping it bounds nothing. Use "
        "keras.layers.GroupNormalization or keras.layers.LayerNormalization instead"
    ),
}


def _all_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        yield from layer._flatten_layers(include_self=True, recursive=True)


def check_layers(model: keras.Model) -> None:
    """Refuses layers that break per-example independence or add data-dependent losses.

    Raises:
        UnsupportedLayerError: Naming the layer, the reason and what to use instead.
    """
    for layer in _all_layers(model):
        for layer_type, reason in BATCH_COUPLING_LAYERS.items():
            if isinstance(layer, layer_type) and layer.trainable:
                raise UnsupportedLayerError(
                    f"DP-SGD cannot train layer {layer.name!r} ({type(layer).__name__}): "
                    f"{reason}. (A frozen one, trainable=False, runs in inference mode and "
                    "is accepted.)"
                )
        if layer.activity_regularizer is not None:
            raise UnsupportedLayerError(
                f"DP-SGD cannot train layer {layer.name!r} with an activity_regularizer: its "
                "loss depends on the batch and would bypass per-example clipping. Expected "
                f"activity_regularizer=None. Received: {layer.activity_regularizer!r}"
            )


def check_model_options(model: keras.Model) -> None:
    """Refuses compile options the DP-SGD step does not honour.

    Raises:
        PrivacyPolicyError: For no optimizer, `steps_per_execution` > 1,
            `loss_weights`, or a mixed-precision dtype policy.
    """
    if getattr(model, "optimizer", None) is None:
        raise PrivacyPolicyError("DP-SGD expected the model to be compiled with an optimizer.")
    # Keras keeps compile's arguments there (get_compile_config would also serialize,
    # and warn about, a lambda loss).
    compile_config = keras_internal(model, "_compile_config", "the arguments of compile")
    compiled = keras_internal(compile_config, "config", "the arguments of compile") or {}
    loss_weights = compiled.get("loss_weights")
    if loss_weights is not None:
        raise PrivacyPolicyError(
            "DP-SGD clips the gradient of the one compiled loss; it expected "
            f"loss_weights=None. Received: loss_weights={loss_weights!r}"
        )
    policy = getattr(model.dtype_policy, "name", str(model.dtype_policy))
    if policy.startswith("mixed"):
        raise PrivacyPolicyError(
            "DP-SGD computes per-example norms in the compute dtype, where float16 overflows; "
            f"it expected a float32 dtype policy. Received: dtype_policy={policy!r}"
        )
    steps = model.steps_per_execution
    if steps != 1:
        raise PrivacyPolicyError(
            "DP-SGD accounts for every step between Keras callbacks, so it expected "
            f"compile(steps_per_execution=1). Received: steps_per_execution={steps}"
        )


def check_batch_size(batch_size: object, dataset_size: int) -> int:
    """The batch size, an integer in [1, dataset_size].

    Raises:
        PrivacyPolicyError: Otherwise.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PrivacyPolicyError(
            "Expected batch_size to be a positive integer. "
            + format_received(batch_size=batch_size)
        )
    if batch_size > dataset_size:
        raise PrivacyPolicyError(
            f"Expected batch_size <= the number of training examples ({dataset_size}): the "
            "sampling rate batch_size / n must be at most 1. "
            + format_received(batch_size=batch_size, examples=dataset_size)
        )
    return batch_size


def check_delta(delta: float, dataset_size: int) -> None:
    """Warns when delta exceeds 1/n: a mechanism may then leak a whole example."""
    if delta > 1.0 / dataset_size:
        warnings.warn(
            f"DPSGD(delta={delta:g}) is larger than 1/n = {1.0 / dataset_size:.3g} for "
            f"n={dataset_size} training examples: a mechanism that publishes one random "
            "example outright satisfies such a delta. Use delta well below 1/n.",
            UserWarning,
            stacklevel=4,
        )
