"""Encrypted training: forward and backward passes and SGD, all on shares.

Data and weights stay secret-shared through every step. Nothing about the
training run is revealed except, at the end, the final weights to the model
owner (with `SharedData`: the combined update, from which the model owner
gets the final weights). When the caller passes `validation_data`, the
outputs on it are revealed to the caller at the end of each epoch, to fill
`History` with Keras's own loss and metric objects.

The loop speaks Keras: a `keras.callbacks.CallbackList` (callbacks,
`keras.utils.Progbar` through Keras's `ProgbarLogger`, `model.stop_training`
honoured at epoch ends), a real `keras.callbacks.History`, and `verbose`.

The trainer does not import the engine: `fit` takes the engine as a
`TrainingEngine` (what the trainer needs of it: its name, policy and
runtime, and its lowering, input checks and revealed-output metrics), and
the role names come from `roles`.

Batches: every batch takes rows from every data owner, in proportion to
their sizes, so each shared update mixes all owners. Each owner shuffles its
own rows before sharing them, and the order of batches is shuffled every
epoch (row orders are not secrets).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Protocol

import keras
import numpy as np

from privkeras.backends import keras_loop
from privkeras.backends.mpc.errors import MPCInputError
from privkeras.backends.mpc.jobs import Hooks, Schedule, run_predict
from privkeras.backends.mpc.layers import SecureProgram, SharedParams
from privkeras.backends.mpc.losses import SecureLoss, get_loss
from privkeras.backends.mpc.optimizers import SecureSGD, get_optimizer
from privkeras.backends.mpc.roles import CALLER, MODEL_OWNER
from privkeras.backends.mpc.shared_data import SharedData, check_batch_size
from privkeras.errors import CapabilityError

if TYPE_CHECKING:
    from privkeras.backends.mpc.runtime import MPCRuntime
    from privkeras.backends.mpc.tensor import SharedTensor
    from privkeras.policies import MPC

__all__ = [
    "TrainingEngine",
    "TrainingPlan",
    "fit",
    "plan_training",
    "run_fit",
    "take",
    "train_step",
    "training_job",
]

#: `keras.Model.fit` arguments the MPC trainer does not implement (accepted at their defaults).
_UNSUPPORTED_FIT_ARGUMENTS = (
    "validation_split",
    "class_weight",
    "sample_weight",
    "validation_steps",
)


class TrainingEngine(Protocol):
    """What the trainer needs of the engine that runs it (`MPCEngine` provides it)."""

    name: str
    policy: MPC

    @property
    def runtime(self) -> MPCRuntime:
        """The runtime whose parties train."""

    def lower(self, model: Any, sample_shape: tuple[int, ...], training: bool) -> SecureProgram:
        """The model's secure layers (building the model if needed)."""

    def validated_inputs(self, x: Any, program: SecureProgram, what: str) -> np.ndarray:
        """The caller's inputs as float64, refused if non-finite or mis-shaped."""

    def session(self, spec: Any) -> Any:
        """A context manager giving the runtime one job runs on (see `MPCEngine.session`)."""

    def describe_workers(self, data: SharedData) -> None:
        """Asks the owners' workers for their shapes (see `MPCEngine.describe_workers`)."""


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """What one `fit` call trains, resolved and checked in plaintext before any party works.

    Attributes:
        program: The model's secure layers.
        loss: The secure loss.
        optimizer: The secure SGD.
        data: The training rows, by owner.
        fused: Whether the loss replaces the last activation's backward pass.
        batch_size: Rows per step.
    """

    program: SecureProgram
    loss: SecureLoss
    optimizer: SecureSGD
    data: SharedData
    fused: bool
    batch_size: int

    def encode_targets(self, targets: np.ndarray) -> np.ndarray:
        """A data owner's targets as it shares them (one-hot for sparse labels)."""
        return self.loss.encode_targets(targets, self.program.output_shape)

    def batches(self) -> list[list[tuple[int, int, int]]]:
        """Per step, the `(owner, start, stop)` row ranges it trains on."""
        return _batches(self.data.sizes, self.batch_size)


