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
known bit) is sent. Those bytes are counted as the communicator's offline
bytes.

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
from privkeras.backends.mpc.protocols.streams import PartyStreams
from privkeras.core.kernels import RingKernels

__all__ = ["Dealer"]

Tensor = Any
Shares = tuple[Tensor, Tensor]


class Dealer:
    """Produces correlated randomness for Pond's two compute parties.

    Args:
        kernels: Ring kernels the shares are made on.
        streams: The runtime's `PartyStreams`.
        communicator: Counts the bytes the dealer sends (offline).
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

    # -- building blocks -----------------------------------------------------------
    def _seed(self, party: int):
        """The stream the dealer shares with compute party `party`."""
        return self.streams.dealer(party, dealer=self.name)

    def _seeded_ring(self, party: int, shape: Sequence[int]) -> Tensor:
        return self.kernels.from_numpy(self._seed(party).ring(shape))

    def _seeded_bits(self, party: int, shape: Sequence[int]) -> Tensor:
        return self.kernels.from_numpy(self._seed(party).bits(shape))

    def _random(self, shape: Sequence[int]) -> Shares:
        """Additive shares of a uniformly random ring value (no bytes sent)."""
        return self._seeded_ring(0, shape), self._seeded_ring(1, shape)

    def _random_xor(self, shape: Sequence[int]) -> Shares:
        """XOR shares of a uniformly random 64-bit word (no bytes sent)."""
        return self._seeded_ring(0, shape), self._seeded_ring(1, shape)

    def _share_known(self, values: Sequence[Tensor], xor: Sequence[bool]) -> list[Shares]:
        """Shares of values the dealer computed: party 0's from its seed, party 1's sent."""
        k = self.kernels
        shares, corrections = [], []
        for value, is_xor in zip(values, xor):
            share0 = self._seeded_ring(0, k.shape(value))
            share1 = k.bitwise_xor(value, share0) if is_xor else k.sub(value, share0)
            shares.append((share0, share1))
            corrections.append(share1)
        self.communicator.exchange(
            [Message(self.name, self.parties[1], tuple(corrections))], offline=True
        )
        return shares

    # -- arithmetic ----------------------------------------------------------------
    def random_mask(self, shape: Sequence[int]) -> tuple[Tensor, Shares]:
        """A uniformly random ring tensor: (the dealer's value, the parties' shares)."""
        shares = self._random(shape)
        return self.kernels.add(shares[0], shares[1]), shares

    def product_shares(
        self, a: Tensor, b: Tensor, product: Callable[[Tensor, Tensor], Tensor]
    ) -> Shares:
        """Fresh shares of c = product(a, b) for masks a, b the dealer made.

        With a and b from `random_mask`, (a, b, c) is a Beaver triple for any
        bilinear `product` (elementwise, matmul, conv2d). A mask may take part
        in many triples: each gets fresh shares of its own c.
        """
        (c,) = self._share_known([product(a, b)], xor=[False])
        return c

    # -- binary ----------------------------------------------------------------------
    def edabits(self, shape: Sequence[int]) -> tuple[Tensor, Shares, Shares]:
        """A random r: the dealer's value, additive shares, XOR shares of its 64 bits."""
        k = self.kernels
        r = self._random(shape)
        value = k.add(r[0], r[1])
        (r_xor,) = self._share_known([value], xor=[True])
        return value, r, r_xor

    def bit_monomials(
        self, r: Tensor, monomials: Sequence[frozenset[int]]
    ) -> dict[frozenset[int], Shares]:
        """XOR shares of AND over j in S of (r << j), for each set of shifts S."""
        k = self.kernels
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
        values = [products[key] for key in monomials]
        return dict(zip(monomials, self._share_known(values, xor=[True] * len(values))))

    def prefix_triples(
        self, shape: Sequence[int], shift: int, with_propagate: bool
    ) -> tuple[Shares, Shares, Shares, Shares | None]:
        """Masks and AND triples for one Kogge-Stone level.

        Returns XOR shares of masks u (for P) and v (for G) and of
        u & (v << shift) and, if `with_propagate`, u & (u << shift).
        """
        k = self.kernels
        u, v = self._random_xor(shape), self._random_xor(shape)
        u_value = k.bitwise_xor(u[0], u[1])
        v_value = k.bitwise_xor(v[0], v[1])
        products = [k.bitwise_and(u_value, k.shift_left(v_value, shift))]
        if with_propagate:
            products.append(k.bitwise_and(u_value, k.shift_left(u_value, shift)))
        shared = self._share_known(products, xor=[True] * len(products))
        return u, v, shared[0], (shared[1] if with_propagate else None)

    def random_bit(self, shape: Sequence[int]) -> tuple[Shares, Shares]:
        """A random bit b (int64 0/1) as XOR shares and as additive shares."""
        k = self.kernels
        b_xor = (self._seeded_bits(0, shape), self._seeded_bits(1, shape))
        (b_arith,) = self._share_known([k.bitwise_xor(b_xor[0], b_xor[1])], xor=[False])
        return b_xor, b_arith

    def bit_products(
        self, bit_shape: Sequence[int], masks: Sequence[Tensor]
    ) -> tuple[Shares, Shares, list[Shares]]:
        """Correlations for multiplying masked values by a shared bit.

        Returns XOR shares of a random bit b (int64 0/1, shape `bit_shape`),
        additive shares of b, and for each mask a_j in `masks` (dealer
        values from `random_mask`) additive shares of a_j * b (b broadcast).
        """
        k = self.kernels
        b_xor = (self._seeded_bits(0, bit_shape), self._seeded_bits(1, bit_shape))
        b = k.bitwise_xor(b_xor[0], b_xor[1])
        products = [k.mul(a, b) for a in masks]
        known = self._share_known([b, *products], xor=[False] * (1 + len(products)))
        return b_xor, known[0], known[1:]
