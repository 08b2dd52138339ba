"""Choosing how a batch runs: the cost model's estimates, corrected by what was measured.

The cost model (`cost.py`) prices each packing in this process and on a
pool, in milliseconds of a reference core. What a route really costs also
depends on this machine and on what else runs on it: on a shared machine
whose cores are all busy, a pool gains nothing and its transfers still
cost. So a server remembers, per worker count, how many seconds each
estimated millisecond took (`RouteMeasurements.record`, an exponential
average) and compares routes by that. Until a route has been measured it
is assumed to run as fast, per estimated millisecond, as one that has.

Conditions change (a neighbour's job ends), so whenever the measurements
overrule the cost model's own choice, that choice runs again once its last
measurement is `REFRESH` requests old.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["REFRESH", "ExecutionPlan", "RouteMeasurements"]

#: Requests after which a route the measurements keep overruling is measured again.
REFRESH = 16
#: Weight of the newest measurement in the average.
_NEWEST = 0.5
#: Seconds per estimated millisecond before anything is measured (the model's own unit).
_PRIOR = 1e-3


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """How a server will run `n_samples` rows: packing, groups, and where.

    Args:
        block: Samples per ciphertext group (the packing).
        groups: Ciphertext groups for the rows.
        workers: Groups evaluated at once (1: in this process, serially).
        model_ms: The cost model's estimate (reference-core milliseconds).
        start_seconds: Pool start-up still to pay (0 once started).
        estimated_seconds: What the plan is expected to take here, from
            the measurements (`model_ms` scaled, plus start-up).
    """

    block: int
    groups: int
    workers: int
    model_ms: float
    start_seconds: float = 0.0
    estimated_seconds: float = math.nan

    @property
    def parallel(self) -> bool:
        return self.workers > 1


class RouteMeasurements:
    """Seconds per estimated millisecond of each worker count, as measured here."""

    def __init__(self):
        self._speed: dict[int, float] = {}
        self._measured_at: dict[int, int] = {}
        self._requests = 0

    def seconds_per_ms(self, workers: int) -> float:
        if workers in self._speed:
            return self._speed[workers]
        return min(self._speed.values()) if self._speed else _PRIOR

    def choose(self, candidates: list[ExecutionPlan]) -> ExecutionPlan:
        """The candidate expected to be fastest (see the module docstring)."""

        def modelled(plan: ExecutionPlan) -> float:
            return plan.model_ms * _PRIOR + plan.start_seconds

        def measured(plan: ExecutionPlan) -> float:
            return plan.model_ms * self.seconds_per_ms(plan.workers) + plan.start_seconds

        model_choice = min(candidates, key=modelled)
        choice = min(candidates, key=measured)
        if choice.workers != model_choice.workers:
            last = self._measured_at.get(model_choice.workers, -REFRESH)
            if self._requests - last >= REFRESH:
                choice = model_choice
        return dataclasses.replace(choice, estimated_seconds=measured(choice))

    def record(self, plan: ExecutionPlan, seconds: float) -> None:
        """What running `plan` took, start-up excluded (wall-clock seconds)."""
        if not plan.model_ms > 0 or not seconds > 0:
            return
        self._requests += 1
        ratio = seconds / plan.model_ms
        previous = self._speed.get(plan.workers)
        self._speed[plan.workers] = (
            ratio if previous is None else _NEWEST * ratio + (1 - _NEWEST) * previous
        )
        self._measured_at[plan.workers] = self._requests

    def describe(self) -> dict[int, float]:
        """Measured seconds per estimated millisecond, by worker count."""
        return dict(self._speed)