def plan_training(
    engine: TrainingEngine,
    model: Any,
    x: Any,
    y: Any,
    batch_size: int | None = None,
    **options: Any,
) -> TrainingPlan:
    """Resolves data, layers, loss and optimizer of a `fit` call.

    Raises:
        UnsupportedLayerError, CapabilityError, PrecisionOverflowError,
        ValueError: Before any party does work.
    """
    for name in _UNSUPPORTED_FIT_ARGUMENTS:
        value = options.pop(name, None)
        if value is not None and not (name == "validation_split" and value == 0):
            raise CapabilityError(
                f"Engine {engine.name!r} does not support fit({name}=...). "
                f"Received: {name}={value!r}"
            )
    if options:
        raise TypeError(f"fit() got unexpected arguments: {sorted(options)}")
    if isinstance(x, SharedData):
        if y is not None:
            raise MPCInputError(
                "Expected y=None with SharedData (each owner holds its own labels)."
            )
        data = x
        if data.workers:  # owners in their own processes describe their rows (they keep them)
            engine.describe_workers(data)
    else:
        if x is None or y is None:
            raise MPCInputError("Expected fit(x, y) with arrays, or fit(SharedData([...])).")
        data = SharedData([(x, y)], owners=["caller"])
    program = engine.lower(model, data.row_shape, training=True)
    if data.row_shape != program.input_shape:
        raise MPCInputError(
            f"Expected x of shape (None, {', '.join(map(str, program.input_shape))}). "
            f"Received rows of shape {data.row_shape}"
        )
    loss = get_loss(model.loss, engine.name)
    loss.check_model(program.last_activation, engine.name)
    plan = TrainingPlan(
        program=program,
        loss=loss,
        optimizer=get_optimizer(model.optimizer, engine.name),
        data=data,
        fused=loss.fuses(program.last_activation),
        batch_size=check_batch_size(batch_size),
    )
    data.encode_worker_targets(plan.encode_targets)
    data.encoded_targets(plan.encode_targets)  # every local owner checks its labels first
    program.check_range(data.input_bound(), engine.runtime.codec)
    return plan


def _batches(sizes: tuple[int, ...], batch_size: int) -> list[list[tuple[int, int, int]]]:
    """Per step, `(owner, start, stop)` row ranges.

    One owner: Keras's batches (`batch_size` rows, the remainder last). Several
    owners: every batch takes rows from every owner, in proportion to its size.
    """
    steps = max(1, math.ceil(sum(sizes) / batch_size))
    if len(sizes) == 1:
        return [
            [(0, start, min(start + batch_size, sizes[0]))]
            for start in range(0, sizes[0], batch_size)
        ]
    bounds = [np.linspace(0, size, steps + 1).round().astype(int) for size in sizes]
    return [
        [
            (owner, int(b[step]), int(b[step + 1]))
            for owner, b in enumerate(bounds)
            if b[step + 1] > b[step]
        ]
        for step in range(steps)
    ]


def take(shared: list[tuple[SharedTensor, SharedTensor]], ranges) -> tuple[Any, Any]:
    """One batch: the `(owner, start, stop)` row ranges of each owner's shared rows, joined."""
    from privkeras.backends.mpc.tensor import SharedTensor

    xs = [shared[owner][0][start:stop] for owner, start, stop in ranges]
    ys = [shared[owner][1][start:stop] for owner, start, stop in ranges]
    if len(xs) == 1:
        return xs[0], ys[0]
    return SharedTensor.concat(xs, axis=0), SharedTensor.concat(ys, axis=0)


def train_step(
    plan: TrainingPlan,
    params: SharedParams,
    momenta: dict,
    x: SharedTensor,
    y: SharedTensor,
    step: int,
) -> tuple[SharedParams, dict]:
    """One forward pass, backward pass and SGD update, all on shares."""
    program, loss = plan.program, plan.loss
    outputs, caches = program.forward(x, params, training=True)
    delta = loss.delta(outputs, y, fused=plan.fused)
    if plan.fused:
        caches = caches[:-1]  # the backward pass starts before the fused activation
    grads = program.backward(delta, caches, params)
    trainable = {
        (index, name): tensor
        for index, layer_grads in enumerate(grads)
        for name, tensor in layer_grads.items()
        if name in program.layers[index].variables
    }
    flat = {
        (i, name): t for i, layer_params in enumerate(params) for name, t in layer_params.items()
    }
    scale = loss.scale(x.shape[0], program.output_shape)
    flat, momenta = plan.optimizer.apply(flat, trainable, momenta, step, scale)
    new_params: SharedParams = [{} for _ in params]
    for (index, name), tensor in flat.items():
        new_params[index][name] = tensor
    return new_params, momenta


