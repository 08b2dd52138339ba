"""The MPC engines: Keras models run on secret-shared data and weights.

Two engines share this code and differ only in the tensors their ring
kernels use: `"mpc-tfe"` (TensorFlow tensors, the TF-Encrypted lineage) and
`"mpc-torch"` (torch tensors, the CrypTen lineage). Both run under any Keras
backend; `MPC(engine=None)` picks the one whose tensors match the Keras
backend. With the same seed they give bit-identical results.

Who holds what (the parties are simulated in one process, over the same
communicator interface a networked runtime implements):

- the model owner secret-shares the weights (`owner="model_owner"`);
- the caller secret-shares its inputs (`owner="caller"`); data owners of
  `SharedData` share their own rows under their own names;
- `predict` / `evaluate` reveal only the outputs, to the caller;
- `fit` reveals only the final weights to the model owner (with
  `SharedData`: only the combined update), plus predictions on
  `validation_data` to the caller when the caller passes it.

Every reveal is recorded in `engine.runtime.reveal_log`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from privkeras.backends import keras_loop
from privkeras.backends.base import Engine
from privkeras.backends.mpc import trainer
from privkeras.backends.mpc.errors import MPCInputError
from privkeras.backends.mpc.layers import SecureProgram, SharedParams
from privkeras.backends.mpc.roles import CALLER, MODEL_OWNER
from privkeras.backends.mpc.shared_data import as_float_array, check_batch_size, require_finite
from privkeras.backends.registry import register_engine
from privkeras.errors import CapabilityError, EngineNotAvailableError
from privkeras.policies import MPC

__all__ = ["CALLER", "MODEL_OWNER", "MPCEngine", "MPCTFEEngine", "MPCTorchEngine"]


def available_protocols() -> tuple[str, ...]:
    """The protocols registered with the MPC runtime (`runtime.PROTOCOLS`)."""
    from privkeras.backends.mpc import runtime

    return runtime.available_protocols()


class MPCEngine(Engine):
    """Base of the MPC engines; subclasses fix the kernel library.

    Args:
        policy: An `MPC` policy (None means `MPC()`).
    """

    policy_kind = "mpc"
    TRAINS = PREDICTS = EVALUATES = True
    #: Ring-kernel library the runtime computes with.
    kernels: ClassVar[str]
    #: The Keras backend whose tensors these kernels use.
    native_backend: ClassVar[str]

    def __init__(self, policy: MPC | None):
        super().__init__(policy if policy is not None else MPC())
        self._runtime = None
        self._shared_weights: tuple[SecureProgram, SharedParams] | None = None

    # -- set-up ------------------------------------------------------------------------
    @classmethod
    def combinations(cls) -> list[str]:
        """Every existing `protocol + engine` pair, e.g. `["pond+tfe", "pond+torch"]`."""
        from privkeras.backends.registry import available_engines

        variants = sorted(
            c.variant for c in available_engines().values() if issubclass(c, MPCEngine)
        )
        return [f"{p}+{v}" for p in available_protocols() for v in variants]

    def check_combination(self) -> None:
        """Refuses a protocol/engine pair that does not exist, listing those that do.

        Raises:
            EngineNotAvailableError: When the runtime lacks the policy's protocol.
        """
        if self.policy.protocol not in available_protocols():
            raise EngineNotAvailableError(
                f"MPC(protocol={self.policy.protocol!r}, engine={self.variant!r}) is not "
                f"available. Available protocol+engine combinations: {self.combinations()}."
            )

    @property
    def runtime(self):
        """The engine's `MPCRuntime` (made on first use)."""
        if self._runtime is None:
            from privkeras.backends.mpc.runtime import MPCRuntime

            self.check_combination()
            self._runtime = MPCRuntime(
                protocol=self.policy.protocol,
                kernels=self.kernels,
                precision_bits=self.policy.precision_bits,
                seed=self.policy.seed,
            )
        return self._runtime

    def on_compile(self, model: Any) -> None:
        """Checks the protocol and, for a built model, that every layer has a secure version."""
        self.check_combination()
        if model.built:
            SecureProgram.lower(model, self.name, training=False)

    def report(self) -> dict[str, Any]:
        report = super().report()
        report["engine"] = self.name
        if self._runtime is not None:
            communicator = self._runtime.communicator
            report["bytes_sent"] = communicator.bytes_sent
            report["rounds"] = communicator.rounds
            report["reveals"] = [
                {"what": r.what, "to": r.to, "shape": tuple(r.shape)}
                for r in self._runtime.reveal_log
            ]
        return report

    # -- inference ----------------------------------------------------------------------
    def lower(self, model: Any, sample_shape: tuple[int, ...], training: bool) -> SecureProgram:
        """Builds the model if needed, then lowers it (errors before any party works)."""
        if not model.built:
            model.build((None, *sample_shape))
        return SecureProgram.lower(model, self.name, training=training)

    def checked_inputs(
        self, model: Any, x: Any, steps: int | None, batch_size: int
    ) -> tuple[SecureProgram, np.ndarray]:
        """Lowers the model and checks the caller's inputs, all before any party works.

        Raises:
            UnsupportedLayerError: For a layer without a secure version.
            PrecisionOverflowError: For non-finite inputs, or values the
                fixed-point ring cannot hold in some layer.
            ValueError: For inputs of the wrong shape.
        """
        values = _as_batch(x, "x")
        program = self.lower(model, values.shape[1:], training=False)
        if steps is not None:
            values = values[: steps * batch_size]
        values = self.validated_inputs(values, program, "x")
        program.check_range(float(np.max(np.abs(values))), self.runtime.codec)
        return program, values

    def validated_inputs(self, x: Any, program: SecureProgram, what: str) -> np.ndarray:
        """The caller's inputs as float64, refused if non-finite or mis-shaped."""
        values = _as_batch(x, what)
        if values.shape[1:] != program.input_shape:
            raise MPCInputError(
                f"Expected {what} of shape (None, {', '.join(map(str, program.input_shape))}). "
                f"Received: shape={values.shape}"
            )
        require_finite(values, what)
        return values

    def shared_weights(self, program: SecureProgram) -> SharedParams:
        """The model owner's shared weights, reused while the weights do not change."""
        cached = self._shared_weights
        if cached is None or not program.same_params(cached[0]):
            self._shared_weights = cached = (
                program,
                program.share_params(self.runtime, MODEL_OWNER),
            )
        return cached[1]

    def private_outputs(
        self,
        program: SecureProgram,
        params: SharedParams,
        x: np.ndarray,
        batch_size: int,
        what: str = "predictions",
        on_batch: Any = None,
    ) -> np.ndarray:
        """Shares `x` batch by batch as the caller, runs the program, reveals outputs to the caller."""
        outputs = []
        for step, start in enumerate(range(0, len(x), batch_size)):
            if on_batch is not None:
                on_batch("begin", step, None)
            shared = self.runtime.share(x[start : start + batch_size], owner=CALLER, name="inputs")
            y, _ = program.forward(shared, params)
            revealed = self.runtime.reveal(y, to=CALLER, what=what).astype(np.float32)
            outputs.append(revealed)
            if on_batch is not None:
                on_batch("end", step, revealed)
        return np.concatenate(outputs, axis=0)

    def predict(
        self,
        model: Any,
        x: Any,
        batch_size: int | None = None,
        verbose: Any = "auto",
        steps: int | None = None,
        callbacks: Any = None,
    ) -> np.ndarray:
        """Private inference: only the outputs are revealed, to the caller.

        Args:
            model: The compiled `PrivateSequential`.
            x: Inputs (numpy array or tensor), shape `(n, *input_shape)`.
            batch_size: Rows per secure batch (default 32, as Keras; larger
                batches amortize rounds).
            verbose: 0, 1, 2 or "auto", as `keras.Model.predict`.
            steps: Number of batches to run (None: all).
            callbacks: Keras callbacks, called as by `keras.Model.predict`.

        Returns:
            float32 numpy outputs.

        Raises:
            UnsupportedLayerError: Before any party works, for a layer without
                a secure version.
            PrecisionOverflowError: Before any party works, for non-finite
                inputs or values that would overflow the fixed-point ring.
        """
        batch_size = check_batch_size(batch_size)
        program, values = self.checked_inputs(model, x, steps, batch_size)
        callbacks = keras_loop.callback_list(
            callbacks, model, verbose, steps=math.ceil(len(values) / batch_size)
        )
        callbacks.on_predict_begin()
        params = self.shared_weights(program)
        predictions = self.private_outputs(
            program, params, values, batch_size, on_batch=keras_loop.predict_hooks(callbacks)
        )
        callbacks.on_predict_end()
        return predictions

    def evaluate(
        self,
        model: Any,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        verbose: Any = "auto",
        sample_weight: Any = None,
        steps: int | None = None,
        callbacks: Any = None,
        return_dict: bool = False,
    ) -> Any:
        """Private inference, then the compiled loss and metrics on the revealed outputs.

        The loss and metrics are Keras's own objects (`compile(loss=...,
        metrics=...)`), computed by the caller on the outputs revealed to it.
        Returns what `keras.Model.evaluate` returns.
        """
        if sample_weight is not None:
            raise CapabilityError(f"Engine {self.name!r} does not support sample_weight.")
        batch_size = check_batch_size(batch_size)
        program, values = self.checked_inputs(model, x, steps, batch_size)
        if y is None:
            raise MPCInputError("Expected y for evaluate(x, y). Received: y=None")
        targets = np.asarray(y)[: len(values)]
        if len(targets) != len(values):
            raise MPCInputError(
                f"Expected x and y with the same number of rows. "
                f"Received: {len(values)} and {len(np.asarray(y))}"
            )
        callbacks = keras_loop.callback_list(
            callbacks, model, verbose, steps=math.ceil(len(values) / batch_size)
        )
        callbacks.on_test_begin()
        logs = self.keras_metrics(
            model,
            program,
            self.shared_weights(program),
            values,
            targets,
            batch_size,
            what="predictions",
            callback_list=callbacks,
        )
        callbacks.on_test_end(logs)
        return keras_loop.evaluate_result(logs, return_dict)

    def keras_metrics(
        self,
        model: Any,
        program: SecureProgram,
        params: SharedParams,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        what: str,
        callback_list: Any = None,
    ) -> dict[str, float]:
        """Reveals outputs batch by batch to the caller; Keras's metric objects score them."""
        scorer = keras_loop.RevealedScorer(model, y, callback_list)
        self.private_outputs(program, params, x, batch_size, what=what, on_batch=scorer.on_batch)
        return scorer.result()

    # -- training ---------------------------------------------------------------------------
    def fit(self, model: Any, x: Any = None, y: Any = None, **kwargs: Any) -> Any:
        """Encrypted training; see `privkeras.backends.mpc.trainer.fit`."""
        return trainer.fit(self, model, x, y, **kwargs)


def _as_batch(x: Any, what: str) -> np.ndarray:
    if x is None:
        raise MPCInputError(f"Expected {what} as a numeric array. Received: None")
    values = as_float_array(x, what)
    if values.ndim < 1 or not len(values):
        raise MPCInputError(f"Expected a non-empty batch of {what}. Received: shape={values.shape}")
    return values


@register_engine
class MPCTFEEngine(MPCEngine):
    """MPC on TensorFlow tensors (`MPC(engine="tfe")`), under any Keras backend."""

    name = "mpc-tfe"
    variant = "tfe"
    kernels = "tensorflow"
    native_backend = "tensorflow"


@register_engine
class MPCTorchEngine(MPCEngine):
    """MPC on torch tensors (`MPC(engine="torch")`), under any Keras backend."""

    name = "mpc-torch"
    variant = "torch"
    kernels = "torch"
    native_backend = "torch"
