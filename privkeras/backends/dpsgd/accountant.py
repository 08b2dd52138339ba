"""Privacy accounting for DP-SGD on Google's `dp-accounting` library.

A DP-SGD run is a list of `Segment`s: `steps` applications of the sampled
Gaussian mechanism with sampling rate `q` and noise multiplier `sigma`. An
`Accountant` turns segments into epsilon for a given delta. Two are
registered, by name:

- `"pld"` (default): privacy loss distributions (Koskela et al., 2020;
  Doroshenko et al., 2022), tight up to the discretization, which is
  pessimistic: the value is an upper bound of the true epsilon.
- `"rdp"`: Renyi DP (Mironov, 2017; Mironov, Talwar and Zhang, 2019),
  looser but fast.

`compute_epsilon` and `calibrate_noise` are the public entry points (through
`privkeras.dpsgd`); `PrivacyLedger` is the running record an engine keeps.

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
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from privkeras.errors import PrivacyPolicyError, format_received

__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "Accountant",
    "PLDAccountant",
    "PrivacyLedger",
    "RDPAccountant",
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
        """A fast upper bound of `epsilon` (for progress bars and calibration)."""
        return self.epsilon(segments, delta)


_ACCOUNTANTS: dict[str, type[Accountant]] = {}


def register_accountant(cls: type[Accountant] | None = None, *, replace: bool = False):
    """Registers an `Accountant` subclass under `cls.name`. Usable as a decorator.

    Raises:
        PrivacyPolicyError: For a name already registered (unless `replace`).
    """

    def _register(accountant_cls: type[Accountant]) -> type[Accountant]:
        name = accountant_cls.name
        if name in _ACCOUNTANTS and not replace and _ACCOUNTANTS[name] is not accountant_cls:
            raise PrivacyPolicyError(
                f"An accountant named {name!r} is already registered. "
                "Pass replace=True to replace it."
            )
        _ACCOUNTANTS[name] = accountant_cls
        return accountant_cls

    return _register if cls is None else _register(cls)


def available_accountants() -> list[str]:
    """Names of the registered accountants."""
    return sorted(_ACCOUNTANTS)


def get_accountant(name: str) -> Accountant:
    """A new accountant registered under `name`.

    Raises:
        PrivacyPolicyError: For an unknown name; the message lists the known ones.
    """
    if name not in _ACCOUNTANTS:
        raise PrivacyPolicyError(
            f"Expected accountant to be one of {available_accountants()}. "
            + format_received(accountant=name)
        )
    return _ACCOUNTANTS[name]()


@functools.lru_cache(maxsize=64)
def _one_step_pld(sample_rate: float, noise_multiplier: float, interval: float):
    # Building the one-step PLD is the slow part; composing it is cheap.
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        sampling_prob=sample_rate,
        value_discretization_interval=interval,
    )


@register_accountant
class PLDAccountant(Accountant):
    """Privacy loss distributions, `dp_accounting.pld`, add-or-remove-one neighbours.

    `value_discretization_interval` is dp-accounting's default (1e-4) for
    `epsilon`; `estimate` uses 1e-3, about ten times faster. Both discretize
    pessimistically, so both are upper bounds of the exact epsilon.
    """

    name = "pld"
    INTERVAL: ClassVar[float] = 1e-4
    ESTIMATE_INTERVAL: ClassVar[float] = 1e-3

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


@register_accountant
class RDPAccountant(Accountant):
    """Renyi differential privacy, `dp_accounting.rdp`, with its default orders."""

    name = "rdp"

    def _epsilon(self, segments: Sequence[Segment], delta: float) -> float:
        accountant = rdp_lib.RdpAccountant()
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        # dp-accounting logs a warning per fractional order it skips; the result is sound.
        absl_logger.setLevel(logging.ERROR)
        try:
            for segment in segments:
                event = dp_accounting.PoissonSampledDpEvent(
                    segment.sample_rate, dp_accounting.GaussianDpEvent(segment.noise_multiplier)
                )
                accountant.compose(event, segment.steps)
            return accountant.get_epsilon(delta)
        finally:
            absl_logger.setLevel(level)


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

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self._segments)

    def record(self, sample_rate: float, noise_multiplier: float, steps: int = 1) -> None:
        """Adds `steps` steps at (`sample_rate`, `noise_multiplier`)."""
        if steps <= 0:
            return
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

    def estimate(self) -> float:
        """A fast upper bound of `epsilon()` (for progress bars)."""
        return self._accountant.estimate(self._segments, self.delta)
