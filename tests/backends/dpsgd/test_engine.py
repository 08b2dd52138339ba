"""The DP-SGD engine through `PrivateSequential`: Keras's contract, budget, bad input."""

import math
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import privkeras as pk
from privkeras import dpsgd
from privkeras.backends.dpsgd import DPSGDEngine
from privkeras.backends.dpsgd.noise import DEVICE_WORDS_PER_PAIR
from privkeras.core.random import SecureStream
from privkeras.errors import (
    CapabilityError,
    EngineNotAvailableError,
    InvalidInputError,
    PrivacyBudgetExceededError,
    PrivacyPolicyError,
    UnsupportedLayerError,
)

N, FEATURES = 64, 6


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    return x, y


def _model(*hidden, privacy=None, loss="binary_crossentropy", lr=0.1, metrics=("accuracy",)):
    model = pk.PrivateSequential(
        [keras.Input((FEATURES,)), *hidden, keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(lr), loss=loss, metrics=list(metrics), privacy=privacy
    )
    return model


def _policy(**kwargs):
    kwargs = {"l2_norm_clip": 1.0, "noise_multiplier": 1.0, "delta": 1e-3, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.DPSGD(**kwargs)


# -- Keras's contract ---------------------------------------------------------------------


@pytest.mark.multi_backend
def test_fit_keeps_the_keras_contract_and_logs_epsilon(data, capsys):
    x, y = data
    model = _model(keras.layers.Dense(4, activation="relu"), privacy=_policy(accountant="rdp"))
    assert isinstance(model.engine, DPSGDEngine)
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(("batch", logs["epsilon"]))

        def on_epoch_end(self, epoch, logs=None):
            seen.append(("epoch", logs["epsilon"]))

    history = model.fit(
        x, y, batch_size=16, epochs=3, verbose=1, callbacks=[Recorder()], validation_split=0.25
    )
    assert isinstance(history, keras.callbacks.History)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "epsilon"} <= set(history.history)
    epsilons = history.history["epsilon"]
    assert len(epsilons) == 3 and epsilons[0] < epsilons[1] < epsilons[2]
    assert "epsilon:" in capsys.readouterr().out  # the progress bar shows it
    report = model.privacy_report()
    assert report["steps"] == 3 * math.ceil(48 / 16) == len([s for s in seen if s[0] == "batch"])
    assert report["sample_rate"] == pytest.approx(16 / 48)
    assert report["epsilon"] == pytest.approx(epsilons[-1])
    assert report["epsilon"] == pytest.approx(
        dpsgd.compute_epsilon(16 / 48, 1.0, report["steps"], 1e-3, accountant="rdp"), rel=1e-9
    )
    assert [e for kind, e in seen if kind == "epoch"] == epsilons
    assert {"delta", "noise_multiplier", "sampling", "accountant", "epsilon_assumes"} <= set(report)
    assert model.predict(x, verbose=0).shape == (N, 1)
    assert len(model.evaluate(x, y, verbose=0)) == 2


def test_shorthand_routes_to_the_dpsgd_engine():
    model = _model(privacy="dp-sgd")
    assert isinstance(model.engine, DPSGDEngine)
    assert model.privacy_report()["noise_multiplier"] == 1.1
    assert model.privacy_report()["epsilon"] == 0.0


def test_shuffle_reports_the_unamplified_bound(data):
    x, y = data
    model = _model(privacy=_policy(sampling="shuffle", accountant="rdp"))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    report = model.privacy_report()
    assert "NO amplification" in report["epsilon_assumes"]
    assert report["steps"] == 2 * 4
    assert report["epsilon"] == pytest.approx(
        dpsgd.compute_epsilon(1.0, 1.0, 2, 1e-3, accountant="rdp"), rel=1e-9
    )


def test_train_on_batch_is_refused(data):
    x, y = data
    model = _model(privacy=_policy())
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    with pytest.raises(CapabilityError, match="only inside fit"):
        model.train_on_batch(x[:4], y[:4])


# -- what the step computes ----------------------------------------------------------------


@pytest.mark.multi_backend
def test_without_clipping_or_noise_the_step_is_keras_sgd(data):
    """A clip no gradient reaches and no noise: plain Keras's full-batch step,
    regularizer and sample weights included."""
    x, y = data
    weights = np.random.default_rng(1).uniform(0.5, 2.0, size=N).astype("float32")
    hidden = lambda: keras.layers.Dense(  # noqa: E731
        3, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.05)
    )
    plain = _model(hidden())
    private = _model(
        hidden(), privacy=_policy(l2_norm_clip=1e6, noise_multiplier=0.0, sampling="shuffle")
    )
    private.set_weights(plain.get_weights())
    start = plain.get_weights()
    plain.fit(x, y, sample_weight=weights, batch_size=N, epochs=1, shuffle=False, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private.fit(x, y, sample_weight=weights, batch_size=N, epochs=1, verbose=0)
    for w0, want, got in zip(start, plain.get_weights(), private.get_weights()):
        np.testing.assert_allclose(got - w0, want - w0, rtol=1e-4, atol=1e-6)


@pytest.mark.multi_backend
def test_noise_has_the_stated_scale():
    """With every example weighted zero the update is the noise alone: lr * sigma * C / B."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 64)).astype("float32")
    y = rng.normal(size=(32, 64)).astype("float32")
    model = pk.PrivateSequential([keras.Input((64,)), keras.layers.Dense(64)])
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss="mse",
        privacy=_policy(l2_norm_clip=0.5, noise_multiplier=2.0, sampling="shuffle"),
    )
    start = model.get_weights()
    model.fit(x, y, sample_weight=np.zeros(32), batch_size=16, epochs=1, verbose=0)
    change = np.concatenate([(a - b).ravel() for a, b in zip(start, model.get_weights())])
    # Two steps, each adding N(0, (2 * 0.5 / 16)^2): std sqrt(2) / 16.
    # 4160 fresh samples: the mean's sd is std / 64, so 0.08 std is a 5-sigma bound.
    assert abs(change.mean()) < 0.08 * math.sqrt(2) / 16
    assert change.std() == pytest.approx(math.sqrt(2) / 16, rel=0.05)


@pytest.mark.multi_backend
@pytest.mark.parametrize(("secure", "route"), [(True, None), (False, None), (False, "device")])
def test_noise_and_sampling_come_from_the_secure_stream(data, monkeypatch, secure, route):
    """Noise and Poisson draws read AES-CTR keystream from a `SecureStream` keyed from
    os.urandom: the host route (a CPU model, with or without secure_noise) and the device
    route (forced here on CPU) alike."""
    x, y = data
    fills, uniforms = [], []
    original_fill, original_uniform = SecureStream.fill, SecureStream.uniform

    def recording_fill(self, out):
        fills.append((self.seeded, out.nbytes))
        return original_fill(self, out)

    def recording_uniform(self, shape):
        uniforms.append((self.seeded, shape))
        return original_uniform(self, shape)

    monkeypatch.setattr(SecureStream, "fill", recording_fill)
    monkeypatch.setattr(SecureStream, "uniform", recording_uniform)
    model = _model(privacy=_policy(secure_noise=secure))
    model.engine.noise_route = route
    start = model.get_weights()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    pairs = (sum(w.size for w in start) + 1) // 2
    words = 2 if route is None else DEVICE_WORDS_PER_PAIR
    noise_reads = [seeded for seeded, n in fills if n == 8 * words * pairs]
    assert len(noise_reads) >= 4  # one draw per step
    assert set(noise_reads) == {False}
    assert [shape for _, shape in uniforms].count(N) >= 4  # the Poisson draws too
    assert {seeded for seeded, _ in uniforms} == {False}
    report = model.privacy_report()
    assert report["secure_noise"] is secure
    assert report["noise"].startswith("host" if route is None else "device")
    assert not all(np.array_equal(a, b) for a, b in zip(start, model.get_weights()))


@pytest.mark.multi_backend
def test_empty_poisson_batches_take_a_noise_only_step():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 5, 5, 1)).astype("float32")
    y = rng.integers(0, 2, size=20)
    model = pk.PrivateSequential(
        [
            keras.Input((5, 5, 1)),
            keras.layers.Conv2D(2, 3),
            keras.layers.GroupNormalization(2),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        optimizer="sgd",
        metrics=["accuracy"],
        privacy=_policy(delta=1e-2, accountant="rdp"),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, y, batch_size=1, epochs=2, verbose=0)  # q = 0.05: most batches empty
    assert model.privacy_report()["steps"] == 40
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert all(np.isfinite(v) for v in history.history["loss"])


# -- the budget ------------------------------------------------------------------------------


def test_target_epsilon_is_met_and_then_enforced(data):
    x, y = data
    model = _model(privacy=_policy(noise_multiplier=None, target_epsilon=2.0, accountant="rdp"))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    report = model.privacy_report()
    sigma = dpsgd.calibrate_noise(2.0, 4 / N, 16, 1e-3, accountant="rdp")
    assert report["noise_multiplier"] == pytest.approx(sigma)
    assert 1.95 < report["epsilon"] <= 2.0
    before = model.get_weights()
    with pytest.raises(PrivacyBudgetExceededError, match="no step was taken"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert model.privacy_report()["steps"] == 16
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_unreachable_target_epsilon_says_what_would_reach_it(data):
    x, y = data
    model = _model(privacy=_policy(noise_multiplier=None, target_epsilon=0.02))
    with pytest.raises(PrivacyPolicyError, match="cannot be reached") as info:
        model.fit(x, y, batch_size=N, epochs=500, verbose=0)
    assert "epochs=" in str(info.value) and "would reach it" in str(info.value)


# -- refusals before training ----------------------------------------------------------------


def test_batch_normalization_is_refused_with_alternatives(data):
    x, y = data
    model = _model(
        keras.layers.Dense(4), keras.layers.BatchNormalization(name="bn"), privacy=_policy()
    )
    with pytest.raises(UnsupportedLayerError) as info:
        model.fit(x, y, batch_size=16, verbose=0)
    message = str(info.value)
    assert "'bn'" in message and "GroupNormalization" in message and "LayerNormalization" in message


def test_activity_regularizer_is_refused(data):
    x, y = data
    model = _model(keras.layers.Dense(4, activity_regularizer="l2", name="reg"), privacy=_policy())
    with pytest.raises(UnsupportedLayerError, match=r"'reg'.*activity_regularizer"):
        model.fit(x, y, batch_size=16, verbose=0)


def test_loss_that_averages_the_batch_is_refused(data):
    x, y = data
    model = _model(privacy=_policy(), loss=lambda t, p: ops.mean(ops.square(t - p)), metrics=())
    with pytest.raises(PrivacyPolicyError, match="one loss value per example"):
        model.fit(x, y, batch_size=16, verbose=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"batch_size": N + 1},
            PrivacyPolicyError,
            "batch_size <= the number of training examples",
        ),
        ({"batch_size": 0}, InvalidInputError, "batch_size to be a positive integer"),
        ({"x": iter([]), "y": None}, PrivacyPolicyError, "expected x and y as arrays"),
        ({"y": np.zeros((3, 1))}, InvalidInputError, "same number"),
        ({"sample_weight": np.ones(3)}, InvalidInputError, "sample_weight of shape"),
    ],
)
def test_bad_fit_arguments(data, kwargs, error, message):
    x, y = data
    model = _model(privacy=_policy())
    args = {"x": x, "y": y, "batch_size": 16, "verbose": 0, **kwargs}
    with pytest.raises(error, match=message):
        model.fit(**args)


def test_loss_weights_masks_and_mixed_precision_are_refused(data):
    x, y = data
    model = pk.PrivateSequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", loss_weights=[2.0], privacy=_policy())
    with pytest.raises(PrivacyPolicyError, match="loss_weights=None"):
        model.fit(x, y, batch_size=16, verbose=0)
    ids = np.random.default_rng(0).integers(0, 5, size=(N, 3))
    masked = pk.PrivateSequential(
        [
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(5, 2, mask_zero=True),
            keras.layers.Dense(1),
        ]
    )
    masked.compile(optimizer="sgd", loss="mse", privacy=_policy())
    with pytest.raises(PrivacyPolicyError, match="output masks"):
        masked.fit(ids, np.zeros((N, 3, 1)), batch_size=16, verbose=0)
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = pk.PrivateSequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    finally:
        keras.config.set_dtype_policy("float32")
    mixed.compile(optimizer="sgd", loss="mse", privacy=_policy())
    with pytest.raises(PrivacyPolicyError, match="float32 dtype policy"):
        mixed.fit(x, y, batch_size=16, verbose=0)


def test_delta_larger_than_one_over_n_warns(data):
    x, y = data
    model = _model(privacy=_policy(delta=0.1, accountant="rdp"))
    with pytest.warns(UserWarning, match=r"delta=0.1\) is larger than 1/n"):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)


def test_no_noise_warns_and_reports_infinity(data):
    x, y = data
    with pytest.warns(UserWarning, match="NOT differentially private"):
        policy = pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=0.0, delta=1e-3)
    model = _model(privacy=policy)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert model.privacy_report()["epsilon"] == math.inf


class _Scale(keras.layers.Layer):
    """A layer with one trainable weight, for a custom clipping rule."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones")

    def call(self, inputs):
        return inputs * self.scale


