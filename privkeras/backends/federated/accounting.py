"""Privacy accounting of federated rounds on Google's `dp-accounting`.

One round of DP-FedAvg is one sampled Gaussian mechanism: each owner joins
with probability q (`fraction_fit`, Poisson sampling), its update is clipped
to `clip_norm`, and Gaussian noise of std `noise_multiplier * clip_norm` is
added to the sum. Epsilon is for add-or-remove-one-owner neighbours
(client-level DP, McMahan et al., ICLR 2018). The same mechanism, with
examples for owners, is one DP-SGD step: an owner's own record-level ledger
(`local_privacy`) is accounted here too.

Privacy loss distributions (`dp_accounting.pld`, Koskela et al. 2020;
Doroshenko et al. 2022) with dp-accounting's default discretization (1e-4)
give epsilon; the discretization is pessimistic, so it is an upper bound.
The federated engine cannot import the DP-SGD engine (engines are
independent), so this is its own small accountant on the same library.

With `Federated(secure_aggregation=True, dp="distributed")` a round is not
the coordinator's Gaussian mechanism but the owners' distributed discrete
Gaussian (Kairouz, Liu and Steinke, ICML 2021), accounted in Renyi DP by
`secagg.dp.round_rdp` from the round's actual parameters. A ledger that
holds such a round composes everything in RDP: the Gaussian rounds too
(exactly unsampled, alpha / (2 z^2); sampled by Zhu and Wang's general
bound, as the discrete rounds are), converted to (epsilon, delta) by
dp-accounting's `compute_epsilon`.

Example:

```python
from privkeras.backends.federated import accounting

accounting.epsilon(0.1, 1.5, rounds=10, delta=1e-5)              # 1.30
accounting.calibrate_noise(2.0, 0.1, rounds=10, delta=1e-5)      # ~1.17
```
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.pld import privacy_loss_mechanism

from privkeras.errors import PrivacyPolicyError, format_received

__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "Mechanism",
    "RdpRound",
    "RoundLedger",
    "calibrate_noise",
    "calibrate_rdp_noise",
    "epsilon",
]

#: Calibration never proposes more noise than this: beyond it the target is unreachable.
MAX_NOISE_MULTIPLIER = 1000.0
#: dp-accounting's default value discretization, for reported epsilons.
INTERVAL = 1e-4
#: A coarser one for the calibration search (checked with `INTERVAL` after).
_SEARCH_INTERVAL = 1e-3


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """`count` sampled Gaussian mechanisms at sampling rate `sample_rate` and noise `noise_multiplier`."""

    sample_rate: float
    noise_multiplier: float
    count: int = 1

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
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise PrivacyPolicyError(
                "Expected count to be an integer >= 0. " + format_received(count=self.count)
            )

    @property
    def spends_nothing(self) -> bool:
        return self.count == 0 or self.sample_rate == 0


@dataclasses.dataclass(frozen=True, eq=False)
class RdpRound:
    """`count` rounds whose Renyi DP at `orders` is `values` each (a round the owners noised).

    Attributes:
        orders: RDP orders alpha.
        values: RDP epsilon(alpha) of one round, at each order.
        count: How many such rounds.
        label: What the round was (for reports).
    """

    orders: tuple[float, ...]
    values: np.ndarray
    count: int = 1
    label: str = "distributed discrete Gaussian"

    def total(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64) * self.count


def gaussian_rdp(mechanism: Mechanism, orders: Sequence[float]) -> np.ndarray:
    """RDP of `mechanism` (all its rounds) at `orders`.

    Unsampled: alpha / (2 z^2) per round (Mironov 2017). Sampled: Zhu and
    Wang's general Poisson-subsampling bound at integer orders (the bound
    `secagg.dp` uses for the discrete rounds; looser than dp-accounting's
    tight analysis of the subsampled Gaussian), the unsampled value elsewhere.
    """
    from privkeras.backends.federated.secagg.dp import subsampled_rdp

    z, q = mechanism.noise_multiplier, mechanism.sample_rate
    if mechanism.spends_nothing:
        return np.zeros(len(orders))
    if z == 0:
        return np.full(len(orders), math.inf)

    def rdp(alpha: float) -> float:
        return alpha / (2 * z * z)

    return subsampled_rdp(rdp, orders, q) * mechanism.count


@functools.lru_cache(maxsize=64)
def _one_pld(sample_rate: float, noise_multiplier: float, interval: float):
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        sampling_prob=sample_rate,
        value_discretization_interval=interval,
    )


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise PrivacyPolicyError("Expected delta in (0, 1). " + format_received(delta=delta))
    return float(delta)


def _gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Exact epsilon of one Gaussian mechanism (Balle and Wang, ICML 2018), by bisection.

    dp-accounting's `GaussianPrivacyLoss.get_delta_for_epsilon` is the exact
    (epsilon, delta) curve; epsilon is found to a relative 1e-10.
    """
    loss = privacy_loss_mechanism.GaussianPrivacyLoss(noise_multiplier)
    if loss.get_delta_for_epsilon(0.0) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while loss.get_delta_for_epsilon(high) > delta:
        low, high = high, 2 * high
    while high - low > 1e-10 * high:
        middle = (low + high) / 2
        low, high = (low, middle) if loss.get_delta_for_epsilon(middle) <= delta else (middle, high)
    return high


