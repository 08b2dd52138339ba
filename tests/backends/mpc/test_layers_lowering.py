"""Lowering Keras layers to secure layers: registry, shapes, BN folding, refusals.

These tests need no secure runtime: they check the plaintext side of the
lowering (what each layer becomes, with which parameters) against Keras.
"""

import keras
import numpy as np
import pytest

from privkeras.backends.mpc.layers import SecureProgram, supported_layer_types
from privkeras.backends.mpc.layers.activations import SecureReLU, SecureSoftmax
from privkeras.backends.mpc.layers.conv import SecureConv2D
from privkeras.backends.mpc.layers.dense import SecureDense
from privkeras.backends.mpc.layers.patches import fold_patches
from privkeras.backends.mpc.layers.pooling import SecureAveragePooling2D, SecureMaxPooling2D
from privkeras.backends.mpc.layers.reshape import SecureReshape
from privkeras.core.fixed_point import FixedPointCodec
from privkeras.core.kernels import get_kernels
from privkeras.errors import PrecisionOverflowError, UnsupportedLayerError

ENGINE = "mpc-test"


def _randomize_batch_norm(layer, rng):
    channels = layer.moving_mean.shape[0]
    layer.gamma.assign(rng.uniform(0.5, 2.0, channels))
    layer.beta.assign(rng.normal(size=channels))
    layer.moving_mean.assign(rng.normal(size=channels))
    layer.moving_variance.assign(rng.uniform(0.1, 3.0, channels))


def _affine_forward(program, x):
    """Plaintext evaluation of a program made of Dense/Conv2D layers only (numpy oracle)."""
    for layer in program.layers:
        if isinstance(layer, SecureDense):
            x = x @ layer.params["kernel"] + layer.params.get("bias", 0.0)
        elif isinstance(layer, SecureConv2D):
            kh, kw, c_in, c_out = layer.params["kernel"].shape
            patches = _float_patches(x, (kh, kw), layer.strides, layer.padding)
            n, oh, ow = patches.shape[:3]
            cols = patches.reshape(n * oh * ow, kh * kw * c_in)
            out = cols @ layer.params["kernel"].reshape(-1, c_out) + layer.params.get("bias", 0.0)
            x = out.reshape(n, oh, ow, c_out)
        else:
            raise AssertionError(f"unexpected {layer}")
    return x


def _float_patches(x, kernel_size, strides, padding):
    """extract_patches on floats, by running the int64 kernel on a scaled copy."""
    scaled = np.rint(x * 2**20).astype(np.int64)
    patches = get_kernels("numpy").extract_patches(scaled, kernel_size, strides, padding)
    return patches.astype(np.float64) / 2**20


def test_dense_with_activation_lowers_to_two_layers_with_keras_weights():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="relu")])
    program = SecureProgram.lower(model, ENGINE)
    dense, relu = program.layers
    assert isinstance(dense, SecureDense) and isinstance(relu, SecureReLU)
    np.testing.assert_array_equal(dense.params["kernel"], model.layers[0].kernel.numpy())
    assert dense.variables["kernel"] is model.layers[0].kernel
    assert program.output_shape == (3,)
    assert program.last_activation == "relu"


def test_cnn_shapes_follow_keras():
    model = keras.Sequential(
        [
            keras.Input((12, 12, 2)),
            keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.AveragePooling2D(2, padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(7),
            keras.layers.Activation("softmax"),
        ]
    )
    program = SecureProgram.lower(model, ENGINE)
    kinds = [type(layer) for layer in program.layers]
    # ReLU -> MaxPooling2D is rewritten as MaxPooling2D -> ReLU (same function, fewer
    # secure comparisons).
    assert kinds == [
        SecureConv2D,
        SecureMaxPooling2D,
        SecureReLU,
        SecureAveragePooling2D,
        SecureReshape,
        SecureDense,
        SecureSoftmax,
    ]
    keras_shapes = [tuple(layer.output.shape[1:]) for layer in model.layers]
    secure_shapes = [program.layers[i].output_shape for i in (2, 3, 4, 5, 6)]
    assert secure_shapes == keras_shapes[1:]
    assert program.layers[2].name.endswith(".relu")


def test_relu_before_max_pooling_is_rewritten_only_where_it_is_the_same_function():
    model = keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.ReLU(),
            keras.layers.AveragePooling2D(2),
            keras.layers.Activation("sigmoid"),
            keras.layers.MaxPooling2D(2),
        ]
    )
    kinds = [type(layer).__name__ for layer in SecureProgram.lower(model, ENGINE).layers]
    assert kinds == ["SecureReLU", "SecureAveragePooling2D", "SecureSigmoid", "SecureMaxPooling2D"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.Dense(4),
        lambda: keras.layers.Conv2D(3, 2, padding="same"),
    ],
    ids=["dense", "conv2d"],
)
def test_batch_norm_folds_into_previous_layer_like_keras_inference(make):
    rng = np.random.default_rng(0)
    shape = (6,) if make().__class__ is keras.layers.Dense else (5, 5, 2)
    model = keras.Sequential([keras.Input(shape), make(), keras.layers.BatchNormalization()])
    _randomize_batch_norm(model.layers[1], rng)
    program = SecureProgram.lower(model, ENGINE)
    assert len(program.layers) == 1  # BN disappeared into the previous layer
    assert program.layers[0].variables == {}  # folded weights are not Keras variables
    x = rng.normal(size=(3, *shape))
    expected = model(x.astype(np.float32), training=False).numpy()
    np.testing.assert_allclose(_affine_forward(program, x), expected, rtol=1e-4, atol=1e-4)


