"""Keras layers as HE steps: a registry of converters, one per supported layer class.

A converter turns a built Keras layer into `steps.AffineStep` and
`steps.PolynomialStep` objects over flattened features. Registration is per
exact class, so that a subclass with its own `call` is never mistaken for its
parent:

```python
@register_he_layer(keras.layers.Dense)
def dense(layer, input_shape): ...
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from privkeras.backends.he.steps import Step
from privkeras.errors import UnsupportedLayerError

__all__ = ["convert_layer", "register_he_layer", "supported_layers", "unsupported"]

Converter = Callable[[Any, tuple[int, ...]], list[Step]]

_CONVERTERS: dict[type, Converter] = {}

SUGGESTION = (
    "CKKS evaluates only additions and multiplications: use "
    "privkeras.layers.PolynomialActivation in place of non-polynomial activations, e.g. "
    "PolynomialActivation('square') or PolynomialActivation('relu', input_range=(-4, 4))"
)


def register_he_layer(*layer_classes: type) -> Callable[[Converter], Converter]:
    """Registers a converter for Keras layer classes (exact classes, not subclasses)."""

    def decorate(converter: Converter) -> Converter:
        for cls in layer_classes:
            if cls in _CONVERTERS and _CONVERTERS[cls] is not converter:
                raise ValueError(f"An HE converter for {cls.__name__} is already registered.")
            _CONVERTERS[cls] = converter
        return converter

    return decorate


def supported_layers() -> list[str]:
    """Names of the Keras layer classes the HE engine evaluates."""
    return sorted(cls.__name__ for cls in _CONVERTERS)


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
    converter = _CONVERTERS.get(type(layer))
    if converter is None:
        raise unsupported(layer, f"there is no encrypted version of {type(layer).__name__}")
    return converter(layer, input_shape)


# Importing the families registers their converters.
from privkeras.backends.he.layers import activations, linear  # noqa: E402, F401
