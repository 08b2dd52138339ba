"""Pond's dealer: correlated randomness for two compute parties.

The dealer (a *crypto provider*, as in SPDZ-with-a-trusted-dealer, Pond of
TF-Encrypted and CrypTen's `TrustedThirdParty`) hands each compute party its
share of random values with a known relation: Beaver triples c = a * b (for
elementwise products, matrix products and convolutions), binary AND triples,
random values given both as arithmetic and as binary shares (edaBits), and
random bits given in both sharings.

Every value comes from `SecureStream`s. Party 0's share of everything is
expanded from a seed party 0 shares with the dealer (so the dealer sends
party 0 nothing); party 1's share of a *random* value also comes from a seed,
and only party 1's share of a *derived* value (c = a * b, or a sharing of a
known bit) is sent: the dealer's traffic is one ring element per derived
value, none per random one, instead of two shares of each. Those bytes are
counted as the communicator's offline bytes.

Each method is written for every process layout: a party draws its own
shares from the seed it holds; only the dealer computes values and sends
corrections; a party receives its corrections. In one process all three
happen, each once.

Notes:
    Security rests on the dealer being honest and colluding with no compute
    party: the dealer knows every mask, so together with either party it
    learns every secret. The runtime warns about this once.
    Beaver, "Efficient multiparty protocols using circuit randomization",
    CRYPTO 1991; Riazi et al., "Chameleon", AsiaCCS 2018 (trusted dealer);
    Dalskov, Escudero and Keller, "Secure evaluation of quantized neural
    networks", PETS 2020 (edaBits-style masks for comparisons).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from privkeras.backends.mpc.communicator import Communicator, Message
from privkeras.backends.mpc.protocols.base import Shares
from privkeras.backends.mpc.protocols.streams import PartyStreams
from privkeras.core.kernels import RingKernels

__all__ = ["Dealer"]

Tensor = Any


class Dealer:
    """Produces correlated randomness for Pond's two compute parties.

    Args:
        kernels: Ring kernels the shares are made on.
        streams: The runtime's `PartyStreams`.
        communicator: Carries (and counts, offline) what the dealer sends.
        parties: Names of the two compute parties.
        name: Who deals: `"dealer"` for Pond, or a third compute party
            acting as the helper of the other two (ABY3's `"p2"`).
    """

    def __init__(
        self,
        kernels: RingKernels,
        streams: PartyStreams,
        communicator: Communicator,
        parties: Sequence[str] = ("p0", "p1"),
        name: str = "dealer",
    ):
        self.kernels = kernels
        self.streams = streams
        self.communicator = communicator
        self.parties = tuple(parties)
        self.name = name
        self.local = communicator.placement.here(name)
        #: Bytes a dealer that sent both parties every share would send (the baseline of
        #: the seed compression; the communicator's `offline_bytes` is what is sent).
        self.uncompressed_bytes = 0

    def _count(self, shape: Sequence[int], bits: int = 64, values: int = 1) -> None:
        size = 1
        for dim in shape:
            size *= int(dim)
        self.uncompressed_bytes += 2 * values * ((size * bits + 7) // 8)

    # -- building blocks -----------------------------------------------------------
    def _seeded_ring(self, party: int, shape: Sequence[int]) -> Tensor | None:
        stream = self.streams.dealer(party, dealer=self.name)
        return None if stream is None else self.kernels.from_numpy(stream.ring(shape))

    def _seeded_bits(self, party: int, shape: Sequence[int]) -> Tensor | None:
        stream = self.streams.dealer(party, dealer=self.name)
        return None if stream is None else self.kernels.from_numpy(stream.bits(shape))

    def _random(self, shape: Sequence[int]) -> Shares:
        """Additive (or XOR) shares of a uniformly random word, all from seeds (no bytes sent)."""
        self._count(shape)
        return Shares((self._seeded_ring(0, shape), self._seeded_ring(1, shape)), shape)

    def _value(self, shares: Shares, xor: bool = False) -> Tensor | None:
        """The dealer's value of seeded shares (None outside the dealer)."""
        if not self.local:
            return None
        k = self.kernels
        return (k.bitwise_xor if xor else k.add)(shares[0], shares[1])

    def _share_known(
        self,
        shapes: Sequence[Sequence[int]],
        values: Callable[[], Sequence[Tensor]],
        xor: Sequence[bool],
    ) -> list[Shares]:
        """Shares of values the dealer computes: party 0's from its seed, party 1's sent.

        Args:
            shapes: The values' shapes (every process knows them).
            values: Computes the values; called only where the dealer runs.
            xor: Per value, whether it is XOR-shared.
        """
        k = self.kernels
        for shape in shapes:
            self._count(shape)
        first = [self._seeded_ring(0, shape) for shape in shapes]
        corrections = None
        if self.local:
            corrections = tuple(
                k.bitwise_xor(value, share0) if is_xor else k.sub(value, share0)
                for value, share0, is_xor in zip(values(), first, xor)
            )
        inbox = self.communicator.exchange(
            [Message(self.name, self.parties[1], corrections)], offline=True
        )
        received = inbox.get((self.name, self.parties[1]))
        return [
            Shares((share0, None if received is None else received[j]), shape)
            for j, (share0, shape) in enumerate(zip(first, shapes))
        ]

    # -- arithmetic ----------------------------------------------------------------
    def random_mask(self, shape: Sequence[int]) -> tuple[Tensor | None, Shares]:
        """A uniformly random ring tensor: (the dealer's value, the parties' shares)."""
        shares = self._random(shape)
        return self._value(shares), shares

    def product_shares(
        self,
        a: Tensor | None,
        b: Tensor | None,
        product: Callable[[Tensor, Tensor], Tensor],
        shape: Sequence[int],
    ) -> Shares:
        """Fresh shares of c = product(a, b) (of `shape`) for masks a, b the dealer made.

        With a and b from `random_mask`, (a, b, c) is a Beaver triple for any
        bilinear `product` (elementwise, matmul, conv2d). A mask may take part
        in many triples: each gets fresh shares of its own c.
        """
        (c,) = self._share_known([shape], lambda: [product(a, b)], xor=[False])
        return c

    # -- binary ----------------------------------------------------------------------
    def edabits(self, shape: Sequence[int]) -> tuple[Tensor | None, Shares, Shares]:
        """A random r: the dealer's value, additive shares, XOR shares of its 64 bits."""
        r = self._random(shape)
        value = self._value(r)
        (r_xor,) = self._share_known([shape], lambda: [value], xor=[True])
        return value, r, r_xor

    def bit_monomials(
        self, r: Tensor | None, shape: Sequence[int], monomials: Sequence[frozenset[int]]
    ) -> dict[frozenset[int], Shares]:
        """XOR shares of AND over j in S of (r << j), for each set of shifts S."""
        k = self.kernels

        def values() -> list[Tensor]:
            shifted: dict[int, Tensor] = {}
            products: dict[frozenset[int], Tensor] = {}
            for key in sorted(monomials, key=len):
                top = max(key)
                if top not in shifted:
                    shifted[top] = k.shift_left(r, top)
                rest = key - {top}
                if len(rest) == 1:
                    (low,) = rest
                    if low not in shifted:
                        shifted[low] = k.shift_left(r, low)
                    base = shifted[low]
                else:
                    base = products[rest]  # smaller monomials come first
                products[key] = k.bitwise_and(base, shifted[top])
            return [products[key] for key in monomials]

        shares = self._share_known([shape] * len(monomials), values, xor=[True] * len(monomials))
        return dict(zip(monomials, shares))

    def prefix_triples(
        self, shape: Sequence[int], shift: int, with_propagate: bool
    ) -> tuple[Shares, Shares, Shares, Shares | None]:
        """Masks and AND triples for one Kogge-Stone level.

        Returns XOR shares of masks u (for P) and v (for G) and of
        u & (v << shift) and, if `with_propagate`, u & (u << shift).
        """
        k = self.kernels
        u, v = self._random(shape), self._random(shape)

        def values() -> list[Tensor]:
            u_value, v_value = self._value(u, xor=True), self._value(v, xor=True)
            products = [k.bitwise_and(u_value, k.shift_left(v_value, shift))]
            if with_propagate:
                products.append(k.bitwise_and(u_value, k.shift_left(u_value, shift)))
            return products

        count = 2 if with_propagate else 1
        shared = self._share_known([shape] * count, values, xor=[True] * count)
        return u, v, shared[0], (shared[1] if with_propagate else None)

    def random_bit(self, shape: Sequence[int]) -> tuple[Shares, Shares]:
        """A random bit b (int64 0/1) as XOR shares and as additive shares."""
        k = self.kernels
        self._count(shape, bits=1)
        b_xor = Shares((self._seeded_bits(0, shape), self._seeded_bits(1, shape)), shape)
        (b_arith,) = self._share_known(
            [shape], lambda: [k.bitwise_xor(b_xor[0], b_xor[1])], xor=[False]
        )
        return b_xor, b_arith

    def bit_products(
        self,
        bit_shape: Sequence[int],
        masks: Sequence[Tensor | None],
        mask_shapes: Sequence[Sequence[int]],
    ) -> tuple[Shares, Shares, list[Shares]]:
        """Correlations for multiplying masked values by a shared bit.

        Returns XOR shares of a random bit b (int64 0/1, shape `bit_shape`),
        additive shares of b, and for each mask a_j in `masks` (dealer
        values from `random_mask`, of `mask_shapes`) additive shares of a_j * b
        (b broadcast).
        """
        k = self.kernels
        self._count(bit_shape, bits=1)
        b_xor = Shares(
            (self._seeded_bits(0, bit_shape), self._seeded_bits(1, bit_shape)), bit_shape
        )

        def values() -> list[Tensor]:
            b = k.bitwise_xor(b_xor[0], b_xor[1])
            return [b, *(k.mul(a, b) for a in masks)]

        shapes = [tuple(bit_shape), *(_broadcast(s, bit_shape) for s in mask_shapes)]
        known = self._share_known(shapes, values, xor=[False] * len(shapes))
        return b_xor, known[0], known[1:]


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    import numpy as np

    return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
