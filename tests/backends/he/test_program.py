"""Keras models to HE programs: layer coverage, optimization, and packed programs
run on the exact slot simulator against Keras's own predictions."""

import keras
import numpy as np
import pytest

from privkeras.backends.he.ckks import SimulatedOps, chain_primes
from privkeras.backends.he.params import select_parameters
from privkeras.backends.he.program import HEGraph
from privkeras.backends.he.steps import AffineStep, PolynomialStep
from privkeras.errors import UnsupportedLayerError
from privkeras.layers import PolynomialActivation


def _simulate(model, x, block):
    """Runs the packed program on the simulator; returns outputs and the program."""
    graph = HEGraph.from_model(model)
    params = select_parameters(graph.depth)
    program = graph.pack(params.slots, block)
    spec = program.spec(params)
    ops = SimulatedOps(
        chain_primes(params.poly_modulus_degree, params.coeff_mod_bit_sizes),
        params.slots,
        rotation_steps=program.rotation_steps,
    )
    outputs = []
    for start in range(0, len(x), block):
        chunk = x[start : start + block]
        cts = [
            ops.encrypt_values(v, ops.top_level, params.scale) for v in spec.encode_inputs(chunk)
        ]
        out = program.apply(ops, cts)
        assert all(ct.level == 0 for ct in out)  # the chosen chain is used up exactly
        values = np.stack([ops.decrypt_values(ct) for ct in out])
        outputs.append(spec.decode_outputs(values, len(chunk)))
    return np.concatenate(outputs), program


MODELS = {
    "mlp": lambda: [
        keras.Input((64,)),
        keras.layers.Dense(32),
        PolynomialActivation("square"),
        keras.layers.Dense(10),
    ],
    "cnn": lambda: [
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3),
        PolynomialActivation("square"),
        keras.layers.AveragePooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ],
    "strided-same-multichannel": lambda: [
        keras.Input((7, 6, 2)),
        keras.layers.Conv2D(3, (3, 2), strides=2, padding="same"),
        keras.layers.Flatten(),
        PolynomialActivation("relu", degree=4),
        keras.layers.Dense(6, activation="linear"),
        PolynomialActivation([0.1, 0.2, 0.3]),
        keras.layers.Reshape((2, 3)),
    ],
    "dilated-then-conv": lambda: [
        keras.Input((9, 9, 1)),
        keras.layers.Conv2D(2, 3, dilation_rate=2),
        PolynomialActivation("sigmoid"),
        keras.layers.Conv2D(2, 2, padding="same"),
        keras.layers.AveragePooling2D(2, padding="same"),
        keras.layers.Activation("linear"),
        keras.layers.Flatten(),
        keras.layers.Dense(4),
    ],
}


@pytest.mark.multi_backend
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("block", [1, 16, 256])
def test_packed_program_matches_keras(name, block):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(MODELS[name]())
    x = np.random.default_rng(0).uniform(0, 1, (min(3 * block, 40), *model.input_shape[1:]))
    y, _ = _simulate(model, x, block)
    expected = keras.ops.convert_to_numpy(model(x.astype(np.float32)))
    np.testing.assert_allclose(y, expected, atol=2e-5 * max(1.0, np.abs(expected).max()))


def test_first_convolution_is_im2col_and_costs_no_rotation():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(MODELS["cnn"]())
    graph = HEGraph.from_model(model)
    assert graph.steps[0].im2col is not None
    _, program = _simulate(model, np.random.default_rng(0).uniform(size=(16, 8, 8, 1)), 16)
    conv = program.stages[0]
    assert conv.rotation_steps == set()
    # one product per kernel element and output ciphertext (4 filters share one at block 16)
    assert conv.out_layout.n_ciphertexts == 2
    assert conv.product_count == 9 * conv.out_layout.n_ciphertexts


def test_linear_layers_fuse_and_square_costs_one_level():
    model = keras.Sequential(MODELS["cnn"]())
    graph = HEGraph.from_model(model)
    kinds = [type(step) for step in graph.steps]
    assert kinds == [AffineStep, PolynomialStep, AffineStep]  # pool, flatten, dense fused
    assert graph.depth == 3
    two_dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    assert HEGraph.from_model(two_dense).depth == 1


def test_leading_coefficient_moves_into_the_next_layer():
    keras.utils.set_random_seed(0)
    layers = [
        keras.Input((3,)),
        keras.layers.Dense(3),
        PolynomialActivation([0.1, 0.2, 0.5]),
        keras.layers.Dense(2),
    ]
    graph = HEGraph.from_model(keras.Sequential(layers))
    assert graph.steps[1].coefficients[-1] == 1.0 and graph.depth == 3
    last = HEGraph.from_model(keras.Sequential(layers[:3]))
    assert last.depth == 3  # nothing to fold into: the coefficient costs a level


@pytest.mark.parametrize(
    "layer, message",
    [
        (keras.layers.Dense(4, activation="relu"), "activation 'relu'"),
        (keras.layers.Activation("tanh"), "activation 'tanh'"),
        (keras.layers.ReLU(), "no encrypted version of ReLU"),
        (keras.layers.BatchNormalization(), "no encrypted version of BatchNormalization"),
        (keras.layers.MaxPooling1D(2), "no encrypted version of MaxPooling1D"),
    ],
)
def test_unsupported_layers_are_named_with_a_way_out(layer, message):
    model = keras.Sequential(
        [keras.Input((8, 1)), keras.layers.Flatten(), keras.layers.Reshape((8, 1)), layer]
    )
    with pytest.raises(UnsupportedLayerError, match=message) as info:
        HEGraph.from_model(model)
    text = str(info.value)
    assert layer.name in text and "'he' engine" in text and "PolynomialActivation" in text