def run_fit(
    runtime: MPCRuntime,
    plan: TrainingPlan,
    schedule: Schedule,
    hooks: Hooks | None = None,
    validation: Any = None,
) -> int:
    """The secure part of `fit`, the same on every role.

    Args:
        runtime: This role's runtime.
        plan: The training plan (program, loss, optimizer, owners' data).
        schedule: Epochs, steps, shuffling, validation.
        hooks: The driver's Keras plumbing (no-op on parties).
        validation: The caller's validation rows (a `Remote` elsewhere).

    Returns:
        The number of steps trained.
    """
    hooks = hooks or Hooks()
    batches = plan.batches()[: schedule.steps]
    initial = plan.program.share_params(runtime, MODEL_OWNER)
    shared = plan.data.share(
        runtime, plan.encode_targets, shuffle_seed=runtime.seed, shuffle=schedule.shuffle
    )
    params, momenta, step = initial, {}, 0
    hooks.train_begin()
    for epoch in range(schedule.initial_epoch, schedule.epochs):
        hooks.epoch_begin(epoch)
        order = runtime.broadcast(hooks.batch_order(epoch, len(batches)), source=CALLER)
        for index, batch in enumerate(order):
            hooks.batch_begin(index)
            xb, yb = take(shared, batches[int(batch)])
            params, momenta = train_step(plan, params, momenta, xb, yb, step)
            step += 1
            hooks.batch_end(index)
        logs: dict[str, float] = {}
        if schedule.validates(epoch):
            scorer = hooks.validation_hooks()
            run_predict(
                runtime,
                plan.program,
                params,
                validation,
                schedule.validation_batch_size,
                what="validation predictions",
                hooks=scorer,
            )
            logs = {f"val_{name}": value for name, value in scorer.validation_logs().items()}
        stop = runtime.broadcast(hooks.epoch_end(epoch, logs), source=CALLER)
        if bool(np.asarray(stop)):
            break
    hooks.weights(
        _reveal_weights(runtime, plan, initial, params, combined=len(plan.data.owners) > 1)
    )
    return step


def _reveal_weights(
    runtime: MPCRuntime,
    plan: TrainingPlan,
    initial: SharedParams,
    final: SharedParams,
    combined: bool,
) -> dict[tuple[int, str], np.ndarray] | None:
    """Reveals the trained weights (or, with several owners, the combined update) to the model owner."""
    values: dict[tuple[int, str], np.ndarray] = {}
    for index, (layer, start, end) in enumerate(zip(plan.program.layers, initial, final)):
        for name in layer.variables:
            label = f"{layer.name}/{name}"
            if combined:
                update = runtime.reveal(
                    end[name] - start[name], to=MODEL_OWNER, what=f"combined update {label}"
                )
                value = None if update is None else layer.params[name] + update
            else:
                value = runtime.reveal(end[name], to=MODEL_OWNER, what=f"final weights {label}")
            if value is not None:
                values[index, name] = value
    return values if runtime.here(MODEL_OWNER) else None


