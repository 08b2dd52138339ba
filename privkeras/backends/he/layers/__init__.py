"""Keras layers as HE steps: a registry of converters, one per supported layer class.

A converter turns a built Keras layer into `steps.AffineStep` and
`steps.PolynomialStep` objects over flattened features. Registration is per
exact class, so that a subclass with its own `call` is never mistaken for its
parent:

```python
@register_he_layer(keras.layers.Dense)
def dense(layer, input_shape): ...
```

Converters live in `CONVERTERS`, a `privkeras.core.registry.Registry`: a class
registered twice to different converters is refused unless `replace=True`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from privkeras.backends.he.steps import Step
from privkeras.core.registry import Registry
from privkeras.errors import UnsupportedLayerError

__all__ = [
    "CONVERTERS",
    "convert_layer",
    "register_he_layer",
    "supported_layers",
    "unsupported",
]

Converter = Callable[[Any, tuple[int, ...]], list[Step]]

#: HE converters by exact Keras layer class.
CONVERTERS: Registry[type, Converter] = Registry(
    "HE layer converter", unknown_error=UnsupportedLayerError
)

SUGGESTION = (
    "CKKS evaluates only additions and multiplications: use "
    "privkeras.layers.PolynomialActivation in place of non-polynomial activations, e.g. "
    "PolynomialActivation('square') or PolynomialActivation('relu', input_range=(-4, 4))"
)


def register_he_layer(
    *layer_classes: type, replace: bool = False
) -> Callable[[Converter], Converter]:
    """Registers a converter for Keras layer classes (exact classes, not subclasses).

    Args:
        *layer_classes: Keras layer classes the converter handles.
        replace: Allow replacing a converter registered for one of them.

    Raises:
        RegistrationError: For a class already registered to another
            converter, without `replace`.
    """
    return CONVERTERS.decorator(*layer_classes, replace=replace)


def supported_layers() -> list[str]:
    """Names of the Keras layer classes the HE engine evaluates, sorted."""
    return CONVERTERS.names()


def unsupported(layer: Any, reason: str) -> UnsupportedLayerError:
    """The error for a layer (or a layer setting) the HE engine cannot evaluate."""
    return UnsupportedLayerError(
        f"Layer {layer.name!r} ({type(layer).__name__}) is not supported by the 'he' engine: "
        f"{reason}. {SUGGESTION}. Supported layers: {supported_layers()}."
    )


def convert_layer(layer: Any, input_shape: tuple[int, ...]) -> list[Step]:
    """The HE steps of one built Keras layer.

    Raises:
        UnsupportedLayerError: Naming the layer, the engine and what to use instead.
    """
    if type(layer) not in CONVERTERS:
        raise unsupported(layer, f"there is no encrypted version of {type(layer).__name__}")
    return CONVERTERS.get(type(layer))(layer, input_shape)


# Importing the families registers their converters.
from privkeras.backends.he.layers import activations, linear  # noqa: E402, F401
