"""One engine contract, checked for every engine in the registry (never by name).

For each registered engine that runs under this Keras backend:

- every Keras entry point of `PrivateSequential` is routed to the engine or
  refused with `CapabilityError` naming the engine, and Keras's own
  (plaintext) steps run only inside a Keras loop the engine opened itself;
- the capability flags say what the engine does;
- the same user mistake (NaN input, `batch_size=0`, wrong input shape, no
  samples, misaligned x and y) raises the same `InvalidInputError` with the
  same message in every engine, before any step;
- `compile` is atomic: a refusal leaves the model as it was.

Models and data are tiny (linear Dense layers every engine accepts, 16 rows).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import keras
import numpy as np
import pytest

from privkeras import policies
from privkeras.backends import registry
from privkeras.errors import CapabilityError, InvalidInputError, UnsupportedLayerError
from privkeras.models import PrivateSequential

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N, FEATURES, OUTPUTS = 16, 4, 2

#: The engines shipped with privkeras, read from the registry at collection.
ENGINE_NAMES = sorted(registry.available_engines())


def _engine_class(name: str):
    cls = registry.available_engines()[name]
    if keras.backend.backend() not in cls.keras_backends:
        pytest.skip(f"engine {name!r} does not run under Keras backend {keras.backend.backend()}")
    return cls


def _policy(cls) -> policies.Policy | None:
    """The default policy of the engine's kind, naming its variant where it has one."""
    if cls.policy_kind is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = policies.get(cls.policy_kind)  # each kind is also a shorthand
    if cls.variant is not None:
        policy = dataclasses.replace(policy, engine=cls.variant)
    return policy


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, FEATURES)).astype("float32")
    y = (x[:, :OUTPUTS] * 0.5).astype("float32")
    return x, y


