"""`SharedData`: training rows held by several data owners, each sharing its own.

Example:

```python
import privkeras as pk

data = pk.SharedData([(x_alice, y_alice), (x_bob, y_bob)], owners=["alice", "bob"])
model.compile(optimizer="sgd", loss="binary_crossentropy", privacy="mpc")
model.fit(data, epochs=5, batch_size=64)   # the model owner learns only the combined update
```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from privkeras.backends import validation
from privkeras.backends.mpc.errors import MPCInputError
from privkeras.backends.mpc.placement import Remote

if TYPE_CHECKING:
    from privkeras.backends.mpc.runtime import MPCRuntime
    from privkeras.backends.mpc.tensor import SharedTensor

__all__ = ["SharedData", "as_float_array", "check_batch_size", "require_finite"]

#: Rows per secure batch when the caller gives no batch_size (as Keras).
DEFAULT_BATCH_SIZE = 32


def check_batch_size(batch_size: int | None) -> int:
    """`batch_size`, or the default for None.

    Raises:
        MPCInputError: For anything but a positive integer.
    """
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MPCInputError(
            f"Expected batch_size to be a positive integer. Received: {batch_size!r}"
        )
    return batch_size


def as_float_array(value: Any, what: str) -> np.ndarray:
    """A float64 numpy copy of an array-like (numpy, torch, tf, lists)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    try:
        return np.array(value, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"Expected {what} to be a numeric array. Received: {type(value).__name__} ({error})"
        ) from None


def require_finite(values: np.ndarray, what: str) -> None:
    """Refuses NaN and infinite values before anything is shared, naming the first bad row.

    Raises:
        InvalidInputError: As every engine raises it (`backends.validation`).
    """
    validation.check_finite(values, what)


class SharedData:
    """Training data split across data owners; each owner secret-shares its own rows.

    The engine never holds one owner's rows in the clear beyond that owner's
    own sharing step: `share` has each owner encode and share its rows under
    its own name, and training batches mix rows of every owner, so each
    (shared) update combines all owners.

    Args:
        parts: One `(x, y)` pair per owner. The `x` of every owner have the
            same per-row shape.
        owners: Names of the owners (default `"data_owner_0"`, ...). They
            appear in the runtime's reveal log and share records.

    Raises:
        ValueError: For no parts, mismatched lengths or shapes, or repeated owners.
        PrecisionOverflowError: For NaN or infinite values.

    Example:

    ```python
    data = pk.SharedData([(x_alice, y_alice), (x_bob, y_bob)], owners=["alice", "bob"])
    ```
    """

    def __init__(self, parts: Sequence[tuple[Any, Any]], owners: Sequence[str] | None = None):
        parts = list(parts)
        if not parts:
            raise MPCInputError("Expected at least one (x, y) pair. Received: parts=[]")
        owners = [f"data_owner_{i}" for i in range(len(parts))] if owners is None else list(owners)
        if len(owners) != len(parts) or len(set(owners)) != len(owners):
            raise MPCInputError(
                f"Expected {len(parts)} distinct owner names. Received: owners={owners}"
            )
        self.owners = tuple(str(owner) for owner in owners)
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        for owner, part in zip(self.owners, parts):
            if not (isinstance(part, (tuple, list)) and len(part) == 2):
                raise MPCInputError(
                    f"Expected an (x, y) pair for owner {owner!r}. Received: {type(part).__name__}"
                )
            x = as_float_array(part[0], f"x of {owner!r}")
            y = as_float_array(part[1], f"y of {owner!r}")
            if x.ndim < 2 or len(x) != len(y) or not len(x):
                raise MPCInputError(
                    f"Expected x (rows, features...) and y with the same, non-zero number of "
                    f"rows for owner {owner!r}. Received: x.shape={x.shape}, y.shape={y.shape}"
                )
            require_finite(x, f"x of {owner!r}")
            require_finite(y, f"y of {owner!r}")
            self._parts.append((x, y))
        shapes = {x.shape[1:] for x, _ in self._parts}
        if len(shapes) != 1:
            raise MPCInputError(
                f"Expected every owner's x to have the same row shape. Received: {sorted(shapes)}"
            )

    @classmethod
    def remote(
        cls,
        owners: Sequence[str],
        sizes: Sequence[int],
        row_shape: Sequence[int],
        target_shapes: Sequence[Sequence[int]],
    ) -> SharedData:
        """The owners' data as a compute party sees it: shapes only, the rows stay with them.

        `share` then receives each owner's shares instead of making them.
        """
        data = cls.__new__(cls)
        data.owners = tuple(owners)
        data._parts = [
            (Remote((n, *row_shape)), Remote((n, *target)))
            for n, target in zip(sizes, target_shapes)
        ]
        return data

    def __repr__(self) -> str:
        sizes = ", ".join(f"{o}: {n}" for o, n in zip(self.owners, self.sizes))
        return f"SharedData({sizes}; rows of shape {self.row_shape})"

    @property
    def is_remote(self) -> bool:
        """Whether the rows live with their owners in other processes."""
        return isinstance(self._parts[0][0], Remote)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Rows per owner."""
        return tuple(len(x) for x, _ in self._parts)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self._parts[0][0].shape[1:])

    def __len__(self) -> int:
        return sum(self.sizes)

    def input_bound(self) -> float:
        """max |x| over all owners (each owner computes its own; only the max is used)."""
        return max(float(np.max(np.abs(x), initial=0.0)) for x, _ in self._parts)

    def encoded_targets(self, encode: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
        """Each owner's targets as it will share them (raises before anything is shared)."""
        return [encode(y) for _, y in self._parts]

    def share(
        self,
        runtime: MPCRuntime,
        encode: Callable[[np.ndarray], np.ndarray],
        shuffle_seed: int | None = None,
        shuffle: bool = True,
    ) -> list[tuple[SharedTensor, SharedTensor]]:
        """Has each owner shuffle (locally), encode and secret-share its rows.

        Returns:
            One `(x_shared, y_shared)` pair per owner, in owner order.
        """
        shared = []
        if self.is_remote:
            for owner, (x, y) in zip(self.owners, self._parts):
                shared.append(
                    (
                        runtime.share(x, owner=owner, name=f"x of {owner}"),
                        runtime.share(y, owner=owner, name=f"y of {owner}"),
                    )
                )
            return shared
        for index, (owner, (x, _), targets) in enumerate(
            zip(self.owners, self._parts, self.encoded_targets(encode))
        ):
            if shuffle:
                # The row order is the owner's own business: not a secret shared with anyone.
                seed = None if shuffle_seed is None else shuffle_seed + index
                order = np.random.default_rng(seed).permutation(len(x))
                x, targets = x[order], targets[order]
            shared.append(
                (
                    runtime.share(x, owner=owner, name=f"x of {owner}"),
                    runtime.share(targets, owner=owner, name=f"y of {owner}"),
                )
            )
        return shared
