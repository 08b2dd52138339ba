"""`PrivateSequential`: a `keras.Sequential` whose privacy is chosen at compile time."""

from __future__ import annotations

import io
from typing import Any

import keras

from privkeras import policies
from privkeras.backends.registry import get_engine
from privkeras.errors import CapabilityError

__all__ = ["PrivateSequential"]


@keras.saving.register_keras_serializable(package="privkeras")
class PrivateSequential(keras.Sequential):
    """A `keras.Sequential` model with a privacy policy.

    Declare it exactly like `keras.Sequential`; pass `privacy=` to `compile`.
    With `privacy=None` it is plain Keras. Otherwise `fit`, `predict`,
    `evaluate` and `export` run on the engine that the backend registry picks
    for the policy and the Keras backend.

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

    # -- compile -------------------------------------------------------------------
    def compile(self, *args: Any, privacy: policies.Policy | str | None = None, **kwargs: Any):
        """Configures the model for training, as `keras.Model.compile`, plus a policy.

        Args:
            *args: Positional arguments of `keras.Model.compile`.
            privacy: A policy (`DPSGD`, `Federated`, `MPC`, `HE`), one of the
                shorthands `"dp-sgd"`, `"federated"`, `"mpc"`, `"he"`, or None.
            **kwargs: Every other `keras.Model.compile` argument.

        Raises:
            PrivacyPolicyError: For an unknown shorthand or a non-policy object.
            EngineNotAvailableError: When no engine serves the policy under the
                current Keras backend.
        """
        policy = policies.get(privacy)
        engine = get_engine(policy, keras.backend.backend())
        super().compile(*args, **kwargs)
        self._privacy = policy
        self._engine = engine
        engine.on_compile(self)

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
        if getattr(self, "optimizer", None) is not None and self.built:
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
        self._require_engine("privacy_report")
        return self._engine.report()

    def summary(self, *args: Any, print_fn=None, **kwargs: Any) -> None:
        """`keras.Model.summary`, followed by the privacy policy."""
        super().summary(*args, print_fn=print_fn, **kwargs)
        line = "Privacy policy: " + (
            self._privacy.describe() if self._privacy is not None else "None (plain Keras)"
        )
        if self._engine is not None:
            line += f" [engine: {self._engine.name}]"
        (print_fn or print)(line)

    # -- routed to the engine ----------------------------------------------------------
    def _require_engine(self, operation: str):
        if self._engine is None:
            raise RuntimeError(
                f"You must call `compile()` before `{operation}()`, as for any Keras model."
            )
        return self._engine

    def fit(self, *args: Any, **kwargs: Any):
        if self._engine is None:
            return super().fit(*args, **kwargs)  # Keras raises its own "compile first" error.
        return self._engine.fit(self, *args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any):
        if self._engine is None:
            return super().predict(*args, **kwargs)
        return self._engine.predict(self, *args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any):
        if self._engine is None:
            return super().evaluate(*args, **kwargs)
        return self._engine.evaluate(self, *args, **kwargs)

    def export(self, filepath: str, format: str = "tf_saved_model", **kwargs: Any):
        """Exports the model. Keras formats go to Keras; privacy formats to the engine."""
        if format in ("tf_saved_model", "onnx", "openvino", "litert"):
            return super().export(filepath, format=format, **kwargs)
        engine = self._require_engine("export")
        if not engine.EXPORTS:
            raise CapabilityError(
                f"Engine {engine.name!r} cannot export format={format!r}; "
                f"it supports {sorted(engine.capabilities())}."
            )
        return engine.export(self, filepath, format=format, **kwargs)

    # -- the plain Keras loops, for engines that train or infer with Keras ------------
    def keras_fit(self, *args: Any, **kwargs: Any):
        """`keras.Sequential.fit`, bypassing the engine."""
        return super().fit(*args, **kwargs)

    def keras_predict(self, *args: Any, **kwargs: Any):
        """`keras.Sequential.predict`, bypassing the engine."""
        return super().predict(*args, **kwargs)

    def keras_evaluate(self, *args: Any, **kwargs: Any):
        """`keras.Sequential.evaluate`, bypassing the engine."""
        return super().evaluate(*args, **kwargs)

    def train_step(self, data: Any):
        """Keras's `train_step`, or the engine's when it trains with Keras's loop."""
        engine_step = getattr(self._engine, "train_step", None)
        if engine_step is not None:
            return engine_step(self, data)
        return super().train_step(data)

    def summary_text(self) -> str:
        """The summary as a string (handy in logs and tests)."""
        buffer = io.StringIO()
        self.summary(print_fn=lambda line, **_: buffer.write(line + "\n"))
        return buffer.getvalue()
