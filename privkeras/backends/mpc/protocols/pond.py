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
from privkeras.backends.mpc.protocols.base import PRODUCTS, Protocol, Shares, product_shape
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

    Holds the dealer's b (where the dealer runs), the parties' shares of b and
    each party's copy of the opened f = x - b (None where a party runs
    elsewhere). Reusing b in many products is Beaver's method with one opening
    per value (as SPDZ does for values used many times): every product gets its
    own fresh triple c = a * b from the dealer. A mask of L(x), for L linear (a
    transpose, reshape, slice...), is L(b) with opened L(f): `derive` records L
    and applies it when the mask is first used.
    """

    __slots__ = ("_fn", "_resolved", "_right0", "_source")

    def __init__(self, value=None, shares=None, opened=None, *, source=None, fn=None):
        self._resolved = None if source is not None else (value, tuple(shares), tuple(opened))
        self._source, self._fn = source, fn
        self._right0 = None

    def right_operand(self, kernels: Any) -> Tensor:
        """Party 0's right factor b0 + f, made once per mask.

        The same tensor in every product with this mask (a model's weights, batch
        after batch), so kernels that keep the split of a reused operand (the exact
        limb routes) split it once.
        """
        if self._right0 is None:
            _, shares, opened = self.resolve()
            self._right0 = kernels.add(shares[0], opened[0])
        return self._right0

    def resolve(self) -> tuple[Tensor | None, tuple, tuple[Tensor | None, Tensor | None]]:
        """(dealer's b, the two shares of b, opened f as seen by party 0 and party 1)."""
        if self._resolved is None:
            value, shares, opened = self._source.resolve()
            fn = self._fn

            def apply(t):
                return None if t is None else fn(t)

            self._resolved = (apply(value), tuple(map(apply, shares)), tuple(map(apply, opened)))
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
        self._local = tuple(party for party in (0, 1) if self.here(self.parties[party]))

    def component_holders(self, component: int) -> tuple[str, ...]:
        return (self.parties[component],)

    def _pack(self, parts, shape) -> Shares:
        """Shares of `shape` with a party's component where that party runs."""
        return Shares(parts, shape)

    # -- opening ------------------------------------------------------------------------
    def _open(
        self,
        values: list[Shares],
        kinds: list[bool] | bool = False,
        widths: tuple[int, ...] | None = None,
    ) -> list[list[Tensor] | None]:
        """Opens several values in one round; returns each local party's opened values.

        Args:
            values: Shares of the values to open.
            kinds: Per value (or for all), whether it is XOR-shared.
            widths: Meaningful bits per element of each value (64 by default).

        Returns:
            Per party (0, 1), its list of opened values, or None where it runs elsewhere.
        """
        k = self.kernels
        p0, p1 = self.parties
        kinds = kinds if isinstance(kinds, list) else [kinds] * len(values)
        widths = widths or tuple(64 for _ in values)
        sent = [
            tuple(v[party] for v in values) if party in self._local else None for party in (0, 1)
        ]
        inbox = self.communicator.exchange(
            [Message(p0, p1, sent[0], widths), Message(p1, p0, sent[1], widths)]
        )
        views: list[list[Tensor] | None] = [None, None]
        for party in self._local:
            other = inbox[self.parties[1 - party], self.parties[party]]
            views[party] = [
                (k.bitwise_xor if is_xor else k.add)(v[party], theirs)
                for v, theirs, is_xor in zip(values, other, kinds)
            ]
        return views

    def _open_bits(self, bits: list[Shares], values: list[Shares]) -> list[list[Tensor] | None]:
        """Opens XOR-shared single bits and additive ring values in one round."""
        return self._open(
            bits + values,
            [True] * len(bits) + [False] * len(values),
            (1,) * len(bits) + (64,) * len(values),
        )

    # -- sharing and revealing ---------------------------------------------------------
    def share(self, value: Tensor | None, owner: str, shape=None) -> Shares:
        """Shares `value` (None where `owner` runs elsewhere) of `shape`."""
        k = self.kernels
        shape = k.shape(value) if value is not None else tuple(shape)
        if owner in self.parties:
            # Pseudo-random zero sharing: the owner adds its value to its share of zero.
            mask = self.ring(self.streams.pair(0, 1), shape)
            mine = self.parties.index(owner)
            parts = [mask, mask]
            parts[mine] = k.sub(value, mask) if self.here(owner) else None
            if 1 - mine not in self._local:
                parts[1 - mine] = None
            return self._pack(parts, shape)
        # An outside owner: p0's share is expanded from a seed it shares with the owner,
        # p1's share is sent.
        share0 = self.ring(self.streams.owner(owner, 0), shape)
        share1 = k.sub(value, share0) if self.here(owner) else None
        inbox = self.communicator.exchange([Message(owner, self.parties[1], share1)])
        return self._pack(
            (share0 if 0 in self._local else None, inbox.get((owner, self.parties[1]))), shape
        )

    def reveal(self, shares: Shares, to: str) -> Tensor | None:
        """Sends the shares to `to` (one round); returns the value where `to` runs, else None."""
        k = self.kernels
        senders = [i for i, name in enumerate(self.parties) if name != to]
        inbox = self.communicator.exchange(
            [Message(self.parties[i], to, shares[i] if i in self._local else None) for i in senders]
        )
        if not self.here(to):
            return None
        parts = [inbox[self.parties[i], to] for i in senders]
        if to in self.parties:
            parts.append(shares[self.parties.index(to)])
        return k.add(parts[0], parts[1])

    # -- local steps ---------------------------------------------------------------------
    def add_public(self, x: Shares, public: Tensor) -> Shares:
        if x[0] is None:  # party 0 adds public values
            return x
        return Shares((self.kernels.add(x[0], public), x[1]))

    def xor_public(self, x: Shares, public: Tensor) -> Shares:
        if x[0] is None:
            return x
        return Shares((self.kernels.bitwise_xor(x[0], public), x[1]))

    # -- products ------------------------------------------------------------------------
    def _new_masks(self, values: list[Shares]) -> list[OperandMask]:
        """Masks fresh values with dealer masks and opens them all in one round."""
        if not values:
            return []
        k = self.kernels
        made = [self.dealer.random_mask(self.shape(x)) for x in values]
        views = self._open([self.local(k.sub, x, a) for x, (_, a) in zip(values, made)])
        return [
            OperandMask(value, shares, (_item(views[0], j), _item(views[1], j)))
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
        shape = product_shape(op, self.shape(x), self.shape(y), kwargs)
        c = self.dealer.product_shares(a_value, b_value, bilinear, shape)
        out: list[Tensor | None] = [None, None]
        for party in self._local:
            # Party 0 folds its public e * f into e * (b0 + f): two products per party.
            right = my.right_operand(k) if party == 0 else b[party]
            out[party] = k.add(
                c[party], k.add(bilinear(e[party], right), bilinear(a[party], f[party]))
            )
        return self._pack(out, shape), (mx, my)

    def truncate(self, x: Shares, bits: int) -> Shares:
        k = self.kernels
        out: list[Tensor | None] = [None, None]
        if 0 in self._local:
            out[0] = k.shift_right_arithmetic(x[0], bits)
        if 1 in self._local:
            out[1] = k.neg(k.shift_right_arithmetic(k.neg(x[1]), bits))
        return self._pack(out, x.shape)

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
        shape = self.shape(p)
        u, v, uv, uu = self.dealer.prefix_triples(shape, shift, level.with_propagate)
        keep_p, keep_g = self.constant(level.open_p), self.constant(level.open_g)
        views = self._open(
            [
                self.local(lambda pi, ui: k.bitwise_and(k.bitwise_xor(pi, ui), keep_p), p, u),
                self.local(lambda gi, vi: k.bitwise_and(k.bitwise_xor(gi, vi), keep_g), g, v),
            ],
            kinds=True,
            widths=(popcount(level.open_p), popcount(level.open_g)),
        )
        new_g: list[Tensor | None] = [None, None]
        new_p: list[Tensor | None] = [None, None]
        for party in self._local:
            e_p, e_g = views[party]
            shifted_e_g = self.shift_left(e_g, shift)
            pg = k.bitwise_xor(
                k.bitwise_and(e_p, self.shift_left(v[party], shift)),
                k.bitwise_xor(k.bitwise_and(u[party], shifted_e_g), uv[party]),
            )
            if party == 0:
                pg = k.bitwise_xor(pg, k.bitwise_and(e_p, shifted_e_g))
            new_g[party] = k.bitwise_xor(g[party], pg)
            if level.with_propagate:
                shifted_e_p = self.shift_left(e_p, shift)
                pp = k.bitwise_xor(
                    k.bitwise_and(e_p, self.shift_left(u[party], shift)),
                    k.bitwise_xor(k.bitwise_and(u[party], shifted_e_p), uu[party]),
                )
                if party == 0:
                    pp = k.bitwise_xor(pp, k.bitwise_and(e_p, shifted_e_p))
                new_p[party] = pp
        g_out = self._pack(new_g, shape)
        return g_out, (self._pack(new_p, shape) if level.with_propagate else p)

    def negative_bit(self, x: Shares) -> Shares:
        return self.negative_bit_with_mask(x)[0]

    def negative_bit_with_mask(self, x: Shares) -> tuple[Shares, OperandMask]:
        """[x < 0], and the mask of x that the comparison opened (reusable in products).

        Opens c = x + r for an edaBit r; then x = c - r = c + NOT(r) + 1, an
        addition of a public word and a binary-shared word whose g and p words
        are local. Since x - (-r) = c, -r is a Beaver mask of x with opened c.
        """
        k = self.kernels
        shape = self.shape(x)
        r_value, r, r_xor = self.dealer.edabits(shape)
        levels = self.local_levels
        monomials = self.dealer.bit_monomials(r_value, shape, monomials_of_local_levels(levels))
        views = self._open([self.local(k.add, x, r)])
        generate: list[Tensor | None] = [None, None]
        propagate: list[Tensor | None] = [None, None]
        initial: list[Tensor | None] = [None, None]
        for party in self._local:
            (c,) = views[party]
            g, p = self._initial_polynomials(c)
            g_local, p_local = local_prefix_levels(g, p, levels)
            own = {key: shares[party] for key, shares in monomials.items()}
            generate[party] = g_local.evaluate(party, r_xor[party], own)
            propagate[party] = p_local.evaluate(party, r_xor[party], own)
            initial[party] = p.evaluate(party, r_xor[party], own)
        bit = msb_of_sum(
            self,
            self._pack(generate, shape),
            self._pack(propagate, shape),
            self._pack(initial, shape),
            first_level=levels,
        )
        neg_r = self.local(k.neg, r)
        mask = OperandMask(
            None if r_value is None else k.neg(r_value),
            neg_r,
            (_item(views[0], 0), _item(views[1], 0)),
        )
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
        shape = self.shape(bit)
        b_xor, b_arith = self.dealer.random_bit(shape)
        views = self._open_bits([self.local(k.bitwise_xor, bit, b_xor)], [])
        out: list[Tensor | None] = [None, None]
        for party in self._local:
            out[party] = self._injected(party, views[party][0], b_arith)
        return self._pack(out, shape)

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
        bit_shape = self.shape(bit)
        b_xor, b_arith, ab = self.dealer.bit_products(
            bit_shape, mask_values, [self.shape(x) for x in xs]
        )
        views = self._open_bits(
            [self.local(k.bitwise_xor, bit, b_xor)],
            [self.local(k.sub, xs[j], a) for j, (_, a) in zip(fresh, made)],
        )
        for position, (j, (value, shares)) in enumerate(zip(fresh, made)):
            opened = (_item(views[0], 1 + position), _item(views[1], 1 + position))
            masks[j] = OperandMask(value, shares, opened)
        outs: list[list[Tensor | None]] = [[None, None] for _ in xs]
        bit_arith: list[Tensor | None] = [None, None]
        for party in self._local:
            d = views[party][0]
            one_minus_2d = k.sub(self.constant(1), self.shift_left(d, 1))
            for j, x in enumerate(xs):
                _, _, f = masks[j].resolve()
                xb = k.add(k.mul(f[party], b_arith[party]), ab[j][party])
                outs[j][party] = k.add(k.mul(d, x[party]), k.mul(one_minus_2d, xb))
            bit_arith[party] = self._injected(party, d, b_arith)
        products = [self._pack(o, _broadcast(self.shape(x), bit_shape)) for o, x in zip(outs, xs)]
        return products, self._pack(bit_arith, bit_shape), masks


def _item(view: list[Tensor] | None, index: int) -> Tensor | None:
    return None if view is None else view[index]


def _broadcast(a, b) -> tuple[int, ...]:
    import numpy as np

    return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
