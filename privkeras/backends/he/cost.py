"""Which packing is fastest for a batch: a small cost model over counted operations.

For each candidate block size the program is run on `CountingOps` (levels and
scales only) and every counted operation is priced by its kind and the number
of primes left at its level. Key switching (rotations, relinearization) grows
faster than linearly with the primes; products, additions and rescales grow
linearly. The client's encryptions and decryptions count too, since a user
waits for them as well.

With `workers > 1` (an `EvaluationPool`), groups are evaluated `workers` at
a time while the pool's process encrypts, serializes and decrypts them all:
the estimate is that process's time plus one group's evaluation per round,
each ciphertext paying `TRANSFER` to reach a worker and come back.

The unit costs are milliseconds for N=8192 measured with SEAL 3.x from
TenSEAL 0.3.18 on one x86 core; only their ratios matter, as every candidate
shares the ring degree.
"""

from __future__ import annotations

import collections
import math
from typing import Any

from privkeras.backends.he.ckks import CountingOps
from privkeras.backends.he.params import CKKSParameters

__all__ = ["estimate_milliseconds", "program_cost", "transfer_cost"]


def _rotation(primes: int) -> float:
    return 0.65 * primes**1.75


UNIT_COSTS = {
    "multiply_plain": lambda p: 0.085 * p,
    "add": lambda p: 0.02 * p,
    "add_plain": lambda p: 0.02 * p,
    "rescale": lambda p: 0.5 * p,
    "rotate": _rotation,
    "relinearize": lambda p: 1.4 * _rotation(p),
    "encrypt": lambda p: 0.7 * p,  # encode + symmetric encryption
}
DECRYPT_COST = 0.7  # decrypt + decode one ciphertext at the last level


def transfer_cost(primes: int) -> float:
    """Moving one ciphertext between the pool's process and a worker and back.

    Seeded serialization, a pipe and SEAL's validating load: about 1.5 ms at
    4 primes, measured.
    """
    return 0.35 * primes


def estimate_milliseconds(counts: dict[tuple[str, int], int], outputs: int) -> float:
    """Priced operation counts (from `CountingOps.counts`) plus `outputs` decryptions."""
    total = sum(UNIT_COSTS[op](level + 1) * n for (op, level), n in counts.items())
    return total + DECRYPT_COST * outputs


def program_cost(
    program: Any, primes: list[int], parameters: CKKSParameters, n_samples: int, workers: int = 1
) -> float:
    """Estimated milliseconds to encrypt, evaluate and decrypt `n_samples` with `program`.

    Args:
        workers: Groups evaluated at once by an `EvaluationPool` (1: in process).
    """
    ops = CountingOps(primes, parameters.slots)
    inputs = [
        ops.encrypt(ops.encode(0.0, ops.top_level, parameters.scale))
        for _ in range(program.input_layout.n_ciphertexts)
    ]
    outputs = program.apply(ops, inputs)
    client = collections.Counter({k: n for k, n in ops.counts.items() if k[0] == "encrypt"})
    client_ms = estimate_milliseconds(client, len(outputs))
    server_ms = estimate_milliseconds(ops.counts - client, 0)
    groups = math.ceil(n_samples / program.block)
    if workers <= 1 or groups <= 1:
        return groups * (client_ms + server_ms)
    moved = [ops.level(ct) + 1 for ct in (*inputs, *outputs)]
    transfer_ms = sum(transfer_cost(primes) for primes in moved)
    rounds = math.ceil(groups / workers)
    return groups * (client_ms + transfer_ms) + rounds * (server_ms + transfer_ms)