def _model(cls, layers=None) -> PrivateSequential:
    keras.utils.set_random_seed(0)
    model = PrivateSequential(
        layers
        or [
            keras.Input((FEATURES,)),
            keras.layers.Dense(3),
            keras.layers.Dense(OUTPUTS),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", privacy=_policy(cls))
    assert type(model.engine) is cls
    return model


@functools.cache
def _shared_model(name: str) -> PrivateSequential:
    """One model per engine for tests that leave it unchanged."""
    return _model(registry.available_engines()[name])


@pytest.fixture
def keras_steps(monkeypatch):
    """Records, for every call of Keras's own steps on a `PrivateSequential`, whether a
    Keras loop was open (plain Keras models, such as simulated owners' local ones, are
    not recorded)."""
    calls: list[tuple[str, bool]] = []
    for step in ("train_step", "test_step", "predict_step"):
        original = getattr(keras.Sequential, step)

        def recording(self, *data, _original=original, _step=step):
            if isinstance(self, PrivateSequential):
                calls.append((_step, getattr(self, "in_keras_loop", False)))
            return _original(self, *data)

        monkeypatch.setattr(keras.Sequential, step, recording)
    return calls


def _weights(model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


# -- routing and capability flags ---------------------------------------------------------------
def _entry_points(model, x, y):
    train_x, train_y = type(model.engine).training_data_from_arrays(x, y)
    return {
        "fit": (lambda: model.fit(train_x, train_y, batch_size=8, verbose=0), "TRAINS"),
        "evaluate": (lambda: model.evaluate(x, y, batch_size=8, verbose=0), "EVALUATES"),
        "predict": (lambda: model.predict(x, batch_size=8, verbose=0), "PREDICTS"),
        "train_on_batch": (lambda: model.train_on_batch(x, y), None),
        "test_on_batch": (lambda: model.test_on_batch(x, y), "EVALUATES"),
        "predict_on_batch": (lambda: model.predict_on_batch(x), "PREDICTS"),
    }


@pytest.mark.multi_backend
@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_every_entry_point_is_routed_or_refused(name, keras_steps):
    cls = _engine_class(name)
    model = _model(cls)
    x, y = _data()
    for entry, (call, flag) in _entry_points(model, x, y).items():
        try:
            result = call()
        except CapabilityError as error:
            assert repr(cls.name) in str(error), (entry, str(error))
            assert flag is None or not getattr(cls, flag), f"{name}: {entry} refused but {flag}"
            continue
        assert flag is None or getattr(cls, flag), f"{name}: {entry} ran without {flag}"
        if entry in ("predict", "predict_on_batch"):
            assert np.shape(result) == (N, OUTPUTS), (entry, np.shape(result))
        if entry == "fit":
            assert isinstance(result, keras.callbacks.History)
    # Keras's plaintext steps ran only where the engine itself opened Keras's loop.
    assert all(opened for _, opened in keras_steps), keras_steps


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_keras_steps_called_directly_run_only_without_a_policy(name, keras_steps):
    cls = _engine_class(name)
    model = _model(cls)
    x, y = _data()
    steps = {
        "train_step": lambda: model.train_step((x, y)),
        "test_step": lambda: model.test_step((x, y)),
        "predict_step": lambda: model.predict_step(x),
    }
    for step, call in steps.items():
        if cls.policy_kind is None:
            call()  # plain Keras: a direct step is Keras's own
            continue
        with pytest.raises(CapabilityError) as info:
            call()
        assert repr(cls.name) in str(info.value), (step, str(info.value))
    if cls.policy_kind is not None:
        assert keras_steps == []


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_capability_flags_match_capabilities_and_export(name, tmp_path):
    cls = _engine_class(name)
    flags = {"fit": cls.TRAINS, "predict": cls.PREDICTS, "evaluate": cls.EVALUATES}
    flags["export"] = cls.EXPORTS
    assert cls.capabilities() == {op for op, on in flags.items() if on}
    assert bool(cls.export_formats) == cls.EXPORTS, "export_formats is non-empty iff EXPORTS"
    model = _model(cls)
    if not cls.EXPORTS:
        with pytest.raises(CapabilityError, match=repr(cls.name)):
            model.export(str(tmp_path / "model"), format="privkeras-conformance")
        return
    for export_format in cls.export_formats:
        target = tmp_path / export_format
        model.export(str(target), format=export_format)
        assert target.exists(), f"{name}: export(format={export_format!r}) wrote nothing"


# -- the same mistake, the same error --------------------------------------------------------
def _mistakes():
    x, y = _data()
    nan_x = x.copy()
    nan_x[3, 1] = np.nan
    inf_y = y.copy()
    inf_y[5, 0] = np.inf
    return {
        "nan-x": ({"x": nan_x, "y": y}, r"rows \[3\] \(first at index \(3, 1\): "),
        "inf-y": ({"x": x, "y": inf_y}, r"Expected finite values in y.*rows \[5\]"),
        "batch-size-0": ({"x": x, "y": y, "batch_size": 0}, r"batch_size=0"),
        "wrong-shape": ({"x": x[:, :3], "y": y}, r"shape \(None, 4\).*x\.shape=\(16, 3\)"),
        "no-samples": ({"x": x[:0], "y": y[:0]}, r"at least one sample.*\(0, 4\)"),
        "misaligned": ({"x": x, "y": y[:5]}, r"same number of rows.*y\.shape=\(5, 2\)"),
    }


_OPERATIONS = {
    "fit": lambda m, a: m.fit(**a, verbose=0),
    "evaluate": lambda m, a: m.evaluate(**a, verbose=0),
    "predict": lambda m, a: m.predict(a["x"], batch_size=a.get("batch_size"), verbose=0),
    "train_on_batch": lambda m, a: m.train_on_batch(a["x"], a["y"]),
    "test_on_batch": lambda m, a: m.test_on_batch(a["x"], a["y"]),
    "predict_on_batch": lambda m, a: m.predict_on_batch(a["x"]),
}

#: Mistakes that concern y or batch_size do not apply to calls without them.
_NOT_APPLICABLE = {
    "predict": {"inf-y", "misaligned"},
    "predict_on_batch": {"inf-y", "misaligned", "batch-size-0"},
    "train_on_batch": {"batch-size-0"},
    "test_on_batch": {"batch-size-0"},
}


@pytest.mark.parametrize(
    ("mistake", "operation"),
    [
        (mistake, operation)
        for mistake in sorted(_mistakes())
        for operation in sorted(_OPERATIONS)
        if mistake not in _NOT_APPLICABLE.get(operation, ())
    ],
)
def test_the_same_mistake_gets_the_same_error_in_every_engine(mistake, operation, keras_steps):
    arguments, message = _mistakes()[mistake]
    messages = {}
    for name in ENGINE_NAMES:
        cls = registry.available_engines()[name]
        if keras.backend.backend() not in cls.keras_backends:
            continue
        model = _shared_model(name)
        before = _weights(model)
        with pytest.raises(InvalidInputError, match=message) as info:
            _OPERATIONS[operation](model, arguments)
        messages[name] = str(info.value)
        for old, new in zip(before, _weights(model)):
            np.testing.assert_array_equal(old, new)  # refused before any step
    assert len(set(messages.values())) == 1, messages
    assert keras_steps == []


# -- atomic compile ------------------------------------------------------------------------------
def _compile_state(model) -> dict:
    return {
        "privacy": model.privacy,
        "engine": model.engine,
        "compiled": model.compiled,
        "optimizer": getattr(model, "optimizer", None),
        "config": model.get_compile_config() if model.compiled else None,
        "weights": [w.tobytes() for w in _weights(model)],
    }


def _previously_compiled() -> PrivateSequential:
    model = PrivateSequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(3), keras.layers.Dense(OUTPUTS)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mae", metrics=["mse"])
    return model


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_a_refused_compile_leaves_the_model_as_it_was(name):
    """Any engine's refusal in `on_compile`: the same engine class, made to refuse,
    registered in its place for the test."""
    cls = _engine_class(name)

    class Refusing(cls):
        def on_compile(self, model):
            raise UnsupportedLayerError(f"engine {self.name!r} refuses this model")

    models = [_previously_compiled(), PrivateSequential([keras.Input((FEATURES,))])]
    registry.register_engine(Refusing, replace=True)
    try:
        for model in models:
            before = _compile_state(model)
            with pytest.raises(UnsupportedLayerError, match="refuses this model"):
                model.compile(optimizer="adam", loss="mse", privacy=_policy(cls))
            assert _compile_state(model) == before
    finally:
        registry.register_engine(cls, replace=True)


class _Opaque(keras.layers.Layer):
    """A layer of the user's own that no privacy engine can know."""

    def call(self, inputs):
        return keras.ops.tanh(inputs) * 2.0


def test_engines_that_refuse_a_real_model_at_compile_leave_it_as_it_was():
    refused = []
    for name in ENGINE_NAMES:
        cls = registry.available_engines()[name]
        if keras.backend.backend() not in cls.keras_backends:
            continue
        model = PrivateSequential(
            [keras.Input((FEATURES,)), keras.layers.Dense(3), _Opaque(), keras.layers.Dense(2)]
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mae")
        before = _compile_state(model)
        try:
            model.compile(optimizer="adam", loss="mse", privacy=_policy(cls))
        except UnsupportedLayerError:
            refused.append(name)
            assert _compile_state(model) == before, name
            model.fit(*_data(), epochs=1, batch_size=8, verbose=0)  # still the old plain model
    assert refused, "no engine refuses an unknown layer at compile: nothing was checked"
