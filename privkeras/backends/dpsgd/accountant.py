"""Privacy accounting for DP-SGD on Google's `dp-accounting` library.

A DP-SGD run is a list of `Segment`s: `steps` applications of the sampled
Gaussian mechanism with sampling rate `q` and noise multiplier `sigma`. An
`Accountant` turns segments into epsilon for a given delta. Two are
registered in `ACCOUNTANTS` (a `core.registry.Registry`), by name:

- `"pld"` (default): privacy loss distributions (Koskela et al., 2020;
  Doroshenko et al., 2022), tight up to the discretization, which is
  pessimistic: the value is an upper bound of the true epsilon.
- `"rdp"`: Renyi DP (Mironov, 2017; Mironov, Talwar and Zhang, 2019),
  looser. RDP composes additively, so one step's RDP curve is computed once
  per (q, sigma) and any number of steps costs a multiplication.

Each accountant gives three numbers for the same segments:

- `epsilon`: the exact value (what `privacy_report()` shows, checked against
  dp-accounting called directly);
- `estimate`: a fast upper bound (noise calibration);
- `running(delta, planned_steps)`: an upper bound that follows a growing
  ledger incrementally (the progress bar and History): a PLD composes only
  the steps added since the last call, at a discretization chosen for the
  planned length of the run, and the PLD of a chunk of identical steps (an
  epoch) is composed once and reused.

`compute_epsilon` and `calibrate_noise` are the public entry points (through
`privkeras.dpsgd`); `PrivacyLedger` is the running record an engine keeps,
including the probability that the noise sampler left the range where it is
exact, which `sampler_delta` turns into the delta it adds.

Example:

```python
from privkeras.backends.dpsgd import accountant

accountant.compute_epsilon(256 / 60000, 1.1, steps=14062, delta=1e-5)  # ~2.38
accountant.calibrate_noise(2.0, 256 / 60000, steps=14062, delta=1e-5)  # ~1.23
```
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import logging
import math
from collections.abc import Sequence
from typing import ClassVar

import dp_accounting
import numpy as np
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from privkeras.core.registry import Registry
from privkeras.errors import PrivacyPolicyError, format_received

__all__ = [
    "ACCOUNTANTS",
    "MAX_NOISE_MULTIPLIER",
    "Accountant",
    "PLDAccountant",
    "PrivacyLedger",
    "RDPAccountant",
    "RunningEpsilon",
    "Segment",
    "available_accountants",
    "calibrate_noise",
    "compute_epsilon",
    "get_accountant",
    "register_accountant",
]

#: Calibration never proposes more noise than this: beyond it, training is
#: noise and the request is treated as unreachable.
MAX_NOISE_MULTIPLIER = 1000.0
#: Nor less than this: below it the PLD grows slow and epsilon is past any useful
#: budget, so a target that this noise already meets is met with this noise.
_MIN_NOISE_MULTIPLIER = 0.5


@dataclasses.dataclass(frozen=True)
class Segment:
    """`steps` sampled Gaussian steps with sampling rate `q` and noise `sigma`.

    Args:
        sample_rate: Probability q in [0, 1] that an example joins a step.
        noise_multiplier: Noise standard deviation over the sensitivity, >= 0.
        steps: Number of steps, >= 0.
    """

    sample_rate: float
    noise_multiplier: float
    steps: int

    def __post_init__(self):
        if not 0 <= self.sample_rate <= 1:
            raise PrivacyPolicyError(
                "Expected sample_rate in [0, 1]. " + format_received(sample_rate=self.sample_rate)
            )
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise PrivacyPolicyError(
                "Expected noise_multiplier >= 0 and finite. "
                + format_received(noise_multiplier=self.noise_multiplier)
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise PrivacyPolicyError(
                "Expected steps to be an integer >= 0. " + format_received(steps=self.steps)
            )

    @property
    def spends_nothing(self) -> bool:
        return self.steps == 0 or self.sample_rate == 0

    @property
    def spends_everything(self) -> bool:
        return not self.spends_nothing and self.noise_multiplier == 0


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise PrivacyPolicyError("Expected delta in (0, 1). " + format_received(delta=delta))
    return float(delta)


class Accountant(abc.ABC):
    """Turns DP-SGD segments into epsilon. Subclasses register by `name`."""

    name: ClassVar[str]

    def epsilon(self, segments: Sequence[Segment], delta: float) -> float:
        """Epsilon of the composition of `segments` at `delta` (inf without noise)."""
        return self._over_live_segments(segments, delta, self._epsilon)

    @staticmethod
    def _over_live_segments(segments: Sequence[Segment], delta: float, compute) -> float:
        """`compute(live, delta)` on the segments that spend something; 0 or inf without any."""
        delta = _check_delta(delta)
        live = [s for s in segments if not s.spends_nothing]
        if not live:
            return 0.0
        if any(s.spends_everything for s in live):
            return math.inf
        return float(compute(live, delta))

    @abc.abstractmethod
    def _epsilon(self, segments: Sequence[Segment], delta: float) -> float:
        """Epsilon of non-trivial segments (all noisy, all with steps > 0)."""

    def estimate(self, segments: Sequence[Segment], delta: float) -> float:
        """A fast upper bound of `epsilon` (for calibration)."""
        return self.epsilon(segments, delta)

    def running(self, delta: float, planned_steps: int) -> RunningEpsilon:
        """An incremental upper bound of `epsilon` for a run of about `planned_steps`."""
        return RunningEpsilon(lambda segments: self.estimate(segments, delta))


class RunningEpsilon:
    """An upper bound of epsilon that follows a growing list of segments.

    Args:
        evaluate: Epsilon of a list of segments (the whole list each time).
            Subclasses compose only what was added since the last call instead.
    """

    def __init__(self, evaluate=None):
        self._evaluate = evaluate
        self._last: tuple[tuple[Segment, ...], float] | None = None

    def __call__(self, segments: Sequence[Segment]) -> float:
        """The bound for `segments` (the ledger so far)."""
        segments = tuple(segments)
        if self._last is None or self._last[0] != segments:
            self._last = (segments, self._update(segments))
        return self._last[1]

    def _update(self, segments: tuple[Segment, ...]) -> float:
        return self._evaluate(segments)

    def prepare(self, chunk: Segment) -> None:
        """Does ahead (at a fit's start) the slow part of adding `chunk`, an epoch of steps."""
        if not chunk.spends_nothing and not chunk.spends_everything:
            self._evaluate([chunk])


#: Accountant classes by name; an unknown name raises `PrivacyPolicyError` listing them.
ACCOUNTANTS: Registry[str, type[Accountant]] = Registry(
    "accountant", unknown_error=PrivacyPolicyError
)


def register_accountant(cls: type[Accountant] | None = None, *, replace: bool = False):
    """Registers an `Accountant` subclass under `cls.name`. Usable as a decorator.

    Raises:
        RegistrationError: For a name already registered (unless `replace`).
    """

    def _register(accountant_cls: type[Accountant]) -> type[Accountant]:
        return ACCOUNTANTS.register(accountant_cls.name, accountant_cls, replace=replace)

    return _register if cls is None else _register(cls)


def available_accountants() -> list[str]:
    """Names of the registered accountants."""
    return ACCOUNTANTS.names()


def get_accountant(name: str) -> Accountant:
    """A new accountant registered under `name`.

    Raises:
        PrivacyPolicyError: For an unknown name; the message lists the known ones.
    """
    return ACCOUNTANTS.get(name)()


@functools.lru_cache(maxsize=64)
def _one_step_pld(sample_rate: float, noise_multiplier: float, interval: float):
    # Building the one-step PLD is the slow part; composing it is cheap.
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        sampling_prob=sample_rate,
        value_discretization_interval=interval,
    )


