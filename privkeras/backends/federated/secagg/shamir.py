"""Shamir secret sharing of 256-bit secrets over the prime field GF(2^256 + 297).

A secret s is the constant term of a random polynomial f of degree t - 1;
the holder at point x receives f(x). Any t shares give s back by Lagrange
interpolation at 0; fewer than t shares are uniformly distributed whatever s is.

Notes:
    Shamir, "How to share a secret", CACM 1979. The field is the smallest prime
    field above 2^256 (2^256 + 297 is prime, checked in the tests), so any 32-byte
    seed or X25519 private key is one field element; a share is 33 bytes.
    Coefficients are drawn uniformly by rejection from a `SecureStream`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from privkeras.core.random import SecureStream

__all__ = ["ELEMENT_BYTES", "PRIME", "reconstruct_secret", "share_secret"]

PRIME = 2**256 + 297
#: Bytes of one field element on the wire (little-endian).
ELEMENT_BYTES = 33
_TOP_BITS_MASK = (1 << 257) - 1


def _random_elements(count: int, stream: SecureStream) -> list[int]:
    """`count` uniform elements of GF(PRIME) (rejection sampling on 257 bits)."""
    out: list[int] = []
    while len(out) < count:
        need = 2 * (count - len(out)) + 2  # acceptance rate is about 1/2
        raw = stream.random_bytes(ELEMENT_BYTES * need)
        for i in range(need):
            value = int.from_bytes(raw[ELEMENT_BYTES * i : ELEMENT_BYTES * (i + 1)], "little")
            value &= _TOP_BITS_MASK
            if value < PRIME:
                out.append(value)
                if len(out) == count:
                    break
    return out


def share_secret(
    secret: int, points: Sequence[int], threshold: int, stream: SecureStream
) -> dict[int, int]:
    """Shares `secret` among holders at `points` so that `threshold` of them recover it.

    Args:
        secret: The secret, an integer in [0, PRIME).
        points: Distinct non-zero evaluation points, one per holder.
        threshold: Number of shares needed to reconstruct, in [1, len(points)].
        stream: Source of the polynomial's random coefficients.

    Returns:
        `{point: share}`.

    Raises:
        ValueError: For a secret outside the field, repeated or zero points, or
            a threshold outside [1, len(points)].
    """
    if not 0 <= secret < PRIME:
        raise ValueError("Expected a secret in [0, PRIME). Received: a secret out of range")
    if len(set(points)) != len(points) or any(not 0 < p < PRIME for p in points):
        raise ValueError(f"Expected distinct non-zero points. Received: points={list(points)}")
    if not 1 <= threshold <= len(points):
        raise ValueError(
            f"Expected threshold in [1, {len(points)}]. Received: threshold={threshold}"
        )
    coefficients = [secret, *_random_elements(threshold - 1, stream)]
    shares = {}
    for x in points:
        value = 0
        for c in reversed(coefficients):  # Horner
            value = (value * x + c) % PRIME
        shares[x] = value
    return shares


def reconstruct_secret(shares: Mapping[int, int]) -> int:
    """The polynomial's value at 0 from shares `{point: share}` (Lagrange interpolation).

    Exactly the shares given are used: pass `threshold` of them. The result is
    the secret when the shares come from one polynomial of degree below
    `len(shares)`; otherwise it is an unrelated field element, which callers
    detect by checking it against a commitment.

    Raises:
        ValueError: For no shares, repeated or zero points, or values outside the field.
    """
    points = list(shares)
    if not points or any(not 0 < x < PRIME for x in points):
        raise ValueError(f"Expected shares at non-zero points. Received: points={points}")
    if any(not 0 <= shares[x] < PRIME for x in points):
        raise ValueError("Expected share values in [0, PRIME). Received: a value out of range")
    numerators, denominators = [], []
    for i, xi in enumerate(points):
        num, den = 1, 1
        for j, xj in enumerate(points):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        numerators.append(num)
        denominators.append(den)
    inverses = _batch_inverse(denominators)
    total = 0
    for xi, num, inv in zip(points, numerators, inverses):
        total = (total + shares[xi] * num % PRIME * inv) % PRIME
    return total


def _batch_inverse(values: list[int]) -> list[int]:
    """Inverses of non-zero field elements with one exponentiation (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inverse * prefix[i] % PRIME
        inverse = inverse * values[i] % PRIME
    return out
