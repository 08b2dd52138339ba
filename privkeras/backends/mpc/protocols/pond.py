"""Pond: two compute parties with additive shares over Z_2^64 and a dealer.

Party p0 holds x0 and party p1 holds x1 with x = x0 + x1 mod 2^64. Sums and
products with public values are local; products of two shared values use a
Beaver triple from the dealer and open two masked values in one round;
comparisons open x + r for an edaBit r and run a Kogge-Stone carry circuit
on XOR shares with dealer AND triples (5 rounds: the first level is local).

Notes:
    Truncation is the local one of SecureML (Mohassel and Zhang, S&P 2017,
    Theorem 1), as in Pond/TF-Encrypted and CrypTen's two-party mode: p0
    computes x0 >> f, p1 computes -((-x1) >> f). With x0 uniform, the result
    is within 1 ulp of x / 2^f unless the shares wrap around, which happens
    with probability at most (|x| + 1) / 2^64 for the ring value x being
    truncated. After a product of two values at scale 2^f, x = v * 2^(2f)
    for a real v, so the failure probability per element is at most
    |v| * 2^(2f - 64): with f = 16, |v| * 2^-32 (2.3e-10 for |v| = 1,
    2.4e-7 for |v| = 1024). A failure gives an error near 2^(64 - f).

    Cost (per party, n elements, 8 bytes per ring element):
    elementwise product 1 round, 16n bytes (8n if one operand was opened
    before: masks are kept and reused); matmul (m,k)@(k,n) 1 round,
    8(mk + kn) bytes; sign bit 6 rounds, 8n bytes + 88n bits;
    multiplication by a shared bit 1 round, n bits (+ 8n bytes unless the
    value's mask is known, as after its own comparison).
"""

from __future__ import annotations

from typing import Any

from privkeras.backends.mpc.communicator import Message
from privkeras.backends.mpc.dealer import Dealer
from privkeras.backends.mpc.protocols.base import PRODUCTS, Protocol, Shares
from privkeras.backends.mpc.protocols.binary import (
    PrefixLevel,
    PublicPolynomial,
    local_prefix_levels,
    monomials_of_local_levels,
    msb_of_sum,
    popcount,
)

__all__ = ["OperandMask", "PondProtocol"]

Tensor = Any


class OperandMask:
    """A Beaver mask b of one shared value x, kept so that x is opened only once.

    Holds the dealer's b, the parties' shares of b and each party's copy of
    the opened f = x - b. Reusing b in many products is Beaver's method with
    one opening per value (as SPDZ does for values used many times): every
    product gets its own fresh triple c = a * b from the dealer. A mask of
    L(x), for L linear (a transpose, reshape, slice...), is L(b) with opened
    L(f): `derive` records L and applies it when the mask is first used.
    """

    __slots__ = ("_fn", "_resolved", "_source")

    def __init__(self, value=None, shares=None, opened=None, *, source=None, fn=None):
        self._resolved = None if source is not None else (value, tuple(shares), tuple(opened))
        self._source, self._fn = source, fn

    def resolve(self) -> tuple[Tensor, Shares, tuple[Tensor, Tensor]]:
        """(dealer's b, shares of b, opened f as seen by party 0 and party 1)."""
        if self._resolved is None:
            value, shares, opened = self._source.resolve()
            fn = self._fn
            self._resolved = (fn(value), tuple(map(fn, shares)), tuple(map(fn, opened)))
            self._source = self._fn = None
        return self._resolved

    def derive(self, fn) -> OperandMask:
        """The mask of fn(x) for a ring-linear fn, computed lazily."""
        return OperandMask(source=self, fn=fn)


