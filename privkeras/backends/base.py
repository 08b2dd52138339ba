"""The engine interface every privacy engine implements."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

from privkeras.backends.validation import num_samples
from privkeras.errors import CapabilityError

if TYPE_CHECKING:
    from privkeras.policies import Policy


class Engine(abc.ABC):
    """Runs a Keras model under one privacy policy.

    An engine class declares what it is with class attributes that both the
    registry and the tests read:

    - `name`: the registry key, e.g. `"plaintext"`, `"dpsgd"`, `"mpc-torch"`.
    - `policy_kind`: the `Policy.kind` it serves (`None` for no privacy).
    - `keras_backends`: Keras backends it runs under.
    - `variant`: for policies that name an engine (`MPC(engine="tfe")`), the
      value of that field this engine answers to.
    - `native_backend`: the Keras backend whose tensors the engine computes
      with, if any; among variants, `get_engine` prefers the one matching
      the Keras backend.
    - capability flags `TRAINS`, `PREDICTS`, `EVALUATES`, `EXPORTS`, and
      `export_formats`, the `model.export(format=...)` values it writes
      (non-empty exactly when `EXPORTS`).

    An instance is made per `compile`, holding the policy. Every Keras entry
    point of `PrivateSequential` is routed to one method here, which either
    runs the operation under the policy or raises `CapabilityError` naming
    the engine; nothing falls through to Keras by default:

    - `fit`, `predict`, `evaluate`, `export`: refused unless overridden.
    - `predict_on_batch`, `test_on_batch`: `predict` / `evaluate` on the
      one batch, when the engine `PREDICTS` / `EVALUATES`.
    - `train_on_batch`: refused (an engine's training runs its own loop).
    - `train_step`, `test_step`, `predict_step`: Keras's own step, but only
      inside a Keras loop the engine opened on purpose (`model.keras_fit`,
      `keras_evaluate`, `keras_predict`, as DP-SGD does for inference);
      refused when called from anywhere else. An engine that trains with
      Keras's loop overrides `train_step`.

    `model(x)` is not routed: it is the model owner's local plaintext call.
    """

    name: ClassVar[str]
    policy_kind: ClassVar[str | None]
    keras_backends: ClassVar[frozenset[str]] = frozenset({"tensorflow", "torch", "jax"})
    variant: ClassVar[str | None] = None
    native_backend: ClassVar[str | None] = None

    TRAINS: ClassVar[bool] = False
    PREDICTS: ClassVar[bool] = False
    EVALUATES: ClassVar[bool] = False
    EXPORTS: ClassVar[bool] = False
    export_formats: ClassVar[tuple[str, ...]] = ()

    def __init__(self, policy: Policy | None):
        self.policy = policy

    def _refuse(self, operation: str) -> CapabilityError:
        return CapabilityError(
            f"Engine {self.name!r} does not support {operation}(). "
            f"It supports: {sorted(self.capabilities())}."
        )

    @classmethod
    def capabilities(cls) -> frozenset[str]:
        """The operations this engine offers, read from its flags."""
        flags = {
            "fit": cls.TRAINS,
            "predict": cls.PREDICTS,
            "evaluate": cls.EVALUATES,
            "export": cls.EXPORTS,
        }
        return frozenset(op for op, on in flags.items() if on)

    @classmethod
    def training_data_from_arrays(cls, x: Any, y: Any) -> tuple[Any, Any]:
        """`(x, y)` as this engine's `fit` takes them, made from arrays the caller holds.

        The arrays themselves by default. An engine whose training data lives
        elsewhere (with data owners, for example) returns its own form of
        the same rows; the conformance suite trains every engine through it.
        """
        return x, y

    def on_compile(self, model: Any) -> None:  # noqa: B027 - optional hook
        """Checks the model when it is compiled with this engine's policy.

        Called before `compile` changes anything: raising (for example
        `UnsupportedLayerError`) leaves the model exactly as it was, with its
        previous policy, engine and compile state. It must not change the
        model, and cannot rely on the new loss or optimizer.
        """

    # -- whole-data operations --------------------------------------------------------------
    def fit(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("fit")

    def predict(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("predict")

    def evaluate(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("evaluate")

    def export(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("export")

    # -- one batch --------------------------------------------------------------------------
    def train_on_batch(self, model: Any, x: Any, y: Any = None, **kwargs: Any) -> Any:
        """Refused: an engine trains inside its own `fit` loop (batches, accounting, protocol)."""
        if not self.TRAINS:
            raise self._refuse("train_on_batch")
        raise CapabilityError(
            f"Engine {self.name!r} trains only inside fit(), which runs its own loop "
            "(sampling, accounting, protocol); train_on_batch() would step outside it. "
            "Use fit()."
        )

    def test_on_batch(
        self,
        model: Any,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        return_dict: bool = False,
    ) -> Any:
        """`evaluate` on one batch, returning what `keras.Model.test_on_batch` returns.

        The metrics are reset first (Keras's `test_on_batch` accumulates them
        across calls until `reset_metrics()`).
        """
        if not self.EVALUATES:
            raise self._refuse("test_on_batch")
        weights = {} if sample_weight is None else {"sample_weight": sample_weight}
        return self.evaluate(
            model,
            x=x,
            y=y,
            batch_size=num_samples(x),
            verbose=0,
            return_dict=return_dict,
            **weights,
        )

    def predict_on_batch(self, model: Any, x: Any) -> Any:
        """`predict` on one batch, as `keras.Model.predict_on_batch`."""
        if not self.PREDICTS:
            raise self._refuse("predict_on_batch")
        return self.predict(model, x=x, batch_size=num_samples(x), verbose=0)

    # -- Keras's steps ----------------------------------------------------------------------
    def train_step(self, model: Any, *data: Any) -> Any:
        """Keras's `train_step`, inside a Keras loop this engine opened; refused elsewhere."""
        self._require_keras_loop(model, "train_step")
        return model.keras_train_step(*data)

    def test_step(self, model: Any, *data: Any) -> Any:
        """Keras's `test_step`, inside a Keras loop this engine opened; refused elsewhere."""
        self._require_keras_loop(model, "test_step")
        return model.keras_test_step(*data)

    def predict_step(self, model: Any, *data: Any) -> Any:
        """Keras's `predict_step`, inside a Keras loop this engine opened; refused elsewhere."""
        self._require_keras_loop(model, "predict_step")
        return model.keras_predict_step(*data)

    def _require_keras_loop(self, model: Any, step: str) -> None:
        if not model.in_keras_loop:
            raise CapabilityError(
                f"Engine {self.name!r} runs Keras's {step}() only inside its own operations "
                f"({sorted(self.capabilities())}): called from elsewhere it would compute in "
                "plaintext, outside the policy."
            )

    def report(self) -> dict[str, Any]:
        """What the engine has to say about privacy spent so far."""
        return {"policy": None if self.policy is None else self.policy.describe()}
