"""The CKKS operations HE programs are written against, with three implementations.

- `SealOps`: real ciphertexts, through the SEAL bindings that ship with
  TenSEAL (`tenseal.sealapi`). It holds public material only: the public key,
  relinearization keys and Galois keys. It has no decryptor.
- `SimulatedOps`: slot vectors in float64 with the exact level and scale
  bookkeeping of SEAL (same primes, same rescale arithmetic). It checks what
  SEAL checks (levels, scales, missing rotation keys) and is the TenSEAL-free
  oracle the tests compare packed programs with.
- `CountingOps`: level and scale only, counting each operation per level; the
  cost model prices a program with it without touching a slot.

Programs never branch on the implementation: the same `apply` code runs on all
three.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

__all__ = ["CiphertextOps", "CountingOps", "SealOps", "SimulatedOps", "chain_primes"]


def chain_primes(poly_modulus_degree: int, coeff_mod_bit_sizes: tuple[int, ...]) -> list[int]:
    """The data primes q0..qL that SEAL picks for a chain (the special prime dropped)."""
    import tenseal.sealapi as sealapi

    moduli = sealapi.CoeffModulus.Create(poly_modulus_degree, list(coeff_mod_bit_sizes))
    return [m.value() for m in moduli][:-1]


class CiphertextOps:
    """Interface: every method returns a new handle; inputs are never modified."""

    primes: list[int]
    slots: int
    #: Key under which encoded plaintexts may be cached and shared (None: do not cache).
    cache_key: Any = None

    def prime(self, level: int) -> int:
        """The prime a rescale at `level` divides by."""
        return self.primes[level]

    @property
    def top_level(self) -> int:
        return len(self.primes) - 1

    def level(self, ct: Any) -> int:
        raise NotImplementedError

    def scale(self, ct: Any) -> float:
        raise NotImplementedError

    def set_scale(self, ct: Any, scale: float) -> None:
        """Relabels the scale; only for float round-off (relative change < 1e-12)."""
        raise NotImplementedError

    def encode(self, values: float | np.ndarray, level: int, scale: float) -> Any:
        raise NotImplementedError

    def encrypt(self, plain: Any) -> Any:
        raise NotImplementedError

    def multiply_plain(self, ct: Any, plain: Any) -> Any:
        raise NotImplementedError

    def add(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def add_inplace(self, acc: Any, b: Any) -> Any:
        raise NotImplementedError

    def add_plain(self, ct: Any, plain: Any) -> Any:
        raise NotImplementedError

    def rotate(self, ct: Any, step: int) -> Any:
        raise NotImplementedError

    def multiply(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def square(self, a: Any) -> Any:
        raise NotImplementedError

    def rescale(self, ct: Any) -> Any:
        raise NotImplementedError

    def mod_switch(self, ct: Any, level: int) -> Any:
        raise NotImplementedError


# -- level/scale bookkeeping shared by the counting and simulated implementations --------
class _Ghost:
    """A ciphertext as level and scale (plus slot values in the simulator)."""

    __slots__ = ("level", "scale", "values")

    def __init__(self, level: int, scale: float, values: np.ndarray | None = None):
        self.level, self.scale, self.values = level, scale, values


class CountingOps(CiphertextOps):
    """Tracks levels and scales and counts operations; no slot values.

    Args:
        primes: Data primes of the chain (`chain_primes`).
        slots: Slots per ciphertext.
        rotation_steps: Steps with a Galois key, or None to allow any step.
    """

    def __init__(self, primes: list[int], slots: int, rotation_steps: set[int] | None = None):
        self.primes = list(primes)
        self.slots = slots
        self.rotation_steps = None if rotation_steps is None else set(rotation_steps)
        self.counts: collections.Counter = collections.Counter()
        self.steps_used: set[int] = set()
        self.cache_key = None

    def _count(self, op: str, level: int) -> None:
        self.counts[(op, level)] += 1

    def _values(self, *handles: Any) -> Any:
        return None

    def level(self, ct: _Ghost) -> int:
        return ct.level

    def scale(self, ct: _Ghost) -> float:
        return ct.scale

    def set_scale(self, ct: _Ghost, scale: float) -> None:
        if abs(ct.scale - scale) > 1e-12 * scale:
            raise ValueError(f"refusing to relabel scale {ct.scale!r} as {scale!r}")
        ct.scale = scale

    def encode(self, values: float | np.ndarray, level: int, scale: float) -> _Ghost:
        if not 0 <= level <= self.top_level:
            raise ValueError(f"Expected a level in [0, {self.top_level}]. Received: {level}")
        return _Ghost(level, scale, self._plain_values(values))

    def _plain_values(self, values: float | np.ndarray) -> Any:
        return None

    def encrypt(self, plain: _Ghost) -> _Ghost:
        self._count("encrypt", plain.level)
        return _Ghost(plain.level, plain.scale, plain.values)

    def _same_level(self, a: _Ghost, b: _Ghost, what: str) -> None:
        if a.level != b.level:
            raise ValueError(f"{what}: level mismatch ({a.level} vs {b.level})")

    def _same_scale(self, a: _Ghost, b: _Ghost, what: str) -> None:
        if abs(a.scale - b.scale) > 2.3e-16 * max(a.scale, b.scale, 1.0):
            raise ValueError(f"{what}: scale mismatch ({a.scale!r} vs {b.scale!r})")

    def multiply_plain(self, ct: _Ghost, plain: _Ghost) -> _Ghost:
        self._same_level(ct, plain, "multiply_plain")
        self._count("multiply_plain", ct.level)
        return _Ghost(ct.level, ct.scale * plain.scale, self._product(ct, plain))

    def add(self, a: _Ghost, b: _Ghost) -> _Ghost:
        self._same_level(a, b, "add")
        self._same_scale(a, b, "add")
        self._count("add", a.level)
        return _Ghost(a.level, a.scale, self._sum(a, b))

    def add_inplace(self, acc: _Ghost, b: _Ghost) -> _Ghost:
        return self.add(acc, b)

    def add_plain(self, ct: _Ghost, plain: _Ghost) -> _Ghost:
        self._same_level(ct, plain, "add_plain")
        self._same_scale(ct, plain, "add_plain")
        self._count("add_plain", ct.level)
        return _Ghost(ct.level, ct.scale, self._sum(ct, plain))

    def rotate(self, ct: _Ghost, step: int) -> _Ghost:
        step %= self.slots
        if self.rotation_steps is not None and step not in self.rotation_steps:
            raise ValueError(f"no Galois key for rotation step {step}")
        self.steps_used.add(step)
        self._count("rotate", ct.level)
        values = None if ct.values is None else np.roll(ct.values, -step)
        return _Ghost(ct.level, ct.scale, values)

    def multiply(self, a: _Ghost, b: _Ghost) -> _Ghost:
        self._same_level(a, b, "multiply")
        self._count("relinearize", a.level)
        return _Ghost(a.level, a.scale * b.scale, self._product(a, b))

    def square(self, a: _Ghost) -> _Ghost:
        return self.multiply(a, a)

    def rescale(self, ct: _Ghost) -> _Ghost:
        if ct.level == 0:
            raise ValueError("end of modulus switching chain reached")
        self._count("rescale", ct.level)
        return _Ghost(ct.level - 1, ct.scale / self.primes[ct.level], ct.values)

    def mod_switch(self, ct: _Ghost, level: int) -> _Ghost:
        if level > ct.level:
            raise ValueError(f"cannot switch up from level {ct.level} to {level}")
        return _Ghost(level, ct.scale, ct.values)

    def _product(self, a: _Ghost, b: _Ghost) -> Any:
        return None

    def _sum(self, a: _Ghost, b: _Ghost) -> Any:
        return None


class SimulatedOps(CountingOps):
    """`CountingOps` that also carries the slot values (float64, no noise)."""

    def __init__(self, primes: list[int], slots: int, rotation_steps: set[int] | None = None):
        super().__init__(primes, slots, rotation_steps)
        self.cache_key = ("simulated", id(self))

    def _plain_values(self, values: float | np.ndarray) -> np.ndarray:
        out = np.broadcast_to(np.asarray(values, dtype=np.float64), (self.slots,))
        return np.array(out)

    def encrypt_values(self, values: np.ndarray, level: int, scale: float) -> _Ghost:
        return self.encrypt(self.encode(values, level, scale))

    def decrypt_values(self, ct: _Ghost) -> np.ndarray:
        return np.array(ct.values)

    def _product(self, a: _Ghost, b: _Ghost) -> np.ndarray:
        return a.values * b.values

    def _sum(self, a: _Ghost, b: _Ghost) -> np.ndarray:
        return a.values + b.values


class SealOps(CiphertextOps):
    """CKKS on real ciphertexts with SEAL (from TenSEAL), public material only.

    Args:
        seal_context: A `tenseal.sealapi.SEALContext`.
        public_key: Public key, to encrypt constants when a result has no ciphertext term.
        relin_keys: Relinearization keys (after each ciphertext product).
        galois_keys: Galois keys for the rotation steps a program uses, or None.
    """

    def __init__(self, seal_context: Any, public_key: Any, relin_keys: Any, galois_keys: Any):
        import tenseal.sealapi as sealapi

        self._sealapi = sealapi
        self.context = seal_context
        self.encoder = sealapi.CKKSEncoder(seal_context)
        self.evaluator = sealapi.Evaluator(seal_context)
        self.encryptor = sealapi.Encryptor(seal_context, public_key)
        self.relin_keys = relin_keys
        self.galois_keys = galois_keys
        self.slots = self.encoder.slot_count()
        data = seal_context.first_context_data()
        self.primes = [m.value() for m in data.parms().coeff_modulus()]
        self._parms_ids: dict[int, Any] = {}
        while data is not None:
            self._parms_ids[data.chain_index()] = data.parms_id()
            data = data.next_context_data()
        self._levels = {tuple(pid): level for level, pid in self._parms_ids.items()}
        # Plaintexts depend on the parameters only, not on keys: share them across contexts.
        self.cache_key = ("seal", tuple(self._parms_ids[self.top_level]))

    def parms_id(self, level: int) -> Any:
        return self._parms_ids[level]

    def level(self, ct: Any) -> int:
        return self._levels[tuple(ct.parms_id())]

    def scale(self, ct: Any) -> float:
        return ct.scale

    def set_scale(self, ct: Any, scale: float) -> None:
        if abs(ct.scale - scale) > 1e-12 * scale:
            raise ValueError(f"refusing to relabel scale {ct.scale!r} as {scale!r}")
        ct.scale = scale

    def _new(self) -> Any:
        return self._sealapi.Ciphertext()

    def encode(self, values: float | np.ndarray, level: int, scale: float) -> Any:
        plain = self._sealapi.Plaintext()
        if np.ndim(values) == 0:
            self.encoder.encode(float(values), self._parms_ids[level], scale, plain)
        else:
            self.encoder.encode(
                np.asarray(values, np.float64).tolist(), self._parms_ids[level], scale, plain
            )
        return plain

    def encrypt(self, plain: Any) -> Any:
        out = self._new()
        self.encryptor.encrypt(plain, out)
        return out

    def multiply_plain(self, ct: Any, plain: Any) -> Any:
        out = self._new()
        self.evaluator.multiply_plain(ct, plain, out)
        return out

    def add(self, a: Any, b: Any) -> Any:
        out = self._new()
        self.evaluator.add(a, b, out)
        return out

    def add_inplace(self, acc: Any, b: Any) -> Any:
        self.evaluator.add_inplace(acc, b)
        return acc

    def add_plain(self, ct: Any, plain: Any) -> Any:
        out = self._new()
        self.evaluator.add_plain(ct, plain, out)
        return out

    def rotate(self, ct: Any, step: int) -> Any:
        out = self._new()
        self.evaluator.rotate_vector(ct, int(step) % self.slots, self.galois_keys, out)
        return out

    def multiply(self, a: Any, b: Any) -> Any:
        out = self._new()
        self.evaluator.multiply(a, b, out)
        self.evaluator.relinearize_inplace(out, self.relin_keys)
        return out

    def square(self, a: Any) -> Any:
        out = self._new()
        self.evaluator.square(a, out)
        self.evaluator.relinearize_inplace(out, self.relin_keys)
        return out

    def rescale(self, ct: Any) -> Any:
        out = self._new()
        self.evaluator.rescale_to_next(ct, out)
        return out

    def mod_switch(self, ct: Any, level: int) -> Any:
        if level == self.level(ct):
            return ct
        out = self._new()
        self.evaluator.mod_switch_to(ct, self._parms_ids[level], out)
        return out
