"""Where each feature of each sample lives in the slots of a group of ciphertexts.

A CKKS ciphertext has `slots = N/2` slots. A `SlotLayout` cuts them into
*blocks* of `block` consecutive slots, one slot per sample (slot `k*block + s`
holds sample `s`), and gives each block a feature. `tile` consecutive blocks
form one period; a ciphertext repeats its period `slots / (tile * block)`
times, so that rotating by whole blocks is cyclic within a period.

Two extremes of the same layout family:

- `block = slots` (one block per ciphertext): feature-major SIMD packing, one
  ciphertext per feature holding it for up to N/2 samples. Linear layers are
  plaintext-scalar multiply-adds, no rotation, no Galois key.
- `block = 1`: one sample per ciphertext group, features side by side, the
  classic single-sample packing with diagonal matrix-vector products.

Between them, `tile` features of `block` samples share a ciphertext, which is
what makes a batch of 256 cheap: fewer ciphertexts than feature-major, far
fewer rotations than one sample per ciphertext.

`positions[c * tile + k]` is the feature held by block `k` of ciphertext `c`,
or -1 for padding (always zero on input).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["SlotLayout", "next_power_of_two"]


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


@dataclasses.dataclass(frozen=True, eq=False)
class SlotLayout:
    """Feature placement for one packed vector (see the module docstring).

    Args:
        slots: Slots per ciphertext (N/2), a power of two.
        block: Samples per block, a power of two dividing `slots`.
        tile: Blocks per period, a power of two with `tile * block <= slots`.
        positions: Feature index (or -1) per block, `n_ciphertexts * tile` entries.
    """

    slots: int
    block: int
    tile: int
    positions: np.ndarray

    def __post_init__(self):
        positions = np.asarray(self.positions, dtype=np.int64).reshape(-1)
        positions.setflags(write=False)
        object.__setattr__(self, "positions", positions)
        if self.tile * self.block > self.slots or len(positions) % self.tile:
            raise ValueError(
                f"Expected tile*block <= slots and positions a multiple of tile. Received: "
                f"slots={self.slots}, block={self.block}, tile={self.tile}, "
                f"len(positions)={len(positions)}"
            )

    # -- construction ------------------------------------------------------------------
    @classmethod
    def grouped(
        cls,
        groups: int,
        group_size: int,
        slots: int,
        block: int,
        feature: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        merge_groups: bool = False,
    ) -> SlotLayout:
        """Features in `groups` groups of `group_size`, each group padded to whole tiles.

        Args:
            groups: Number of groups (1 for a plain vector).
            group_size: Features per group.
            slots: Slots per ciphertext.
            block: Samples per block.
            feature: Maps (group, index-in-group) arrays to the logical feature
                index; default `group * group_size + index`.
            merge_groups: Let one ciphertext period span several groups
                (tile up to the whole padded vector) instead of one group's tile.
        """
        blocks = slots // block
        group_tile = min(blocks, next_power_of_two(group_size))
        padded = math.ceil(group_size / group_tile) * group_tile
        total = groups * padded
        tile = min(blocks, next_power_of_two(total)) if merge_groups else group_tile
        index = np.arange(math.ceil(total / tile) * tile)
        group, within = index // padded, index % padded
        valid = (within < group_size) & (group < groups)
        logical = group * group_size + within if feature is None else feature(group, within)
        return cls(slots, block, tile, np.where(valid, logical, -1))

    @classmethod
    def vector(cls, n_features: int, slots: int, block: int) -> SlotLayout:
        """A plain vector: feature i in block i % tile of ciphertext i // tile."""
        return cls.grouped(1, n_features, slots, block)

    # -- geometry ----------------------------------------------------------------------
    @property
    def n_ciphertexts(self) -> int:
        return len(self.positions) // self.tile

    @property
    def n_features(self) -> int:
        return int(self.positions.max()) + 1 if len(self.positions) else 0

    @property
    def period(self) -> int:
        return self.tile * self.block

    def padded_index(self) -> np.ndarray:
        """Inverse of `positions`: the padded position of each feature."""
        inverse = np.full(self.n_features, -1, dtype=np.int64)
        valid = self.positions >= 0
        inverse[self.positions[valid]] = np.nonzero(valid)[0]
        return inverse

    def expand(self, per_block: np.ndarray) -> np.ndarray:
        """Slot vector(s) from one value per block of a period: `(..., tile) -> (..., slots)`."""
        per_block = np.asarray(per_block, dtype=np.float64)
        period = np.repeat(per_block, self.block, axis=-1)
        return np.tile(period, (1,) * (period.ndim - 1) + (self.slots // self.period,))

    # -- packing -------------------------------------------------------------------------
    def pack(self, features: np.ndarray) -> np.ndarray:
        """`(n_samples <= block, n_features)` -> `(n_ciphertexts, slots)` slot values."""
        features = np.asarray(features, dtype=np.float64)
        n_samples = features.shape[0]
        padded = np.zeros((n_samples, features.shape[1] + 1))
        padded[:, :-1] = features
        grid = padded[:, self.positions]  # -1 reads the trailing zero column
        grid = grid.reshape(n_samples, self.n_ciphertexts, self.tile)
        period = np.zeros((self.n_ciphertexts, self.tile, self.block))
        period[:, :, :n_samples] = grid.transpose(1, 2, 0)
        period = period.reshape(self.n_ciphertexts, self.period)
        return np.tile(period, (1, self.slots // self.period))

    def unpack(self, slot_values: np.ndarray, n_samples: int) -> np.ndarray:
        """`(n_ciphertexts, slots)` -> `(n_samples, n_features)`, reading the first period."""
        values = np.asarray(slot_values)[:, : self.period]
        values = values.reshape(self.n_ciphertexts * self.tile, self.block)[:, :n_samples]
        valid = self.positions >= 0
        out = np.zeros((n_samples, self.n_features))
        out[:, self.positions[valid]] = values[valid].T
        return out

    # -- serialization -----------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "block": self.block,
            "tile": self.tile,
            "positions": self.positions.tolist(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SlotLayout:
        return cls(
            config["slots"], config["block"], config["tile"], np.asarray(config["positions"])
        )
