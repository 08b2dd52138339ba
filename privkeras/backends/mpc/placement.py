"""`Placement`: which roles of a secure computation run in this process.

One protocol code serves every deployment. A protocol step is written per
role: a compute party computes only the share components it holds, the
dealer only what it deals, a data owner only its own sharing, and each sends
only its own messages. The placement says which roles are local:

- in one process (the default), every role is local: the fast simulation
  of all parties that tests and single-machine users run;
- in a party process (`privkeras party --id p0`), one compute party is;
- in the driver of a networked job, the caller and the model owner are.

Example:

```python
from privkeras.backends.mpc.placement import Placement

Placement().here("p1")                  # True: everything runs here
Placement({"p0"}).here("p1")            # False
Placement({"caller", "model_owner"}).any_here({"p0", "p1"})   # False
```
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Placement", "Remote"]


class Placement:
    """The set of roles that run in this process (None: all of them).

    Args:
        local: Role names (`"p0"`, `"dealer"`, `"caller"`, a data owner's
            name...), or None for the in-process runtime where every role is local.
    """

    __slots__ = ("_local",)

    def __init__(self, local: Iterable[str] | None = None):
        self._local = None if local is None else frozenset(local)
        if self._local is not None and not self._local:
            raise ValueError("Expected at least one local role. Received: an empty set")

    @property
    def everywhere(self) -> bool:
        """Whether every role is local (the in-process runtime)."""
        return self._local is None

    @property
    def roles(self) -> frozenset[str] | None:
        """The local roles, or None when every role is local."""
        return self._local

    def here(self, role: str) -> bool:
        """Whether `role` runs in this process."""
        return self._local is None or role in self._local

    def any_here(self, roles: Iterable[str]) -> bool:
        """Whether any of `roles` runs in this process."""
        return self._local is None or not self._local.isdisjoint(roles)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Placement) and self._local == other._local

    def __hash__(self) -> int:
        return hash(self._local)

    def __repr__(self) -> str:
        return (
            "Placement(everywhere)" if self._local is None else f"Placement({sorted(self._local)})"
        )


class Remote:
    """A value held by a role in another process: here only its shape is known.

    Engines pass a `Remote` where the same code, in the process of the role
    that holds the value, passes the value itself (`runtime.share(x, owner)`).
    Slicing gives the shape of the slice, as slicing the value would.

    Args:
        shape: The value's shape.
    """

    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = tuple(int(d) for d in shape)

    def __getitem__(self, key) -> Remote:
        import numpy as np

        probe = np.lib.stride_tricks.as_strided(
            np.zeros(1, dtype=np.bool_), self.shape, (0,) * len(self.shape)
        )
        return Remote(probe[key].shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Remote(shape={self.shape})"