@functools.lru_cache(maxsize=64)
def _steps_pld(sample_rate: float, noise_multiplier: float, interval: float, steps: int):
    """The PLD of `steps` identical steps (an epoch, reused every epoch)."""
    return _one_step_pld(sample_rate, noise_multiplier, interval).self_compose(steps)


@register_accountant
class PLDAccountant(Accountant):
    """Privacy loss distributions, `dp_accounting.pld`, add-or-remove-one neighbours.

    `value_discretization_interval` is dp-accounting's default (1e-4) for
    `epsilon`; `estimate` uses 1e-3, about ten times faster; `running`
    chooses from `RUNNING_INTERVALS` by the planned number of steps (the
    pessimistic discretization adds about `0.5 steps interval^2` to epsilon,
    measured: +0.005 for 90 steps at 1e-2, +0.002 for 14,100 at 5e-4). All
    discretize pessimistically, so all are upper bounds of the exact epsilon.
    """

    name = "pld"
    INTERVAL: ClassVar[float] = 1e-4
    ESTIMATE_INTERVAL: ClassVar[float] = 1e-3
    RUNNING_INTERVALS: ClassVar[tuple[float, ...]] = (1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4)

    def _epsilon(self, segments: Sequence[Segment], delta: float, interval: float = 0.0) -> float:
        interval = interval or self.INTERVAL
        composed = None
        for segment in segments:
            pld = _one_step_pld(segment.sample_rate, segment.noise_multiplier, interval)
            pld = pld.self_compose(segment.steps)
            composed = pld if composed is None else composed.compose(pld)
        return composed.get_epsilon_for_delta(delta)

    def estimate(self, segments: Sequence[Segment], delta: float) -> float:
        return self._over_live_segments(
            segments, delta, lambda live, d: self._epsilon(live, d, self.ESTIMATE_INTERVAL)
        )

    @classmethod
    def running_interval(cls, planned_steps: int) -> float:
        """The coarsest interval whose error stays near 0.005 for `planned_steps` steps."""
        wanted = 1e-2 * math.sqrt(100.0 / max(planned_steps, 1))
        return next((i for i in cls.RUNNING_INTERVALS if i <= wanted), cls.INTERVAL)

    def running(self, delta: float, planned_steps: int) -> RunningEpsilon:
        return _RunningPLD(_check_delta(delta), self.running_interval(planned_steps))


