"""Binary circuits on XOR-shared 64-bit words: the parallel-prefix adder.

Arithmetic-to-binary conversion needs the carries of a 64-bit addition done
on XOR shares, where XOR is free and every AND costs communication. The
Kogge-Stone parallel-prefix adder computes all carries in log2(64) = 6 AND
levels; each level is one round (its two ANDs are opened together).

With generate g_i = a_i AND b_i and propagate p_i = a_i XOR b_i of the two
addends, level s (s = 1, 2, 4, ..., 32) updates, for every bit at once,

    G <- G XOR (P AND (G << s))        P <- P AND (P << s)

after which bit i of G is the carry out of bits 0..i. The sign bit of a + b
is p_63 XOR carry_into_63 = bit 63 of (P0 XOR (G << 1)), P0 the initial
propagate word. The last level needs no P update.

Notes:
    Kogge and Stone, "A parallel algorithm for the efficient solution of a
    general class of recurrence equations", IEEE Trans. Computers 1973. Its
    use for A2B in MPC: Demmler, Schneider and Zohner, "ABY", NDSS 2015;
    Mohassel and Rindal, "ABY3", CCS 2018, section 5.3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privkeras.backends.mpc.protocols.base import Shares

__all__ = ["PREFIX_SHIFTS", "msb_of_sum"]

#: Shifts of the six Kogge-Stone levels that carry into bit 63.
PREFIX_SHIFTS = (1, 2, 4, 8, 16, 32)


def msb_of_sum(protocol: Any, generate: Shares, propagate: Shares) -> Shares:
    """XOR shares (int64 0/1) of the sign bit of a sum, from its g and p words.

    Args:
        protocol: A protocol with `prefix_level(P, G, shift, with_propagate)`
            (one round) and local XOR.
        generate: XOR shares of g = a AND b (with any carry-in folded into bit 0).
        propagate: XOR shares of p = a XOR b.

    Returns:
        XOR shares of bit 63 of a + b (+ carry-in), as int64 0/1.
    """
    k = protocol.kernels
    g, p = generate, propagate
    for shift in PREFIX_SHIFTS:
        g, p = protocol.prefix_level(p, g, shift, with_propagate=shift != PREFIX_SHIFTS[-1])
    return protocol.local(
        lambda p0, gi: k.shift_right_logical(k.bitwise_xor(p0, k.shift_left(gi, 1)), 63),
        propagate,
        g,
    )
