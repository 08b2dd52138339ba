"""The HE engine's view of a model: affine maps and slot-wise polynomials.

Every supported linear Keras layer (Dense, Conv2D, AveragePooling2D, Flatten,
Reshape) is an affine map of the flattened features, `y = M x + b`, and every
activation is a polynomial applied to each feature. The engine optimizes this
list before packing it:

- consecutive affine maps fuse into one (one multiplicative level instead of
  several; Flatten and Reshape disappear);
- polynomials of degree <= 1 are affine maps and fuse too;
- a polynomial's leading coefficient moves into the next affine map, so the
  polynomial becomes monic and `x**2` costs one level, not two.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from privkeras.backends.he.polynomial import PolynomialEvaluator

__all__ = ["AffineStep", "Im2col", "PolynomialStep", "Step", "optimize", "step_depth"]


@dataclasses.dataclass
class Im2col:
    """A convolution as `out[p * F + f] = sum_k kernel[k, f] * x[gather[k, p]] + bias[f]`.

    `gather[k, p]` is the flat input index read by kernel element `k` at output
    position `p`, or -1 for zero padding. The client can build these patches
    itself, which turns the first convolution into scalar multiply-adds.
    """

    gather: np.ndarray  # (K, P) int
    kernel: np.ndarray  # (K, F)
    bias: np.ndarray  # (F,)

    @property
    def filters(self) -> int:
        return self.kernel.shape[1]

    @property
    def positions(self) -> int:
        return self.gather.shape[1]

    def patch_matrix(self) -> np.ndarray:
        """The map from patch features `(k, p) -> k * P + p` to outputs `p * F + f`."""
        n_k, n_p = self.gather.shape
        matrix = np.zeros((n_p * self.filters, n_k * n_p))
        p = np.arange(n_p)
        for k in range(n_k):
            for f in range(self.filters):
                matrix[p * self.filters + f, k * n_p + p] = self.kernel[k, f]
        return matrix


@dataclasses.dataclass
class AffineStep:
    """`y = matrix @ x + bias` over flattened features."""

    matrix: np.ndarray  # (n_out, n_in)
    bias: np.ndarray  # (n_out,)
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    layers: tuple[str, ...]
    im2col: Im2col | None = None

    def is_identity(self) -> bool:
        n_out, n_in = self.matrix.shape
        return n_out == n_in and not np.any(self.bias) and np.array_equal(self.matrix, np.eye(n_in))


@dataclasses.dataclass
class PolynomialStep:
    """`y = sum_k coefficients[k] * x**k` on every feature."""

    coefficients: np.ndarray
    shape: tuple[int, ...]
    layer: str
    input_range: tuple[float, float] | None = None


Step = AffineStep | PolynomialStep


def _fuse(first: AffineStep, second: AffineStep) -> AffineStep:
    im2col = None
    if second.is_identity():
        im2col = first.im2col  # Flatten/Reshape after a convolution keep its patch structure
    elif first.is_identity():
        im2col = second.im2col
    return AffineStep(
        matrix=second.matrix @ first.matrix,
        bias=second.matrix @ first.bias + second.bias,
        in_shape=first.in_shape,
        out_shape=second.out_shape,
        layers=first.layers + second.layers,
        im2col=im2col,
    )


def _as_affine(step: PolynomialStep) -> AffineStep:
    coefficients = np.zeros(2)
    coefficients[: len(step.coefficients)] = step.coefficients[:2]
    n = int(np.prod(step.shape))
    return AffineStep(
        coefficients[1] * np.eye(n),
        np.full(n, coefficients[0]),
        step.shape,
        step.shape,
        (step.layer,),
    )


def optimize(steps: list[Step]) -> list[Step]:
    """Fuses affine maps and makes polynomials monic (see the module docstring)."""
    trimmed: list[Step] = []
    for step in steps:
        if isinstance(step, PolynomialStep):
            coefficients = np.trim_zeros(np.asarray(step.coefficients, np.float64), "b")
            if len(coefficients) == 0:
                coefficients = np.zeros(1)
            step = dataclasses.replace(step, coefficients=coefficients)
            if len(coefficients) <= 2:
                step = _as_affine(step)
        elif isinstance(step, AffineStep):
            step = dataclasses.replace(step)  # folding below must not touch the caller's steps
        if trimmed and isinstance(step, AffineStep) and isinstance(trimmed[-1], AffineStep):
            step = _fuse(trimmed.pop(), step)
        trimmed.append(step)
    for i, step in enumerate(trimmed[:-1]):
        following = trimmed[i + 1]
        if isinstance(step, PolynomialStep) and isinstance(following, AffineStep):
            lead = float(step.coefficients[-1])
            if lead != 1.0:
                step.coefficients = step.coefficients / lead
                following.matrix = following.matrix * lead
    return [s for s in trimmed if not (isinstance(s, AffineStep) and s.is_identity())]


def step_depth(step: Step) -> int:
    """Multiplicative levels one step consumes."""
    if isinstance(step, AffineStep):
        return 1
    return PolynomialEvaluator(step.coefficients).depth
