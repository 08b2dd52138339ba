"""Which Keras layers run under the MPC engines, and how each is lowered.

A lowering function turns one Keras layer into zero or more `SecureLayer`s.
It is registered for exact Keras layer classes: a user subclass of
`keras.layers.Dense` may override `call`, so it is refused rather than run
with the wrong semantics.

Example:

```python
import keras
from privkeras.backends.mpc.layers import registry

@registry.register_secure_layer(keras.layers.Identity)
def lower_identity(layer, context):
    return []
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from privkeras.backends.mpc.layers.base import LoweringContext, SecureLayer
from privkeras.core.registry import Registry
from privkeras.errors import UnsupportedLayerError

__all__ = [
    "LOWERINGS",
    "Lowering",
    "lower_layer",
    "refuse_training_options",
    "register_secure_layer",
    "supported_layer_types",
    "unsupported",
]

#: Layer options that change what training computes, which the secure trainer does not implement.
_TRAINING_OPTIONS = (
    "kernel_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "bias_constraint",
)

Lowering = Callable[[Any, LoweringContext], list[SecureLayer]]

#: Lowering functions by exact Keras layer class.
LOWERINGS: Registry[type, Lowering] = Registry(
    "secure layer lowering", unknown_error=UnsupportedLayerError
)


def register_secure_layer(*keras_types: type, replace: bool = False):
    """Registers a lowering function for one or more exact Keras layer classes.

    Args:
        *keras_types: Keras layer classes the function lowers.
        replace: Allow replacing an existing registration.

    Raises:
        RegistrationError: For a class already registered to another function,
            without `replace`.
    """
    return LOWERINGS.decorator(*keras_types, replace=replace)


def supported_layer_types() -> list[str]:
    """Names of the Keras layer classes the MPC engines can lower, sorted."""
    return LOWERINGS.names()


def unsupported(layer: Any, context: LoweringContext, reason: str) -> UnsupportedLayerError:
    """An `UnsupportedLayerError` naming the layer, its class and the engine."""
    return UnsupportedLayerError(
        f"Layer {layer.name!r} ({type(layer).__name__}) cannot run under engine "
        f"{context.engine!r}: {reason}"
    )


def refuse_training_options(layer: Any, context: LoweringContext) -> None:
    """Refuses regularizers and constraints when training (they would be silently ignored).

    Raises:
        UnsupportedLayerError: Naming the layer and the options set.
    """
    if not context.training:
        return
    used = [name for name in _TRAINING_OPTIONS if getattr(layer, name, None) is not None]
    if used:
        raise unsupported(
            layer, context, f"training with {', '.join(used)} is not implemented under MPC"
        )


def lower_layer(layer: Any, context: LoweringContext) -> list[SecureLayer]:
    """Lowers one Keras layer.

    Raises:
        UnsupportedLayerError: For a layer class with no registered lowering,
            or a configuration its lowering refuses. The message names the
            layer, the engine and the supported layer classes.
    """
    if type(layer) not in LOWERINGS:
        raise unsupported(
            layer,
            context,
            f"no secure version of {type(layer).__name__} is registered. "
            f"Supported layers: {supported_layer_types()}.",
        )
    return LOWERINGS.get(type(layer))(layer, context)
