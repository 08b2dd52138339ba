"""`PolynomialActivation`: activations that homomorphic encryption can evaluate.

CKKS can add and multiply, nothing else: `relu`, `sigmoid` and `tanh` are out
of reach under encryption. A polynomial is not. Train with this layer in
plaintext, on any Keras backend, and the same model compiles for HE inference
(`model.compile(privacy="he")`) with identical outputs up to CKKS noise.
Under `privacy="mpc"` the layer runs for inference and training too, as
shared products only (cheaper than a secure ReLU's comparison).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import keras
import numpy as np

__all__ = ["PolynomialActivation"]

_MAX_DEGREE = 32


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


_TARGETS = {"relu": _relu, "sigmoid": _sigmoid, "tanh": np.tanh}


def _least_squares(target, degree: int, input_range: tuple[float, float]) -> np.ndarray:
    """Power-basis coefficients of the least-squares fit on Chebyshev nodes of the range."""
    low, high = input_range
    nodes = np.cos(np.pi * (np.arange(1024) + 0.5) / 1024)
    x = (low + high) / 2 + (high - low) / 2 * nodes
    fit = np.polynomial.Polynomial.fit(x, target(x), degree, domain=[low, high])
    coefficients = np.asarray(fit.convert().coef, np.float64)
    # Odd or even targets on symmetric ranges leave round-off (~1e-17) where zeros belong.
    coefficients[np.abs(coefficients) < 1e-12 * np.abs(coefficients).max()] = 0.0
    return coefficients


@keras.saving.register_keras_serializable(package="privkeras")
class PolynomialActivation(keras.layers.Layer):
    """Applies a polynomial element-wise: `square`, a fitted approximation, or given coefficients.

    Args:
        function: `"square"` (`x**2`), one of `"relu"`, `"sigmoid"`, `"tanh"`
            (least-squares polynomial fit of the function on `input_range`),
            or a sequence of coefficients `c_0, c_1, ..., c_d` (lowest degree
            first) for `sum_k c_k x**k`.
        degree: Degree of a fitted approximation (default 2 for `"relu"`,
            3 for `"sigmoid"` and `"tanh"`). Higher degrees are more accurate
            and cost more multiplicative depth under encryption
            (`ceil(log2(degree))` levels, one more when not monic).
        input_range: `(low, high)` the approximation is fitted on (default
            `(-4, 4)` for approximations). For `"square"` and coefficients it
            is optional and only documents the expected inputs. Under
            encryption, the HE engine warns when inputs leave this range:
            approximations diverge quickly outside it.
        coefficients: The coefficients to use for a named approximation
            instead of fitting them again (what `get_config` stores).
        **kwargs: Base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Attributes:
        coefficients: The polynomial's coefficients, lowest degree first.
        max_error: Largest |polynomial - function| on `input_range` for an
            approximation, None otherwise.

    Example:

    ```python
    import keras
    import privkeras as pk
    from privkeras.layers import PolynomialActivation

    model = pk.PrivateSequential([
        keras.Input((64,)),
        keras.layers.Dense(32),
        PolynomialActivation("square"),
        keras.layers.Dense(10),
    ])
    PolynomialActivation("relu", degree=2, input_range=(-6, 6)).coefficients
    ```
    """

    FUNCTIONS: ClassVar[tuple[str, ...]] = ("square", "relu", "sigmoid", "tanh")
    DEFAULT_DEGREES: ClassVar[dict[str, int]] = {"relu": 2, "sigmoid": 3, "tanh": 3}
    DEFAULT_RANGE: ClassVar[tuple[float, float]] = (-4.0, 4.0)

    def __init__(
        self,
        function: str | Sequence[float] = "square",
        degree: int | None = None,
        input_range: Sequence[float] | None = None,
        coefficients: Sequence[float] | None = None,
        **kwargs: Any,
    ):
        if isinstance(function, str):
            name = function
        else:
            name, coefficients = "custom", function
        if name not in (*self.FUNCTIONS, "custom"):
            raise ValueError(
                f"Expected function to be one of {list(self.FUNCTIONS)} or a sequence of "
                f"coefficients. Received: function={function!r}"
            )
        input_range = _check_range(input_range)
        if name in _TARGETS and input_range is None:
            input_range = self.DEFAULT_RANGE
        degree = _check_degree(name, degree, self.DEFAULT_DEGREES)
        if coefficients is not None:
            coefficients = _check_coefficients(coefficients)
        elif name == "square":
            coefficients = np.array([0.0, 0.0, 1.0])
        else:
            coefficients = _least_squares(_TARGETS[name], degree, input_range)
        super().__init__(**kwargs)
        self.function = name
        self.degree = len(coefficients) - 1
        self.input_range = input_range
        self.coefficients = coefficients
        self.max_error = self._approximation_error()
        self.supports_masking = True
        self.built = True

    def _approximation_error(self) -> float | None:
        if self.function not in _TARGETS:
            return None
        x = np.linspace(*self.input_range, 4001)
        poly = np.polynomial.polynomial.polyval(x, self.coefficients)
        return float(np.max(np.abs(poly - _TARGETS[self.function](x))))

    def call(self, inputs):
        coefficients = [float(c) for c in self.coefficients]
        if len(coefficients) == 1:
            return keras.ops.ones_like(inputs) * coefficients[0]
        outputs = inputs * coefficients[-1] + coefficients[-2]
        for c in reversed(coefficients[:-2]):
            outputs = outputs * inputs + c
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        base_config = super().get_config()
        config = {
            "function": self.function if self.function != "custom" else self.coefficients.tolist(),
            "degree": None if self.function in ("square", "custom") else self.degree,
            "input_range": None if self.input_range is None else list(self.input_range),
            "coefficients": self.coefficients.tolist(),
        }
        return {**base_config, **config}


def _check_range(input_range: Sequence[float] | None) -> tuple[float, float] | None:
    if input_range is None:
        return None
    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(
            f"Expected input_range to be (low, high) with finite low < high. "
            f"Received: input_range={input_range!r}"
        )
    return (low, high)


def _check_degree(name: str, degree: int | None, defaults: dict[str, int]) -> int | None:
    if degree is None:
        return defaults.get(name, 2 if name == "square" else None)
    if name == "square" and degree != 2:
        raise ValueError(f"Expected degree None or 2 for 'square'. Received: degree={degree!r}")
    if name == "custom":
        raise ValueError(
            f"Expected degree=None with explicit coefficients (the degree is their number "
            f"minus one). Received: degree={degree!r}"
        )
    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= _MAX_DEGREE:
        raise ValueError(
            f"Expected degree to be an integer in [1, {_MAX_DEGREE}]. Received: degree={degree!r}"
        )
    return degree


def _check_coefficients(coefficients: Sequence[float]) -> np.ndarray:
    try:
        values = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        values = np.array([math.nan])
    if values.size == 0 or values.size > _MAX_DEGREE + 1 or not np.all(np.isfinite(values)):
        raise ValueError(
            f"Expected 1 to {_MAX_DEGREE + 1} finite coefficients (lowest degree first). "
            f"Received: coefficients={coefficients!r}"
        )
    return values