class _RunningPLD(RunningEpsilon):
    """Composes, at each call, only the steps recorded since the previous one."""

    def __init__(self, delta: float, interval: float):
        super().__init__()
        self.delta, self.interval = delta, interval
        self._seen: list[Segment] = []  # What `_composed` holds.
        self._composed = None

    def prepare(self, chunk: Segment) -> None:
        if not chunk.spends_nothing and not chunk.spends_everything:
            _steps_pld(chunk.sample_rate, chunk.noise_multiplier, self.interval, chunk.steps)

    def _update(self, segments: tuple[Segment, ...]) -> float:
        live = [s for s in segments if not s.spends_nothing]
        if not live:
            return 0.0
        if any(s.spends_everything for s in live):
            return math.inf
        if not _extends(live, self._seen):
            self._seen, self._composed = [], None
        for chunk in _added(live, self._seen):
            pld = _steps_pld(chunk.sample_rate, chunk.noise_multiplier, self.interval, chunk.steps)
            self._composed = pld if self._composed is None else self._composed.compose(pld)
        self._seen = list(live)
        return float(self._composed.get_epsilon_for_delta(self.delta))


def _extends(segments: Sequence[Segment], seen: Sequence[Segment]) -> bool:
    """Whether `segments` is `seen` with steps added (to its last segment or after it)."""
    if len(segments) < len(seen):
        return False
    for i, old in enumerate(seen):
        new = segments[i]
        same_kind = (new.sample_rate, new.noise_multiplier) == (
            old.sample_rate,
            old.noise_multiplier,
        )
        grown_last = i == len(seen) - 1 and new.steps >= old.steps
        if not same_kind or (new.steps != old.steps and not grown_last):
            return False
    return True


