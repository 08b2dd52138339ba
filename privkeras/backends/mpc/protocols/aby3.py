"""ABY3: three parties, replicated secret sharing over Z_2^64, no dealer.

A value x = x0 + x1 + x2 mod 2^64 (or x0 XOR x1 XOR x2 for binary shares)
is held as party i holding components (x_i, x_{i+1}), indices mod 3: any two
parties can reconstruct, no single party learns anything. Products are
computed locally as a 3-out-of-3 sharing, re-randomized with a
pseudo-random zero sharing and re-shared in one round.

Notes:
    Mohassel and Rindal, "ABY3: A Mixed Protocol Framework for Machine
    Learning", CCS 2018; Araki et al., "High-throughput semi-honest secure
    three-party computation with an honest majority", CCS 2016 (replicated
    multiplication, zero sharing from pairwise keys).

    Security claim: semi-honest, honest majority. Any single party's view
    (every message it receives, plus every random value it holds a key to or
    dealt) is independent of the secrets: each received value is masked by a
    draw from a key that party does not hold, and no two received values
    share that mask. The outputs a reveal names are the only exception. Two
    colluding parties learn everything. `tests/backends/mpc/test_party_views.py`
    checks the claim for p0, p1 and p2 on a `predict` and a training step by
    knockout provenance, and replays the attack that found an unmasked helper
    message in an earlier version.

    Zero sharing: keys k_j are shared by parties j and j-1; party i uses
    alpha_i = F(k_i) - F(k_{i+1}) (XOR for binary). The alphas sum to zero
    and each looks uniform to every other single party.

    Truncation follows the structure of ABY3's Pi_trunc2 (section 5.1.2):
    the parties open D = z - r for a random r whose truncation r >> f they
    hold shared, and set z >> f ~ (D >> f) + (r >> f). ABY3 makes the pair
    (r, r >> f) with a binary circuit; here, as in the preprocessing of
    ASTRA (Chaudhari et al., CCSW 2019), the helper p2 makes it from keys it
    shares with p0 and p1 and sends one share (input-independent, counted
    offline), and D is opened to p0 and p1 only. Security still needs only
    that at most one party is corrupted: p2 knows r but never sees D; p0 and
    p1 see D but each misses one part of r. A truncated product costs one
    round (p0, p1 send 8 bytes per element, p2 sends 16). The result is
    within 1 ulp of x / 2^f unless z - r wraps around, which happens with
    probability at most (|z| + 1) / 2^64 for the ring value z being
    truncated: |v| * 2^(2f - 64) for a product v of two reals at scale 2^f
    (|v| * 2^-32 at f = 16), as for SecureML's truncation.

    Comparisons (default, `helper_comparisons`): x is a 2-out-of-2 sharing
    of p0 (x0 + x1) and p1 (x2) for free, so p0 and p1 run Pond's
    comparison with p2 as its dealer, and the results return to replicated
    shares in one round: a sign costs 6 rounds, a ReLU 8. p2 dealt every mask
    of that circuit, so what p0 and p1 send it on the way back is padded with
    draws from their pairwise key (`_from_two_party`). Without the
    helper: the three components are three addends known to two parties
    each; a full-adder layer (one AND round) turns them into two addends,
    and the Kogge-Stone circuit (section 5.3) finds the sign bit in 7 more
    AND rounds, re-sharing only the carry bits the sign needs. A value
    times a shared bit b = u XOR b2 (u = b0 XOR b1 known to p0, b2 to p1
    and p2) then costs 2 rounds: x b = (x - 2 x b2) u + x b2, where x b2 is
    local to p1 and p2 and p0 shares u in the first round.
"""

from __future__ import annotations

from typing import Any

from privkeras.backends.mpc.communicator import Message
from privkeras.backends.mpc.protocols.base import PRODUCTS, Protocol, Shares, product_shape
from privkeras.backends.mpc.protocols.binary import (
    PrefixLevel,
    initial_generate_positions,
    msb_of_sum,
    popcount,
)
from privkeras.backends.mpc.protocols.pond import PondProtocol

