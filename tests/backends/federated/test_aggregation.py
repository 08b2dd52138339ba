"""The aggregation interface: plain sums, malformed contributions dropped, a plug-in replaces it."""

import numpy as np
import pytest

import privkeras as pk
from privkeras.backends.federated import FederatedData, aggregation
from privkeras.backends.federated.aggregation import RoundContext
from privkeras.core.random import SecureStream

from .conftest import flat, make_model


def _context(size=3, min_answers=1):
    return RoundContext("job", 0, {}, size, min_answers, 1.0, "central", 0.0, lambda *a: ({}, {}))


def test_plain_sum_adds_vectors_and_drops_malformed_ones_by_name():
    context = _context()
    payloads = {
        "a": ({}, {"contribution": np.array([1, 2, 3], np.float32)}),
        "b": ({}, {"contribution": np.array([1, 1, 1], np.float32)}),
        "short": ({}, {"contribution": np.array([1, 1], np.float32)}),
        "nan": ({}, {"contribution": np.array([np.nan, 1, 1], np.float32)}),
        "none": ({}, {}),
    }
    total = aggregation.PlainAggregator().sum(context, payloads)
    np.testing.assert_array_equal(total, [2, 3, 4])
    assert set(context.dropped) == {"short", "nan", "none"}
    assert "NaN" in context.dropped["nan"] and "shape (2,)" in context.dropped["short"]


class _MaskingOwner(aggregation.OwnerAggregation):
    """A toy masking aggregation: the owner adds a mask from a seed the coordinator handed it."""

    name = "test-masking"

    def protect(self, contribution, request):
        mask = SecureStream(bytes.fromhex(request["seed"])).gaussian(contribution.shape, std=1e3)
        return {"masked": True}, {"masked": (contribution + mask).astype(np.float64)}


class _MaskingAggregator(aggregation.Aggregator):
    name = "test-masking"
    seen = []

    def prepare(self, context):
        self.seeds = {name: SecureStream().random_bytes(16).hex() for name in context.cohort}
        return {name: {"seed": seed} for name, seed in self.seeds.items()}

    def sum(self, context, payloads):
        total = np.zeros(context.vector_size)
        for name, (fields, arrays) in payloads.items():
            assert fields == {"masked": True} and "contribution" not in arrays
            self.seen.append(arrays["masked"])
            mask = SecureStream(bytes.fromhex(self.seeds[name])).gaussian(
                context.vector_size, std=1e3
            )
            total += arrays["masked"] - mask
        return total


@pytest.fixture
def masking(monkeypatch):
    monkeypatch.setattr(aggregation, "SECURE", "test-masking")
    aggregation.register("test-masking", _MaskingAggregator, _MaskingOwner)
    yield
    aggregation.AGGREGATORS.unregister("test-masking")
    aggregation.OWNER_AGGREGATIONS.unregister("test-masking")


def test_a_registered_aggregation_replaces_the_plain_sum_end_to_end(partitions, masking):
    plain = make_model(pk.Federated(rounds=1, min_owners=3))
    secure = make_model(pk.Federated(rounds=1, min_owners=3, secure_aggregation=True))
    plain.fit(FederatedData.simulate(partitions), shuffle=False, verbose=0)
    secure.fit(FederatedData.simulate(partitions), shuffle=False, verbose=0)
    np.testing.assert_allclose(flat(secure.get_weights()), flat(plain.get_weights()), atol=1e-4)
    assert all(np.abs(v).mean() > 100 for v in _MaskingAggregator.seen)  # what arrived was masked
