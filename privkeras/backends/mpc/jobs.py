"""Jobs: what one `predict`, `evaluate` or `fit` asks of every role, and the code all of them run.

A job's secure part is one function per kind (`run_predict` here,
`trainer.run_fit`) that
every role runs, each with its own `MPCRuntime` (see `placement`): the driver
(the caller and the model owner), each compute party, and Pond's dealer. The
functions contain no Keras plumbing: the driver passes `Hooks` that drive
callbacks, progress bars and metrics; a party passes the no-op `Hooks`, and
learns the driver's public decisions (batch order, early stopping) through
`runtime.broadcast`.

A `JobSpec` is everything a party needs to run the same function without the
driver's secrets: the model's architecture (Keras JSON, no weights), loss and
optimizer configs, the protocol, shapes and the training schedule. It travels
as JSON and is validated strictly on arrival.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from privkeras.backends.mpc.errors import MPCInputError
from privkeras.backends.mpc.placement import Remote
from privkeras.backends.mpc.roles import CALLER

if TYPE_CHECKING:
    from privkeras.backends.mpc.layers import SecureProgram, SharedParams
    from privkeras.backends.mpc.runtime import MPCRuntime

__all__ = ["Hooks", "JobSpec", "Schedule", "run_predict"]

#: Version of the job format; a party refuses any other.
JOB_FORMAT = 1


class Hooks:
    """What the driver does around the secure computation; a party uses this no-op base.

    Every method returns None on a party. Decisions that change what the
    parties compute (`batch_order`, `epoch_end`'s stop flag) reach them through
    `runtime.broadcast`, never from their own hooks.
    """

    def on_batch(self, event: str, step: int, outputs: np.ndarray | None) -> None:
        """Predict batches: `event` is "begin" or "end" (with the revealed outputs)."""

    def train_begin(self) -> None: ...

    def epoch_begin(self, epoch: int) -> None: ...

    def batch_begin(self, index: int) -> None: ...

    def batch_end(self, index: int) -> None: ...

    def batch_order(self, epoch: int, steps: int) -> np.ndarray | None:
        """The (public) order of this epoch's batches."""
        return None

    def validation_hooks(self) -> Hooks:
        """Hooks that score the validation outputs revealed to the caller."""
        return self

    def validation_logs(self) -> dict[str, float]:
        return {}

    def epoch_end(self, epoch: int, logs: dict[str, float]) -> bool | None:
        """Returns whether training stops (callbacks set `model.stop_training`)."""
        return None

    def weights(self, values: dict[tuple[int, str], np.ndarray]) -> None:
        """The trained weights (or combined update), revealed to the model owner."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The public schedule of a `fit`: epochs, batches, shuffling and validation.

    Attributes:
        epochs: Index of the last epoch, as in Keras.
        initial_epoch: Epoch to start from.
        steps: Steps per epoch.
        shuffle: Whether batch order (and each owner's rows) are shuffled.
        validation_rows: Rows of the caller's validation data (0: none).
        validation_batch_size: Rows per validation batch.
        validation_freq: Validate every this many epochs.
    """

    epochs: int
    initial_epoch: int
    steps: int
    shuffle: bool
    validation_rows: int = 0
    validation_batch_size: int = 32
    validation_freq: int = 1

    def validates(self, epoch: int) -> bool:
        return self.validation_rows > 0 and (epoch + 1) % self.validation_freq == 0


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """What every role needs to run one job, without anyone's secrets.

    Attributes:
        kind: `"predict"` (also evaluate and validation), `"fit"`, or
            `"session"` (the low-level API: commands follow, see `session`).
        engine: The engine name (`"mpc-torch"`, `"mpc-tfe"`).
        protocol: `"pond"` or `"aby3"`.
        precision_bits: Fractional bits of the codec.
        seed: The policy's seed (tests only) or None.
        model: The Keras model's architecture as JSON (no weights).
        input_shape: Model input shape without the batch axis.
        rows: Rows of the caller's inputs (predict).
        batch_size: Rows per batch.
        what: What the predict job reveals, as the reveal log names it.
        loss: The serialized Keras loss (fit).
        optimizer: The serialized Keras optimizer (fit).
        owners: Data owners (fit), each with `sizes[i]` rows.
        sizes: Rows per owner.
        target_shapes: Row shape of each owner's encoded targets.
        schedule: The fit's `Schedule` fields.
        workers: The data owners that run in their own `privkeras worker`
            process (name -> address): they share their rows from there.
    """

    kind: str
    engine: str
    protocol: str
    precision_bits: int
    seed: int | None
    model: str
    input_shape: tuple[int, ...]
    rows: int = 0
    batch_size: int = 32
    what: str = "predictions"
    loss: Any = None
    optimizer: Any = None
    owners: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    target_shapes: tuple[tuple[int, ...], ...] = ()
    schedule: dict[str, Any] | None = None
    workers: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        return json.dumps({"format": JOB_FORMAT, **fields})

    @classmethod
    def from_json(cls, text: str | bytes) -> JobSpec:
        """Parses a job sent by a driver.

        Raises:
            MPCInputError: For anything but a well-formed job of this format.
        """
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as error:
            raise MPCInputError(
                f"Expected a JSON job. Received: unparseable bytes ({error})"
            ) from None
        if not isinstance(data, dict) or data.get("format") != JOB_FORMAT:
            raise MPCInputError(
                f"Expected a job of format {JOB_FORMAT}. "
                f"Received: {type(data).__name__} with format={_get(data, 'format')!r}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"format"})
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in data)
        if unknown or missing:
            raise MPCInputError(
                f"Expected the fields of a job. Received: unknown={unknown}, missing={missing}"
            )
        del data["format"]
        try:
            spec = cls(**data)
            spec.check()
        except (TypeError, ValueError) as error:
            raise MPCInputError(f"Expected a valid job. Received: {error}") from None
        return spec

    def check(self) -> None:
        """Validates field types and ranges (a party checks every job before any work)."""
        kinds = ("predict", "fit", "session")
        _expect(self.kind in kinds, f"kind in {kinds}", self.kind)
        for name in ("engine", "protocol", "model", "what"):
            _expect(
                isinstance(getattr(self, name), str), f"{name} to be a string", getattr(self, name)
            )
        _expect(
            _is_int(self.precision_bits, 1, 40), "precision_bits in [1, 40]", self.precision_bits
        )
        _expect(
            self.seed is None or _is_int(self.seed, 0, 2**63 - 1), "seed None or an int", self.seed
        )
        _expect(_is_shape(self.input_shape), "input_shape of positive ints", self.input_shape)
        _expect(_is_int(self.rows, 0, 2**40), "rows >= 0", self.rows)
        _expect(_is_int(self.batch_size, 1, 2**31), "batch_size >= 1", self.batch_size)
        if self.kind == "fit":
            _expect(
                len(self.owners) == len(self.sizes) == len(self.target_shapes) > 0,
                "one size and target shape per owner",
                (self.owners, self.sizes, self.target_shapes),
            )
            _expect(all(_is_int(n, 1, 2**40) for n in self.sizes), "positive sizes", self.sizes)
            _expect(
                all(_is_shape(s) for s in self.target_shapes), "target shapes", self.target_shapes
            )
            Schedule(**(self.schedule or {}))
        _expect(
            isinstance(self.workers, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.workers.items())
            and set(self.workers) <= set(self.owners),
            "workers mapping some owners to addresses",
            self.workers,
        )

    def __post_init__(self):
        # JSON gives lists: keep tuples so that specs compare as values.
        object.__setattr__(self, "input_shape", _tuple(self.input_shape))
        object.__setattr__(self, "owners", tuple(self.owners))
        object.__setattr__(self, "sizes", tuple(self.sizes))
        object.__setattr__(self, "target_shapes", tuple(_tuple(s) for s in self.target_shapes))

    @property
    def fit_schedule(self) -> Schedule:
        return Schedule(**(self.schedule or {}))


def run_predict(
    runtime: MPCRuntime,
    program: SecureProgram,
    params: SharedParams,
    rows: np.ndarray | Remote,
    batch_size: int,
    what: str = "predictions",
    hooks: Hooks | None = None,
) -> np.ndarray | None:
    """Shares the caller's rows batch by batch, runs the program, reveals outputs to the caller.

    Runs on every role; returns the float32 outputs where the caller runs, None elsewhere.
    """
    hooks = hooks or Hooks()
    outputs = []
    for step, start in enumerate(range(0, len(rows), batch_size)):
        hooks.on_batch("begin", step, None)
        shared = runtime.share(rows[start : start + batch_size], owner=CALLER, name="inputs")
        y, _ = program.forward(shared, params)
        revealed = runtime.reveal(y, to=CALLER, what=what)
        if revealed is not None:
            revealed = revealed.astype(np.float32)
            outputs.append(revealed)
        hooks.on_batch("end", step, revealed)
    return np.concatenate(outputs, axis=0) if outputs else None


def _expect(ok: bool, expected: str, received: Any) -> None:
    if not ok:
        raise ValueError(f"expected {expected}, received {received!r}")


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_shape(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(_is_int(d, 1, 2**31) for d in value)


def _tuple(value: Sequence[int]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None
