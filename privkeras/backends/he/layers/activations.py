"""PolynomialActivation as a slot-wise polynomial; `linear` activations as nothing."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from privkeras.backends.he.layers import register_he_layer, unsupported
from privkeras.backends.he.steps import PolynomialStep
from privkeras.layers.polynomial import PolynomialActivation


@register_he_layer(PolynomialActivation)
def polynomial_activation(layer: Any, input_shape: tuple[int, ...]) -> list[PolynomialStep]:
    return [
        PolynomialStep(
            np.asarray(layer.coefficients, np.float64),
            tuple(input_shape),
            layer.name,
            layer.input_range,
        )
    ]


@register_he_layer(keras.layers.Activation)
def activation(layer: Any, input_shape: tuple[int, ...]) -> list[PolynomialStep]:
    name = getattr(layer.activation, "__name__", None)
    if name != "linear":
        raise unsupported(layer, f"its activation {name or layer.activation!r} is not a polynomial")
    return []