def _added(segments: Sequence[Segment], seen: Sequence[Segment]) -> list[Segment]:
    """The steps of `segments` that `seen` lacks, as segments (see `_extends`)."""
    added = []
    if seen and segments[len(seen) - 1].steps > seen[-1].steps:
        last = segments[len(seen) - 1]
        added.append(dataclasses.replace(last, steps=last.steps - seen[-1].steps))
    added.extend(segments[len(seen) :])
    return added


@functools.lru_cache(maxsize=256)
def _one_step_rdp(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """One sampled Gaussian step's RDP at dp-accounting's default orders (read-only)."""
    accountant = rdp_lib.RdpAccountant()
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    # dp-accounting logs a warning per fractional order it skips; the result is sound.
    absl_logger.setLevel(logging.ERROR)
    try:
        event = dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
        )
        accountant.compose(event, 1)
    finally:
        absl_logger.setLevel(level)
    rdp = accountant.rdp
    rdp.setflags(write=False)
    return rdp


_RDP_ORDERS = np.array(rdp_lib.DEFAULT_RDP_ORDERS)


@register_accountant
class RDPAccountant(Accountant):
    """Renyi differential privacy, `dp_accounting.rdp`, with its default orders.

    RDP composes by addition: a segment of `steps` steps has `steps` times the
    RDP of one, as `RdpAccountant.compose(event, steps)` computes it. The
    one-step curve is cached, so `epsilon` costs microseconds once it is known
    and `running` is the exact value.
    """

    name = "rdp"

    def _epsilon(self, segments: Sequence[Segment], delta: float) -> float:
        rdp = np.zeros_like(_RDP_ORDERS, dtype=np.float64)
        for segment in segments:
            rdp += segment.steps * _one_step_rdp(segment.sample_rate, segment.noise_multiplier)
        return rdp_lib.compute_epsilon(_RDP_ORDERS, rdp, delta)[0]


def compute_epsilon(
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
) -> float:
    """Epsilon spent by `steps` DP-SGD steps with Poisson sampling.

    Args:
        sample_rate: Probability q that each example joins a step (batch
            size over dataset size), in [0, 1].
        noise_multiplier: Noise standard deviation over `l2_norm_clip`, >= 0.
        steps: Number of steps taken.
        delta: Target delta, in (0, 1).
        accountant: `"pld"` (default) or `"rdp"`.

    Returns:
        Epsilon, or `math.inf` when `noise_multiplier` is 0.

    Raises:
        PrivacyPolicyError: For an argument out of its range or an unknown accountant.

    Example:

    ```python
    compute_epsilon(256 / 60000, 1.1, 14062, 1e-5)          # 2.38
    compute_epsilon(256 / 60000, 1.1, 14062, 1e-5, "rdp")   # 2.60
    ```
    """
    segment = Segment(
        _as_float("sample_rate", sample_rate),
        _as_float("noise_multiplier", noise_multiplier),
        steps,
    )
    return get_accountant(accountant).epsilon([segment], delta)


def _as_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise PrivacyPolicyError(
            f"Expected {name} to be a real number. " + format_received(**{name: value})
        )
    return float(value)


class UnreachableEpsilonError(PrivacyPolicyError):
    """No noise multiplier up to `MAX_NOISE_MULTIPLIER` reaches the target epsilon."""


