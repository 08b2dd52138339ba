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

    def __init__(self, parts: Sequence[Any], owners: Sequence[str] | None = None):
        parts = list(parts)
        if not parts:
            raise MPCInputError("Expected at least one (x, y) pair. Received: parts=[]")
        if owners is None:
            owners = [
                _handle_name(part) if _is_handle(part) else f"data_owner_{i}"
                for i, part in enumerate(parts)
            ]
        owners = list(owners)
        if len(owners) != len(parts) or len(set(owners)) != len(owners):
            raise MPCInputError(
                f"Expected {len(parts)} distinct owner names. Received: owners={owners}"
            )
        self.owners = tuple(str(owner) for owner in owners)
        #: Owners whose rows are in their own `privkeras worker` process: name -> address.
        self.workers: dict[str, str] = {}
        self._parts: list[tuple[Any, Any]] = []
        self._bounds: dict[str, float] = {}
        for owner, part in zip(self.owners, parts):
            if _is_handle(part):
                self.workers[owner] = str(part.address)
                self._parts.append((None, None))  # shapes come from the worker (`describe`)
                continue
            if not (isinstance(part, (tuple, list)) and len(part) == 2):
                raise MPCInputError(
                    f"Expected an (x, y) pair or a data owner's handle (pk.DataOwner) for owner "
                    f"{owner!r}. Received: {type(part).__name__}"
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
        if not self.workers:
            self._check_row_shapes()

    def _check_row_shapes(self) -> None:
        shapes = {tuple(x.shape[1:]) for x, _ in self._parts}
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
        data.workers, data._bounds = {}, {}
        data._parts = [
            (Remote((n, *row_shape)), Remote((n, *target)))
            for n, target in zip(sizes, target_shapes)
        ]
        return data

    def describe_workers(self, describe: Callable[[str, str], dict[str, Any]]) -> None:
        """Learns each worker's shapes (and max |x|) before anything is shared.

        Args:
            describe: `(owner, address) -> {"rows", "row_shape", "y_shape", "max_abs"}`
                (the worker's `mpc.describe`).

        Raises:
            MPCInputError: Naming an owner whose data does not fit the others'.
        """
        for index, owner in enumerate(self.owners):
            if owner not in self.workers:
                continue
            info = describe(owner, self.workers[owner])
            rows = int(info["rows"])
            self._parts[index] = (Remote((rows, *info["row_shape"])), tuple(info["y_shape"]))
            self._bounds[owner] = float(info["max_abs"])
        self._check_row_shapes()

    def encode_worker_targets(self, encode: Callable[[np.ndarray], np.ndarray]) -> None:
        """Fixes the shape in which each worker will share its labels (as `encode` makes them)."""
        for index, (x, y) in enumerate(self._parts):
            if isinstance(x, Remote) and not isinstance(y, Remote):
                target = encode(np.zeros((1, *y))).shape[1:]
                self._parts[index] = (x, Remote((len(x), *target)))

    def __repr__(self) -> str:
        if any(x is None for x, _ in self._parts):
            return f"SharedData(owners={list(self.owners)}, workers={self.workers})"
        sizes = ", ".join(f"{o}: {n}" for o, n in zip(self.owners, self.sizes))
        return f"SharedData({sizes}; rows of shape {self.row_shape})"

    @property
    def is_remote(self) -> bool:
        """Whether every owner's rows live in another process (a compute party's view)."""
        return all(isinstance(x, Remote) for x, _ in self._parts)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Rows per owner."""
        self._require_described()
        return tuple(len(x) for x, _ in self._parts)

    @property
    def row_shape(self) -> tuple[int, ...]:
        self._require_described()
        return tuple(self._parts[0][0].shape[1:])

    def _require_described(self) -> None:
        missing = [o for o, (x, _) in zip(self.owners, self._parts) if x is None]
        if missing:
            raise MPCInputError(
                f"Expected the workers of {missing} to be described first (their data stays "
                "with them: train them under MPC(parties=...)). Received: no description"
            )

    def __len__(self) -> int:
        return sum(self.sizes)

    def input_bound(self) -> float:
        """max |x| over all owners (each owner computes its own; only the max is used)."""
        return max(
            self._bounds[owner] if isinstance(x, Remote) else float(np.max(np.abs(x), initial=0.0))
            for owner, (x, _) in zip(self.owners, self._parts)
        )

    def encoded_targets(self, encode: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
        """Each local owner's targets as it will share them (raises before anything is shared)."""
        return [encode(y) for _, y in self._parts if not isinstance(y, Remote)]

    def target_shapes(
        self, encode: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[tuple[int, ...], ...]:
        """The row shape of every owner's encoded targets."""
        return tuple(
            tuple(y.shape[1:]) if isinstance(y, Remote) else tuple(encode(y).shape[1:])
            for _, y in self._parts
        )

    def share(
        self,
        runtime: MPCRuntime,
        encode: Callable[[np.ndarray], np.ndarray],
        shuffle_seed: int | None = None,
        shuffle: bool = True,
    ) -> list[tuple[SharedTensor, SharedTensor]]:
        """Has each owner shuffle (locally), encode and secret-share its rows.

        An owner whose rows are elsewhere (a worker, or any owner as a compute
        party sees it) shares them from its own process; here the shares are
        received, or nothing happens.

        Returns:
            One `(x_shared, y_shared)` pair per owner, in owner order.
        """
        shared = []
        for index, (owner, (x, y)) in enumerate(zip(self.owners, self._parts)):
            if not isinstance(x, Remote):
                x, y = owner_rows(x, encode(y), shuffle_seed, index, shuffle)
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


def owner_rows(
    x: np.ndarray, targets: np.ndarray, shuffle_seed: int | None, index: int, shuffle: bool
) -> tuple[np.ndarray, np.ndarray]:
    """An owner's rows in the order it shares them (the same rule in the driver and in a worker).

    The row order is the owner's own business, not a secret shared with anyone.
    """
    if not shuffle:
        return x, targets
    seed = None if shuffle_seed is None else shuffle_seed + index
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], targets[order]


def _is_handle(part: Any) -> bool:
    """A data owner's handle (`pk.DataOwner`, or anything with an `address` and a `name`)."""
    return isinstance(getattr(part, "address", None), str)


def _handle_name(part: Any) -> str:
    return str(getattr(part, "name", None) or part.address)
