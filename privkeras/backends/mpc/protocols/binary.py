"""Binary circuits on XOR-shared 64-bit words: the sign bit of a sum.

Arithmetic-to-binary conversion needs the carries of a 64-bit addition done
on XOR shares, where XOR is free and every AND costs communication. With
generate g_i = a_i AND b_i and propagate p_i = a_i XOR b_i of the addends,
the parallel-prefix (Kogge-Stone) adder computes all carries in
log2(64) = 6 AND levels, one round each. Level s (s = 1, 2, 4, ..., 32)
updates, for every bit i at once,

    G[i] <- G[i] XOR (P[i] AND G[i - s])        P[i] <- P[i] AND P[i - s]

after which G[62] is the carry into bit 63, and the sign bit of a + b is
p_63 XOR G[62].

A comparison needs only that one carry, so most of the 64 x 6 ANDs of the
full adder are never used. `prefix_schedule` works backwards from G[62] to
the bit positions each level really needs (a binary tree inside the
Kogge-Stone network): 1 + 1 bits are opened at the last level, 62 + 31 at
the first, 181 bits in all instead of 6 x 128. The positions are public,
so a sender keeps only those bits (the words are ANDed with a public mask
and a network communicator packs the selected bits); the communicator
counts them as such.

With a dealer, the first levels need no communication at all: when one
addend is public (c) and the other is the dealer's r, G and P after level
one are polynomials of degree 2 in r's bits with public coefficients
(`PublicPolynomial`), and the dealer can hand out shares of the products
r_i r_{i-1} (one word); after two levels, degree 4 (eleven words).
Pond computes one level this way by default (`PondProtocol.local_levels`).

Notes:
    Kogge and Stone, IEEE Trans. Computers 1973. Its use for A2B in MPC:
    Demmler, Schneider and Zohner, "ABY", NDSS 2015; Mohassel and Rindal,
    "ABY3", CCS 2018, section 5.3. Restricting a prefix network to the
    carries one needs is the idea behind the comparison circuits of
    Garay, Schoenmakers and Villegas (PKC 2007).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privkeras.backends.mpc.protocols.base import Shares

__all__ = [
    "PREFIX_SHIFTS",
    "PrefixLevel",
    "PublicPolynomial",
    "initial_generate_positions",
    "local_prefix_levels",
    "monomials_of_local_levels",
    "msb_of_sum",
    "popcount",
    "prefix_schedule",
]

#: Shifts of the six Kogge-Stone levels that carry into bit 63.
PREFIX_SHIFTS = (1, 2, 4, 8, 16, 32)


@dataclasses.dataclass(frozen=True)
class PrefixLevel:
    """The public bit positions one level needs, as 64-bit masks.

    Attributes:
        shift: s.
        open_p: Positions of P that enter an AND.
        open_g: Positions of G that enter an AND (before the shift by s).
        and_g: Positions i where G[i] ^= P[i] & G[i - s] is needed.
        and_p: Positions i where P[i] = P[i] & P[i - s] is needed (0 if none).
    """

    shift: int
    open_p: int
    open_g: int
    and_g: int
    and_p: int

    @property
    def with_propagate(self) -> bool:
        return self.and_p != 0


def _mask(positions: set[int]) -> int:
    return sum(1 << i for i in positions)


@functools.cache
def prefix_schedule() -> tuple[PrefixLevel, ...]:
    """The six levels, first to last, with the positions that lead to G[62]."""
    g_out, p_out = {62}, set()
    levels = []
    for s in reversed(PREFIX_SHIFTS):
        and_g = {i for i in g_out if i >= s}  # G[i] ^= P[i] & G[i - s]
        and_p = {i for i in p_out if i >= s}  # P[i] = P[i] & P[i - s]
        open_p = and_g | and_p | {i - s for i in and_p}
        open_g = {i - s for i in and_g}
        levels.append(PrefixLevel(s, _mask(open_p), _mask(open_g), _mask(and_g), _mask(and_p)))
        g_out, p_out = g_out | open_g, open_p
    return tuple(reversed(levels))


@functools.cache
def initial_generate_positions() -> int:
    """Mask of the positions of the initial G word that the schedule reads."""
    first = prefix_schedule()[0]
    later = 1 << 62
    for level in prefix_schedule():
        later |= level.open_g | level.and_g
    return later | first.open_g


def popcount(mask: int) -> int:
    """Number of positions in a mask."""
    return bin(mask).count("1")


def msb_of_sum(
    protocol: Any,
    generate: Shares,
    propagate: Shares,
    initial_propagate: Shares | None = None,
    first_level: int = 0,
) -> Shares:
    """XOR shares (int64 0/1) of the sign bit of a sum, from its g and p words.

    Args:
        protocol: A protocol with `prefix_level(P, G, level)` (one round)
            and local XOR.
        generate: XOR shares of G (at the start: g = a AND b, with any
            carry-in folded into bit 0).
        propagate: XOR shares of P (at the start: p = a XOR b).
        initial_propagate: p = a XOR b, if `propagate` is not it (levels
            already done).
        first_level: How many levels of the schedule are already done.

    Returns:
        XOR shares of bit 63 of a + b (+ carry-in), as int64 0/1.
    """
    k = protocol.kernels
    g, p = generate, propagate
    for level in prefix_schedule()[first_level:]:
        g, p = protocol.prefix_level(p, g, level)
    propagate = propagate if initial_propagate is None else initial_propagate
    return protocol.local(
        lambda p0, gi: k.shift_right_logical(k.bitwise_xor(p0, protocol.shift_left(gi, 1)), 63),
        propagate,
        g,
    )


class PublicPolynomial:
    """A binary-shared word written as XOR of monomials of r's shifted bits, public coefficients.

    `terms` maps a set S of shifts to a public coefficient word C_S; the value is
    XOR over S of C_S AND (AND over j in S of (r << j)), where r is a word only
    the dealer knows (the empty S is the constant C). Adding, shifting and
    multiplying such polynomials is local: coefficients are public, and
    r_j r_j = r_j. The parties evaluate one on their shares of the monomials
    (the dealer supplies shares of every monomial of degree 2 or more).
    """

    __slots__ = ("kernels", "protocol", "terms")

    def __init__(self, protocol: Any, terms: dict[frozenset[int], Any]):
        self.protocol = protocol
        self.kernels = protocol.kernels
        self.terms = terms

    def __xor__(self, other: PublicPolynomial) -> PublicPolynomial:
        k = self.kernels
        terms = dict(self.terms)
        for key, coefficient in other.terms.items():
            terms[key] = k.bitwise_xor(terms[key], coefficient) if key in terms else coefficient
        return PublicPolynomial(self.protocol, terms)

    def __and__(self, other: PublicPolynomial) -> PublicPolynomial:
        k = self.kernels
        ones = self.protocol.constant(-1)
        terms: dict[frozenset[int], Any] = {}
        for key_a, coef_a in self.terms.items():
            for key_b, coef_b in other.terms.items():
                key = key_a | key_b
                if coef_a is ones or coef_b is ones:
                    coefficient = coef_b if coef_a is ones else coef_a
                else:
                    coefficient = k.bitwise_and(coef_a, coef_b)
                terms[key] = k.bitwise_xor(terms[key], coefficient) if key in terms else coefficient
        return PublicPolynomial(self.protocol, terms)

    def __lshift__(self, shift: int) -> PublicPolynomial:
        shl = self.protocol.shift_left
        return PublicPolynomial(
            self.protocol,
            {frozenset(j + shift for j in key): shl(c, shift) for key, c in self.terms.items()},
        )

    def evaluate(self, party: int, r_share: Any, monomials: dict[frozenset[int], Any]) -> Any:
        """Party `party`'s XOR share of the value, from its shares of r and of the monomials."""
        k = self.kernels
        total = None
        for key, coefficient in self.terms.items():
            if not key:
                if party != 0:
                    continue  # the constant term is party 0's
                term = coefficient
            elif len(key) == 1:
                (shift,) = key
                term = k.bitwise_and(coefficient, self.protocol.shift_left(r_share, shift))
            else:
                term = k.bitwise_and(coefficient, monomials[key])
            total = term if total is None else k.bitwise_xor(total, term)
        return total if total is not None else k.zeros(k.shape(r_share))


def local_prefix_levels(g: PublicPolynomial, p: PublicPolynomial, count: int):
    """The first `count` Kogge-Stone levels on polynomials (no communication)."""
    for shift in PREFIX_SHIFTS[:count]:
        g, p = g ^ (p & (g << shift)), p & (p << shift)
    return g, p


@functools.cache
def monomials_of_local_levels(count: int) -> tuple[frozenset[int], ...]:
    """The monomials of degree >= 2 that `count` local levels can produce."""
    span = sum(PREFIX_SHIFTS[:count]) + 1  # shifts 0 .. span - 1
    return tuple(
        frozenset(j for j in range(span) if mask >> j & 1)
        for mask in range(1 << span)
        if bin(mask).count("1") >= 2
    )