def calibrate_noise(
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
    prior: Sequence[Segment] = (),
) -> float:
    """The smallest noise multiplier (to 0.1%) whose epsilon is at most `target_epsilon`.

    The search bisects on the accountant's fast `estimate`, then checks the
    result with the exact `epsilon` and raises the noise until it holds, so
    the returned noise never spends more than the target.

    Args:
        target_epsilon: The budget, > 0.
        sample_rate: Probability q that each example joins a step, in (0, 1].
        steps: Number of steps planned, >= 1.
        delta: Target delta, in (0, 1).
        accountant: `"pld"` (default) or `"rdp"`.
        prior: Segments already spent before these steps.

    Returns:
        The noise multiplier.

    Raises:
        PrivacyPolicyError: For arguments out of range.
        UnreachableEpsilonError: (a `PrivacyPolicyError`) when even a noise
            multiplier of `MAX_NOISE_MULTIPLIER` spends more than the target.

    Example:

    ```python
    sigma = calibrate_noise(2.0, 256 / 60000, steps=14062, delta=1e-5)
    assert compute_epsilon(256 / 60000, sigma, 14062, 1e-5) <= 2.0
    ```
    """
    target = _as_float("target_epsilon", target_epsilon)
    if not (target > 0 and math.isfinite(target)):
        raise PrivacyPolicyError(
            "Expected target_epsilon > 0 and finite. " + format_received(target_epsilon=target)
        )
    rate = _as_float("sample_rate", sample_rate)
    if not 0 < rate <= 1:
        raise PrivacyPolicyError(
            "Expected sample_rate in (0, 1]. " + format_received(sample_rate=sample_rate)
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PrivacyPolicyError(
            "Expected steps to be an integer >= 1. " + format_received(steps=steps)
        )
    engine = get_accountant(accountant)

    def spent(sigma: float, exact: bool = False) -> float:
        segments = [*prior, Segment(rate, sigma, steps)]
        return engine.epsilon(segments, delta) if exact else engine.estimate(segments, delta)

    if spent(MAX_NOISE_MULTIPLIER, exact=True) > target:
        raise UnreachableEpsilonError(
            f"target_epsilon={target} cannot be reached in {steps} steps at sample rate "
            f"{rate:.4g}: even noise_multiplier={MAX_NOISE_MULTIPLIER:g} spends epsilon="
            f"{spent(MAX_NOISE_MULTIPLIER, exact=True):.4g}."
        )
    low, high = _bracket(lambda sigma: spent(sigma) <= target)
    while high / low > 1.001:  # Stops at once when the floor already fits.
        middle = math.sqrt(low * high)
        low, high = (low, middle) if spent(middle) <= target else (middle, high)
    while spent(high, exact=True) > target:  # The estimate was not an upper bound.
        high *= 1.001
    return high


def _bracket(fits) -> tuple[float, float]:
    """(low, high) with fits(high) and not fits(low); (floor, floor) if the floor fits."""
    high = 1.0
    while not fits(high):
        high *= 2.0
        if high >= MAX_NOISE_MULTIPLIER:
            return high / 2.0, MAX_NOISE_MULTIPLIER
    low = high / 2.0
    while fits(low):
        if low <= _MIN_NOISE_MULTIPLIER:
            return low, low
        high, low = low, max(low / 2.0, _MIN_NOISE_MULTIPLIER)
    return low, high


def max_steps(
    target_epsilon: float,
    sample_rate: float,
    noise_multiplier: float,
    delta: float,
    accountant: str = "pld",
    prior: Sequence[Segment] = (),
    limit: int = 10**7,
) -> int:
    """The largest number of further steps whose total epsilon stays within the target.

    Args:
        target_epsilon: The budget, > 0.
        sample_rate: Probability q of the further steps.
        noise_multiplier: Noise multiplier of the further steps.
        delta: Target delta.
        accountant: Accountant name.
        prior: Segments already spent.
        limit: Search no further than this many steps.

    Returns:
        A number of steps in [0, limit].
    """
    engine = get_accountant(accountant)

    def fits(steps: int) -> bool:
        segments = [*prior, Segment(sample_rate, noise_multiplier, steps)]
        return engine.epsilon(segments, delta) <= target_epsilon

    if not fits(0):
        return 0
    low, high = 0, 1
    while fits(high):
        low, high = high, high * 2
        if high > limit:
            return limit if fits(limit) else _bisect_steps(fits, low, limit)
    return _bisect_steps(fits, low, high)


def _bisect_steps(fits, low: int, high: int) -> int:
    # Invariant: fits(low) and not fits(high).
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


class PrivacyLedger:
    """The running record of what a training run has spent.

    Consecutive steps with the same sampling rate and noise merge into one
    `Segment`. Not thread-safe; one per engine.

    Args:
        delta: The delta that epsilon is reported at.
        accountant: Accountant name.
    """

    def __init__(self, delta: float, accountant: str = "pld"):
        self.delta = _check_delta(delta)
        self.accountant_name = accountant
        self._accountant = get_accountant(accountant)
        self._segments: list[Segment] = []
        self._cache: dict[tuple[Segment, ...], float] = {}
        self._running: RunningEpsilon | None = None
        self._running_for = 0
        self.sampler_failure = 0.0

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self._segments)

    def record(
        self,
        sample_rate: float,
        noise_multiplier: float,
        steps: int = 1,
        sampler_failure: float = 0.0,
    ) -> None:
        """Adds `steps` steps at (`sample_rate`, `noise_multiplier`).

        Args:
            sample_rate: q of the steps.
            noise_multiplier: sigma of the steps.
            steps: How many.
            sampler_failure: Per step, the probability that the noise
                sampler left the range where its output is exactly the
                Gaussian mechanism's (see `sampler_delta`).
        """
        if steps <= 0:
            return
        self.sampler_failure += steps * sampler_failure
        last = self._segments[-1] if self._segments else None
        if last and (last.sample_rate, last.noise_multiplier) == (sample_rate, noise_multiplier):
            self._segments[-1] = dataclasses.replace(last, steps=last.steps + steps)
        else:
            self._segments.append(Segment(sample_rate, noise_multiplier, steps))

    def epsilon(self, extra: Sequence[Segment] = ()) -> float:
        """Exact epsilon of what is recorded, plus `extra` segments if given."""
        key = (*self._segments, *extra)
        if key not in self._cache:
            self._cache[key] = self._accountant.epsilon(key, self.delta)
        return self._cache[key]

    def estimate(self, extra: Sequence[Segment] = ()) -> float:
        """A fast upper bound of `epsilon(extra)` (calibration, budget checks)."""
        return self._accountant.estimate((*self._segments, *extra), self.delta)

    def plan(self, planned_steps: int, chunk: Segment | None = None) -> None:
        """Prepares `running()` for about `planned_steps` more steps, recorded by `chunk`s.

        Args:
            planned_steps: Steps (accountant units) this fit plans.
            chunk: The steps of one epoch; their composition is done now, at
                setup, rather than at the first epoch's end.
        """
        total = self.steps + planned_steps
        if self._running is None or total > 2 * self._running_for:
            self._running = self._accountant.running(self.delta, total)
            self._running_for = total
        if chunk is not None:
            self._running.prepare(chunk)

    def running(self) -> float:
        """An upper bound of `epsilon()`, composed incrementally (progress bar, History)."""
        if self._running is None:
            self.plan(self.steps)
        return self._running(self._segments)

    def sampler_delta(self, epsilon: float | None = None) -> float:
        """The delta the noise sampler adds to the guarantee, `(1 + e^eps) P(failure)`.

        Where every draw stays in the range where the sampler is exact, the
        mechanism is exactly the Gaussian one; the run's failure probability
        `p` bounds the total variation between the two transcripts, so an
        `(eps, delta)` guarantee of the ideal mechanism gives `(eps, delta +
        (1 + e^eps) p)` for the real one.
        """
        if self.sampler_failure == 0.0:
            return 0.0
        eps = self.epsilon() if epsilon is None else epsilon
        if eps > 700.0:
            return 0.0 if math.isinf(eps) else math.inf  # inf: nothing is promised anyway.
        return (1.0 + math.exp(eps)) * self.sampler_failure