def composed_epsilon(
    mechanisms: Sequence[Mechanism], delta: float, interval: float = INTERVAL
) -> float:
    """Epsilon at `delta` of the composition of `mechanisms` (inf if one has no noise).

    Without sampling (every rate 1) the composition of Gaussian mechanisms is
    exactly one Gaussian mechanism of noise `(sum count / sigma^2)^(-1/2)`,
    whose epsilon is computed exactly; otherwise the PLDs are composed.
    """
    delta = _check_delta(delta)
    live = [m for m in mechanisms if not m.spends_nothing]
    if not live:
        return 0.0
    if any(m.noise_multiplier == 0 for m in live):
        return math.inf
    if all(m.sample_rate == 1 for m in live):
        return _gaussian_epsilon(_combined_noise(live), delta)
    composed = None
    for mechanism in live:
        pld = _one_pld(mechanism.sample_rate, mechanism.noise_multiplier, interval)
        pld = pld.self_compose(mechanism.count) if mechanism.count > 1 else pld
        composed = pld if composed is None else composed.compose(pld)
    return float(composed.get_epsilon_for_delta(delta))


def _combined_noise(mechanisms: Sequence[Mechanism]) -> float:
    return sum(m.count / m.noise_multiplier**2 for m in mechanisms) ** -0.5


def epsilon(sample_rate: float, noise_multiplier: float, rounds: int, delta: float) -> float:
    """Client-level epsilon of `rounds` DP-FedAvg rounds (inf without noise).

    Args:
        sample_rate: Probability q that an owner joins a round, in [0, 1].
        noise_multiplier: Noise std over the clip norm, >= 0.
        rounds: Number of rounds, >= 0.
        delta: Target delta, in (0, 1).
    """
    return composed_epsilon([Mechanism(sample_rate, noise_multiplier, rounds)], delta)


def _check_target(target_epsilon: float, rounds: int) -> None:
    if not (isinstance(target_epsilon, (int, float)) and 0 < target_epsilon < math.inf):
        raise PrivacyPolicyError(
            "Expected target_epsilon > 0 and finite. "
            + format_received(target_epsilon=target_epsilon)
        )
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise PrivacyPolicyError("Expected rounds >= 1. " + format_received(rounds=rounds))


def calibrate_noise(
    target_epsilon: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    prior: Sequence[Mechanism] = (),
) -> float:
    """The smallest noise multiplier (to 0.1%) spending at most `target_epsilon` in `rounds`.

    Bisects with a coarse discretization, then raises the noise until the
    reported (fine) epsilon holds, so the result never spends more than the target.

    Raises:
        PrivacyPolicyError: For arguments out of range, or a target that even
            `MAX_NOISE_MULTIPLIER` cannot reach.
    """
    _check_target(target_epsilon, rounds)

    def spent(sigma: float, interval: float = _SEARCH_INTERVAL) -> float:
        plan = [*prior, Mechanism(sample_rate, sigma, rounds)]
        return composed_epsilon(plan, delta, interval)

    return _bisect_noise(spent, target_epsilon, rounds, sample_rate)


def calibrate_rdp_noise(
    target_epsilon: float,
    rounds: int,
    ledger: RoundLedger,
    round_rdp: Callable[[float], RdpRound],
) -> float:
    """`calibrate_noise` for rounds accounted in RDP (distributed DP under secure aggregation).

    Args:
        target_epsilon: The budget, counting what `ledger` already holds.
        rounds: Rounds to come.
        ledger: The ledger so far (its delta is the target's).
        round_rdp: z -> the RDP of one round at noise multiplier z.
    """
    _check_target(target_epsilon, rounds)

    def spent(sigma: float, interval: float = INTERVAL) -> float:
        return ledger.projected_rdp([dataclasses.replace(round_rdp(sigma), count=rounds)])

    return _bisect_noise(spent, target_epsilon, rounds, None)