def test_dropout_is_identity_at_inference_so_bn_still_folds():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2),
            keras.layers.Dropout(0.5),
            keras.layers.BatchNormalization(),
        ]
    )
    assert len(SecureProgram.lower(model, ENGINE).layers) == 1


def test_batch_norm_after_activation_is_refused():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2, activation="relu"),
            keras.layers.BatchNormalization(name="bn"),
        ]
    )
    with pytest.raises(UnsupportedLayerError, match=r"'bn'.*mpc-test.*Dense or Conv2D"):
        SecureProgram.lower(model, ENGINE)


@pytest.mark.parametrize(
    "layer, pattern",
    [
        (keras.layers.LSTM(2, name="lstm"), r"Layer 'lstm' \(LSTM\).*'mpc-test'.*Supported layers"),
        (keras.layers.Dense(2, activation="gelu", name="d"), r"'d'.*activation 'gelu'"),
        (keras.layers.ReLU(max_value=6.0, name="relu6"), r"'relu6'.*max_value"),
    ],
    ids=["lstm", "gelu", "relu6"],
)
def test_unsupported_layers_are_named_with_the_engine(layer, pattern):
    shape = (4, 3) if isinstance(layer, keras.layers.LSTM) else (3,)
    model = keras.Sequential([keras.Input(shape), layer])
    with pytest.raises(UnsupportedLayerError, match=pattern):
        SecureProgram.lower(model, ENGINE)


def test_subclassed_layers_are_refused_not_assumed_equivalent():
    class MyDense(keras.layers.Dense):
        def call(self, x):
            return super().call(x) * 2

    model = keras.Sequential([keras.Input((3,)), MyDense(2, name="mine")])
    with pytest.raises(UnsupportedLayerError, match="'mine' \\(MyDense\\)"):
        SecureProgram.lower(model, ENGINE)


def test_training_refuses_dropout_and_batch_norm():
    for layer in (
        keras.layers.Dropout(0.1, name="drop"),
        keras.layers.BatchNormalization(name="bn"),
    ):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), layer])
        with pytest.raises(UnsupportedLayerError, match=f"'{layer.name}'.*inference only"):
            SecureProgram.lower(model, ENGINE, training=True)


def test_training_refuses_regularizers_it_would_ignore():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, kernel_regularizer="l2", name="reg")]
    )
    SecureProgram.lower(model, ENGINE)  # inference does not care
    with pytest.raises(UnsupportedLayerError, match=r"'reg'.*kernel_regularizer"):
        SecureProgram.lower(model, ENGINE, training=True)


def test_supported_layer_list_covers_the_issue():
    names = set(supported_layer_types())
    assert {
        "Dense",
        "Conv2D",
        "Flatten",
        "Reshape",
        "Activation",
        "ReLU",
        "Softmax",
        "AveragePooling2D",
        "MaxPooling2D",
        "GlobalAveragePooling2D",
        "Dropout",
        "BatchNormalization",
        "PolynomialActivation",
    } <= names


def test_range_check_names_the_layer_that_would_overflow():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="small"), keras.layers.Dense(2, name="huge")]
    )
    model.layers[1].kernel.assign(np.full((3, 2), 1e5))
    program = SecureProgram.lower(model, ENGINE)
    codec = FixedPointCodec(precision_bits=16)
    program.check_range(1.0, codec)  # fine for small inputs
    with pytest.raises(PrecisionOverflowError, match="'huge' \\(Dense\\)"):
        program.check_range(1e4, codec)


def test_range_check_refuses_precisions_whose_products_leave_the_ring():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    program = SecureProgram.lower(model, ENGINE)
    with pytest.raises(PrecisionOverflowError, match="'d'"):
        program.check_range(1.0, FixedPointCodec(precision_bits=32))


@pytest.mark.parametrize(
    "image, kernel, strides, padding",
    [
        ((2, 5, 5, 3), (3, 3), (1, 1), "VALID"),
        ((1, 6, 7, 2), (3, 2), (2, 2), "SAME"),
        ((2, 8, 8, 1), (2, 2), (2, 2), "VALID"),
        ((1, 5, 6, 2), (3, 3), (2, 3), "SAME"),
    ],
)
def test_fold_patches_is_the_adjoint_of_extract_patches(image, kernel, strides, padding):
    # <extract(x), p> == <x, fold(p)> over Z_2^64 for random ring elements.
    k = get_kernels("numpy")
    rng = np.random.default_rng(1)
    x = rng.integers(-(2**62), 2**62, size=image, dtype=np.int64)
    patches_of_x = k.extract_patches(x, kernel, strides, padding)
    p = rng.integers(-(2**62), 2**62, size=patches_of_x.shape, dtype=np.int64)
    folded = fold_patches(k, p, image, kernel, strides, padding)
    assert folded.shape == image
    with np.errstate(over="ignore"):
        left = np.sum(patches_of_x * p, dtype=np.int64)
        right = np.sum(x * folded, dtype=np.int64)
    assert left == right


def test_fold_patches_gives_identical_bits_on_every_kernel_library():
    rng = np.random.default_rng(2)
    image, kernel, strides = (2, 6, 6, 2), (3, 3), (2, 2)
    numpy_k = get_kernels("numpy")
    cols_shape = numpy_k.extract_patches(np.zeros(image, np.int64), kernel, strides, "SAME").shape
    p = rng.integers(-(2**63), 2**63 - 1, size=cols_shape, dtype=np.int64)
    expected = fold_patches(numpy_k, p, image, kernel, strides, "SAME")
    for name in ("torch", "tensorflow"):
        k = get_kernels(name)
        got = k.to_numpy(fold_patches(k, k.from_numpy(p), image, kernel, strides, "SAME"))
        np.testing.assert_array_equal(got, expected)
