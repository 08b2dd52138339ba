"""Per-example norms and weighted sums against numpy per-example gradients."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from privkeras.backends.dpsgd import clipping

SETTINGS = settings(max_examples=12, deadline=None)


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def _linear_oracle(a, g, bias):
    """Per-example kernel (and bias) gradients, one example at a time."""
    grads = []
    for a_i, g_i in zip(a, g):
        a_i = a_i.reshape(-1, a.shape[-1])
        g_i = g_i.reshape(-1, g.shape[-1])
        grads.append([a_i.T @ g_i] + ([g_i.sum(0)] if bias else []))
    return grads


def _check(view, oracle, weights):
    norms = np.array([sum(float(np.sum(p**2)) for p in example) for example in oracle])
    np.testing.assert_allclose(_numpy(view.squared_norms()), norms, rtol=1e-4, atol=1e-5)
    got = view.weighted_sum(ops.convert_to_tensor(weights))
    for k, part in enumerate(got):
        want = sum(w * example[k] for w, example in zip(weights, oracle))
        np.testing.assert_allclose(_numpy(part).reshape(want.shape), want, rtol=1e-4, atol=1e-5)


@pytest.mark.multi_backend
@SETTINGS
@given(
    batch=st.integers(1, 5),
    positions=st.sampled_from([None, 1, 3, 6]),
    k=st.integers(1, 6),
    p=st.integers(1, 6),
    bias=st.booleans(),
    strategy=st.sampled_from(["auto", "ghost", "materialize"]),
    seed=st.integers(0, 2**16),
)
def test_linear_strategies_agree_with_per_example_gradients(
    batch, positions, k, p, bias, strategy, seed
):
    rng = np.random.default_rng(seed)
    shape = (batch, k) if positions is None else (batch, positions, k)
    a = rng.normal(size=shape).astype("float32")
    g = rng.normal(size=(*shape[:-1], p)).astype("float32")
    view = clipping.LinearGrads(
        ops.convert_to_tensor(a), ops.convert_to_tensor(g), (k, p), bias, strategy=strategy
    )
    _check(view, _linear_oracle(a, g, bias), rng.uniform(size=batch).astype("float32"))


@pytest.mark.multi_backend
@SETTINGS
@given(
    batch=st.integers(1, 4),
    positions=st.sampled_from([(), (1,), (4,), (2, 3)]),
    vocabulary=st.integers(1, 5),
    d=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_embedding_norms_count_repeated_ids(batch, positions, vocabulary, d, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocabulary, size=(batch, *positions)).astype("int32")
    g = rng.normal(size=(batch, *positions, d)).astype("float32")
    oracle = []
    for ids_i, g_i in zip(ids, g):
        table = np.zeros((vocabulary, d), dtype="float64")
        np.add.at(table, ids_i.reshape(-1), g_i.reshape(-1, d))
        oracle.append([table])
    view = clipping.EmbeddingGrads(ops.convert_to_tensor(ids), ops.convert_to_tensor(g), vocabulary)
    _check(view, oracle, rng.uniform(size=batch).astype("float32"))


@pytest.mark.multi_backend
def test_materialized_grads():
    rng = np.random.default_rng(0)
    grads = [
        rng.normal(size=(3, 2, 2)).astype("float32"),
        rng.normal(size=(3, 4)).astype("float32"),
    ]
    view = clipping.MaterializedGrads([ops.convert_to_tensor(x) for x in grads])
    _check(view, [[grads[0][i], grads[1][i]] for i in range(3)], np.array([1.0, 0.5, 0.0], "f"))


def test_clip_factors():
    factors = _numpy(clipping.clip_factors(ops.convert_to_tensor([0.0, 0.25, 4.0, 16.0]), 2.0))
    np.testing.assert_allclose(factors, [1.0, 1.0, 1.0, 0.5])


@pytest.mark.parametrize("size", [5, 6, 7, 28])
@pytest.mark.parametrize(
    ("kernel", "stride", "dilation"), [(3, 1, 1), (8, 2, 1), (4, 2, 1), (3, 1, 2)]
)
def test_same_padding_gives_keras_output_size(size, kernel, stride, dilation):
    before, after = clipping.same_padding(size, kernel, stride, dilation)
    effective = (kernel - 1) * dilation + 1
    layer = keras.layers.Conv2D(1, kernel, strides=stride, dilation_rate=dilation, padding="same")
    keras_size = layer.compute_output_shape((1, size, size, 1))[1]
    assert (size + before + after - effective) // stride + 1 == keras_size
    assert after - before in (0, 1)


def test_rules_are_registered_by_exact_type_and_refuse_duplicates():
    class MyDense(keras.layers.Dense):
        def call(self, inputs):
            return super().call(inputs) * 2.0

    mine, dense = MyDense(2), keras.layers.Dense(2)
    mine.build((None, 3))
    dense.build((None, 3))
    rule, reason = clipping.rule_for(mine)
    assert rule is clipping.FALLBACK and "MyDense" in reason
    rule, reason = clipping.rule_for(dense)
    assert rule.technique == "book-keeping" and reason is None
    dense.kernel.trainable = False
    assert clipping.rule_for(dense) == (clipping.FALLBACK, "some of its weights are frozen")
    with pytest.raises(Exception, match="already registered"):
        clipping.register_clipping_rule(keras.layers.Dense)(clipping.PerExampleFallbackRule)
    assert clipping.registered_rules()["Conv2D"] == "book-keeping"


def test_rules_live_in_a_core_registry():
    from privkeras.core.registry import Registry
    from privkeras.errors import RegistrationError

    assert isinstance(clipping.RULES, Registry)
    dense_rule = clipping.RULES.get(keras.layers.Dense)
    with pytest.raises(RegistrationError, match="replace=True"):
        clipping.register_clipping_rule(keras.layers.Dense)(clipping.DenseRule)
    try:
        clipping.register_clipping_rule(keras.layers.Dense, replace=True)(clipping.DenseRule)
        assert clipping.RULES.get(keras.layers.Dense) is not dense_rule
    finally:
        clipping.RULES.register(keras.layers.Dense, dense_rule, replace=True)
    assert set(clipping.registered_rules()) == {"Conv2D", "Dense", "Embedding"}
