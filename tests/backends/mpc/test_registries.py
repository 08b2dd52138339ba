"""The MPC protocol and secure-layer registries keep the one `core.registry.Registry` contract.

Duplicates are refused unless `replace=True`, an unknown key raises the
registry's typed error listing what is registered, and the listings that
policies and engines read are computed from the registries themselves.
"""

import keras
import pytest

from privkeras.backends.mpc import engine as mpc_engine
from privkeras.backends.mpc import runtime as mpc_runtime
from privkeras.backends.mpc.layers import registry as layer_registry
from privkeras.backends.mpc.layers import supported_layer_types
from privkeras.backends.mpc.layers.base import LoweringContext
from privkeras.backends.mpc.protocols.aby3 import ABY3Protocol
from privkeras.backends.mpc.protocols.pond import PondProtocol
from privkeras.core.registry import Registry
from privkeras.errors import PrivacyPolicyError, RegistrationError, UnsupportedLayerError


def test_protocols_live_in_a_core_registry_with_the_policy_error():
    assert isinstance(mpc_runtime.PROTOCOLS, Registry)
    assert mpc_runtime.available_protocols() == ("aby3", "pond")
    assert mpc_engine.available_protocols() == ("aby3", "pond")
    assert mpc_runtime.get_protocol("aby3") is ABY3Protocol
    with pytest.raises(
        PrivacyPolicyError,
        match=r"Expected protocol to be one of \['aby3', 'pond'\]\. Received: protocol='spdz'",
    ):
        mpc_runtime.get_protocol("spdz")
    with pytest.raises(PrivacyPolicyError, match=r"one of \['aby3', 'pond'\].*'spdz'"):
        mpc_runtime.MPCRuntime("spdz", kernels="numpy", seed=0)


def test_a_registered_protocol_is_listed_and_duplicates_need_replace():
    class Pond2(PondProtocol):
        name = "pond"

    class Pond3(PondProtocol):
        name = "pond-test"

    mpc_runtime.register_protocol(PondProtocol)  # the same class again: a no-op
    with pytest.raises(RegistrationError, match="'pond' is already registered"):
        mpc_runtime.register_protocol(Pond2)
    assert mpc_runtime.get_protocol("pond") is PondProtocol
    try:
        assert mpc_runtime.register_protocol(Pond3) is Pond3
        assert "pond-test" in mpc_runtime.available_protocols()
        assert "pond-test" in mpc_engine.available_protocols()
        mpc_runtime.register_protocol(Pond2, replace=True)
        assert mpc_runtime.get_protocol("pond") is Pond2
    finally:
        mpc_runtime.PROTOCOLS.unregister("pond-test")
        mpc_runtime.register_protocol(PondProtocol, replace=True)
    assert mpc_runtime.available_protocols() == ("aby3", "pond")


def test_secure_layers_live_in_a_core_registry_with_the_layer_error():
    lowerings = layer_registry.LOWERINGS
    assert isinstance(lowerings, Registry)
    assert supported_layer_types() == lowerings.names()
    assert "Dense" in supported_layer_types()
    with pytest.raises(UnsupportedLayerError, match=r"Expected secure layer lowering.*'LSTM'"):
        lowerings.get(keras.layers.LSTM)
    context = LoweringContext("mpc-test", False, [], (5, 3))
    with pytest.raises(UnsupportedLayerError, match=r"'rnn' \(LSTM\).*'mpc-test'.*'Dense'"):
        layer_registry.lower_layer(keras.layers.LSTM(2, name="rnn"), context)


def test_a_registered_lowering_runs_and_duplicates_need_replace():
    def lower_identity(layer, context):
        return []

    def other(layer, context):
        return []

    try:
        layer_registry.register_secure_layer(keras.layers.Identity)(lower_identity)
        layer_registry.register_secure_layer(keras.layers.Identity)(lower_identity)  # no-op
        assert "Identity" in supported_layer_types()
        context = LoweringContext("mpc-test", False, [], (3,))
        assert layer_registry.lower_layer(keras.layers.Identity(), context) == []
        with pytest.raises(RegistrationError, match="'Identity' is already registered"):
            layer_registry.register_secure_layer(keras.layers.Identity)(other)
        layer_registry.register_secure_layer(keras.layers.Identity, replace=True)(other)
        assert layer_registry.LOWERINGS.get(keras.layers.Identity) is other
    finally:
        layer_registry.LOWERINGS.unregister(keras.layers.Identity)
    assert "Identity" not in supported_layer_types()