class PondProtocol(Protocol):
    """Two-party additive secret sharing with a dealer (Pond / SPDZ with a crypto provider).

    Args:
        kernels: Ring kernels.
        streams: The runtime's random streams.
        communicator: Communicator of parties `p0` and `p1`.
        precision_bits: Fractional bits of the fixed-point encoding.
        parties: The two computing parties, if the communicator has more
            (ABY3 runs comparisons as Pond between p0 and p1).
        dealer_name: Who deals (`"dealer"`, or ABY3's helper `"p2"`).
    """

    name = "pond"
    num_parties = 2
    num_components = 2
    #: Carry levels of a comparison computed locally from dealer-supplied ANDs of r's
    #: bits (0, 1 or 2). Each saves a round; the first costs no extra local work, the
    #: second about 45% more (16-term polynomials), so 1 is the default.
    local_levels = 1

    def __init__(
        self,
        kernels,
        streams,
        communicator,
        precision_bits,
        parties: tuple[str, str] | None = None,
        dealer_name: str = "dealer",
    ):
        super().__init__(kernels, streams, communicator, precision_bits)
        if parties is not None:  # two of a larger set of parties, another one dealing
            self.parties = tuple(parties)
        self.dealer = Dealer(kernels, streams, communicator, self.parties, name=dealer_name)

    # -- opening ------------------------------------------------------------------------
    def _open(
        self,
        values: list[Shares],
        xor: bool | list[bool] = False,
        widths: tuple[int, ...] | None = None,
    ) -> list[list[Tensor]]:
        """Opens several values in one round; returns each party's list of opened values.

        Args:
            values: Shares of the values to open.
            xor: Per value (or for all), whether it is XOR-shared.
            widths: Meaningful bits per element of each value (64 by default).
        """
        k = self.kernels
        p0, p1 = self.parties
        kinds = xor if isinstance(xor, list) else [xor] * len(values)
        widths = widths or tuple(64 for _ in values)
        inbox = self.communicator.exchange(
            [
                Message(p0, p1, tuple(v[0] for v in values), widths),
                Message(p1, p0, tuple(v[1] for v in values), widths),
            ]
        )
        received = (inbox[p1, p0], inbox[p0, p1])
        return [
            [
                (k.bitwise_xor if is_xor else k.add)(v[party], other)
                for v, other, is_xor in zip(values, received[party], kinds)
            ]
            for party in (0, 1)
        ]

    def _open_bits(self, bits: list[Shares], values: list[Shares]) -> list[list[Tensor]]:
        """Opens XOR-shared single bits and additive ring values in one round."""
        k = self.kernels
        p0, p1 = self.parties
        widths = (1,) * len(bits) + (64,) * len(values)
        everything = bits + values
        inbox = self.communicator.exchange(
            [
                Message(p0, p1, tuple(v[0] for v in everything), widths),
                Message(p1, p0, tuple(v[1] for v in everything), widths),
            ]
        )
        received = (inbox[p1, p0], inbox[p0, p1])
        return [
            [
                (k.bitwise_xor if index < len(bits) else k.add)(v[party], other)
                for index, (v, other) in enumerate(zip(everything, received[party]))
            ]
            for party in (0, 1)
        ]

    # -- sharing and revealing ---------------------------------------------------------
    def share(self, value: Tensor, owner: str) -> Shares:
        k = self.kernels
        shape = k.shape(value)
        if owner in self.parties:
            # Pseudo-random zero sharing: the owner adds its value to its share of zero.
            mask = k.from_numpy(self.streams.pair(0, 1).ring(shape))
            if owner == self.parties[0]:
                return k.sub(value, mask), mask
            return mask, k.sub(value, mask)
        # An outside owner: p0's share is expanded from a seed it shares with the owner,
        # p1's share is sent.
        share0 = k.from_numpy(self.streams.owner(owner, 0).ring(shape))
        share1 = k.sub(value, share0)
        inbox = self.communicator.exchange([Message(owner, self.parties[1], share1)])
        return share0, inbox[owner, self.parties[1]]

    def reveal(self, shares: Shares, to: str) -> Tensor:
        k = self.kernels
        senders = [i for i, name in enumerate(self.parties) if name != to]
        inbox = self.communicator.exchange(
            [Message(self.parties[i], to, shares[i]) for i in senders]
        )
        parts = [inbox[self.parties[i], to] for i in senders]
        if to in self.parties:
            parts.append(shares[self.parties.index(to)])
        return k.add(parts[0], parts[1])

    # -- local steps ---------------------------------------------------------------------
    def add_public(self, x: Shares, public: Tensor) -> Shares:
        return self.kernels.add(x[0], public), x[1]

    def xor_public(self, x: Shares, public: Tensor) -> Shares:
        return self.kernels.bitwise_xor(x[0], public), x[1]

    # -- products ------------------------------------------------------------------------
    def _new_masks(self, values: list[Shares]) -> list[OperandMask]:
        """Masks fresh values with dealer masks and opens them all in one round."""
        if not values:
            return []
        k = self.kernels
        made = [self.dealer.random_mask(self.shape(x)) for x in values]
        views = self._open([self.local(k.sub, x, a) for x, (_, a) in zip(values, made)])
        return [
            OperandMask(value, shares, (views[0][j], views[1][j]))
            for j, (value, shares) in enumerate(made)
        ]

    def product(self, x: Shares, y: Shares, op: str, **kwargs: Any) -> Shares:
        return self._masked_product(x, y, op, (None, None), kwargs)[0]

    def product_truncated(
        self,
        x: Shares,
        y: Shares,
        op: str,
        bits: int,
        masks: tuple[Any, Any] = (None, None),
        **kwargs: Any,
    ) -> tuple[Shares, tuple[Any, Any]]:
        z, masks = self._masked_product(x, y, op, masks, kwargs)
        return self.truncate(z, bits), masks

    def _masked_product(self, x: Shares, y: Shares, op: str, masks, kwargs):
        """Beaver's product with masks a, b of x, y (opened once, then reused).

        With e = x - a and f = y - b public, x * y = c + e * b + a * f + e * f
        for a triple (a, b, c = a * b); party 0 adds the public e * f. Masks
        not given are made and opened here (one round for both); when both
        are given no communication is needed.
        """
        k = self.kernels
        fn = PRODUCTS[op]

        def bilinear(a, b):
            return fn(k, a, b, **kwargs)

        mx, my = masks
        same = x is y
        if same:
            my = mx = mx or my
        missing = [v for v, m in ((x, mx), (y, my)) if m is None]
        if same:
            missing = missing[:1]
        made = iter(self._new_masks(missing))
        if mx is None:
            mx = next(made)
        if my is None:
            my = mx if same else next(made)
        a_value, a, e = mx.resolve()
        b_value, b, f = my.resolve()
        c = self.dealer.product_shares(a_value, b_value, bilinear)
        out = []
        for party in (0, 1):
            # Party 0 folds its public e * f into e * (b0 + f): two products per party.
            right = k.add(b[party], f[party]) if party == 0 else b[party]
            z = k.add(c[party], k.add(bilinear(e[party], right), bilinear(a[party], f[party])))
            out.append(z)
        return tuple(out), (mx, my)

    def truncate(self, x: Shares, bits: int) -> Shares:
        k = self.kernels
        return (
            k.shift_right_arithmetic(x[0], bits),
            k.neg(k.shift_right_arithmetic(k.neg(x[1]), bits)),
        )

    # -- binary ------------------------------------------------------------------------------
    def prefix_level(self, p: Shares, g: Shares, level: PrefixLevel) -> tuple[Shares, Shares]:
        """One prefix level: opens the needed bits of P and G masked (one round), ANDs locally.

        With P = e_p ^ u and G = e_g ^ v (u, v dealer masks),
        P & (G << s) = e_p & E ^ e_p & V ^ u & E ^ u & V with E = e_g << s,
        V = v << s, and the dealer supplies shares of u & V (and of
        u & (u << s) for P & (P << s)). Positions outside the schedule's
        masks are zeroed before sending and never used.
        """
        k = self.kernels
        shift = level.shift
        u, v, uv, uu = self.dealer.prefix_triples(self.shape(p), shift, level.with_propagate)
        keep_p, keep_g = self.constant(level.open_p), self.constant(level.open_g)
        views = self._open(
            [
                self.local(lambda pi, ui: k.bitwise_and(k.bitwise_xor(pi, ui), keep_p), p, u),
                self.local(lambda gi, vi: k.bitwise_and(k.bitwise_xor(gi, vi), keep_g), g, v),
            ],
            xor=True,
            widths=(popcount(level.open_p), popcount(level.open_g)),
        )
        new_g, new_p = [], []
        for party in (0, 1):
            e_p, e_g = views[party]
            shifted_e_g = self.shift_left(e_g, shift)
            pg = k.bitwise_xor(
                k.bitwise_and(e_p, self.shift_left(v[party], shift)),
                k.bitwise_xor(k.bitwise_and(u[party], shifted_e_g), uv[party]),
            )
            if party == 0:
                pg = k.bitwise_xor(pg, k.bitwise_and(e_p, shifted_e_g))
            new_g.append(k.bitwise_xor(g[party], pg))
            if level.with_propagate:
                shifted_e_p = self.shift_left(e_p, shift)
                pp = k.bitwise_xor(
                    k.bitwise_and(e_p, self.shift_left(u[party], shift)),
                    k.bitwise_xor(k.bitwise_and(u[party], shifted_e_p), uu[party]),
                )
                if party == 0:
                    pp = k.bitwise_xor(pp, k.bitwise_and(e_p, shifted_e_p))
                new_p.append(pp)
        return tuple(new_g), (tuple(new_p) if level.with_propagate else p)

    def negative_bit(self, x: Shares) -> Shares:
        return self.negative_bit_with_mask(x)[0]

    def negative_bit_with_mask(self, x: Shares) -> tuple[Shares, OperandMask]:
        """[x < 0], and the mask of x that the comparison opened (reusable in products).

        Opens c = x + r for an edaBit r; then x = c - r = c + NOT(r) + 1, an
        addition of a public word and a binary-shared word whose g and p words
        are local. Since x - (-r) = c, -r is a Beaver mask of x with opened c.
        """
        k = self.kernels
        r_value, r, r_xor = self.dealer.edabits(self.shape(x))
        levels = self.local_levels
        monomials = self.dealer.bit_monomials(r_value, monomials_of_local_levels(levels))
        views = self._open([self.local(k.add, x, r)])
        generate, propagate, initial = [], [], []
        for party in (0, 1):
            (c,) = views[party]
            g, p = self._initial_polynomials(c)
            g_local, p_local = local_prefix_levels(g, p, levels)
            own = {key: shares[party] for key, shares in monomials.items()}
            generate.append(g_local.evaluate(party, r_xor[party], own))
            propagate.append(p_local.evaluate(party, r_xor[party], own))
            initial.append(p.evaluate(party, r_xor[party], own))
        bit = msb_of_sum(
            self, tuple(generate), tuple(propagate), tuple(initial), first_level=levels
        )
        mask = OperandMask(k.neg(r_value), (k.neg(r[0]), k.neg(r[1])), (views[0][0], views[1][0]))
        return bit, mask

    def _initial_polynomials(self, c: Tensor) -> tuple[PublicPolynomial, PublicPolynomial]:
        """g and p of c + NOT(r) + 1 as polynomials in r's bits with public coefficients.

        NOT r = 1 ^ r, so g = c & (1 ^ r) = c ^ c r and p = c ^ 1 ^ r = NOT c ^ r;
        the carry-in 1 makes bit 0 generate when it propagates: g ^= p & 1.
        """
        k = self.kernels
        ones, one = self.constant(-1), self.constant(1)
        not_c = k.bitwise_xor(c, ones)
        empty, first = frozenset(), frozenset([0])
        g = PublicPolynomial(
            self, {empty: k.bitwise_xor(c, k.bitwise_and(not_c, one)), first: k.bitwise_xor(c, one)}
        )
        p = PublicPolynomial(self, {empty: not_c, first: ones})
        return g, p

    def bit_to_arithmetic(self, bit: Shares) -> Shares:
        k = self.kernels
        b_xor, b_arith = self.dealer.random_bit(self.shape(bit))
        views = self._open_bits([self.local(k.bitwise_xor, bit, b_xor)], [])
        return tuple(self._injected(party, views[party][0], b_arith) for party in (0, 1))

    def _injected(self, party: int, d: Tensor, b_arith: Shares) -> Tensor:
        """Party `party`'s additive share of d XOR b = d + (1 - 2d) b, for public d."""
        k = self.kernels
        z = k.mul(k.sub(self.constant(1), self.shift_left(d, 1)), b_arith[party])
        return k.add(z, d) if party == 0 else z

    def multiply_by_bit(
        self,
        bit: Shares,
        xs: list[Shares],
        masks: list[Any] | None = None,
        with_bit: bool = True,
    ) -> tuple[list[Shares], Shares | None, list[Any]]:
        """x * bit for each x, in one round (the bit opened masked, fresh x masked).

        With d = bit XOR b public (b a dealer bit), bit = d + (1 - 2d) b and
        x * bit = d x + (1 - 2d) x b, where x b = (f + a) b = f b + [a b] for
        the mask a of x (opened as f = x - a, now or earlier).
        """
        k = self.kernels
        masks = list(masks or [None] * len(xs))
        fresh = [j for j, m in enumerate(masks) if m is None]
        made = [self.dealer.random_mask(self.shape(xs[j])) for j in fresh]
        resolved_old = {j: masks[j].resolve() for j in range(len(xs)) if masks[j] is not None}
        mask_values = [
            made[fresh.index(j)][0] if j in fresh else resolved_old[j][0] for j in range(len(xs))
        ]
        b_xor, b_arith, ab = self.dealer.bit_products(self.shape(bit), mask_values)
        views = self._open_bits(
            [self.local(k.bitwise_xor, bit, b_xor)],
            [self.local(k.sub, xs[j], a) for j, (_, a) in zip(fresh, made)],
        )
        for position, (j, (value, shares)) in enumerate(zip(fresh, made)):
            opened = (views[0][1 + position], views[1][1 + position])
            masks[j] = OperandMask(value, shares, opened)
        outs: list[list[Tensor]] = [[] for _ in xs]
        for party in (0, 1):
            d = views[party][0]
            one_minus_2d = k.sub(self.constant(1), self.shift_left(d, 1))
            for j, x in enumerate(xs):
                _, _, f = masks[j].resolve()
                xb = k.add(k.mul(f[party], b_arith[party]), ab[j][party])
                outs[j].append(k.add(k.mul(d, x[party]), k.mul(one_minus_2d, xb)))
        bit_arith = tuple(self._injected(party, views[party][0], b_arith) for party in (0, 1))
        return [tuple(o) for o in outs], bit_arith, masks