__all__ = ["ABY3Protocol", "TwoPartyBit"]

Tensor = Any


class TwoPartyBit(Shares):
    """XOR shares of bits held by p0 and p1 only (a comparison p2 dealt for)."""


_NEXT = (1, 2, 0)
_LOW_63_BITS = (1 << 63) - 1
_PREV = (2, 0, 1)


class ABY3Protocol(Protocol):
    """Three-party replicated secret sharing (ABY3), semi-honest, no dealer.

    Args:
        kernels: Ring kernels.
        streams: The runtime's random streams.
        communicator: Communicator of parties `p0`, `p1`, `p2`.
        precision_bits: Fractional bits of the fixed-point encoding.

    Party i holds components i and i + 1; every step below computes, for each
    party that runs in this process, only what that party computes, and
    sends only its messages.
    """

    name = "aby3"
    num_parties = 3
    num_components = 3
    #: Comparisons as a two-party circuit between p0 and p1 with p2 dealing (True), or
    #: on replicated binary shares with no party dealing (False).
    helper_comparisons = True

    def __init__(self, kernels, streams, communicator, precision_bits):
        super().__init__(kernels, streams, communicator, precision_bits)
        p0, p1, p2 = self.parties
        self._pair = PondProtocol(
            kernels, streams, communicator, precision_bits, parties=(p0, p1), dealer_name=p2
        )
        self._local = tuple(i for i in range(3) if self.here(self.parties[i]))

    def component_holders(self, component: int) -> tuple[str, ...]:
        return (self.parties[component], self.parties[_PREV[component]])

    def _replicated(self, parts: list[Tensor | None], shape) -> Shares:
        """Shares keeping each component only where a party holding it runs."""
        return Shares(tuple(part if self.holds(c) else None for c, part in enumerate(parts)), shape)

    # -- randomness -----------------------------------------------------------------------
    def _key_draws(self, shape) -> list[Tensor | None]:
        """F(k_j) for j = 0, 1, 2; key k_j is shared by parties j and j - 1."""
        return [self.ring(self.streams.pair(j, _PREV[j]), shape) for j in range(3)]

    def _zero_sharing(self, shape) -> list[Tensor | None]:
        """alpha_i = F(k_i) - F(k_{i+1}) for each local party i: the alphas sum to zero."""
        k = self.kernels
        f = self._key_draws(shape)
        return [k.sub(f[i], f[_NEXT[i]]) if i in self._local else None for i in range(3)]

    def _xor_zero_sharing(self, shape) -> list[Tensor | None]:
        k = self.kernels
        f = self._key_draws(shape)
        return [k.bitwise_xor(f[i], f[_NEXT[i]]) if i in self._local else None for i in range(3)]

    # -- communication --------------------------------------------------------------------------
    def _reshare(self, z: list[Tensor | None], shape, width: int = 64) -> Shares:
        """Party i sends z_i to party i - 1 (one round): (z_i) becomes replicated."""
        return self._reshare_many([z], [shape], (width,))[0]

    def _reshare_many(
        self, zs: list[list[Tensor | None]], shapes, widths: tuple[int, ...] | None = None
    ) -> list[Shares]:
        names = self.parties
        widths = widths or tuple(64 for _ in zs)
        inbox = self.communicator.exchange(
            [
                Message(
                    names[i],
                    names[_PREV[i]],
                    tuple(z[i] for z in zs) if i in self._local else None,
                    widths,
                )
                for i in range(3)
            ]
        )
        out = []
        for index, (z, shape) in enumerate(zip(zs, shapes)):
            parts: list[Tensor | None] = [None, None, None]
            for c in range(3):
                # Component c: party c computed it, party c - 1 received it.
                if c in self._local:
                    parts[c] = z[c]
                elif _PREV[c] in self._local:
                    parts[c] = inbox[names[c], names[_PREV[c]]][index]
            out.append(Shares(parts, shape))
        return out

    # -- sharing and revealing -------------------------------------------------------------
    def share(self, value: Tensor | None, owner: str, shape=None) -> Shares:
        """Shares `value` (None where `owner` runs elsewhere) of `shape`."""
        k = self.kernels
        shape = k.shape(value) if value is not None else tuple(shape)
        names = self.parties
        if owner in names:
            j = names.index(owner)
            # s_j from the key of (j, j-1), s_{j-1} from the common key, s_{j+1} sent to j+1.
            parts: list[Tensor | None] = [None, None, None]
            parts[j] = self.ring(self.streams.pair(j, _PREV[j]), shape)
            parts[_PREV[j]] = self.ring(self.streams.common(), shape)
            if self.here(owner):
                parts[_NEXT[j]] = k.sub(k.sub(value, parts[j]), parts[_PREV[j]])
            inbox = self.communicator.exchange(
                [Message(owner, names[_NEXT[j]], parts[_NEXT[j]] if self.here(owner) else None)]
            )
            if parts[_NEXT[j]] is None:
                parts[_NEXT[j]] = inbox.get((owner, names[_NEXT[j]]))
            return self._replicated(parts, shape)
        # An outside owner: s0 and s1 from seeds it shares with their holders, s2 sent.
        s0 = self.ring(self.streams.owner(owner, 0, 2), shape)
        s1 = self.ring(self.streams.owner(owner, 0, 1), shape)
        s2 = k.sub(k.sub(value, s0), s1) if self.here(owner) else None
        inbox = self.communicator.exchange(
            [Message(owner, names[1], s2), Message(owner, names[2], s2)]
        )
        received = inbox.get((owner, names[1]), inbox.get((owner, names[2])))
        return self._replicated([s0, s1, received], shape)

    def reveal(self, shares: Shares, to: str) -> Tensor | None:
        """Sends `to` what it lacks (one round); returns the value where `to` runs, else None."""
        k = self.kernels
        names = self.parties
        if to in names:
            j = names.index(to)
            sender = names[_NEXT[j]]
            missing = _PREV[j]  # the component party j lacks, held by party j + 1
            inbox = self.communicator.exchange(
                [Message(sender, to, shares[missing] if self.here(sender) else None)]
            )
            if not self.here(to):
                return None
            received = inbox[sender, to]
            return k.add(k.add(shares[j], shares[_NEXT[j]]), received)
        inbox = self.communicator.exchange(
            [Message(names[i], to, shares[i] if i in self._local else None) for i in range(3)]
        )
        if not self.here(to):
            return None
        parts = [inbox[names[i], to] for i in range(3)]
        return k.add(k.add(parts[0], parts[1]), parts[2])

    # -- local steps ---------------------------------------------------------------------------------
    def add_public(self, x: Shares, public: Tensor) -> Shares:
        if x[0] is None:  # component 0 (p0, p2) adds public values
            return x
        return Shares((self.kernels.add(x[0], public), x[1], x[2]), x.shape)

    def xor_public(self, x: Shares, public: Tensor) -> Shares:
        if x[0] is None:
            return x
        return Shares((self.kernels.bitwise_xor(x[0], public), x[1], x[2]), x.shape)

    # -- products ----------------------------------------------------------------------------------
    def _local_product(self, x: Shares, y: Shares, op: str, kwargs) -> list[Tensor | None]:
        """Each local party's 3-out-of-3 share of x * y (before re-randomization)."""
        k = self.kernels
        fn = PRODUCTS[op]
        out: list[Tensor | None] = [None, None, None]
        for i in self._local:
            j = _NEXT[i]
            # x_i y_i + x_i y_j + x_j y_i = x_i (y_i + y_j) + x_j y_i
            out[i] = k.add(fn(k, x[i], k.add(y[i], y[j]), **kwargs), fn(k, x[j], y[i], **kwargs))
        return out

    def _randomized_product(self, x: Shares, y: Shares, op: str, kwargs):
        shape = product_shape(op, self.shape(x), self.shape(y), kwargs)
        z = self._local_product(x, y, op, kwargs)
        alpha = self._zero_sharing(shape)
        k = self.kernels
        return [None if z[i] is None else k.add(z[i], alpha[i]) for i in range(3)], shape

    def product(self, x: Shares, y: Shares, op: str, **kwargs: Any) -> Shares:
        z, shape = self._randomized_product(x, y, op, kwargs)
        return self._reshare(z, shape)

    def product_truncated(
        self,
        x: Shares,
        y: Shares,
        op: str,
        bits: int,
        masks: tuple[Any, Any] = (None, None),
        **kwargs: Any,
    ) -> tuple[Shares, tuple[Any, Any]]:
        z, shape = self._randomized_product(x, y, op, kwargs)
        return self._truncate_3of3(z, shape, bits), (None, None)

    def truncate(self, x: Shares, bits: int) -> Shares:
        """Truncates a replicated sharing in one round, sending nothing a party already knows.

        Component x_i is held by parties i and i - 1, so (unlike a fresh 3-out-of-3
        product) it is not a private share. p0 holds x0, x1 and r0, r1 and needs only
        d2 = x2 - r2 (from p2, which holds x2 and r2); p1 holds x1, x2 and r1, r2 and
        needs only d0 = x0 - r0 (from p0). Each learns D = x - r, masked by the part
        of r it misses.
        """
        k = self.kernels
        names = self.parties
        shape = self.shape(x)
        r, s = self._truncation_pair(shape, bits)
        here0, here1, here2 = (i in self._local for i in range(3))
        d0 = k.sub(x[0], r[0]) if here0 or here2 else None
        d2 = k.sub(x[2], r[2]) if here2 or here1 else None
        inbox = self.communicator.exchange(
            [
                Message(names[2], names[0], d2 if here2 else None),
                Message(names[0], names[1], d0 if here0 else None),
            ]
        )
        component1 = None
        if here0 or here1:
            if here0:
                d2 = inbox[names[2], names[0]] if not (here1 or here2) else d2
            else:
                d0 = inbox[names[0], names[1]]
            opened = k.add(k.add(d0, k.sub(x[1], r[1])), d2)
            component1 = k.add(s[1], k.shift_right_arithmetic(opened, bits))
        return self._replicated([s[0], component1, s[2]], shape)

    def _truncation_pair(self, shape, bits: int) -> tuple[list[Tensor | None], list]:
        """The helper p2's pair (r, ceil(r / 2^bits)): r 3-out-of-3, the quotient replicated.

        r = r0 + r1 + r2 with r0 from the key of (p0, p2), r1 from the common key and
        r2 from the key of (p1, p2): p2 knows r, p0 and p1 each miss one part. p2
        shares s = ceil(r / 2^bits) as (s0, s1, s2) with s0, s2 from the same pairwise keys
        and sends s1 to p0 and p1 (input-independent: counted offline).
        """
        k = self.kernels
        names = self.parties
        key02, key12, common = (
            self.streams.pair(0, 2),
            self.streams.pair(1, 2),
            self.streams.common(),
        )
        r = [self.ring(key02, shape), self.ring(common, shape), self.ring(key12, shape)]
        s0, s2 = self.ring(key02, shape), self.ring(key12, shape)
        s1 = None
        if 2 in self._local:
            # ceil(r / 2^bits), so that floor(D / 2^bits) + ceil(r / 2^bits) is within
            # 1 ulp of z / 2^bits (and exact when z is a multiple of 2^bits).
            whole = k.neg(k.shift_right_arithmetic(k.neg(k.add(k.add(r[0], r[1]), r[2])), bits))
            s1 = k.sub(k.sub(whole, s0), s2)
        inbox = self.communicator.exchange(
            [Message(names[2], names[0], s1), Message(names[2], names[1], s1)], offline=True
        )
        received = inbox.get((names[2], names[0]), inbox.get((names[2], names[1])))
        return r, [s0, received, s2]

    def _truncate_3of3(self, z: list[Tensor | None], shape, bits: int) -> Shares:
        """Truncates a 3-out-of-3 sharing into a replicated one in one round.

        Every party i opens d_i = z_i - r_i to p0 and p1 (p2 sends to both), who
        learn D = z - r for the helper's random r and add D >> bits to the
        component they share; the helper p2 never sees D.
        """
        k = self.kernels
        names = self.parties
        r, s = self._truncation_pair(shape, bits)
        d = [k.sub(z[i], r[i]) if i in self._local else None for i in range(3)]
        inbox = self.communicator.exchange(
            [
                Message(names[0], names[1], d[0]),
                Message(names[1], names[0], d[1]),
                Message(names[2], names[0], d[2]),
                Message(names[2], names[1], d[2]),
            ]
        )
        component1 = None
        for i in (0, 1):  # p0 and p1 each reconstruct D; the copies are equal
            if i in self._local:
                other = names[1 - i]
                theirs = inbox[other, names[i]]
                opened = k.add(k.add(d[i], theirs), inbox[names[2], names[i]])
                component1 = k.add(s[1], k.shift_right_arithmetic(opened, bits))
                break
        return self._replicated([s[0], component1, s[2]], shape)

    # -- binary ------------------------------------------------------------------------------------------
    def _and_many(
        self, pairs: list[tuple[Shares, Shares]], keep: list[int] | None = None
    ) -> list[Shares]:
        """x AND y for several pairs of XOR-shared words, in one round.

        `keep` gives, per pair, a public mask of the result bits that are
        needed: the others are zeroed before re-sharing and not counted.
        """
        k = self.kernels
        keep = keep or [-1] * len(pairs)
        zs = []
        for (x, y), mask in zip(pairs, keep):
            beta = self._xor_zero_sharing(self.shape(x))
            z: list[Tensor | None] = [None, None, None]
            for i in self._local:
                j = _NEXT[i]
                term = k.bitwise_xor(
                    k.bitwise_and(x[i], k.bitwise_xor(y[i], y[j])), k.bitwise_and(x[j], y[i])
                )
                term = k.bitwise_xor(term, beta[i])
                z[i] = term if mask == -1 else k.bitwise_and(term, self.constant(mask))
            zs.append(z)
        widths = tuple(64 if mask == -1 else popcount(mask) for mask in keep)
        return self._reshare_many(zs, [self.shape(x) for x, _ in pairs], widths)

    def prefix_level(self, p: Shares, g: Shares, level: PrefixLevel) -> tuple[Shares, Shares]:
        """One prefix level: both ANDs in one round, only the needed bits re-shared."""
        k = self.kernels
        shift = level.shift

        def shifted(x: Shares) -> Shares:
            return self.local(lambda s: self.shift_left(s, shift), x)

        pairs = [(p, shifted(g))]
        keep = [level.and_g]
        if level.with_propagate:
            pairs.append((p, shifted(p)))
            keep.append(level.and_p)
        results = self._and_many(pairs, keep)
        new_g = self.local(k.bitwise_xor, g, results[0])
        return new_g, (results[1] if level.with_propagate else p)

    # -- comparisons with the helper p2 -------------------------------------------------------
    def _two_party(self, x: Shares) -> Shares:
        """x as a 2-out-of-2 sharing of p0 (x0 + x1) and p1 (x2): local."""
        a = self.kernels.add(x[0], x[1]) if 0 in self._local else None
        b = x[2] if 1 in self._local else None
        return Shares((a, b), x.shape)

    def _from_two_party(self, values: list[Shares]) -> list[Shares]:
        """2-out-of-2 sharings (a at p0, b at p1) back to replicated ones, in one round.

        The result is (a - rho - sigma, rho, b + sigma) with rho and sigma from the
        key of p0 and p1: p0 sends a - rho - sigma to p2, p1 sends b + sigma to p2.

        Notes:
            p2 dealt the randomness that a and b are built from (it is the dealer of
            the two-party circuit), so b alone would tell p2 the result: sigma, which
            p2 does not hold, is the one-time pad that hides b from it, and rho hides
            a + b. (Without sigma, p2 recovered every comparison bit and about half of
            the ReLU inputs of a `predict`; tests/backends/mpc/test_party_views.py.)
        """
        if not values:
            return []
        k = self.kernels
        p0, p1, p2 = self.parties
        pair = self.streams.pair(0, 1)
        rhos = [self.ring(pair, v.shape) for v in values]
        sigmas = [self.ring(pair, v.shape) for v in values]
        firsts = lasts = None
        if 0 in self._local:
            firsts = tuple(k.sub(k.sub(v[0], r), s) for v, r, s in zip(values, rhos, sigmas))
        if 1 in self._local:
            lasts = tuple(k.add(v[1], s) for v, s in zip(values, sigmas))
        inbox = self.communicator.exchange([Message(p0, p2, firsts), Message(p1, p2, lasts)])
        out = []
        for j, v in enumerate(values):
            first = firsts[j] if firsts is not None else _received(inbox, (p0, p2), j)
            last = lasts[j] if lasts is not None else _received(inbox, (p1, p2), j)
            out.append(self._replicated([first, rhos[j], last], v.shape))
        return out

    def negative_bit_with_mask(self, x: Shares) -> tuple[Shares, Any]:
        """[x < 0]: with `helper_comparisons`, Pond's circuit between p0 and p1, p2 dealing.

        x is a 2-out-of-2 sharing of p0 and p1 without communication; the bit
        comes back as `TwoPartyBit` XOR shares of p0 and p1, and the opened
        mask of x is kept for the multiplication by the bit.
        """
        if not self.helper_comparisons:
            return self._replicated_negative_bit(x), None
        bit, mask = self._pair.negative_bit_with_mask(self._two_party(x))
        return TwoPartyBit(bit, bit.shape), mask

    def negative_bit(self, x: Shares) -> Shares:
        return self.negative_bit_with_mask(x)[0]

    def _replicated_negative_bit(self, x: Shares) -> Shares:
        k = self.kernels
        shape = self.shape(x)
        # The components read as XOR shares are the sum bits of a full adder of the three
        # addends; the majority (the carries) is a 3-out-of-3 XOR sharing that each party
        # computes from its own two components: x0&x1 ^ x1&x2 ^ x2&x0.
        beta = self._xor_zero_sharing(shape)
        low = self.constant(_LOW_63_BITS)
        majority = self._reshare(
            [
                k.bitwise_and(k.bitwise_xor(k.bitwise_and(x[i], x[_NEXT[i]]), beta[i]), low)
                if i in self._local
                else None
                for i in range(3)
            ],
            shape,
            width=63,  # carries out of bits 0..62 reach bits 1..63
        )
        carry = self.local(lambda s: self.shift_left(s, 1), majority)
        (generate,) = self._and_many([(x, carry)], keep=[initial_generate_positions() & ~1])
        propagate = self.local(k.bitwise_xor, x, carry)
        return msb_of_sum(self, generate, propagate)

    def _inject_round(self, bit: Shares, xs: list[Shares]) -> tuple[Shares, Shares, list[Shares]]:
        """Round one of bit injection: p0 shares u = b0 ^ b1, and x * b2 for each x.

        b2 is known to p1 and p2, so x * b2 is a 3-out-of-3 sharing they compute
        locally (p1: x1 b2, p2: (x0 + x2) b2), re-randomized and re-shared in the
        same round as p0's sharing of u.
        """
        k = self.kernels
        names = self.parties
        shape = self.shape(bit)
        u_parts: list[Tensor | None] = [
            self.ring(self.streams.pair(0, 2), shape),
            None,
            self.ring(self.streams.common(), shape),
        ]
        if 0 in self._local:
            u = k.bitwise_xor(bit[0], bit[1])
            u_parts[1] = k.sub(k.sub(u, u_parts[0]), u_parts[2])
        zs, z_shapes = [], []
        for x in xs:
            out_shape = _broadcast(self.shape(x), shape)
            alpha = self._zero_sharing(out_shape)
            z: list[Tensor | None] = [None, None, None]
            if 0 in self._local:
                z[0] = alpha[0]
            if 1 in self._local:
                z[1] = k.add(k.mul(x[1], bit[2]), alpha[1])
            if 2 in self._local:
                z[2] = k.add(k.mul(k.add(x[0], x[2]), bit[2]), alpha[2])
            zs.append(z)
            z_shapes.append(out_shape)
        # p0 -> p1: its share of u; party i -> party i - 1: z_i (p0 -> p2, p1 -> p0, p2 -> p1).
        messages = [Message(names[0], names[1], u_parts[1] if 0 in self._local else None)]
        if zs:
            messages += [
                Message(
                    names[i],
                    names[_PREV[i]],
                    tuple(z[i] for z in zs) if i in self._local else None,
                )
                for i in range(3)
            ]
        inbox = self.communicator.exchange(messages)
        if u_parts[1] is None:
            u_parts[1] = inbox.get((names[0], names[1]))
        u_shares = self._replicated(u_parts, shape)
        products = []
        for index, (z, out_shape) in enumerate(zip(zs, z_shapes)):
            parts: list[Tensor | None] = [None, None, None]
            for c in range(3):
                if c in self._local:
                    parts[c] = z[c]
                elif _PREV[c] in self._local:
                    parts[c] = inbox[names[c], names[_PREV[c]]][index]
            products.append(Shares(parts, out_shape))
        zero = k.zeros(shape)
        b2_shares = self._replicated([zero, zero, bit[2]], shape)
        return u_shares, b2_shares, products

    def bit_to_arithmetic(self, bit: Shares) -> Shares:
        if isinstance(bit, TwoPartyBit):
            return self._from_two_party([self._pair.bit_to_arithmetic(Shares(bit, bit.shape))])[0]
        return self.multiply_by_bit(bit, [])[1]

    def multiply_by_bit(
        self,
        bit: Shares,
        xs: list[Shares],
        masks: list[Any] | None = None,
        with_bit: bool = True,
    ) -> tuple[list[Shares], Shares | None, list[Any]]:
        """x * bit in two rounds: bit = u XOR b2 with u known to p0, b2 to p1 and p2.

        x * bit = x (u + b2 - 2 u b2) = (x - 2 x b2) u + x b2. Round one: p0
        shares u, and x b2 is computed and re-shared. Round two: the products
        (x - 2 x b2) u and u b2 (for the bit itself) in one re-sharing.
        """
        k = self.kernels
        if isinstance(bit, TwoPartyBit):
            products, arith, masks = self._pair.multiply_by_bit(
                Shares(bit, bit.shape), [self._two_party(x) for x in xs], masks, with_bit
            )
            converted = self._from_two_party(products + ([arith] if with_bit else []))
            return converted[: len(xs)], (converted[-1] if with_bit else None), masks
        u, b2, x_b2 = self._inject_round(bit, xs)
        factors = [
            self.local(lambda xi, wi: k.sub(xi, self.shift_left(wi, 1)), x, w)
            for x, w in zip(xs, x_b2)
        ]
        zs, shapes = [], []
        for y in [*factors, b2] if with_bit else factors:
            z, shape = self._randomized_product(y, u, "mul", {})
            zs.append(z)
            shapes.append(shape)
        reshared = self._reshare_many(zs, shapes)
        outs = [self.local(k.add, p, w) for p, w in zip(reshared, x_b2)]
        arith = None
        if with_bit:
            arith = self.local(
                lambda us, bs, ps: k.sub(k.add(us, bs), self.shift_left(ps, 1)), u, b2, reshared[-1]
            )
        return outs, arith, [None] * len(xs)


def _received(inbox, key, index):
    payload = inbox.get(key)
    return None if payload is None else payload[index]


def _broadcast(a, b) -> tuple[int, ...]:
    import numpy as np

    return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
