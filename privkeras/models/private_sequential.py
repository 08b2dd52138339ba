"""`PrivateSequential`: a `keras.Sequential` whose privacy is chosen at compile time."""

from __future__ import annotations

import contextlib
import inspect
import io
from collections.abc import Iterator
from typing import Any

import keras

from privkeras import policies
from privkeras.backends import validation
from privkeras.backends.registry import get_engine
from privkeras.errors import CapabilityError

__all__ = ["PrivateSequential"]

#: `export` formats that Keras writes itself (plaintext, for the model owner).
_KERAS_EXPORT_FORMATS = ("tf_saved_model", "onnx", "openvino", "litert")

#: Keras's signatures of the routed methods: engines receive the user's arguments by name.
_KERAS_SIGNATURES = {
    name: inspect.signature(getattr(keras.Sequential, name))
    for name in (
        "compile",
        "fit",
        "evaluate",
        "predict",
        "train_on_batch",
        "test_on_batch",
        "predict_on_batch",
    )
}


def _by_name(method: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The call's arguments by name, bound as Keras's own `method` binds them.

    Raises:
        TypeError: For arguments Keras's `method` does not take, as Keras would.
    """
    signature = _KERAS_SIGNATURES[method]
    arguments = dict(signature.bind(None, *args, **kwargs).arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
    arguments.pop(next(iter(signature.parameters)))  # self
    return arguments


class _CompileArguments:
    """What the last successful `compile` passed to Keras (a plain holder, so that
    Keras's attribute tracking leaves the metric objects in it alone)."""

    def __init__(self, arguments: dict[str, Any]):
        self.arguments = arguments


@keras.saving.register_keras_serializable(package="privkeras")
class PrivateSequential(keras.Sequential):
    """A `keras.Sequential` model with a privacy policy.

    Declare it exactly like `keras.Sequential`; pass `privacy=` to `compile`.
    With `privacy=None` it is plain Keras (the plaintext engine). Otherwise
    the backend registry picks the engine for the policy and the Keras
    backend at `compile`, and the engine serves every Keras entry point:

    - `fit`, `evaluate`, `predict`, `train_on_batch`, `test_on_batch`,
      `predict_on_batch` and `export` (privacy formats) are routed to the
      engine, which runs them under the policy or raises `CapabilityError`
      naming itself (under MPC and HE, `train_on_batch` is refused; the
      others run encrypted). Nothing falls through to Keras's plaintext loop.
    - `train_step`, `test_step` and `predict_step` run Keras's own step only
      inside a Keras loop the engine opened itself (DP-SGD's inference, for
      example); called from anywhere else under a privacy engine they raise
      `CapabilityError`.
    - `model(x)` (`__call__`) is not routed: it is the model owner's own
      forward pass in plaintext, on the plaintext weights this process holds,
      exactly as in Keras. It is what a model owner uses to check its model;
      it protects nothing.
    - `export` in Keras's formats (`"tf_saved_model"`, ...) writes the
      plaintext model, for its owner.

    Before routing, numpy and tensor inputs are checked once
    (`privkeras.backends.validation`): NaN or infinite values, inputs of the
    wrong shape, empty inputs, misaligned `x`/`y`/`sample_weight` and a bad
    `batch_size` raise `InvalidInputError`, the same for every engine,
    before any step.

    Example:

    ```python
    import keras
    import privkeras as pk

    model = pk.PrivateSequential([
        keras.Input((30,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer="sgd", loss="binary_crossentropy",
                  privacy=pk.DPSGD(l2_norm_clip=1.0, noise_multiplier=1.1))
    ```
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._privacy: policies.Policy | None = None
        self._engine = None
        self._last_compile: _CompileArguments | None = None
        self._keras_loops = 0

    # -- compile -------------------------------------------------------------------------
    def compile(self, *args: Any, privacy: policies.Policy | str | None = None, **kwargs: Any):
        """Configures the model for training, as `keras.Model.compile`, plus a policy.

        Atomic: when the policy, the engine or Keras refuses, the model is
        left as it was (its previous policy, engine, optimizer, loss and
        metrics, or uncompiled).

        Args:
            *args: Positional arguments of `keras.Model.compile`.
            privacy: A policy (`DPSGD`, `Federated`, `MPC`, `HE`), one of the
                shorthands `"dp-sgd"`, `"federated"`, `"mpc"`, `"he"`, or None.
            **kwargs: Every other `keras.Model.compile` argument.

        Raises:
            PrivacyPolicyError: For an unknown shorthand or a non-policy object.
            EngineNotAvailableError: When no engine serves the policy under the
                current Keras backend.
            UnsupportedLayerError: When the engine cannot run a layer of the model.
        """
        arguments = _by_name("compile", args, kwargs)
        policy = policies.get(privacy)
        engine = get_engine(policy, keras.backend.backend())
        engine.on_compile(self)  # An engine's refusal comes before anything changes.
        try:
            super().compile(**arguments)
        except Exception:
            self._restore_compile()
            raise
        self._privacy, self._engine = policy, engine
        self._last_compile = _CompileArguments({**arguments, "optimizer": self.optimizer})

    def _restore_compile(self) -> None:
        """Undoes a `keras.Model.compile` that raised part-way (it sets the optimizer first)."""
        if self._last_compile is None:
            self.compiled = False
        else:
            super().compile(**self._last_compile.arguments)

    def get_compile_config(self) -> dict[str, Any]:
        config = super().get_compile_config()
        if config or self._privacy is not None:
            config = {**config, "privacy": policies.serialize(self._privacy)}
        return config

    def compile_from_config(self, config: dict[str, Any]) -> None:
        config = dict(config)
        privacy = policies.deserialize(config.pop("privacy", None))
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config, privacy=privacy)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # -- what the user asked for ----------------------------------------------------------
    @property
    def privacy(self) -> policies.Policy | None:
        """The compiled privacy policy (None for plain Keras or before `compile`)."""
        return self._privacy

    @property
    def engine(self):
        """The engine serving the policy (None before `compile`)."""
        return self._engine

    def privacy_report(self) -> dict[str, Any]:
        """What the engine reports about the privacy spent (epsilon, delta, ...)."""
        return self._require_engine("privacy_report").report()

    def summary(self, *args: Any, print_fn=None, **kwargs: Any) -> None:
        """`keras.Model.summary`, followed by the privacy policy."""
        super().summary(*args, print_fn=print_fn, **kwargs)
        line = "Privacy policy: " + (
            self._privacy.describe() if self._privacy is not None else "None (plain Keras)"
        )
        if self._engine is not None:
            line += f" [engine: {self._engine.name}]"
        (print_fn or print)(line)

    def summary_text(self) -> str:
        """The summary as a string (handy in logs and tests)."""
        buffer = io.StringIO()
        self.summary(print_fn=lambda line, **_: buffer.write(line + "\n"))
        return buffer.getvalue()

    # -- routed to the engine ---------------------------------------------------------------
    def _require_engine(self, operation: str):
        if self._engine is None:
            raise RuntimeError(
                f"You must call `compile()` before `{operation}()`, as for any Keras model."
            )
        return self._engine

    def _input_shape(self) -> tuple | None:
        """The model's input shape with its batch axis; None until Keras knows it."""
        try:
            return tuple(self.input_shape)
        except AttributeError:  # Keras: "has no defined input shape yet"
            return None

    def _checked(self, method: str, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The call's arguments by name, after the checks every engine shares."""
        arguments = _by_name(method, args, kwargs)
        validation.check_call(
            self._input_shape(),
            x=arguments.get("x"),
            y=arguments.get("y"),
            sample_weight=arguments.get("sample_weight"),
            batch_size=arguments.get("batch_size"),
            validation_data=arguments.get("validation_data"),
        )
        return arguments

    def fit(self, *args: Any, **kwargs: Any):
        if self._engine is None:
            return super().fit(*args, **kwargs)  # Keras raises its own "compile first" error.
        return self._engine.fit(self, **self._checked("fit", args, kwargs))

    def evaluate(self, *args: Any, **kwargs: Any):
        if self._engine is None:
            return super().evaluate(*args, **kwargs)
        return self._engine.evaluate(self, **self._checked("evaluate", args, kwargs))

    def predict(self, *args: Any, **kwargs: Any):
        if self._engine is None:
            return super().predict(*args, **kwargs)  # An uncompiled model: plain Keras.
        return self._engine.predict(self, **self._checked("predict", args, kwargs))

    def train_on_batch(self, *args: Any, **kwargs: Any):
        if self._engine is None:
            return super().train_on_batch(*args, **kwargs)
        return self._engine.train_on_batch(self, **self._checked("train_on_batch", args, kwargs))

    def test_on_batch(self, *args: Any, **kwargs: Any):
        if self._engine is None:
            return super().test_on_batch(*args, **kwargs)
        return self._engine.test_on_batch(self, **self._checked("test_on_batch", args, kwargs))

    def predict_on_batch(self, *args: Any, **kwargs: Any):
        if self._engine is None:
            return super().predict_on_batch(*args, **kwargs)
        arguments = self._checked("predict_on_batch", args, kwargs)
        return self._engine.predict_on_batch(self, **arguments)

    def train_step(self, *data: Any):
        """Keras's `train_step` as the engine allows it (see the class docstring)."""
        if self._engine is None:
            return super().train_step(*data)
        return self._engine.train_step(self, *data)

    def test_step(self, *data: Any):
        """Keras's `test_step` as the engine allows it (see the class docstring)."""
        if self._engine is None:
            return super().test_step(*data)
        return self._engine.test_step(self, *data)

    def predict_step(self, *data: Any):
        """Keras's `predict_step` as the engine allows it (see the class docstring)."""
        if self._engine is None:
            return super().predict_step(*data)
        return self._engine.predict_step(self, *data)

    def export(self, filepath: str, format: str = "tf_saved_model", **kwargs: Any):
        """Exports the model. Keras formats go to Keras; privacy formats to the engine."""
        if format in _KERAS_EXPORT_FORMATS:
            return super().export(filepath, format=format, **kwargs)
        engine = self._require_engine("export")
        if not engine.EXPORTS or (engine.export_formats and format not in engine.export_formats):
            raise CapabilityError(
                f"Engine {engine.name!r} cannot export format={format!r}; it exports "
                f"{list(engine.export_formats)} and Keras exports {list(_KERAS_EXPORT_FORMATS)}."
            )
        return engine.export(self, filepath, format=format, **kwargs)

    # -- Keras's own loops, for engines that train or infer with them ------------------------
    @property
    def in_keras_loop(self) -> bool:
        """Whether a `keras_*` loop is running: the only place Keras's steps run under a
        privacy engine (the engine opened it on purpose)."""
        return self._keras_loops > 0

    @contextlib.contextmanager
    def _keras_loop(self) -> Iterator[None]:
        self._keras_loops += 1
        try:
            yield
        finally:
            self._keras_loops -= 1

    def keras_fit(self, *args: Any, **kwargs: Any):
        """`keras.Sequential.fit` on the plaintext model, bypassing the engine."""
        with self._keras_loop():
            return super().fit(*args, **kwargs)

    def keras_predict(self, *args: Any, **kwargs: Any):
        """`keras.Sequential.predict` on the plaintext model, bypassing the engine."""
        with self._keras_loop():
            return super().predict(*args, **kwargs)

    def keras_evaluate(self, *args: Any, **kwargs: Any):
        """`keras.Sequential.evaluate` on the plaintext model, bypassing the engine."""
        with self._keras_loop():
            return super().evaluate(*args, **kwargs)

    def keras_train_on_batch(self, *args: Any, **kwargs: Any):
        """`keras.Sequential.train_on_batch` on the plaintext model, bypassing the engine."""
        with self._keras_loop():
            return super().train_on_batch(*args, **kwargs)

    def keras_test_on_batch(self, *args: Any, **kwargs: Any):
        """`keras.Sequential.test_on_batch` on the plaintext model, bypassing the engine."""
        with self._keras_loop():
            return super().test_on_batch(*args, **kwargs)

    def keras_predict_on_batch(self, *args: Any, **kwargs: Any):
        """`keras.Sequential.predict_on_batch` on the plaintext model, bypassing the engine."""
        with self._keras_loop():
            return super().predict_on_batch(*args, **kwargs)

    def keras_train_step(self, *data: Any):
        """`keras.Sequential.train_step`, for engines (see `Engine.train_step`)."""
        return super().train_step(*data)

    def keras_test_step(self, *data: Any):
        """`keras.Sequential.test_step`, for engines (see `Engine.test_step`)."""
        return super().test_step(*data)

    def keras_predict_step(self, *data: Any):
        """`keras.Sequential.predict_step`, for engines (see `Engine.predict_step`)."""
        return super().predict_step(*data)
