"""The one registry contract every privkeras registry keeps."""

import pytest

from privkeras.core.registry import Registry
from privkeras.errors import PrivacyPolicyError, PrivkerasError, RegistrationError


def test_duplicates_are_refused_unless_replaced():
    registry = Registry("sampler")
    first, second = object(), object()
    registry.register("poisson", first)
    registry.register("poisson", first)  # the same object again is a no-op
    with pytest.raises(RegistrationError, match=r"already registered.*replace=True"):
        registry.register("poisson", second)
    registry.register("poisson", second, replace=True)
    assert registry.get("poisson") is second


def test_unknown_keys_list_what_is_registered():
    registry = Registry("accountant", unknown_error=PrivacyPolicyError)
    registry.register("rdp", 1)
    registry.register("pld", 2)
    with pytest.raises(PrivacyPolicyError) as info:
        registry.get("gdp")
    assert str(info.value) == (
        "Expected accountant to be one of ['pld', 'rdp']. Received: accountant='gdp'"
    )


def test_default_unknown_error_is_a_typed_lookup_error():
    registry = Registry("engine")
    with pytest.raises(LookupError) as info:
        registry.get("nope")
    assert isinstance(info.value, PrivkerasError)
    with pytest.raises(LookupError):
        registry.get(["unhashable"])


def test_types_as_keys_and_decorator():
    registry = Registry("clipping rule")

    class Dense:
        pass

    @registry.decorator(Dense)
    class DenseRule:
        pass

    assert registry.get(Dense) is DenseRule
    assert registry.names() == ["Dense"]
    assert Dense in registry and len(registry) == 1
    registry.unregister(Dense)
    assert Dense not in registry
