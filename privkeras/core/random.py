"""Cryptographically secure, seedable random streams.

Every share, mask, Beaver triple and secure DP noise sample in privkeras comes
from a `SecureStream`: AES-256 in counter mode (from `cryptography`), keyed
from `os.urandom` or, for reproducible tests, from a seed. Two parties that
hold the same seed derive the same stream without talking (pairwise shared
seeds, as in Pond and ABY3).

Streams produce numpy arrays. The same seed gives the same numbers for every
tensor library: engines convert them with their kernels' `from_numpy`, which
copies values bit for bit.

Notes:
    Counter-mode AES is a PRG under the standard assumption that AES is a
    pseudo-random permutation; it is the generator behind CrypTen's and
    TF-Encrypted's seeded randomness in spirit, without their use of
    `torch.Generator` or TensorFlow's stateless (non-cryptographic) RNG.
    Gaussian samples use the Box-Muller transform on 53-bit uniforms, and
    the radius uniform gets 53 more bits wherever it is below 2^-20 (again
    and again, to 2^-1060), so the tails are complete down to float64's
    range: samples reach 38 standard deviations where the keystream asks for
    it (a 53-bit uniform alone stops at 8.6, a float32 sampler on 32-bit
    uniforms at 6.7). They are floating-point samples, and inherit the known
    floating-point caveats of DP noise (Mironov, CCS 2012) when added to a
    value: DP-SGD's engine adds its noise with `backends/dpsgd/noise.py`,
    which returns the exactly rounded Gaussian mechanism instead.

Example:

```python
from privkeras.core.random import SecureStream

stream = SecureStream(seed=42)        # reproducible (tests only)
shares = stream.ring((2, 3))          # uniform in Z_2^64, as int64
noise = SecureStream().gaussian((10,), std=1.1)   # keyed from os.urandom
```
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["SecureStream"]

_KEY_BYTES = 32
#: Keystream is made in chunks of this many bytes, encrypting one shared block of zeros.
_CHUNK_BYTES = 1 << 20
_ZEROS = memoryview(bytes(_CHUNK_BYTES))
#: `update_into` wants room for one cipher block less a byte past the data.
_SPARE_BYTES = 15
_SEED_DOMAIN = b"privkeras.core.random/seed/v1"
_FORK_DOMAIN = b"privkeras.core.random/fork/v1"


def _shape_size(shape: int | Sequence[int]) -> tuple[tuple[int, ...], int]:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"Expected a shape of non-negative sizes. Received: shape={shape}")
    return shape, int(np.prod(shape, dtype=np.int64))


class SecureStream:
    """A deterministic stream of cryptographically secure random values.

    Args:
        seed: None for a fresh key from `os.urandom` (production), or an int,
            str or bytes that derives the key deterministically (tests, and
            pairwise seeds agreed between parties).

    The stream is stateful: every call consumes fresh keystream, so two calls
    never return the same values. It is not thread-safe; fork one stream per
    thread or party with `fork`.
    """

    def __init__(self, seed: int | str | bytes | None = None):
        if seed is None:
            key = os.urandom(_KEY_BYTES)
        else:
            key = hashlib.sha256(_SEED_DOMAIN + _seed_bytes(seed)).digest()
        self._key = key
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
        self.seeded = seed is not None

    @classmethod
    def _from_key(cls, key: bytes, seeded: bool) -> SecureStream:
        stream = cls.__new__(cls)
        stream._key = key
        stream._encryptor = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
        stream.seeded = seeded
        return stream

    def fork(self, label: str | bytes) -> SecureStream:
        """An independent stream derived from this stream's key and `label`.

        Forks with the same label from equal streams are equal; forks with
        different labels are independent. Forking does not advance `self`.
        """
        key = hmac.new(self._key, _FORK_DOMAIN + _seed_bytes(label), hashlib.sha256).digest()
        return SecureStream._from_key(key, self.seeded)

    def _keystream(self, n: int) -> np.ndarray:
        """The next `n` bytes of keystream as a fresh, writable uint8 array."""
        buffer = np.empty(n + _SPARE_BYTES, dtype=np.uint8)
        view = memoryview(buffer)
        for start in range(0, n, _CHUNK_BYTES):
            length = min(_CHUNK_BYTES, n - start)
            self._encryptor.update_into(
                _ZEROS[:length], view[start : start + length + _SPARE_BYTES]
            )
        return buffer[:n]

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Overwrites the bytes of `out` (writable, C-contiguous) with keystream; returns it.

        The same keystream as `random_bytes(out.nbytes)`, written in place
        (no allocation: for buffers reused at every step).
        """
        view = memoryview(out).cast("B")
        n, pos = len(view), 0
        while n - pos > _SPARE_BYTES:
            length = min(_CHUNK_BYTES, n - pos - _SPARE_BYTES)
            self._encryptor.update_into(_ZEROS[:length], view[pos : pos + length + _SPARE_BYTES])
            pos += length
        if pos < n:
            view[pos:] = self._encryptor.update(bytes(n - pos))
        return out

    def random_bytes(self, n: int) -> bytes:
        """`n` bytes of keystream."""
        if n < 0:
            raise ValueError(f"Expected n >= 0. Received: n={n}")
        return self._encryptor.update(bytes(n))

    def ring(self, shape: int | Sequence[int]) -> np.ndarray:
        """Uniform elements of Z_2^64 as int64 (two's complement)."""
        shape, size = _shape_size(shape)
        return self._keystream(8 * size).view("<i8").astype(np.int64, copy=False).reshape(shape)

    def bits(self, shape: int | Sequence[int]) -> np.ndarray:
        """Uniform bits as int64 zeros and ones."""
        shape, size = _shape_size(shape)
        raw = self._keystream((size + 7) // 8)
        return np.unpackbits(raw, count=size, bitorder="little").astype(np.int64).reshape(shape)

    def uniform(self, shape: int | Sequence[int]) -> np.ndarray:
        """Uniform float64 in [0, 1) with 53 random bits each."""
        shape, size = _shape_size(shape)
        raw = self._keystream(8 * size).view("<u8")
        raw >>= np.uint64(11)
        values = raw.astype(np.float64)
        values *= 2.0**-53
        return values.reshape(shape)

    def gaussian(self, shape: int | Sequence[int], std: float = 1.0) -> np.ndarray:
        """Normal samples N(0, std^2) as float64 (Box-Muller, tails to 38 sigma)."""
        if not std >= 0:
            raise ValueError(f"Expected std >= 0. Received: std={std}")
        shape, size = _shape_size(shape)
        pairs = (size + 1) // 2
        u = self.uniform(2 * pairs)
        radius = np.negative(u[:pairs])
        np.log1p(radius, out=radius)  # log(1 - u), 1 - u in (0, 1]
        self._refine_small(u[:pairs], radius)
        radius *= -2.0
        np.sqrt(radius, out=radius)
        angle = u[pairs:]
        angle *= 2.0 * np.pi
        normal = np.empty(2 * pairs)
        np.cos(angle, out=normal[:pairs])
        np.sin(angle, out=normal[pairs:])
        normal[:pairs] *= radius
        normal[pairs:] *= radius
        normal = normal[:size]
        normal *= std
        return normal.reshape(shape)

    def _refine_small(self, u: np.ndarray, log_w: np.ndarray) -> None:
        """Where `w = 1 - u < 2^-20`, more bits for w (its 2^-53 cell, subdivided).

        `log_w` holds `log(w)` and is corrected in place. Each round refines
        the few values still below 2^-20 of their cell, down to 2^-1060.
        """
        index = np.flatnonzero(u > 1.0 - _REFINE_BELOW)
        if not index.size:
            return
        w, cell = 1.0 - u[index], _UNIFORM_CELL
        for _ in range(_REFINE_ROUNDS):
            # w is the top of its cell [w - cell, w]: replace it by a point drawn inside.
            inner = 1.0 - self.uniform(w.size)  # in (0, 1]
            w = (w - cell) + cell * inner
            small = inner < _REFINE_BELOW
            log_w[index[~small]] = np.log(w[~small])
            index, w, cell = index[small], w[small], cell * _UNIFORM_CELL
            if not index.size:
                return
        log_w[index] = np.log(w)


#: A 53-bit uniform's resolution.
_UNIFORM_CELL = 2.0**-53
#: Radius uniforms below this are refined with 53 more bits.
_REFINE_BELOW = 2.0**-20
#: Refinements of a radius uniform, at most (20 x 53 bits: 2^-1060, near float64's bottom).
_REFINE_ROUNDS = 19


def _seed_bytes(seed: int | str | bytes) -> bytes:
    if isinstance(seed, bytes):
        return seed
    if isinstance(seed, str):
        return seed.encode()
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return int(seed).to_bytes(16, "little", signed=True)
    raise TypeError(f"Expected a seed of type int, str or bytes. Received: {seed!r}")
