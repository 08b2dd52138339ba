"""What a data owner runs on its own rows: local epochs from the global weights.

An owner builds the job's model once from the Keras configs the coordinator
sent (architecture, and `compile`'s optimizer, loss and metrics: Keras's
safe deserialization, never pickle), then for each round sets the global
weights, restores the local optimizer to its initial state, trains
`local_epochs` with the compiled train step (`train_on_batch`, so Keras's
traced step is reused across rounds and across simulated owners), and
returns its new weights.

- FedProx (Li et al., "Federated Optimization in Heterogeneous Networks",
  MLSys 2020): the local loss gains `mu / 2 * ||w - w_global||^2` over the
  trainable weights (`ProximalSequential`).
- Record-level DP (`local_privacy=pk.DPSGD(...)`): the owner's model is a
  `PrivateSequential` compiled with that policy, so that Keras's `fit` runs
  the DP-SGD engine the backend registry picks; the owner's own ledger (see
  `owner.py`) accounts each round's steps.

A `LocalTrainer` holds no rows: the simulated owners of one process share
one per job (it is locked), and each passes its own data.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Any

import keras
import numpy as np

from privkeras.errors import CapabilityError

__all__ = ["LocalTrainer", "ProximalSequential", "WeightLayout", "trainer_for"]


class WeightLayout:
    """How a model's weights map to the flat float32 vector that travels.

    Args:
        variables: The model's weights (`model.weights`), in order.
    """

    def __init__(self, variables: list[Any]):
        self.shapes = [tuple(int(d) for d in v.shape) for v in variables]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.size = int(sum(self.sizes))
        for variable in variables:
            if not keras.backend.standardize_dtype(variable.dtype).startswith(("float", "bfloat")):
                raise CapabilityError(
                    "Federated training averages float weights only. "
                    f"Received: weight {variable.path!r} of dtype {variable.dtype}"
                )

    def flatten(self, arrays: list[np.ndarray]) -> np.ndarray:
        if not arrays:
            return np.zeros(0, np.float32)
        return np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays])

    def unflatten(self, vector: np.ndarray) -> list[np.ndarray]:
        if vector.shape != (self.size,):
            raise ValueError(
                f"Expected a weight vector of {self.size} values. Received: shape={vector.shape}"
            )
        arrays, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            arrays.append(vector[start : start + size].reshape(shape))
            start += size
        return arrays


class _ProximalTerm:
    """`mu / 2 * sum ||w - anchor||^2` over the trainable variables (not tracked by Keras)."""

    def __init__(self, mu: float, variables: list[Any]):
        self.mu = float(mu)
        self.variables = list(variables)
        self.anchors = [
            keras.Variable(keras.ops.zeros(v.shape, v.dtype), trainable=False) for v in variables
        ]

    def anchor(self) -> None:
        for anchor, variable in zip(self.anchors, self.variables):
            anchor.assign(variable.value)

    def __call__(self):
        squares = [
            keras.ops.sum(keras.ops.square(v.value - a.value))
            for v, a in zip(self.variables, self.anchors)
        ]
        return 0.5 * self.mu * keras.ops.sum(keras.ops.stack(squares))


@keras.saving.register_keras_serializable(package="privkeras.federated")
class ProximalSequential(keras.Sequential):
    """A `keras.Sequential` for local rounds: FedProx's term, and metrics over a whole epoch.

    Keras's `train_on_batch` and `test_on_batch` reset the metrics at every
    call; inside `accumulating()` they do not, so that the logs of the last
    batch are the logs of the epoch, exactly as `fit` and `evaluate` report them.
    """

    @contextlib.contextmanager
    def accumulating(self):
        """Resets the metrics once, then keeps them across `*_on_batch` calls."""
        super().reset_metrics()
        self.__dict__["_accumulating"] = True
        try:
            yield
        finally:
            self.__dict__["_accumulating"] = False

    def reset_metrics(self):
        if not self.__dict__.get("_accumulating", False):
            super().reset_metrics()

    def set_proximal(self, mu: float) -> None:
        """Adds `mu / 2 * ||w - w_anchor||^2` to the loss (after `build`); 0 removes it."""
        self.__dict__["_proximal_term"] = (
            _ProximalTerm(mu, self.trainable_variables) if mu > 0 else None
        )

    @property
    def proximal_term(self) -> _ProximalTerm | None:
        return self.__dict__.get("_proximal_term")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )
        term = self.proximal_term
        if term is not None and training:
            loss = loss + keras.ops.cast(term(), loss.dtype)
        return loss


class LocalTrainer:
    """One job's local model: trains and evaluates on the rows each call passes.

    Args:
        model_config: `keras.saving.serialize_keras_object(model)` of a Sequential model.
        compile_config: `keras.Model.get_compile_config(model)`.
        proximal_mu: FedProx's mu (0 for none).
        local_privacy: A `DPSGD` policy to train with, or None.
    """

    def __init__(
        self,
        model_config: dict[str, Any],
        compile_config: dict[str, Any],
        proximal_mu: float = 0.0,
        local_privacy: Any = None,
    ):
        if model_config.get("class_name") not in ("Sequential", "PrivateSequential"):
            raise CapabilityError(
                "Federated training takes Sequential models (PrivateSequential). "
                f"Received: class_name={model_config.get('class_name')!r}"
            )
        self.lock = threading.Lock()
        self.local_privacy = local_privacy
        compile_args = keras.saving.deserialize_keras_object(dict(compile_config))
        if local_privacy is None:
            self.model = ProximalSequential.from_config(model_config["config"])
            self.model.compile(**compile_args)
        else:
            from privkeras.models import PrivateSequential  # the registry picks DP-SGD

            self.model = PrivateSequential.from_config(model_config["config"])
            self.model.compile(**compile_args, privacy=local_privacy)
        if not self.model.built:
            raise CapabilityError(
                "Expected a built model (start it with keras.Input(shape)) for federated training."
            )
        self.model.optimizer.build(self.model.trainable_variables)
        self._optimizer_start = [np.array(v.numpy()) for v in self.model.optimizer.variables]
        if proximal_mu > 0:
            if local_privacy is not None:
                raise CapabilityError(
                    "Federated(proximal_mu > 0) is not available with local_privacy: DP-SGD "
                    "clips the per-example gradients of the data loss only."
                )
            self.model.set_proximal(proximal_mu)
        self.layout = WeightLayout(self.model.weights)

    def _start_round(self, weights: np.ndarray) -> None:
        self.model.set_weights(self.layout.unflatten(weights))
        for variable, start in zip(self.model.optimizer.variables, self._optimizer_start):
            variable.assign(start)
        term = getattr(self.model, "proximal_term", None)
        if term is not None:
            term.anchor()

    def weights(self) -> np.ndarray:
        return self.layout.flatten(self.model.get_weights())

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weights: np.ndarray,
        epochs: int,
        batch_size: int,
        shuffle: bool = True,
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Local epochs from `weights`; returns the new flat weights and the last epoch's logs."""
        with self.lock:
            self._start_round(weights)
            if self.local_privacy is not None:
                history = self.model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
                logs = {k: float(v[-1]) for k, v in history.history.items() if k != "epsilon"}
                return self.weights(), logs
            logs: dict[str, float] = {}
            rng = np.random.default_rng()  # row order only: not a secret
            for _ in range(epochs):
                order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
                with self.model.accumulating():
                    for start in range(0, len(x), batch_size):
                        rows = order[start : start + batch_size]
                        logs = self.model.train_on_batch(x[rows], y[rows], return_dict=True)
            return self.weights(), _floats(logs)

    def evaluate(
        self, x: np.ndarray, y: np.ndarray, weights: np.ndarray, batch_size: int
    ) -> dict[str, float]:
        """The compiled loss and metrics on all of `x`, `y` at `weights`."""
        with self.lock:
            self.model.set_weights(self.layout.unflatten(weights))
            if self.local_privacy is not None:
                return _floats(
                    self.model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
                )
            logs: dict[str, Any] = {}
            with self.model.accumulating():
                for start in range(0, len(x), batch_size):
                    rows = slice(start, start + batch_size)
                    logs = self.model.test_on_batch(x[rows], y[rows], return_dict=True)
            return _floats(logs)


def _floats(logs: dict[str, Any]) -> dict[str, float]:
    return {name: float(keras.ops.convert_to_numpy(value)) for name, value in logs.items()}


#: Trainers of this process, by key (job and local policy): simulated owners share them.
_TRAINERS: OrderedDict[str, LocalTrainer] = OrderedDict()
_TRAINERS_LOCK = threading.Lock()
_MAX_TRAINERS = 8


def trainer_for(key: str, build) -> LocalTrainer:
    """The trainer cached under `key`, made by `build()` the first time (a small LRU)."""
    with _TRAINERS_LOCK:
        trainer = _TRAINERS.get(key)
        if trainer is not None:
            _TRAINERS.move_to_end(key)
            return trainer
    trainer = build()
    with _TRAINERS_LOCK:
        _TRAINERS[key] = trainer
        while len(_TRAINERS) > _MAX_TRAINERS:
            _TRAINERS.popitem(last=False)
    return trainer
