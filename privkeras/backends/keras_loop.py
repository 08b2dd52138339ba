"""Keras plumbing for engines that run their own protocol (MPC, HE).

Such engines do not use Keras's trainers, yet speak Keras to the user: a
`keras.callbacks.CallbackList` with the progress bar, batch hooks, and loss
and metrics computed by the model's own compiled Keras objects on the
outputs revealed (or decrypted) for the caller. This module is that shared
part; it knows nothing of any engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

__all__ = ["RevealedScorer", "as_floats", "callback_list", "evaluate_result", "predict_hooks"]

#: `on_batch(event, step, outputs)`: event "begin" (outputs None) or "end".
BatchHook = Callable[[str, int, "np.ndarray | None"], None]


def callback_list(
    callbacks: Any, model: Any, verbose: Any, steps: int, epochs: int = 1
) -> keras.callbacks.CallbackList:
    """A `CallbackList` with Keras's progress bar when `verbose` (`"auto"` means 1)."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks
    verbose = 1 if verbose == "auto" else int(verbose)
    return keras.callbacks.CallbackList(
        callbacks,
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=epochs,
        steps=steps,
    )


def as_floats(logs: dict[str, Any]) -> dict[str, float]:
    """Keras logs (tensors or numbers) as Python floats."""
    return {name: float(keras.ops.convert_to_numpy(value)) for name, value in logs.items()}


def predict_hooks(callbacks: keras.callbacks.CallbackList) -> BatchHook:
    """A batch hook that calls the `on_predict_batch_*` callbacks."""

    def on_batch(event: str, step: int, outputs: np.ndarray | None) -> None:
        if event == "begin":
            callbacks.on_predict_batch_begin(step)
        else:
            callbacks.on_predict_batch_end(step, {"outputs": outputs})

    return on_batch


class RevealedScorer:
    """The model's compiled loss and metrics, batch by batch, on revealed outputs.

    Args:
        model: A compiled Keras model; its metrics are reset.
        targets: All targets, aligned with the outputs as they arrive in order.
        callbacks: Optional `CallbackList` whose `on_test_batch_*` hooks are called.
    """

    def __init__(
        self,
        model: Any,
        targets: np.ndarray,
        callbacks: keras.callbacks.CallbackList | None = None,
    ):
        model.reset_metrics()
        self._model = model
        self._targets = targets
        self._callbacks = callbacks
        self._loss = keras.metrics.Mean(name="loss")
        self._offset = 0
        self._results: dict[str, Any] = {}

    def on_batch(self, event: str, step: int, outputs: np.ndarray | None) -> None:
        """The batch hook: scores each batch of outputs as it is revealed."""
        if event == "begin":
            if self._callbacks is not None:
                self._callbacks.on_test_batch_begin(step)
            return
        y_true = keras.ops.convert_to_tensor(
            self._targets[self._offset : self._offset + len(outputs)]
        )
        self._offset += len(outputs)
        y_pred = keras.ops.convert_to_tensor(outputs)
        loss = self._model.compute_loss(y=y_true, y_pred=y_pred, training=False)
        self._loss.update_state(loss, sample_weight=len(outputs))
        self._results = dict(self._model.compute_metrics(None, y_true, y_pred))
        self._results["loss"] = self._loss.result()
        if self._callbacks is not None:
            self._callbacks.on_test_batch_end(step, as_floats(self._results))

    def result(self) -> dict[str, float]:
        """The logs so far, loss first, as `keras.Model.evaluate(return_dict=True)` gives."""
        results = dict(self._results)
        return as_floats({"loss": results.pop("loss"), **results})


def evaluate_result(logs: dict[str, float], return_dict: bool) -> Any:
    """What `keras.Model.evaluate` returns for these logs."""
    if return_dict:
        return logs
    values = list(logs.values())
    return values[0] if len(values) == 1 else values
