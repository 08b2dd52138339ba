"""`privacy="he"`: encrypted inference with a client and a server role in one process."""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from typing import Any

import keras
import numpy as np

from privkeras.backends import keras_loop
from privkeras.backends.base import Engine
from privkeras.backends.he.client import HEClient
from privkeras.backends.he.context import EncryptedBatch
from privkeras.backends.he.errors import HEInputError
from privkeras.backends.he.layout import next_power_of_two
from privkeras.backends.he.parallel import EvaluationPool, available_cores
from privkeras.backends.he.params import CKKSParameters
from privkeras.backends.he.planning import ExecutionPlan
from privkeras.backends.he.server import HEServer
from privkeras.backends.registry import register_engine
from privkeras.errors import CapabilityError
from privkeras.layers.polynomial import PolynomialActivation

__all__ = ["HEEngine"]


@register_engine
class HEEngine(Engine):
    """CKKS inference: `predict` and `evaluate` on encrypted inputs.

    Each call plays both roles with separate objects, as they would be on two
    machines: an `HEClient` (secret key) encrypts the inputs and decrypts the
    outputs; an `HEServer` (model and public context only) computes. The
    parameters follow from the model's depth at `compile` time; the packing
    follows from the number of samples (`HEServer.plan`), or from
    `batch_size` when given.

    When a batch spans several ciphertext groups and the cost model says it
    pays (pool start-up included), the server evaluates the groups on every
    core (`EvaluationPool`, started on first use) while this process
    encrypts the next ones, exactly as a remote client and server would:
    ciphertexts cross as bytes. `max_workers` caps the workers (1: never).

    Training is not encrypted: train in plaintext (`compile()` without
    `privacy`, or with `privacy=None`), then `compile(privacy="he")`.
    """

    name = "he"
    policy_kind = "he"
    PREDICTS = EVALUATES = EXPORTS = True
    export_formats = ("he",)

    def __init__(self, policy: Any):
        super().__init__(policy)
        self._server: HEServer | None = None
        self._server_key: str | None = None
        self._clients: dict[CKKSParameters, HEClient] = {}
        self._pool: EvaluationPool | None = None
        self.max_workers: int | None = None
        self.last_run: dict[str, Any] = {}

    # -- roles -----------------------------------------------------------------------------
    def on_compile(self, model: Any) -> None:
        """Converts the model and picks parameters now, so that problems show at compile."""
        if getattr(model, "built", False) and getattr(model, "inputs", None):
            self.server(model)

    def server(self, model: Any) -> HEServer:
        """The server role for the model's current weights (rebuilt when they change)."""
        key = _weights_key(model)
        if self._server is None or key != self._server_key:
            self._server, self._server_key = HEServer(model, self.policy, pool=self.pool()), key
        self._server.pool = self.pool()
        return self._server

    def pool(self) -> EvaluationPool | None:
        """The server's evaluation pool (processes start on first parallel use), or None."""
        workers = min(available_cores(), self.max_workers or available_cores())
        if workers <= 1:
            return None
        if self._pool is None or self._pool.workers != workers:
            if self._pool is not None:
                self._pool.close()
            self._pool = EvaluationPool(workers)
        return self._pool

    def client(self, parameters: CKKSParameters) -> HEClient:
        """The client role (key owner) for a parameter set, created once."""
        if parameters not in self._clients:
            self._clients[parameters] = HEClient(parameters)
        return self._clients[parameters]

    # -- inference ---------------------------------------------------------------------------
    def grouping(
        self, model: Any, n_samples: int, batch_size: int | None
    ) -> tuple[ExecutionPlan, int]:
        """(plan, rows per encrypted group) for `n_samples` rows."""
        server = self.server(model)
        if batch_size is None:
            plan = server.plan(n_samples)
            return plan, plan.block
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise HEInputError(
                f"Expected batch_size to be a positive integer or None. Received: {batch_size!r}"
            )
        block = min(next_power_of_two(batch_size), server.parameters.slots)
        chunk = min(batch_size, block)
        return server.plan(math.ceil(n_samples / chunk) * block, block=block), chunk

    def encrypted_outputs(
        self, model: Any, x: np.ndarray, batch_size: int | None = None, on_batch: Any = None
    ) -> np.ndarray:
        """Encrypts `x`, evaluates it under encryption, decrypts; times each phase."""
        server = self.server(model)
        x = _validated(x, server.graph.input_shape)
        _warn_outside_fitted_ranges(model, x)
        plan, chunk = self.grouping(model, len(x), batch_size)
        spec = server.packing(block=plan.block)
        client = self.client(spec.parameters)
        public = client.public_context(spec)
        timings = {"encrypt": 0.0, "evaluate": 0.0, "decrypt": 0.0}
        starts = range(0, len(x), chunk)

        def encrypted() -> Any:
            for step, start in enumerate(starts):
                if on_batch is not None:
                    on_batch("begin", step, None)
                t0 = time.perf_counter()
                if plan.parallel:  # as bytes, the way a remote client sends them
                    data = client.encrypt_to_bytes(x[start : start + chunk], spec)
                    batch = EncryptedBatch.from_bytes(data, public, load=False)  # workers load
                else:
                    batch = client.encrypt(x[start : start + chunk], spec)
                timings["encrypt"] += time.perf_counter() - t0
                yield batch

        outputs = []
        pool_was_running = plan.parallel and self._pool.started
        began = time.perf_counter()
        results = (
            server.evaluate_many(encrypted(), public)
            if plan.parallel
            else (server.evaluate(batch, public) for batch in encrypted())
        )
        for step, result in enumerate(results):
            t0 = time.perf_counter()
            y = client.decrypt(result, spec).astype(np.float32)
            timings["decrypt"] += time.perf_counter() - t0
            outputs.append(y)
            if on_batch is not None:
                on_batch("end", step, y)
        wall = time.perf_counter() - began
        timings["evaluate"] = wall - timings["encrypt"] - timings["decrypt"]
        start_up = 0.0 if not plan.parallel or pool_was_running else self._pool.start_seconds
        server.record(plan, wall - start_up)
        self.last_run = {
            "samples": len(x),
            "block": plan.block,
            "groups": len(outputs),
            "workers": plan.workers,
            "executor": self._pool.executor if plan.parallel else "in-process",
            "wall_seconds": wall,
            **{f"{phase}_seconds": seconds for phase, seconds in timings.items()},
        }
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
        """Encrypted inference; returns the decrypted outputs as Keras's `predict` does.

        Args:
            model: The compiled model.
            x: Inputs, `(n, *input_shape)` (numpy array or tensor).
            batch_size: Samples per encrypted group; None picks the fastest
                packing for `len(x)` (SIMD batching for many samples, the
                single-sample layout for one).
            verbose: 0, 1, 2 or "auto": a Keras progress bar over groups.
            steps: Number of groups to run (None: all).
            callbacks: Keras callbacks, called as by `keras.Model.predict`.

        Raises:
            UnsupportedLayerError: For a layer without an HE version.
            DepthExceededError: For a model too deep for the allowed parameters.
            HEInputError: Wrong shape, NaN or infinite inputs.
        """
        values = _as_array(x)
        server = self.server(model)
        values = _validated(values, server.graph.input_shape)
        _, chunk = self.grouping(model, len(values), batch_size)
        if steps is not None:
            values = values[: steps * chunk]
        callbacks = keras_loop.callback_list(
            callbacks, model, verbose, math.ceil(len(values) / chunk)
        )
        callbacks.on_predict_begin()
        predictions = self.encrypted_outputs(
            model, values, batch_size, keras_loop.predict_hooks(callbacks)
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
        """Encrypted inference, then the compiled loss and metrics on the decrypted outputs.

        The loss and metrics are Keras's own objects (`compile(loss=...,
        metrics=...)`), computed by the client on what it decrypted. Returns
        what `keras.Model.evaluate` returns.
        """
        if sample_weight is not None:
            raise CapabilityError(f"Engine {self.name!r} does not support sample_weight.")
        values = _as_array(x)
        server = self.server(model)
        values = _validated(values, server.graph.input_shape)
        targets = np.asarray(_as_array(y))
        if len(targets) != len(values):
            raise HEInputError(
                f"Expected x and y with the same number of rows. Received: {len(values)} "
                f"and {len(targets)}"
            )
        _, chunk = self.grouping(model, len(values), batch_size)
        if steps is not None:
            values, targets = values[: steps * chunk], targets[: steps * chunk]
        callbacks = keras_loop.callback_list(
            callbacks, model, verbose, math.ceil(len(values) / chunk)
        )
        callbacks.on_test_begin()
        scorer = keras_loop.RevealedScorer(model, targets, callbacks)
        self.encrypted_outputs(model, values, batch_size, scorer.on_batch)
        logs = scorer.result()
        callbacks.on_test_end(logs)
        return keras_loop.evaluate_result(logs, return_dict)

    def fit(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        raise CapabilityError(
            "Engine 'he' runs inference only: train in plaintext (compile without privacy), "
            "then compile(privacy='he') to predict and evaluate under encryption."
        )

    def export(self, model: Any, filepath: str, format: str = "he", **kwargs: Any) -> Any:
        """The server bundle and the client spec, no key; see `bundles.export_bundle`."""
        from privkeras.backends.he.bundles import export_bundle

        return export_bundle(self, model, filepath, **kwargs)

    @classmethod
    def serving_backend(cls) -> Any:
        """What `privkeras.serving` serves this engine's bundles with (`serving.HEServingBackend`)."""
        from privkeras.backends.he.serving import HEServingBackend

        return HEServingBackend

    def report(self) -> dict[str, Any]:
        """Policy, chosen parameters and depth, the pool if started, the last run's timings."""
        report = super().report()
        if self._server is not None:
            report.update(
                {
                    "parameters": self._server.parameters.get_config(),
                    "depth": self._server.depth,
                }
            )
        if self._pool is not None and self._pool.started:
            report["pool"] = self._pool.describe()
        return {**report, "last_run": dict(self.last_run)}


def _weights_key(model: Any) -> str:
    digest = hashlib.sha256(str(id(model)).encode())
    for layer in model.layers:
        digest.update(layer.name.encode())
        for weight in layer.get_weights():
            digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def _as_array(x: Any) -> np.ndarray:
    if x is None:
        raise HEInputError("Expected input data. Received: None")
    try:
        return np.asarray(keras.ops.convert_to_numpy(x))
    except Exception as error:  # datasets, generators, ragged data...
        raise HEInputError(
            f"Expected an array or tensor of inputs. Received: {type(x).__name__} ({error})"
        ) from None


def _validated(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    try:
        values = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise HEInputError(f"Expected numeric inputs. Received: {error}") from None
    expected = "(n, " + ", ".join(map(str, input_shape)) + ")"
    if values.ndim != len(input_shape) + 1 or values.shape[1:] != tuple(input_shape):
        raise HEInputError(f"Expected inputs of shape {expected}. Received: shape {values.shape}")
    if len(values) == 0:
        raise HEInputError(f"Expected at least one sample of shape {expected}. Received: 0")
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        raise HEInputError(
            f"Expected finite inputs. Received: NaN or infinite values in rows "
            f"{np.nonzero(bad)[0][:10].tolist()}"
        )
    return values


def _warn_outside_fitted_ranges(model: Any, x: np.ndarray) -> None:
    """Warns when a PolynomialActivation sees inputs outside the range it was fitted on.

    In one process the caller holds both the data and the model, so this is
    checked in plaintext before encrypting. A remote client cannot run it.
    """
    layers = [
        layer
        for layer in model.layers
        if isinstance(layer, PolynomialActivation) and layer.input_range is not None
    ]
    if not layers:
        return
    values = x.astype(np.float32)
    for layer in model.layers:
        if layer in layers:
            low, high = float(values.min()), float(values.max())
            fitted_low, fitted_high = layer.input_range
            if low < fitted_low or high > fitted_high:
                warnings.warn(
                    f"Inputs of PolynomialActivation layer {layer.name!r} reach [{low:.4g}, "
                    f"{high:.4g}], outside the range [{fitted_low:g}, {fitted_high:g}] its "
                    f"{layer.function!r} polynomial was fitted on: outputs there diverge from "
                    f"{layer.function!r}. Widen input_range (and retrain) or normalize inputs.",
                    UserWarning,
                    stacklevel=4,
                )
        values = keras.ops.convert_to_numpy(layer(values))
