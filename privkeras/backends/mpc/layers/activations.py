"""Secure activations: relu, sigmoid, softmax, tanh (and linear, which lowers to nothing).

Each activation is registered by its Keras name in `ACTIVATIONS`; `Dense` and
`Conv2D` lower their `activation=` argument through the same table as the
`Activation`, `ReLU` and `Softmax` layers do.

Notes:
    ReLU is exact (a secure comparison, then a multiplication by the shared
    bit; training keeps the bit as the 0/1 mask that `backward` multiplies
    by). Sigmoid, tanh and softmax use the runtime's documented
    approximations (see `docs/mpc-protocols.md`); their derivatives are
    computed from the shared outputs, as in CrypTen.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import keras

from privkeras.backends.mpc.layers.base import LoweringContext, SecureLayer
from privkeras.backends.mpc.layers.registry import register_secure_layer, unsupported

if TYPE_CHECKING:
    from privkeras.backends.mpc.tensor import SharedTensor

__all__ = [
    "ACTIVATIONS",
    "SecureActivation",
    "SecureReLU",
    "SecureSigmoid",
    "SecureSoftmax",
    "SecureTanh",
    "activation_layers",
    "activation_name",
]


class SecureActivation(SecureLayer):
    """An elementwise (or last-axis) activation; shape-preserving, no parameters."""

    kind = "activation"
    #: The Keras name of the activation.
    function: str = ""

    def __init__(self, name: str, shape: tuple[int, ...]):
        super().__init__(name, shape, shape)

    def output_bound(self, input_bound: float) -> float:
        return 1.0


class SecureReLU(SecureActivation):
    """max(x, 0) from an exact secure comparison."""

    function = "relu"

    def forward(self, x: SharedTensor, params: Mapping[str, SharedTensor], training: bool):
        if not training:
            return x.relu(), None
        return x.relu_with_derivative()  # one comparison gives the output and the mask

    def backward(
        self,
        grad: SharedTensor,
        cache: Any,
        params: Mapping[str, SharedTensor],
        input_grad: bool = True,
    ):
        return grad * cache, {}

    def output_bound(self, input_bound: float) -> float:
        return input_bound

    def product_bound(self, input_bound: float) -> float:
        return input_bound


class _ApproximatedActivation(SecureActivation):
    """An activation computed by a runtime approximation; training caches its output y.

    Subclasses give `apply` (the shared forward) and `input_gradient`, the
    vector-Jacobian product written in terms of y.
    """

    @abc.abstractmethod
    def apply(self, x: SharedTensor) -> SharedTensor:
        """The activation of the shared x."""

    @abc.abstractmethod
    def input_gradient(self, grad: SharedTensor, y: SharedTensor) -> SharedTensor:
        """The gradient with respect to the input, from the output gradient and y."""

    def forward(self, x: SharedTensor, params: Mapping[str, SharedTensor], training: bool):
        y = self.apply(x)
        return y, (y if training else None)

    def backward(
        self,
        grad: SharedTensor,
        cache: Any,
        params: Mapping[str, SharedTensor],
        input_grad: bool = True,
    ):
        return self.input_gradient(grad, cache), {}


class SecureSigmoid(_ApproximatedActivation):
    """1 / (1 + exp(-x)), by the runtime's approximation; derivative y (1 - y)."""

    function = "sigmoid"

    def apply(self, x: SharedTensor) -> SharedTensor:
        return x.sigmoid()

    def input_gradient(self, grad: SharedTensor, y: SharedTensor) -> SharedTensor:
        return grad * (y - y.square())


class SecureTanh(_ApproximatedActivation):
    """tanh(x), by the runtime's approximation; derivative 1 - y^2."""

    function = "tanh"

    def apply(self, x: SharedTensor) -> SharedTensor:
        return x.tanh()

    def input_gradient(self, grad: SharedTensor, y: SharedTensor) -> SharedTensor:
        return grad - grad * y.square()


class SecureSoftmax(_ApproximatedActivation):
    """Softmax over the last axis, by the runtime's approximation.

    The backward pass is the Jacobian-vector product y * (g - sum(g * y)).
    Training with a cross-entropy loss skips it: the loss hands back
    `softmax - labels` directly.
    """

    function = "softmax"

    def apply(self, x: SharedTensor) -> SharedTensor:
        return x.softmax(axis=-1)

    def input_gradient(self, grad: SharedTensor, y: SharedTensor) -> SharedTensor:
        inner = (grad * y).sum(axis=-1, keepdims=True)
        return y * (grad - inner)


#: Keras activation name -> secure activation class. "linear" lowers to nothing.
ACTIVATIONS: dict[str, type[SecureActivation]] = {
    cls.function: cls for cls in (SecureReLU, SecureSigmoid, SecureSoftmax, SecureTanh)
}


def activation_name(activation: Any) -> str:
    """The Keras name of an activation function (`"relu"`, ...), or its repr."""
    serialized = keras.activations.serialize(activation)
    if isinstance(serialized, str):
        return serialized
    return getattr(activation, "__name__", repr(activation))


def activation_layers(
    layer: Any, activation: Any, shape: tuple[int, ...], context: LoweringContext
) -> list[SecureLayer]:
    """Lowers a layer's `activation=` argument (nothing for linear).

    Raises:
        UnsupportedLayerError: For an activation without a secure version.
    """
    name = activation_name(activation)
    if name == "linear":
        return []
    if name not in ACTIVATIONS:
        raise unsupported(
            layer,
            context,
            f"activation {name!r} has no secure version. Supported activations: "
            f"{sorted([*ACTIVATIONS, 'linear'])}.",
        )
    secure_name = (
        layer.name if isinstance(layer, keras.layers.Activation) else f"{layer.name}.{name}"
    )
    return [ACTIVATIONS[name](secure_name, shape)]


@register_secure_layer(keras.layers.Activation)
def lower_activation(layer: keras.layers.Activation, context: LoweringContext) -> list[SecureLayer]:
    return activation_layers(layer, layer.activation, context.input_shape, context)


@register_secure_layer(keras.layers.ReLU)
def lower_relu(layer: keras.layers.ReLU, context: LoweringContext) -> list[SecureLayer]:
    config = layer.get_config()
    changed = {
        key: config[key]
        for key, default in (("max_value", None), ("negative_slope", 0.0), ("threshold", 0.0))
        if config[key] != default
    }
    if changed:
        raise unsupported(layer, context, f"only the plain ReLU is supported. Received: {changed}")
    return [SecureReLU(layer.name, context.input_shape)]


@register_secure_layer(keras.layers.Softmax)
def lower_softmax(layer: keras.layers.Softmax, context: LoweringContext) -> list[SecureLayer]:
    axis = layer.get_config().get("axis", -1)
    if axis not in (-1, len(context.input_shape)):
        raise unsupported(
            layer, context, f"softmax over the last axis only. Received: axis={axis!r}"
        )
    return [SecureSoftmax(layer.name, context.input_shape)]
