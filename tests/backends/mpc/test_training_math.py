"""Loss gradients and the SGD rule of encrypted training, checked in plaintext against Keras.

`SecureLoss.delta` and `SecureSGD.apply` only use `+ - *` and the activation
methods, so numpy arrays run them as they are; the oracle is Keras's own
autodiff and optimizer.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from privkeras.backends.mpc.losses import get_loss, supported_losses
from privkeras.backends.mpc.optimizers import SecureSGD, get_optimizer
from privkeras.backends.mpc.shared_data import SharedData
from privkeras.errors import CapabilityError, InvalidInputError

ENGINE = "mpc-test"


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _keras_gradient(loss_fn, y, z, activation):
    z = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(z)
        outputs = activation(z)
        value = tf.reduce_mean(loss_fn(tf.constant(y), outputs))  # Keras: sum over batch size
    return tape.gradient(value, z).numpy()


@pytest.mark.parametrize(
    "loss, activation, labels",
    [
        ("categorical_crossentropy", "softmax", "onehot"),
        ("sparse_categorical_crossentropy", "softmax", "sparse"),
        ("binary_crossentropy", "sigmoid", "binary"),
        ("mse", "linear", "real"),
    ],
)
def test_scale_times_delta_is_the_keras_gradient(loss, activation, labels):
    rng = np.random.default_rng(0)
    batch, classes = 6, 4  # binary: 4 independent labels per row (Keras averages them)
    z = rng.normal(size=(batch, classes))
    y = {
        "onehot": np.eye(classes)[rng.integers(0, classes, batch)],
        "sparse": rng.integers(0, classes, batch),
        "binary": rng.integers(0, 2, (batch, classes)).astype(np.float64),
        "real": rng.normal(size=(batch, classes)),
    }[labels]
    secure = get_loss(loss, ENGINE)
    targets = secure.encode_targets(y, (classes,))
    outputs = {
        "softmax": _softmax(z),
        "sigmoid": 1 / (1 + np.exp(-z)),
        "linear": z,
    }[activation]
    fused = secure.fuses(None if activation == "linear" else activation)
    assert fused == (activation != "linear")
    got = secure.scale(batch, (classes,)) * secure.delta(outputs, targets, fused=fused)
    expected = _keras_gradient(keras.losses.get(loss), y, z, keras.activations.get(activation))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_from_logits_losses_do_not_fuse_and_accept_a_linear_output():
    secure = get_loss(keras.losses.CategoricalCrossentropy(from_logits=True), ENGINE)
    assert secure.from_logits and not secure.fuses(None)
    secure.check_model(None, ENGINE)


def test_cross_entropy_on_probabilities_needs_the_matching_activation():
    with pytest.raises(CapabilityError, match=r"ends in a softmax activation.*relu"):
        get_loss("categorical_crossentropy", ENGINE).check_model("relu", ENGINE)


@pytest.mark.parametrize(
    "loss, pattern",
    [
        ("hinge", r"'hinge'.*Supported losses"),
        (keras.losses.Huber(), r"'Huber'"),
        (keras.losses.CategoricalCrossentropy(label_smoothing=0.1), "label_smoothing"),
    ],
)
def test_unsupported_losses_are_named(loss, pattern):
    with pytest.raises(CapabilityError, match=pattern):
        get_loss(loss, ENGINE)
    assert "binary_crossentropy" in supported_losses()


def test_sparse_targets_are_checked_before_sharing():
    secure = get_loss("sparse_categorical_crossentropy", ENGINE)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        secure.encode_targets(np.array([0, 3]), (3,))


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.8, True)])
def test_sgd_matches_keras_sgd_step_by_step(momentum, nesterov):
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(3, 2))
    grads = [rng.normal(size=(3, 2)) for _ in range(4)]
    variable = keras.Variable(w0.astype("float32"))
    keras_sgd = keras.optimizers.SGD(0.05, momentum=momentum, nesterov=nesterov)
    secure = get_optimizer(keras_sgd, ENGINE)
    params, momenta = {"w": w0}, {}
    for step, g in enumerate(grads):
        keras_sgd.apply_gradients([(keras.ops.convert_to_tensor(g.astype("float32")), variable)])
        # The secure optimizer gets unscaled gradients and the scale separately.
        params, momenta = secure.apply(params, {"w": g * 4.0}, momenta, step, grad_scale=0.25)
    np.testing.assert_allclose(params["w"], variable.numpy(), rtol=1e-5, atol=1e-6)


def test_learning_rate_schedules_are_evaluated_per_public_step():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    secure = get_optimizer(keras.optimizers.SGD(schedule), ENGINE)
    assert [round(secure.learning_rate_at(s), 6) for s in range(3)] == [0.1, 0.05, 0.025]
    assert isinstance(SecureSGD(0.1).learning_rate_at(7), float)


@pytest.mark.parametrize(
    "optimizer, pattern",
    [
        (keras.optimizers.Adam(), "SGD.*Received: optimizer=Adam"),
        (keras.optimizers.SGD(clipnorm=1.0), "clipnorm"),
        (keras.optimizers.SGD(weight_decay=0.01), "weight_decay"),
    ],
)
def test_unsupported_optimizers_are_named(optimizer, pattern):
    with pytest.raises(CapabilityError, match=pattern):
        get_optimizer(optimizer, ENGINE)


def test_shared_data_validates_each_owner_before_sharing():
    x = np.ones((4, 3))
    data = SharedData([(x, np.zeros(4)), (x[:2], np.ones(2))], owners=["alice", "bob"])
    assert data.sizes == (4, 2) and data.row_shape == (3,) and len(data) == 6
    with pytest.raises(ValueError, match="same row shape"):
        SharedData([(x, np.zeros(4)), (np.ones((2, 5)), np.ones(2))])
    with pytest.raises(ValueError, match=r"same, non-zero number of rows.*'bob'"):
        SharedData([(x, np.zeros(4)), (x, np.ones(3))], owners=["alice", "bob"])
    with pytest.raises(ValueError, match="distinct owner names"):
        SharedData([(x, np.zeros(4)), (x, np.zeros(4))], owners=["a", "a"])
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InvalidInputError, match=r"x of 'data_owner_1'.*index \(1, 2\)"):
        SharedData([(x, np.zeros(4)), (bad, np.zeros(4))])