@pytest.mark.multi_backend
def test_a_layer_without_per_example_gradients_is_named(data):
    from privkeras.backends.dpsgd import clipping

    @clipping.register_clipping_rule(_Scale)
    class BrokenRule(clipping.PerExampleFallbackRule):
        def per_example(self, layer, inputs, tap_grad, source):
            raise NotImplementedError("no batching rule")

    try:
        x, y = data
        model = _model(_Scale(name="odd_scale"), privacy=_policy())
        with pytest.raises(UnsupportedLayerError, match=r"'odd_scale'.*no batching rule"):
            model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        assert model.privacy_report()["steps"] <= 1  # refused while tracing the first step
    finally:
        clipping.unregister_clipping_rule(_Scale)


# -- noise keys, routes and what the sampler adds to delta -----------------------------------


def _noise_only_model(jit_compile: bool, **policy) -> pk.PrivateSequential:
    model = pk.PrivateSequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss="mse",
        jit_compile=jit_compile,
        privacy=_policy(sampling="shuffle", **policy),
    )
    return model


def _noise_only_update(model, start) -> np.ndarray:
    """One full-batch step from `start` after set_random_seed(0), its examples weighing zero:
    the update is the noise alone."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 8)).astype("float32"), rng.normal(size=(16, 4)).astype("float32")
    model.set_weights(start)
    model.fit(x, y, sample_weight=np.zeros(16), batch_size=16, epochs=1, verbose=0)
    return np.concatenate([(b - a).ravel() for a, b in zip(start, model.get_weights())])


@pytest.mark.multi_backend
@pytest.mark.parametrize("jit_compile", [False, True])
def test_noise_is_fresh_at_every_run_whatever_the_keras_seed(jit_compile, monkeypatch):
    """Two runs after keras.utils.set_random_seed(0), from the same weights: different
    noise, on CPU, with and without jit_compile (TF: XLA and the device route; torch:
    torch.compile, here with its eager backend, breaking its graph at the host route)."""
    torch_jit = jit_compile and keras.backend.backend() == "torch"
    if torch_jit:
        import functools

        import torch

        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    keras.utils.set_random_seed(0)
    model = _noise_only_model(jit_compile)
    start = model.get_weights()
    first, second = (_noise_only_update(model, start) for _ in range(2))
    assert np.all(first != 0) and np.all(second != 0)
    assert not np.any(first == second)
    assert np.std(first) == pytest.approx(1.0 / 16, rel=0.5)  # sigma C / B per coordinate
    route = "device" if jit_compile and not torch_jit else "host"
    assert model.privacy_report()["noise"].startswith(route)


def test_secure_noise_under_xla_is_refused_with_the_reason():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("XLA compiles the TensorFlow step")
    model = _noise_only_model(True, secure_noise=True)
    with pytest.raises(PrivacyPolicyError, match=r"jit_compile=False.*Received: jit_compile=True"):
        _noise_only_update(model, model.get_weights())


@pytest.mark.multi_backend
@pytest.mark.parametrize("route", ["host", "device"])
def test_sampler_delta_is_computed_and_added_to_delta(data, route):
    """The report's delta is the accountant's plus what the sampler's tails leave:
    `(1 + e^eps) * steps * pairs * 2^-b`, b = 104 bits on the device route and
    52 + 960 on the host route (which refines instead of cutting its tails)."""
    x, y = data
    model = _model(keras.layers.Dense(4, activation="relu"), privacy=_policy(accountant="rdp"))
    model.engine.noise_route = route
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    report = model.privacy_report()
    pairs = (sum(w.size for w in model.get_weights()) + 1) // 2
    bits = 104 if route == "device" else 52 + 960
    want = (1 + math.exp(report["epsilon"])) * report["steps"] * pairs * 2.0**-bits
    assert report["sampler_delta"] == pytest.approx(want, rel=1e-9) and want > 0
    assert report["accountant_delta"] == 1e-3
    assert report["delta"] == report["accountant_delta"] + report["sampler_delta"]


def test_a_second_fit_keeps_the_traced_step_and_keys_new_noise(data):
    x, y = data
    model = _model(privacy=_policy(accountant="rdp"))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    kept = model.engine._kept
    first_function, first_stream = kept.train_function, kept.trainer._noise._stream
    assert first_function is not None and model.train_function is None
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert model.engine._kept is kept and kept.train_function is first_function
    assert kept.trainer._noise._stream is not first_stream  # keyed afresh from os.urandom
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # another divisor: another step
    assert model.engine._kept is not kept
    assert model.privacy_report()["steps"] == 4 + 4 + 8


@pytest.mark.parametrize(
    ("attribute", "purpose"),
    [("_loss_tracker", "the loss shown in the logs"), ("_compile_config", "arguments of compile")],
)
def test_a_missing_private_keras_attribute_fails_loudly(data, attribute, purpose):
    """A Keras release that renames what DP-SGD reads must stop it, not switch a check off."""
    x, y = data
    model = _model(privacy=_policy())
    object.__delattr__(model, attribute)
    with pytest.raises(EngineNotAvailableError) as info:
        model.fit(x, y, batch_size=16, verbose=0)
    message = str(info.value)
    assert attribute in message and purpose in message and keras.version() in message


def test_history_epsilon_is_a_close_upper_bound_of_the_exact_one(data):
    x, y = data
    model = _model(privacy=_policy(accountant="pld"))
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    exact = model.privacy_report()["epsilon"]
    assert exact <= history.history["epsilon"][-1] <= exact + 0.01


def test_the_tf_data_pipeline_is_kept_for_equal_arrays_only(data):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the pipeline is TensorFlow's")
    x, y = data
    model = _model(privacy=_policy(accountant="rdp"))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    trainer = model.engine._kept.trainer
    pipeline = trainer._pipeline
    model.fit(x.copy(), y.copy(), batch_size=16, epochs=1, verbose=0)  # equal, not the same
    assert trainer._pipeline is pipeline
    changed = x.copy()
    changed[3, 2] += 1.0
    model.fit(changed, y, batch_size=16, epochs=1, verbose=0)
    assert trainer._pipeline is not pipeline
    np.testing.assert_array_equal(trainer._pipeline.tensors[0].numpy(), changed)
