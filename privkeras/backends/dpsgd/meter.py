"""Spending privacy during `fit`: the plan of one fit and the callback that meters it.

The `PrivacyMeter` callback runs before Keras's History and progress bar:

- before every step it records the step in the ledger, and refuses (raises
  `PrivacyBudgetExceededError`) a step the budget does not allow;
- after every step it puts `epsilon` in the logs, so the progress bar shows
  it, refreshed at most once a second;
- after every epoch it puts `epsilon` in the logs, so `History` records it
  per epoch.

Both values are the ledger's `running()` upper bound: the PLD of the steps
added since the last value, composed onto the last one at a discretization
chosen for the planned run (within about 0.005 of the exact epsilon); an
epoch of identical steps is composed once, at setup, and reused. It costs
well under a millisecond per epoch for the MLP of the benchmark (the exact
value takes 0.05-0.5 s, which would hold training back). `privacy_report()`
gives the exact value, at dp-accounting's finest default discretization.
"""

from __future__ import annotations

import dataclasses
import time

import keras

from privkeras.backends.dpsgd.accountant import PrivacyLedger, Segment
from privkeras.errors import PrivacyBudgetExceededError

__all__ = ["FitPlan", "PrivacyMeter"]


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """The shape of one `fit` call, and how the accountant sees it.

    With Poisson sampling the accountant's unit is a step at rate q. With
    shuffling no amplification is claimed: the unit is a pass over the data
    (one epoch), in which each example is used once: a Gaussian mechanism at
    rate 1.
    """

    dataset_size: int
    batch_size: int
    steps_per_epoch: int
    epochs: int
    sampling: str

    @property
    def sample_rate(self) -> float:
        return self.batch_size / self.dataset_size

    @property
    def unit_rate(self) -> float:
        return self.sample_rate if self.sampling == "poisson" else 1.0

    @property
    def steps_per_unit(self) -> int:
        return 1 if self.sampling == "poisson" else self.steps_per_epoch

    @property
    def units_per_epoch(self) -> int:
        return self.steps_per_epoch // self.steps_per_unit

    @property
    def planned_units(self) -> int:
        return self.epochs * self.steps_per_epoch // self.steps_per_unit

    @property
    def unit_name(self) -> str:
        return "steps" if self.sampling == "poisson" else "epochs"

    def segment(self, noise_multiplier: float, units: int | None = None) -> Segment:
        units = self.planned_units if units is None else units
        return Segment(self.unit_rate, noise_multiplier, units)


class PrivacyMeter(keras.callbacks.Callback):
    """Records each step in the ledger, guards the budget, logs epsilon.

    Args:
        ledger: The engine's ledger.
        plan: This fit's plan.
        noise_multiplier: The noise of every step.
        allowed_units: Most units this fit may spend (None: no budget).
        on_step: Called after each step with no argument (the engine counts steps).
        refresh_seconds: Least time between two progress-bar values within an epoch.
        sampler_failure: Per unit, the probability that the noise sampler left
            its exact range (recorded in the ledger; see `sampler_delta`).
    """

    #: Keras may run `on_train_batch_end` in a worker thread, as for its own callbacks:
    #: the ledger is only written in `on_train_batch_begin`, which Keras runs in order.
    async_safe = True

    def __init__(
        self,
        ledger: PrivacyLedger,
        plan: FitPlan,
        noise_multiplier: float,
        allowed_units: int | None,
        on_step=None,
        refresh_seconds: float = 1.0,
        sampler_failure: float = 0.0,
    ):
        super().__init__()
        self.ledger = ledger
        self.plan = plan
        self.noise_multiplier = noise_multiplier
        self.allowed_units = allowed_units
        self.on_step = on_step
        self.refresh_seconds = refresh_seconds
        self.sampler_failure = sampler_failure
        self.steps = 0
        self.units = 0
        self._shown = 0.0
        self._shown_at = -float("inf")

    def on_train_batch_begin(self, batch, logs=None):
        if self.steps % self.plan.steps_per_unit:
            return  # Inside a pass already paid for (shuffle).
        if self.allowed_units is not None and self.units >= self.allowed_units:
            raise PrivacyBudgetExceededError(
                f"The next step would spend more than target_epsilon: the budget allows "
                f"{self.allowed_units} {self.plan.unit_name} in this fit and all were taken. "
                f"Epsilon spent: {self.ledger.epsilon():.4g}."
            )
        self.ledger.record(self.plan.unit_rate, self.noise_multiplier, 1, self.sampler_failure)
        self.units += 1

    def on_train_begin(self, logs=None):
        self._shown_at = time.perf_counter()  # The first value comes at the first refresh.
        self._shown = self.ledger.running()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.on_step is not None:
            self.on_step()
        if logs is not None:
            now = time.perf_counter()
            if now - self._shown_at >= self.refresh_seconds:
                self._shown, self._shown_at = self.ledger.running(), now
            logs["epsilon"] = self._shown

    def on_epoch_end(self, epoch, logs=None):
        self._shown, self._shown_at = self.ledger.running(), time.perf_counter()
        if logs is not None:
            logs["epsilon"] = self._shown
