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

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from privkeras.backends import keras_loop
from privkeras.backends.base import Engine
from privkeras.backends.mpc import trainer
from privkeras.backends.mpc.errors import MPCInputError
from privkeras.backends.mpc.jobs import Hooks, JobSpec, run_predict
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
    TRAINS = PREDICTS = EVALUATES = EXPORTS = True
    export_formats = ("mpc",)
    #: Ring-kernel library the runtime computes with.
    kernels: ClassVar[str]
    #: The Keras backend whose tensors these kernels use.
    native_backend: ClassVar[str]

    def __init__(self, policy: MPC | None):
        super().__init__(policy if policy is not None else MPC())
        self._runtime = None
        self._shared_weights: tuple[SecureProgram, SharedParams] | None = None
        #: Where networked jobs run (a `cluster.Cluster`); None for the in-process runtime
        #: unless the policy names parties.
        self.cluster = None
        #: What the last networked job cost and revealed (`cluster.JobReport`).
        self.last_report = None

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
        if self.last_report is not None:  # the last networked job, counted by every process
            stats, log = self.last_report.stats, self.last_report.reveal_logs["driver"]
        elif self._runtime is not None:
            stats, log = self._runtime.communicator.snapshot(), self._runtime.reveal_log
        else:
            return report
        report["bytes_sent"] = stats.bytes_sent
        report["rounds"] = stats.rounds
        report["reveals"] = [{"what": r.what, "to": r.to, "shape": tuple(r.shape)} for r in log]
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

    def shared_weights(self, program: SecureProgram, runtime: Any) -> SharedParams:
        """The model owner's shared weights; in-process, reused while the weights do not change."""
        if runtime is not self._runtime:  # a networked job shares them afresh
            return program.share_params(runtime, MODEL_OWNER)
        cached = self._shared_weights
        if cached is None or not program.same_params(cached[0]):
            self._shared_weights = cached = (program, program.share_params(runtime, MODEL_OWNER))
        return cached[1]

    @contextlib.contextmanager
    def session(self, spec: Callable[[], JobSpec]):
        """The runtime one job runs on.

        In-process (`MPC(parties=None)`), the engine's own runtime, where every
        role runs. With `parties`, a networked job: the parties receive `spec()`
        and run the same job code in their processes, and this process runs it
        as the caller and model owner (see `privkeras.backends.mpc.cluster`).
        """
        if self.cluster is None and getattr(self.policy, "parties", None) is None:
            yield self.runtime
            return
        from privkeras.backends.mpc.cluster import driver_job

        with driver_job(self, spec()) as runtime:
            yield runtime

    def describe_workers(self, data: Any) -> None:
        """Asks each data owner's `privkeras worker` for its shapes (and max |x|).

        Raises:
            CapabilityError: Without `MPC(parties=...)`: the in-process runtime
                cannot receive shares from another process.
        """
        data.describe_workers(self._network_cluster().describe_worker)

    def _network_cluster(self) -> Any:
        from privkeras.backends.mpc.network import NetworkCluster

        if self.cluster is None and getattr(self.policy, "parties", None) is not None:
            self.cluster = NetworkCluster(self.policy)
        if not isinstance(self.cluster, NetworkCluster):
            raise CapabilityError(
                f"Engine {self.name!r} trains on data owners' workers only with its parties as "
                "processes: compile with pk.MPC(parties=...) (e.g. pk.mpc.local_cluster). "
                "Received: parties=None"
            )
        return self.cluster

    def predict_job(
        self, model: Any, program: SecureProgram, rows: int, batch_size: int, what: str
    ) -> JobSpec:
        """The `JobSpec` of a predict or evaluate: architecture and shapes, no secrets."""
        return JobSpec(
            kind="predict",
            engine=self.name,
            protocol=self.policy.protocol,
            precision_bits=self.policy.precision_bits,
            seed=self.policy.seed,
            model=model.to_json(),
            input_shape=program.input_shape,
            rows=rows,
            batch_size=batch_size,
            what=what,
        )

    def private_outputs(
        self,
        model: Any,
        program: SecureProgram,
        x: np.ndarray,
        batch_size: int,
        what: str = "predictions",
        on_batch: Any = None,
    ) -> np.ndarray:
        """Shares `x` batch by batch as the caller, runs the program, reveals outputs to the caller."""
        hooks = _BatchHooks(on_batch)
        job = functools.partial(self.predict_job, model, program, len(x), batch_size, what)
        with self.session(job) as runtime:
            params = self.shared_weights(program, runtime)
            return run_predict(runtime, program, params, x, batch_size, what, hooks)

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
        predictions = self.private_outputs(
            model, program, values, batch_size, on_batch=keras_loop.predict_hooks(callbacks)
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
        scorer = keras_loop.RevealedScorer(model, targets, callbacks)
        self.private_outputs(model, program, values, batch_size, on_batch=scorer.on_batch)
        logs = scorer.result()
        callbacks.on_test_end(logs)
        return keras_loop.evaluate_result(logs, return_dict)

    # -- training ---------------------------------------------------------------------------
    def fit(self, model: Any, x: Any = None, y: Any = None, **kwargs: Any) -> Any:
        """Encrypted training; see `privkeras.backends.mpc.trainer.fit`."""
        return trainer.fit(self, model, x, y, **kwargs)

    # -- serving ----------------------------------------------------------------------------
    def export(self, model: Any, filepath: str, format: str = "mpc", **kwargs: Any) -> Any:
        """One share bundle per server role, and the manifest; see `bundles.export_bundle`."""
        from privkeras.backends.mpc.bundles import export_bundle

        return export_bundle(self, model, filepath, **kwargs)

    @classmethod
    def serving_backend(cls) -> Any:
        """What `privkeras.serving` serves this engine's bundles with (`serving.MPCServingBackend`)."""
        from privkeras.backends.mpc.serving import MPCServingBackend

        return MPCServingBackend


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


class _BatchHooks(Hooks):
    """Predict-batch events to a Keras hook (`keras_loop.predict_hooks`, a scorer)."""

    def __init__(self, on_batch: Any):
        self._on_batch = on_batch

    def on_batch(self, event: str, step: int, outputs: np.ndarray | None) -> None:
        if self._on_batch is not None:
            self._on_batch(event, step, outputs)
