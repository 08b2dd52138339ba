"""Which packing is fastest for a batch: a small cost model over counted operations.

For each candidate block size the program is run on `CountingOps` (levels and
scales only) and every counted operation is priced by its kind and the number
of primes left at its level. Key switching (rotations, relinearization) grows
faster than linearly with the primes; products, additions and rescales grow
linearly. The client's encryptions and decryptions count too, since a user
waits for them as well.

The unit costs are milliseconds for N=8192 measured with SEAL 3.x from
TenSEAL 0.3.18 on one x86 core; only their ratios matter, as every candidate
shares the ring degree.
"""

from __future__ import annotations

import math
from typing import Any

from privkeras.backends.he.ckks import CountingOps
from privkeras.backends.he.params import CKKSParameters

__all__ = ["estimate_milliseconds", "program_cost"]


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


def estimate_milliseconds(counts: dict[tuple[str, int], int], outputs: int) -> float:
    """Priced operation counts (from `CountingOps.counts`) plus `outputs` decryptions."""
    total = sum(UNIT_COSTS[op](level + 1) * n for (op, level), n in counts.items())
    return total + DECRYPT_COST * outputs


def program_cost(
    program: Any, primes: list[int], parameters: CKKSParameters, n_samples: int
) -> float:
    """Estimated milliseconds to encrypt, evaluate and decrypt `n_samples` with `program`."""
    ops = CountingOps(primes, parameters.slots)
    inputs = [
        ops.encrypt(ops.encode(0.0, ops.top_level, parameters.scale))
        for _ in range(program.input_layout.n_ciphertexts)
    ]
    program.apply(ops, inputs)
    groups = math.ceil(n_samples / program.block)
    return groups * estimate_milliseconds(ops.counts, program.output_layout.n_ciphertexts)
