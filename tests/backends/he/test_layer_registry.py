"""The HE layer converters live in the shared `core.registry.Registry`, with its contract."""

import keras
import pytest

import privkeras as pk
from privkeras.backends.he.layers import CONVERTERS, convert_layer, register_he_layer
from privkeras.core.registry import Registry
from privkeras.errors import RegistrationError, UnsupportedLayerError


class _Doubling(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


def test_converters_are_a_core_registry_listing_the_supported_layers():
    assert isinstance(CONVERTERS, Registry)
    assert {"Dense", "Conv2D", "PolynomialActivation"} <= set(CONVERTERS.names())


def test_a_duplicate_is_refused_unless_replace():
    original = CONVERTERS.get(keras.layers.Dense)
    with pytest.raises(RegistrationError, match="'Dense' is already registered"):
        register_he_layer(keras.layers.Dense)(lambda layer, shape: [])
    register_he_layer(keras.layers.Dense)(original)  # the same converter again is a no-op
    try:
        replacement = register_he_layer(keras.layers.Dense, replace=True)(lambda layer, s: [])
        assert CONVERTERS.get(keras.layers.Dense) is replacement
    finally:
        register_he_layer(keras.layers.Dense, replace=True)(original)


def test_a_registered_plugin_layer_converts_and_unregisters():
    layer = _Doubling(name="doubling")
    with pytest.raises(UnsupportedLayerError, match="'doubling' \\(_Doubling\\)"):
        convert_layer(layer, (3,))
    register_he_layer(_Doubling)(lambda layer, shape: [])
    try:
        assert convert_layer(layer, (3,)) == []
        assert "_Doubling" in CONVERTERS.names()
    finally:
        CONVERTERS.unregister(_Doubling)
    assert "_Doubling" not in CONVERTERS.names()


def test_unknown_layers_keep_the_error_with_its_suggestion():
    model = pk.PrivateSequential([keras.Input((4,)), keras.layers.ReLU(name="rectifier")])
    with pytest.raises(UnsupportedLayerError) as error:
        model.compile(privacy="he")
    message = str(error.value)
    assert "'rectifier' (ReLU) is not supported by the 'he' engine" in message
    assert "PolynomialActivation('relu', input_range=(-4, 4))" in message
    assert "Supported layers: [" in message and "'Dense'" in message
