"""One DP-SGD step against the oracle: per-example gradients taken one example at a time.

The oracle never touches privkeras: each example's gradient is the weight
change of a plain `keras.Sequential` after one `train_on_batch` on that
example alone with SGD(learning_rate=1). With noise_multiplier=0 and
sampling="shuffle", one DP step over the whole set must move the weights by
`-(1/n) * sum_i g_i * min(1, C / |g_i|)`, to float32 tolerance, on both the
fast path and the per-example fallback.
"""

import warnings

import keras
import numpy as np
import pytest

import privkeras as pk

N = 8


def _mlp():
    return [keras.Input((5,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)]


def _dense_on_sequences():
    return [
        keras.Input((3, 4)),
        keras.layers.Dense(5, activation="tanh"),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ]


def _conv():
    return [
        keras.Input((9, 9, 2)),
        # kernel a multiple of the stride: TF takes patches by space_to_depth
        keras.layers.Conv2D(3, 4, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(4, 3, strides=2, padding="same"),  # the general patches
        keras.layers.Conv2D(4, 2, padding="valid"),  # stride 1
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ]


def _conv_one_channel():
    return [
        keras.Input((7, 7, 1)),
        keras.layers.Conv2D(3, 4, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(2, 3, dilation_rate=2, padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ]


def _embedding():
    return [
        keras.Input((5,), dtype="int32"),
        keras.layers.Embedding(6, 3),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ]


def _layer_norm():
    return [
        keras.Input((6,)),
        keras.layers.Dense(5),
        keras.layers.LayerNormalization(),
        keras.layers.Dense(3),
    ]


def _group_norm():
    return [
        keras.Input((4, 4, 2)),
        keras.layers.Conv2D(4, 3, padding="same"),
        keras.layers.GroupNormalization(groups=2),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ]


def _inputs(layers, rng):
    shape = (N, *layers[0].shape[1:])
    if layers[0].dtype.startswith("int"):
        return rng.integers(0, 6, size=shape).astype("int32")  # repeated ids on purpose
    return rng.normal(size=shape).astype("float32")


def _weights_after(model, x, y, weights):
    model.set_weights(weights)
    model.train_on_batch(x, y)
    return model.get_weights()


def _oracle_gradients(layers, weights, x, y):
    plain = keras.Sequential(layers)
    plain.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    per_example = []
    for i in range(N):
        after = _weights_after(plain, x[i : i + 1], y[i : i + 1], weights)
        per_example.append([w - a for w, a in zip(weights, after)])
    return per_example


def _dp_update(layers, weights, x, y, clip, fast):
    model = pk.PrivateSequential(layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noise_multiplier=0 and delta > 1/n warn, as they should.
        policy = pk.DPSGD(l2_norm_clip=clip, noise_multiplier=0.0, sampling="shuffle")
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        privacy=policy,
    )
    model.set_weights(weights)
    model.engine.fast_clipping = fast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, batch_size=N, epochs=1, verbose=0)
    return [w - a for w, a in zip(weights, model.get_weights())], model.privacy_report()


CASES = {
    "dense": _mlp,
    "dense-sequence": _dense_on_sequences,
    "conv2d": _conv,
    "conv2d-one-channel": _conv_one_channel,
    "embedding": _embedding,
    "layer-norm": _layer_norm,
    "group-norm": _group_norm,
}


@pytest.mark.multi_backend
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_step_equals_clipped_per_example_oracle(case):
    rng = np.random.default_rng(7)
    keras.utils.set_random_seed(7)
    layers = CASES[case]()
    reference = keras.Sequential(layers)
    weights = [
        w + rng.normal(scale=0.3, size=w.shape).astype("float32") for w in reference.get_weights()
    ]  # nonzero biases and norm scales
    x = _inputs(layers, rng)
    y = rng.integers(0, 3, size=(N,))

    grads = _oracle_gradients(CASES[case](), weights, x, y)
    norms = np.array([np.sqrt(sum(float(np.sum(g**2)) for g in example)) for example in grads])
    clip = float(np.median(norms))  # about half of the examples get clipped
    assert (norms > clip * 1.01).any() and (norms < clip * 0.99).any()
    expected = [
        sum(g[k] * min(1.0, clip / norm) for g, norm in zip(grads, norms)) / N
        for k in range(len(weights))
    ]
    for fast in (True, False):
        update, report = _dp_update(CASES[case](), weights, x, y, clip, fast)
        for got, want in zip(update, expected):
            np.testing.assert_allclose(
                got, want, rtol=2e-4, atol=2e-6, err_msg=f"{case}, fast_clipping={fast}"
            )
        assert report["steps"] == 1
        fallback = {
            name for name, how in report["clipping"].items() if how.startswith("per-example")
        }
        if not fast:
            assert fallback == set(report["clipping"])
        else:
            assert fallback == {name for name in report["clipping"] if "normalization" in name}
