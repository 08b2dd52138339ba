import dataclasses
from typing import ClassVar

import pytest

from privkeras import policies
from privkeras.backends import registry
from privkeras.backends.base import Engine
from privkeras.backends.plaintext import PlaintextEngine
from privkeras.errors import (
    CapabilityError,
    EngineNotAvailableError,
    EngineRegistrationError,
)


@dataclasses.dataclass(frozen=True)
class _TestOnlyPolicy(policies.Policy):
    kind: ClassVar[str] = "test-only"
    engine: str | None = None


class _PredictOnly(Engine):
    name = "test-predict-only"
    policy_kind = "test-only"
    keras_backends = frozenset({"tensorflow"})
    PREDICTS = True

    def predict(self, model, *args, **kwargs):
        return "predicted"


@pytest.fixture
def predict_only_engine():
    registry.register_engine(_PredictOnly)
    yield _PredictOnly
    registry.unregister_engine(_PredictOnly.name)


def test_plaintext_engine_is_registered_with_capabilities():
    engines = registry.available_engines()
    assert engines["plaintext"] is PlaintextEngine
    assert PlaintextEngine.capabilities() == {"fit", "predict", "evaluate"}
    assert isinstance(registry.get_engine(None, "torch"), PlaintextEngine)


def test_duplicate_name_is_refused_unless_replace(predict_only_engine):
    class Impostor(_PredictOnly):
        pass

    with pytest.raises(EngineRegistrationError, match="already registered"):
        registry.register_engine(Impostor)
    registry.register_engine(Impostor, replace=True)
    assert registry.available_engines()[_PredictOnly.name] is Impostor


def test_registering_a_non_engine_is_refused():
    with pytest.raises(EngineRegistrationError, match="Expected an Engine subclass"):
        registry.register_engine(object)


def test_unknown_policy_kind_lists_registered_engines():
    with pytest.raises(EngineNotAvailableError) as info:
        registry.get_engine(_TestOnlyPolicy(), "tensorflow")
    message = str(info.value)
    assert "'test-only'" in message
    for name in registry.available_engines():
        assert repr(name) in message


def test_routing_respects_keras_backend_and_variant(predict_only_engine):
    assert isinstance(registry.get_engine(_TestOnlyPolicy(), "tensorflow"), _PredictOnly)
    with pytest.raises(EngineNotAvailableError, match="under Keras backend 'torch'"):
        registry.get_engine(_TestOnlyPolicy(), "torch")
    with pytest.raises(EngineNotAvailableError, match="engine='other'"):
        registry.get_engine(_TestOnlyPolicy(engine="other"), "tensorflow")


def test_capability_flags_gate_operations(predict_only_engine):
    engine = registry.get_engine(_TestOnlyPolicy(), "tensorflow")
    assert engine.capabilities() == {"predict"}
    assert engine.predict(None) == "predicted"
    with pytest.raises(CapabilityError, match="does not support fit"):
        engine.fit(None)


def test_engines_are_kept_in_the_core_registry_type():
    from privkeras.core.registry import Registry

    assert isinstance(registry.ENGINES, Registry)
    assert registry.ENGINES.names() == sorted(registry.available_engines())
    registry.register_engine(PlaintextEngine)  # the same class again: a no-op
    assert registry.available_engines()["plaintext"] is PlaintextEngine
    registry.unregister_engine("no-such-engine")  # unknown names: nothing to remove
    with pytest.raises(EngineNotAvailableError, match=r"Expected engine to be one of \["):
        registry.ENGINES.get("no-such-engine")


def test_engine_variants_are_read_from_the_registry(predict_only_engine):
    assert registry.engine_variants("mpc") == ("tfe", "torch")
    assert registry.engine_variants("test-only") == ()

    class Variant(_PredictOnly):
        name = "test-predict-only-variant"
        variant = "other"

    registry.register_engine(Variant)
    try:
        assert registry.engine_variants("test-only") == ("other",)
        assert isinstance(
            registry.get_engine(_TestOnlyPolicy(engine="other"), "tensorflow"), Variant
        )
    finally:
        registry.unregister_engine(Variant.name)
    assert registry.engine_variants("test-only") == ()
