"""Secure `PolynomialActivation`: a public polynomial of a shared tensor, by Horner's rule.

A polynomial needs nothing but additions and products, which secret sharing
does natively: no comparison circuit, no approximation beyond the layer's own.
The coefficients are public (they are part of the layer's configuration,
like an activation's name), so the model owner shares nothing for this layer.

Cost for degree d >= 2: d - 1 products of two shared values (one round each)
and one product by a public coefficient; the backward pass, d - 1 more (the
derivative by Horner's rule, then its product with the incoming gradient).
`PolynomialActivation("square")` costs one product forward and one backward,
where ReLU costs a comparison (6 rounds under Pond) and a multiplication by
its bit.

Notes:
    The products are evaluated in the order the Keras layer evaluates them
    (`((c_d x + c_{d-1}) x + ...) x + c_0`), each truncated back to 2^-f,
    so the error is the plaintext layer's up to a few ulp per product,
    amplified by |x| at each later step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from privkeras.backends.mpc.layers.base import LoweringContext, SecureLayer
from privkeras.backends.mpc.layers.registry import register_secure_layer
from privkeras.layers.polynomial import PolynomialActivation

if TYPE_CHECKING:
    from privkeras.backends.mpc.tensor import SharedTensor

__all__ = ["SecurePolynomial", "horner", "horner_bounds"]


def horner(x: SharedTensor, coefficients: Sequence[float]) -> SharedTensor:
    """`sum_k c_k x^k` for a shared x and public coefficients (lowest degree first).

    Evaluated as `PolynomialActivation.call` evaluates it; integer-valued
    coefficients (such as the 1 of `square`) multiply exactly, without a
    truncation (`SharedTensor` multiplies small public integers exactly).
    """
    coefficients = [float(c) for c in coefficients]
    if len(coefficients) == 1:
        return x * 0 + coefficients[0]
    y = x * coefficients[-1] + coefficients[-2]
    for c in reversed(coefficients[:-2]):
        y = y * x + c
    return y


def horner_bounds(coefficients: Sequence[float], input_bound: float) -> tuple[float, float]:
    """(bound on |p(x)|, bound on every product before truncation) for |x| <= input_bound."""
    magnitudes = [abs(float(c)) for c in coefficients]
    if len(magnitudes) == 1:
        return magnitudes[0], 0.0
    product = magnitudes[-1] * input_bound
    value = product + magnitudes[-2]
    largest = product
    for c in reversed(magnitudes[:-2]):
        product = value * input_bound
        largest = max(largest, product)
        value = product + c
    return value, largest


class SecurePolynomial(SecureLayer):
    """`PolynomialActivation` on shares; training caches x and back-propagates p'(x).

    Args:
        name: The Keras layer's name.
        shape: Input (= output) shape without the batch axis.
        coefficients: The public coefficients, lowest degree first.
    """

    kind = "PolynomialActivation"

    def __init__(self, name: str, shape: tuple[int, ...], coefficients: Sequence[float]):
        super().__init__(name, shape, shape)
        self.coefficients = np.asarray(coefficients, dtype=np.float64).reshape(-1)

    @property
    def derivative(self) -> np.ndarray:
        """Coefficients of p', lowest degree first (`[0.0]` for a constant)."""
        if len(self.coefficients) == 1:
            return np.zeros(1)
        return self.coefficients[1:] * np.arange(1, len(self.coefficients))

    def forward(self, x: SharedTensor, params: Mapping[str, SharedTensor], training: bool):
        return horner(x, self.coefficients), (x if training else None)

    def backward(
        self,
        grad: SharedTensor,
        cache: Any,
        params: Mapping[str, SharedTensor],
        input_grad: bool = True,
    ):
        if not input_grad:
            return None, {}
        slope = self.derivative
        if len(slope) == 1:  # p' is a public constant: a public product
            return grad * float(slope[0]), {}
        return grad * horner(cache, slope), {}

    def output_bound(self, input_bound: float) -> float:
        return horner_bounds(self.coefficients, input_bound)[0]

    def product_bound(self, input_bound: float) -> float:
        return horner_bounds(self.coefficients, input_bound)[1]


@register_secure_layer(PolynomialActivation)
def lower_polynomial(layer: PolynomialActivation, context: LoweringContext) -> list[SecureLayer]:
    return [SecurePolynomial(layer.name, context.input_shape, layer.coefficients)]
