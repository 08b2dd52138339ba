"""Privacy accounting of the distributed discrete Gaussian under secure aggregation.

With `SecAggConfig(noise_multiplier=z, clip_norm=c)`, every owner clips its
update to L2 norm c, scales it by 1/gamma, rounds it stochastically to an
integer vector of L2 norm <= Delta (conditional rounding) and adds discrete
Gaussian noise N_Z(0, sigma^2)^d with sigma^2 = t * m ~ (z c / gamma)^2 / n_min
before masking. The coordinator only ever sees the sum, in which the noise of
the n >= n_min owners whose inputs are summed adds up; modular reduction of
the sum is post-processing. This is the distributed discrete Gaussian
mechanism of Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation" (ICML 2021).

Accounting (`round_rdp`, `epsilon`): their Proposition 14 (arXiv v2) bounds
the Renyi DP of one round at order alpha by the smallest of

    alpha/2 * (Delta2/s)^2 + tau d,
    alpha/2 * ((Delta2/s)^2 + 2 (Delta1/s) tau + tau^2 d),
    alpha/2 * (Delta2/s + sqrt(d) tau)^2,

with s = sqrt(n sigma^2) the standard deviation of the summed noise, Delta2
the rounded L2 bound (their Theorem 1), Delta1 = Delta2 min(sqrt(d), Delta2),
and tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1)) the price of a
sum of discrete Gaussians not being one (negligible once sigma is a few ring
steps; the codec makes sigma large). n is the number of owners whose noise is
counted: by default `min_survivors`, the fewest the coordinator may sum (more
survivors only add noise); pass `noise_owners` smaller to discount owners that
might collude with the coordinator and reveal their noise.

Owner sampling (Poisson, rate q < 1) is amplified with the general bound of
Zhu and Wang, "Poisson Subsampled Renyi Differential Privacy" (ICML 2019),
Theorem 6, at integer orders; rounds compose additively in RDP, and RDP
converts to (epsilon, delta) with dp-accounting's `compute_epsilon`
(Canonne, Kamath and Steinke 2020, Proposition 12).

Neighbouring rounds differ in one owner's update being replaced by zero (the
owner still takes part): the relation Kairouz et al. analyse. That an owner
answered at all is visible to the coordinator under any secure aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from privkeras.backends.federated.secagg.params import RoundParameters, SecAggConfig

__all__ = ["RDP_ORDERS", "distributed_dp_epsilon", "epsilon", "round_rdp", "subsampled_rdp"]

#: dp-accounting's default orders (fractional below 11, where the optimum of a
#: Gaussian-like curve often lies) plus integer orders up to 512 for subsampling.
RDP_ORDERS: tuple[float, ...] = tuple(
    sorted(
        {float(a) for a in rdp_privacy_accountant.DEFAULT_RDP_ORDERS if a <= 512}
        | {float(a) for a in (*range(2, 65), *range(72, 129, 8), 160, 192, 256, 384, 512)}
    )
)


def _tau(variance: int, owners: int) -> float:
    return 10.0 * sum(math.exp(-2 * math.pi**2 * variance * k / (k + 1)) for k in range(1, owners))


def _unsampled_rdp(params: RoundParameters, owners: int):
    """alpha -> RDP of one round with every owner taking part (Proposition 14)."""
    if not params.noise_t:
        raise ValueError(
            "Expected round parameters with distributed DP (noise_multiplier > 0). "
            f"Received: noise_multiplier={params.config.noise_multiplier}"
        )
    d = params.vector_length
    variance = params.noise_t * params.noise_m
    spread = math.sqrt(owners * variance)
    l2 = params.rounding_bound / spread
    l1 = params.rounding_bound * min(math.sqrt(d), params.rounding_bound) / spread
    tau = _tau(variance, owners)

    def rdp(alpha: float) -> float:
        return min(
            alpha / 2 * l2**2 + tau * d,
            alpha / 2 * (l2**2 + 2 * l1 * tau + tau**2 * d),
            alpha / 2 * (l2 + math.sqrt(d) * tau) ** 2,
        )

    return rdp


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _subsampled(alpha: int, q: float, rdp) -> float:
    """Zhu and Wang (2019), Theorem 6: Poisson-subsampled RDP at integer alpha >= 2."""
    logs = [(alpha - 1) * math.log1p(-q) + math.log(alpha * q - q + 1)]
    logs.append(_log_comb(alpha, 2) + 2 * math.log(q) + (alpha - 2) * math.log1p(-q) + rdp(2))
    for j in range(3, alpha + 1):
        logs.append(
            math.log(3)
            + _log_comb(alpha, j)
            + j * math.log(q)
            + (alpha - j) * math.log1p(-q)
            + (j - 1) * rdp(j)
        )
    top = max(logs)
    return (top + math.log(sum(math.exp(v - top) for v in logs))) / (alpha - 1)


def round_rdp(
    params: RoundParameters,
    orders: Sequence[float] = RDP_ORDERS,
    *,
    sampling_rate: float = 1.0,
    noise_owners: int | None = None,
) -> np.ndarray:
    """RDP of one round of secure aggregation with distributed DP, at each order.

    Args:
        params: The round's parameters (`SecAggConfig.resolve`).
        orders: RDP orders; with `sampling_rate < 1` only integer orders are
            amplified (others keep the unsampled value).
        sampling_rate: Probability that each owner is asked in a round (Poisson).
        noise_owners: Owners whose noise is counted; default `min_survivors`.

    Returns:
        RDP values, one per order (add them over rounds).
    """
    owners = params.min_survivors if noise_owners is None else int(noise_owners)
    if not 1 <= owners <= params.num_owners:
        raise ValueError(
            f"Expected noise_owners in [1, {params.num_owners}]. Received: noise_owners={owners}"
        )
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"Expected sampling_rate in (0, 1]. Received: {sampling_rate}")
    return subsampled_rdp(_unsampled_rdp(params, owners), orders, sampling_rate)


def subsampled_rdp(rdp, orders: Sequence[float], sampling_rate: float) -> np.ndarray:
    """`rdp(alpha)` at `orders`, amplified by Poisson sampling at integer orders (Zhu and Wang).

    Args:
        rdp: alpha -> RDP of the mechanism without sampling.
        orders: RDP orders.
        sampling_rate: q in (0, 1]; 1 returns `rdp` unchanged.
    """
    values = []
    for alpha in orders:
        plain = rdp(alpha)
        if sampling_rate < 1 and float(alpha).is_integer() and alpha >= 2:
            plain = min(plain, _subsampled(int(alpha), sampling_rate, rdp))
        values.append(plain)
    return np.asarray(values)


def epsilon(
    params: RoundParameters,
    *,
    rounds: int,
    delta: float,
    sampling_rate: float = 1.0,
    noise_owners: int | None = None,
    orders: Sequence[float] = RDP_ORDERS,
) -> float:
    """(epsilon, delta)-DP of `rounds` rounds with these parameters (see module notes)."""
    if rounds < 0 or not 0 < delta < 1:
        raise ValueError(
            f"Expected rounds >= 0 and delta in (0, 1). Received: rounds={rounds}, delta={delta}"
        )
    if rounds == 0:
        return 0.0
    per_round = round_rdp(params, orders, sampling_rate=sampling_rate, noise_owners=noise_owners)
    eps, _ = rdp_privacy_accountant.compute_epsilon(list(orders), per_round * rounds, delta)
    return float(eps)


def distributed_dp_epsilon(
    *,
    noise_multiplier: float,
    clip_norm: float,
    vector_length: int,
    num_owners: int,
    rounds: int,
    delta: float,
    sampling_rate: float = 1.0,
    noise_owners: int | None = None,
    **config: object,
) -> float:
    """Epsilon of distributed-DP secure aggregation, from the policy's numbers.

    The engine's accountant calls this (or `round_rdp`, to compose with other
    events) with the same settings it gives `SecAggConfig`.

    Args:
        noise_multiplier: z: the summed noise has standard deviation z * clip_norm
            when `min_survivors` owners are summed.
        clip_norm: L2 clip of each owner's update.
        vector_length: Values per update (the model's parameter count).
        num_owners: Owners per round.
        rounds: Rounds run.
        delta: Target delta.
        sampling_rate: Poisson rate at which owners are asked per round.
        noise_owners: Owners whose noise is counted (default `min_survivors`).
        **config: Other `SecAggConfig` fields (ring_bits, min_survivors, max_dropout, ...).

    Example:

    ```python
    eps = distributed_dp_epsilon(noise_multiplier=1.0, clip_norm=1.0, vector_length=4810,
                                 num_owners=10, rounds=10, delta=1e-5)
    ```
    """
    settings = SecAggConfig(noise_multiplier=noise_multiplier, clip_norm=clip_norm, **config)
    params = settings.resolve(num_owners, vector_length)
    return epsilon(
        params,
        rounds=rounds,
        delta=delta,
        sampling_rate=sampling_rate,
        noise_owners=noise_owners,
    )
