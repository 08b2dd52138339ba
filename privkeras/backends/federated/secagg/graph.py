"""The SecAgg+ neighbour graph: a randomly labelled Harary graph of degree k ~ log n.

Each owner shares its secrets with, and masks against, only its k neighbours
(Bell et al., CCS 2020). The graph is the Harary graph H(n, k) (owners on a
ring, each linked to the k/2 nearest on either side) with the ring positions
given by a uniformly random permutation drawn from a `SecureStream`: every
owner's neighbourhood is then a uniformly random k-subset of the others, the
"practical" SecAgg+ graph of Bell et al., Section 5.

Degree and threshold (`choose_degree_and_threshold`) follow Bell et al.'s
analysis with exact hypergeometric tails, for a fraction `max_dropout` of
owners that may drop and a fraction `max_corrupt` that may collude with the
coordinator, both fixed independently of the graph:

- connectivity: the survivors that are honest stay connected unless k/2
  consecutive ring positions are all dropped or corrupt; by a union bound over
  the n starting positions this has probability <= n (max_dropout +
  max_corrupt)^(k/2), required <= 2^-security_bits (a disconnected survivor
  graph would reveal partial sums);
- privacy: fewer than t of any owner's neighbours collude, with probability
  >= 1 - 2^-security_bits (union over owners);
- correctness: at least t of any owner's neighbours survive, with probability
  >= 1 - 2^-correctness_bits.

k is the smallest even degree meeting all three (or n - 1, the complete graph
of SecAgg, when that comes first), and t the largest threshold that still
meets correctness. k grows as O(log n + security_bits): 9 for 10 owners
(complete), 78 for 100, 98 for 1,000, 122 for 10,000 with the defaults.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from privkeras.core.random import SecureStream

__all__ = [
    "choose_degree_and_threshold",
    "harary_graph",
    "is_connected",
    "random_permutation",
]


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _hypergeometric_log_pmf(population: int, marked: int, draws: int) -> np.ndarray:
    """log P[X = i] for i in 0..draws, X the marked items among `draws` from `population`."""
    out = np.full(draws + 1, -np.inf)
    low, high = max(0, draws - (population - marked)), min(draws, marked)
    base = _log_comb(population, draws)
    for i in range(low, high + 1):
        out[i] = _log_comb(marked, i) + _log_comb(population - marked, draws - i) - base
    return out


def _log_tail_at_least(log_pmf: np.ndarray) -> np.ndarray:
    """log P[X >= i] for i in 0..len(log_pmf) - 1 (stable reverse log-sum-exp)."""
    tail = np.empty_like(log_pmf)
    acc = -np.inf
    for i in range(len(log_pmf) - 1, -1, -1):
        acc = np.logaddexp(acc, log_pmf[i])
        tail[i] = acc
    return tail


def _threshold_range(
    n: int, k: int, dropped: int, corrupt: int, security_bits: int, correctness_bits: int
) -> tuple[int, int] | None:
    """(t_min, t_max) meeting privacy and correctness for degree k, or None."""
    log_budget_privacy = -security_bits * math.log(2) - math.log(n)
    log_budget_correct = -correctness_bits * math.log(2) - math.log(n)
    corrupt_tail = _log_tail_at_least(_hypergeometric_log_pmf(n - 1, corrupt, k))
    dropped_tail = _log_tail_at_least(_hypergeometric_log_pmf(n - 1, dropped, k))
    # Privacy: P[corrupt neighbours >= t] small; t = k + 1 is never reached.
    t_min = next((t for t in range(1, k + 1) if corrupt_tail[t] <= log_budget_privacy), None)
    # Correctness: survivors >= t, i.e. P[dropped neighbours >= k - t + 1] small.
    t_max = next(
        (t for t in range(k, 0, -1) if dropped_tail[k - t + 1] <= log_budget_correct), None
    )
    if t_min is None or t_max is None or t_min > t_max:
        return None
    return t_min, t_max


@functools.lru_cache(maxsize=256)
def choose_degree_and_threshold(
    num_owners: int,
    *,
    max_dropout: float = 1 / 3,
    max_corrupt: float = 0.1,
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> tuple[int, int]:
    """Degree k and threshold t of the neighbour graph for `num_owners` owners.

    Args:
        num_owners: Owners in the round, >= 2.
        max_dropout: Fraction of owners that may drop, in [0, 1).
        max_corrupt: Fraction of owners that may collude with the coordinator, in [0, 1).
        security_bits: Privacy and connectivity fail with probability <= 2^-security_bits.
        correctness_bits: A round fails for too few survivors with probability
            <= 2^-correctness_bits when at most `max_dropout` of the owners drop.

    Returns:
        `(k, t)`: each owner has k neighbours (k = n - 1 is the complete graph),
        and any t of them reconstruct its secrets.

    Raises:
        ValueError: When no degree meets the requirements (too many dropouts
            plus corruptions for `num_owners`).

    Results are cached: every owner checks the coordinator's choice with it.
    """
    if num_owners < 2:
        raise ValueError(f"Expected num_owners >= 2. Received: num_owners={num_owners}")
    if not (0 <= max_dropout < 1 and 0 <= max_corrupt < 1 and max_dropout + max_corrupt < 1):
        raise ValueError(
            "Expected max_dropout and max_corrupt in [0, 1) with a sum below 1. "
            f"Received: max_dropout={max_dropout}, max_corrupt={max_corrupt}"
        )
    n = num_owners
    dropped, corrupt = math.floor(max_dropout * n), math.floor(max_corrupt * n)
    dead = max_dropout + max_corrupt
    if dead == 0:
        k_connected = 2
    else:
        half = (security_bits * math.log(2) + math.log(n)) / -math.log(dead)
        k_connected = 2 * max(1, math.ceil(half))
    for k in [*range(k_connected, n - 1, 2), n - 1]:
        found = _threshold_range(n, k, dropped, corrupt, security_bits, correctness_bits)
        if found is not None:
            return k, found[1]
    raise ValueError(
        f"Expected parameters that {n} owners can meet. Received: max_dropout={max_dropout}, "
        f"max_corrupt={max_corrupt}: even the complete graph cannot keep fewer colluders than "
        "survivors in every neighbourhood"
    )


def _uniform_below(stream: SecureStream, bound: int) -> int:
    """A uniform integer in [0, bound) by rejection sampling."""
    bits = max(1, (bound - 1).bit_length())
    nbytes = (bits + 7) // 8
    while True:
        value = int.from_bytes(stream.random_bytes(nbytes), "little") & ((1 << bits) - 1)
        if value < bound:
            return value


def random_permutation(items: Sequence[int], stream: SecureStream) -> list[int]:
    """A uniformly random ordering of `items` (Fisher-Yates with unbiased draws)."""
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = _uniform_below(stream, i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def harary_graph(
    members: Sequence[int], degree: int, stream: SecureStream
) -> dict[int, frozenset[int]]:
    """The neighbour sets of a randomly labelled Harary graph on `members`.

    Args:
        members: Owner indices.
        degree: Even k, or any k >= len(members) - 1 for the complete graph.
        stream: Secure randomness for the labelling.

    Returns:
        `{owner: frozenset of its neighbours}`.
    """
    n = len(members)
    if degree >= n - 1:
        everyone = frozenset(members)
        return {m: everyone - {m} for m in members}
    if degree < 2 or degree % 2:
        raise ValueError(
            f"Expected an even degree >= 2 below {n - 1}, or >= {n - 1}. Received: degree={degree}"
        )
    ring = random_permutation(members, stream)
    half = degree // 2
    return {
        ring[i]: frozenset(ring[(i + d) % n] for d in range(-half, half + 1) if d) for i in range(n)
    }


def is_connected(nodes: Iterable[int], graph: Mapping[int, frozenset[int]]) -> bool:
    """Whether the subgraph of `graph` induced on `nodes` is connected."""
    remaining = set(nodes)
    if not remaining:
        return True
    start = next(iter(remaining))
    seen = {start}
    queue = deque([start])
    while queue:
        for neighbour in graph[queue.popleft()]:
            if neighbour in remaining and neighbour not in seen:
                seen.add(neighbour)
                queue.append(neighbour)
    return seen == remaining