def _bisect_noise(spent, target_epsilon: float, rounds: int, sample_rate) -> float:
    if spent(MAX_NOISE_MULTIPLIER, INTERVAL) > target_epsilon:
        rate = "" if sample_rate is None else f" at sampling rate {sample_rate:.4g}"
        raise PrivacyPolicyError(
            f"Expected a target_epsilon reachable in {rounds} rounds{rate}: "
            f"even noise_multiplier={MAX_NOISE_MULTIPLIER:g} spends "
            f"epsilon={spent(MAX_NOISE_MULTIPLIER, INTERVAL):.4g}. "
            + format_received(target_epsilon=target_epsilon)
        )
    low, high = 0.0, 1.0
    while spent(high) > target_epsilon:
        low, high = high, min(2 * high, MAX_NOISE_MULTIPLIER)
    if low == 0.0:
        low = high / 2
        while low > 0.05 and spent(low) <= target_epsilon:
            low, high = low / 2, low
    while high / low > 1.001:
        middle = math.sqrt(low * high)
        low, high = (low, middle) if spent(middle) <= target_epsilon else (middle, high)
    while spent(high, INTERVAL) > target_epsilon:
        high *= 1.001
    return high


class RoundLedger:
    """The running record of sampled Gaussian mechanisms applied to one party's data.

    With sampling, the PLD is composed incrementally (one composition per
    newly recorded mechanism when epsilon is asked), not from scratch.

    Args:
        delta: The delta epsilon is reported at.
    """

    def __init__(self, delta: float):
        self.delta = _check_delta(delta)
        self._mechanisms: list[Mechanism] = []
        self._pieces: list[Mechanism] = []  # one per record() call, for incremental composition
        self._composed = None
        self._composed_pieces = 0
        self._rdp: list[RdpRound] = []

    @property
    def mechanisms(self) -> tuple[Mechanism, ...]:
        return tuple(self._mechanisms)

    @property
    def rdp_rounds(self) -> tuple[RdpRound, ...]:
        return tuple(self._rdp)

    @property
    def count(self) -> int:
        return sum(m.count for m in self._mechanisms) + sum(r.count for r in self._rdp)

    def record_rdp(self, event: RdpRound) -> None:
        """Adds rounds accounted in RDP (from then on the whole ledger is composed in RDP)."""
        if self._rdp and tuple(event.orders) != tuple(self._rdp[0].orders):
            raise PrivacyPolicyError(
                "Expected RDP rounds at the ledger's orders. "
                + format_received(orders=len(event.orders))
            )
        self._rdp.append(event)

    def projected_rdp(self, extra: Sequence[RdpRound]) -> float:
        """Epsilon, in RDP, if `extra` were recorded too."""
        events = [*self._rdp, *extra]
        orders = tuple(events[0].orders)
        total = np.zeros(len(orders))
        for event in events:
            total = total + event.total()
        for mechanism in self._mechanisms:
            total = total + gaussian_rdp(mechanism, orders)
        if not np.isfinite(total).any():
            return math.inf
        from dp_accounting.rdp import rdp_privacy_accountant

        eps, _ = rdp_privacy_accountant.compute_epsilon(list(orders), total, self.delta)
        return float(eps)

    def record(self, sample_rate: float, noise_multiplier: float, count: int = 1) -> None:
        """Adds `count` mechanisms at (`sample_rate`, `noise_multiplier`)."""
        mechanism = Mechanism(sample_rate, noise_multiplier, count)
        if mechanism.spends_nothing:
            return
        self._pieces.append(mechanism)
        last = self._mechanisms[-1] if self._mechanisms else None
        if last and (last.sample_rate, last.noise_multiplier) == (sample_rate, noise_multiplier):
            self._mechanisms[-1] = dataclasses.replace(last, count=last.count + count)
        else:
            self._mechanisms.append(mechanism)

    def epsilon(self) -> float:
        """Epsilon of what is recorded (0 before anything, inf if a mechanism had no noise)."""
        if self._rdp:
            return self.projected_rdp([])
        live = self._mechanisms
        if not live:
            return 0.0
        if any(m.noise_multiplier == 0 for m in live):
            return math.inf
        if all(m.sample_rate == 1 for m in live):
            return _gaussian_epsilon(_combined_noise(live), self.delta)
        for piece in self._pieces[self._composed_pieces :]:
            pld = _one_pld(piece.sample_rate, piece.noise_multiplier, INTERVAL)
            pld = pld.self_compose(piece.count) if piece.count > 1 else pld
            self._composed = pld if self._composed is None else self._composed.compose(pld)
        self._composed_pieces = len(self._pieces)
        return float(self._composed.get_epsilon_for_delta(self.delta))

    def projected(self, extra: Sequence[Mechanism]) -> float:
        """Epsilon if `extra` were recorded too."""
        return composed_epsilon([*self._mechanisms, *extra], self.delta)
