"""The secure-layer interface: one Keras layer lowered to secret-shared computation.

A `SecureLayer` is what the MPC engines run in place of a Keras layer. It is
written once against `SharedTensor` (see `privkeras.backends.mpc.tensor`), so
the same code runs on every protocol and every kernel library.

A secure layer holds the layer's plaintext parameters *as the model owner
holds them* (numpy float64, after any folding such as batch normalization).
The engine secret-shares them once and hands the shared parameters back to
`forward` and `backward`; the layer never keeps a secret itself.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from privkeras.backends.mpc.tensor import SharedTensor

__all__ = ["LoweringContext", "SecureLayer"]


@dataclasses.dataclass
class LoweringContext:
    """What a lowering function may read (and, for folding, rewrite).

    Attributes:
        engine: Name of the engine the model is lowered for (for messages).
        training: Whether the program will be trained (some layers are
            inference-only).
        program: The secure layers lowered so far, in order. A folding layer
            (batch normalization) replaces the last one.
        input_shape: Shape of the next layer's input, without the batch axis.
    """

    engine: str
    training: bool
    program: list[SecureLayer]
    input_shape: tuple[int, ...]


class SecureLayer(abc.ABC):
    """A Keras layer as secret-shared computation.

    Args:
        name: The Keras layer's name (used in errors and reveal records).
        input_shape: Input shape without the batch axis.
        output_shape: Output shape without the batch axis.

    Subclasses set `params` (name -> numpy float64, the model owner's
    plaintext values) and, where they train, map each parameter to the Keras
    variable it was read from in `variables`.
    """

    #: Human-readable kind, e.g. "Dense" (for error messages).
    kind: str = "layer"

    def __init__(self, name: str, input_shape: tuple[int, ...], output_shape: tuple[int, ...]):
        self.name = name
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = tuple(int(s) for s in output_shape)
        self.params: dict[str, np.ndarray] = {}
        self.variables: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, {self.input_shape} -> {self.output_shape})"
        )

    @property
    def trainable(self) -> bool:
        """Whether the layer has parameters that training updates."""
        return bool(self.variables)

    @abc.abstractmethod
    def forward(
        self, x: SharedTensor, params: Mapping[str, SharedTensor], training: bool
    ) -> tuple[SharedTensor, Any]:
        """Computes the layer on a shared batch.

        Args:
            x: Shared input, shape `(batch, *input_shape)`.
            params: This layer's shared parameters, by name.
            training: Whether to keep what `backward` needs.

        Returns:
            `(output, cache)`; `cache` is handed back to `backward`.
        """

    def backward(
        self,
        grad: SharedTensor,
        cache: Any,
        params: Mapping[str, SharedTensor],
        input_grad: bool = True,
    ) -> tuple[SharedTensor | None, dict[str, SharedTensor]]:
        """Back-propagates a shared gradient through the layer.

        Args:
            grad: Gradient of the loss with respect to the layer's output.
            cache: What `forward(..., training=True)` returned.
            params: This layer's shared parameters.
            input_grad: Whether the input gradient is needed (False for the
                first layer, which saves a secure product).

        Returns:
            `(input_gradient or None, parameter_gradients)`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not train.")

    @abc.abstractmethod
    def output_bound(self, input_bound: float) -> float:
        """A bound on |output| given a bound on |input| (worst case, plaintext).

        Used before any party does work to refuse models whose fixed-point
        products would leave the ring (`PrecisionOverflowError`).
        """

    def product_bound(self, input_bound: float) -> float:
        """A bound on the magnitude of this layer's fixed-point products before truncation.

        Layers without secret-by-secret products return 0.
        """
        return 0.0