def fit(
    engine: TrainingEngine,
    model: Any,
    x: Any = None,
    y: Any = None,
    batch_size: int | None = None,
    epochs: int = 1,
    verbose: Any = "auto",
    callbacks: Any = None,
    validation_data: Any = None,
    shuffle: bool = True,
    initial_epoch: int = 0,
    steps_per_epoch: int | None = None,
    validation_batch_size: int | None = None,
    validation_freq: int = 1,
    **options: Any,
) -> keras.callbacks.History:
    """Trains `model` under MPC, as `keras.Model.fit` does in plaintext.

    Args:
        engine: The MPC engine (a `TrainingEngine`).
        model: The compiled `PrivateSequential` (loss and optimizer from `compile`).
        x: Inputs, or a `SharedData` of several owners (then `y=None`).
        y: Targets, for array inputs.
        batch_size: Rows per step (default 32).
        epochs: Index of the last epoch, as in Keras.
        verbose: 0, 1, 2 or "auto".
        callbacks: Keras callbacks.
        validation_data: `(x_val, y_val)` of the caller: the outputs on it are
            revealed to the caller after each epoch, and `val_*` logs filled.
        shuffle: Shuffle rows (by each owner) and the batch order (each epoch).
        initial_epoch: Epoch to start from.
        steps_per_epoch: Cap on steps per epoch.
        validation_batch_size: Batch size for validation (default `batch_size`).
        validation_freq: Validate every this many epochs.

    Returns:
        A `keras.callbacks.History`.

    Raises:
        UnsupportedLayerError, CapabilityError, PrecisionOverflowError,
        ValueError: Before any party does work.
    """
    plan = plan_training(engine, model, x, y, batch_size, **options)
    steps = len(plan.batches()[:steps_per_epoch])
    x_val = y_val = None
    if validation_data is not None:
        x_val = engine.validated_inputs(validation_data[0], plan.program, "validation x")
        y_val = np.asarray(validation_data[1])
    schedule = Schedule(
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps=steps,
        shuffle=bool(shuffle),
        validation_rows=0 if x_val is None else len(x_val),
        validation_batch_size=check_batch_size(validation_batch_size or plan.batch_size),
        validation_freq=validation_freq,
    )
    history = keras.callbacks.History()
    callback_list = keras_loop.callback_list(
        [*(callbacks or []), history], model, verbose, epochs=epochs, steps=steps
    )
    hooks = _KerasHooks(model, plan, callback_list, y_val, shuffle, engine.policy.seed)
    model.stop_training = False
    with engine.session(lambda: training_job(engine, model, plan, schedule)) as runtime:
        trained = run_fit(runtime, plan, schedule, hooks, validation=x_val)
    model.optimizer.iterations.assign(model.optimizer.iterations + trained)
    callback_list.on_train_end(hooks.logs)
    return history


class _KerasHooks(Hooks):
    """The driver's side of `fit`: Keras callbacks, the public batch order, validation, weights."""

    def __init__(self, model, plan, callback_list, y_val, shuffle: bool, seed: int | None):
        self.model, self.plan, self.callbacks = model, plan, callback_list
        self.y_val, self.shuffle = y_val, shuffle
        self.order_rng = np.random.default_rng(seed)  # batch order is public
        self.logs: dict[str, float] = {}
        self.scorer = None

    def train_begin(self) -> None:
        self.callbacks.on_train_begin()

    def epoch_begin(self, epoch: int) -> None:
        self.callbacks.on_epoch_begin(epoch)

    def batch_begin(self, index: int) -> None:
        self.callbacks.on_train_batch_begin(index)

    def batch_end(self, index: int) -> None:
        self.callbacks.on_train_batch_end(index, {})

    def batch_order(self, epoch: int, steps: int) -> np.ndarray:
        return self.order_rng.permutation(steps) if self.shuffle else np.arange(steps)

    def validation_hooks(self) -> Hooks:
        self.scorer = _ScorerHooks(keras_loop.RevealedScorer(self.model, self.y_val, None))
        return self.scorer

    def epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        self.logs = logs
        self.callbacks.on_epoch_end(epoch, logs)
        return bool(self.model.stop_training)

    def weights(self, values) -> None:
        for (index, name), value in values.items():
            variable = self.plan.program.layers[index].variables[name]
            variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))


class _ScorerHooks(Hooks):
    """Keras's loss and metric objects on validation outputs revealed to the caller."""

    def __init__(self, scorer):
        self.scorer = scorer

    def on_batch(self, event: str, step: int, outputs) -> None:
        self.scorer.on_batch(event, step, outputs)

    def validation_logs(self) -> dict[str, float]:
        return self.scorer.result()


def training_job(engine: TrainingEngine, model: Any, plan: TrainingPlan, schedule: Schedule):
    """The `JobSpec` that lets a party run this `fit` (architecture and shapes, no secrets)."""
    from privkeras.backends.mpc.jobs import JobSpec

    return JobSpec(
        kind="fit",
        engine=engine.name,
        protocol=engine.policy.protocol,
        precision_bits=engine.policy.precision_bits,
        seed=engine.policy.seed,
        model=model.to_json(),
        input_shape=plan.program.input_shape,
        batch_size=plan.batch_size,
        loss=keras.losses.serialize(model.loss) if not isinstance(model.loss, str) else model.loss,
        optimizer=keras.optimizers.serialize(model.optimizer),
        owners=plan.data.owners,
        sizes=plan.data.sizes,
        target_shapes=plan.data.target_shapes(plan.encode_targets),
        schedule=dataclasses.asdict(schedule),
        workers=dict(plan.data.workers),
    )
