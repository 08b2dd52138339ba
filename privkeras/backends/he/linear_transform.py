"""Encrypted affine maps `y = W x + b` between two `SlotLayout`s.

The matrix is cut into tiles, one per (output ciphertext, input ciphertext)
pair. Within a pair the generalized diagonal method applies (Halevi and
Shoup, CRYPTO 2014), with whole blocks as the unit of rotation:

    y_o = sum_c sum_e D[o, c, e] * rot(x_c, e * block)

where `D[o, c, e][k] = W[row(o, k mod T_out), col(c, (k + e) mod T_in)]` for
`k < max(T_in, T_out)` and `e < min(T_in, T_out)`. When the input period is
longer than the output period (a "wide" map) the result is folded with
`log2(T_in / T_out)` rotate-and-add steps; when it is shorter ("tall"), the
input repeats itself and needs no extra work.

Rotations are shared with the baby-step giant-step split `e = g*b + j`
(Halevi and Shoup, CRYPTO 2018): inputs are rotated by `j` blocks once
(`b - 1` rotations per input ciphertext), partial sums by `g*b` blocks once per
output ciphertext and giant step. `b` is chosen per map to minimize rotations
given which diagonals are non-zero. All-zero diagonals are skipped, so a
feature-major layout (`tile == 1`) does no rotation at all and an im2col
convolution touches one diagonal per tile.

Each product uses a plaintext encoded at the scale of the prime that the
following rescale removes, so the output scale equals the input scale exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from privkeras.backends.he.ckks import CiphertextOps
from privkeras.backends.he.layout import SlotLayout

__all__ = ["LinearTransform"]


@dataclasses.dataclass
class _Term:
    """One non-zero diagonal: input ciphertext `c`, baby step `j`, its per-block values."""

    c: int
    j: int
    values: np.ndarray  # (tile,) per block of the output period, pre-rotated by -g*b blocks
    constant: bool


class LinearTransform:
    """`y = W x + b` on packed ciphertexts (see the module docstring).

    Args:
        matrix: `(n_out, n_in)` weights over logical features.
        bias: `(n_out,)` or None.
        in_layout: Layout of `x`.
        out_layout: Layout of `y`, with the same `slots` and `block`.
        zero_threshold: Diagonals with every |entry| below it count as zero
            (they would encode to the zero plaintext).
    """

    def __init__(
        self,
        matrix: np.ndarray,
        bias: np.ndarray | None,
        in_layout: SlotLayout,
        out_layout: SlotLayout,
        zero_threshold: float = 0.0,
    ):
        if in_layout.slots != out_layout.slots or in_layout.block != out_layout.block:
            raise ValueError("input and output layouts must share slots and block")
        self.in_layout, self.out_layout = in_layout, out_layout
        self.block = in_layout.block
        padded = _padded_matrix(np.asarray(matrix, np.float64), in_layout, out_layout)
        diagonals = _diagonals(padded, in_layout, out_layout)  # (n_out, n_in, E, T)
        nonzero = np.abs(diagonals).max(axis=-1) > zero_threshold
        self.baby = _best_baby_step(nonzero)
        self.terms = self._group_terms(diagonals, nonzero)
        self.fold_steps = _fold_steps(in_layout.tile, out_layout.tile, self.block)
        self.bias = None
        if bias is not None:
            per_block = np.zeros(len(out_layout.positions))
            valid = out_layout.positions >= 0
            per_block[valid] = np.asarray(bias, np.float64)[out_layout.positions[valid]]
            self.bias = per_block.reshape(out_layout.n_ciphertexts, out_layout.tile)
        self._plaintexts: dict[tuple[int, float], Any] = {}

    def _group_terms(self, diagonals: np.ndarray, nonzero: np.ndarray) -> list[dict]:
        """`terms[o][g]`: the products summed before the giant rotation by `g*b` blocks."""
        b, tile = self.baby, diagonals.shape[-1]
        o_idx, c_idx, e_idx = np.nonzero(nonzero)
        giant, baby = e_idx // b, e_idx % b
        # Pre-rotate each diagonal right by g*b blocks: values[k] = diagonal[(k - g*b) mod tile].
        source = (np.arange(tile)[None, :] - (giant * b)[:, None]) % tile
        values = diagonals[o_idx, c_idx, e_idx][np.arange(len(o_idx))[:, None], source]
        constant = (values == values[:, :1]).all(axis=1)
        grouped: list[dict[int, list[_Term]]] = [{} for _ in range(diagonals.shape[0])]
        for i, (o, c, g, j) in enumerate(
            zip(o_idx.tolist(), c_idx.tolist(), giant.tolist(), baby.tolist())
        ):
            grouped[o].setdefault(g, []).append(_Term(c, j, values[i], bool(constant[i])))
        return grouped

    # -- what the program needs --------------------------------------------------------
    @property
    def rotation_steps(self) -> set[int]:
        """Slot rotations this map performs (each needs a Galois key)."""
        steps = {t.j * self.block for giants in self.terms for ts in giants.values() for t in ts}
        steps |= {g * self.baby * self.block for giants in self.terms for g in giants}
        steps |= set(self.fold_steps)
        return {s % self.in_layout.slots for s in steps} - {0}

    @property
    def product_count(self) -> int:
        return sum(len(ts) for giants in self.terms for ts in giants.values())

    def _plaintext(
        self,
        ops: CiphertextOps,
        key: tuple,
        values: np.ndarray,
        constant: bool,
        level: int,
        scale: float,
        layout: SlotLayout,
    ) -> Any:
        cache_key = (ops.cache_key, *key, level, scale)
        plain = self._plaintexts.get(cache_key)
        if plain is None:
            payload = float(values[0]) if constant else layout.expand(values)
            plain = ops.encode(payload, level, scale)
            if ops.cache_key is not None:
                self._plaintexts[cache_key] = plain
        return plain

    def release_plaintexts(self) -> None:
        """Drops the cached encoded diagonals (they are rebuilt on the next `apply`)."""
        self._plaintexts.clear()

    # -- evaluation ----------------------------------------------------------------------
    def apply(self, ops: CiphertextOps, inputs: list[Any]) -> list[Any]:
        """Returns the output ciphertexts, one level below the inputs, at the input scale."""
        if len(inputs) != self.in_layout.n_ciphertexts:
            raise ValueError(
                f"Expected {self.in_layout.n_ciphertexts} input ciphertexts. "
                f"Received: {len(inputs)}"
            )
        level, scale = ops.level(inputs[0]), ops.scale(inputs[0])
        weight_scale = float(ops.prime(level))
        layout = self.out_layout if self.out_layout.tile >= self.in_layout.tile else self.in_layout
        rotated: dict[tuple[int, int], Any] = {}

        def baby(c: int, j: int) -> Any:
            if (c, j) not in rotated:
                rotated[(c, j)] = inputs[c] if j == 0 else ops.rotate(inputs[c], j * self.block)
            return rotated[(c, j)]

        outputs = []
        for o, giants in enumerate(self.terms):
            total = None
            for g, terms in sorted(giants.items()):
                inner = None
                for t in terms:
                    plain = self._plaintext(
                        ops, (o, g, t.c, t.j), t.values, t.constant, level, weight_scale, layout
                    )
                    product = ops.multiply_plain(baby(t.c, t.j), plain)
                    inner = product if inner is None else ops.add_inplace(inner, product)
                if g:
                    inner = ops.rotate(inner, g * self.baby * self.block)
                total = inner if total is None else ops.add_inplace(total, inner)
            outputs.append(self._finish(ops, o, total, level, scale))
        return outputs

    def _finish(self, ops: CiphertextOps, o: int, total: Any, level: int, scale: float) -> Any:
        """Rescale, fold a wide map, add the bias."""
        if total is None:  # an output ciphertext with only zero weights: encrypt the bias
            values = np.zeros(self.out_layout.tile) if self.bias is None else self.bias[o]
            return ops.encrypt(ops.encode(self.out_layout.expand(values), level - 1, scale))
        out = ops.rescale(total)
        ops.set_scale(out, scale)  # exact up to float round-off: product scale / same prime
        for step in self.fold_steps:
            out = ops.add(out, ops.rotate(out, step))
        if self.bias is not None and np.any(self.bias[o]):
            key = ("bias", o)
            plain = self._plaintext(
                ops, key, self.bias[o], False, level - 1, ops.scale(out), self.out_layout
            )
            out = ops.add_plain(out, plain)
        return out


# -- matrix preparation ----------------------------------------------------------------------
def _padded_matrix(matrix: np.ndarray, in_layout: SlotLayout, out_layout: SlotLayout) -> np.ndarray:
    rows, cols = out_layout.positions, in_layout.positions
    padded = np.zeros((len(rows), len(cols)))
    r_valid, c_valid = rows >= 0, cols >= 0
    padded[np.ix_(r_valid, c_valid)] = matrix[np.ix_(rows[r_valid], cols[c_valid])]
    return padded


def _diagonals(padded: np.ndarray, in_layout: SlotLayout, out_layout: SlotLayout) -> np.ndarray:
    """`(n_out_ct, n_in_ct, E, T)` generalized diagonals of every tile pair."""
    t_in, t_out = in_layout.tile, out_layout.tile
    tile, count = max(t_in, t_out), min(t_in, t_out)
    tiles = padded.reshape(out_layout.n_ciphertexts, t_out, in_layout.n_ciphertexts, t_in)
    tiles = tiles.transpose(0, 2, 1, 3)  # (o, c, row, col)
    k = np.arange(tile)
    rows = np.broadcast_to(k % t_out, (count, tile))
    cols = (k[None, :] + np.arange(count)[:, None]) % t_in
    return tiles[:, :, rows, cols]


def _best_baby_step(nonzero: np.ndarray) -> int:
    """The baby step (power of two) that needs the fewest rotations for this pattern."""
    n_out, n_in, count = nonzero.shape
    by_input = nonzero.any(axis=0)  # (n_in, count): diagonal e used with input c
    by_output = nonzero.any(axis=1)  # (n_out, count): diagonal e used for output o
    best, best_cost, b = 1, None, 1
    while b <= count:
        baby_used = by_input.reshape(n_in, count // b, b).any(axis=1)
        giant_used = by_output.reshape(n_out, count // b, b).any(axis=2)
        cost = int(baby_used[:, 1:].sum() + giant_used[:, 1:].sum())
        if best_cost is None or cost < best_cost:
            best, best_cost = b, cost
        b *= 2
    return best


def _fold_steps(t_in: int, t_out: int, block: int) -> list[int]:
    steps, width = [], t_out
    while width < t_in:
        steps.append(width * block)
        width *= 2
    return steps
