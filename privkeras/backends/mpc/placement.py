"""`Placement`: which roles of a secure computation run in this process.

One protocol code serves every deployment. A protocol step is written per
role: a compute party computes only the share components it holds, the
dealer only what it deals, a data owner only its own sharing, and each sends
only its own messages. The placement says which roles are local:

- in one process (the default), every role is local: the fast simulation
  of all parties that tests and single-machine users run;
- in a party process (`privkeras party --id p0`), one compute party is;
- in the driver of a networked job, the caller and the model owner are;
- in the driver of a low-level session (`pk.mpc.connect`), every role but
  the compute parties and the dealer is (`Placement.all_but(...)`): any data
  owner name the user shares as.

Example:

```python
from privkeras.backends.mpc.placement import Placement

Placement().here("p1")                  # True: everything runs here
Placement({"p0"}).here("p1")            # False
Placement({"caller", "model_owner"}).any_here({"p0", "p1"})   # False
Placement.all_but({"p0", "p1", "dealer"}).here("alice")       # True
```
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Placement", "Remote"]


class Placement:
    """The set of roles that run in this process (None: all of them).

    Args:
        local: Role names (`"p0"`, `"dealer"`, `"caller"`, a data owner's
            name...), None for the in-process runtime where every role is
            local, or another `Placement` to copy.
    """

    __slots__ = ("_excluded", "_local")

    def __init__(self, local: Iterable[str] | Placement | None = None):
        if isinstance(local, Placement):  # clusters take role names or a placement
            self._local, self._excluded = local._local, local._excluded
            return
        self._local = None if local is None else frozenset(local)
        self._excluded: frozenset[str] | None = None
        if self._local is not None and not self._local:
            raise ValueError("Expected at least one local role. Received: an empty set")

    @classmethod
    def all_but(cls, remote: Iterable[str]) -> Placement:
        """Every role except `remote` (a session's driver: any owner name is local)."""
        placement = cls()
        placement._excluded = frozenset(remote)
        return placement

    @property
    def everywhere(self) -> bool:
        """Whether every role is local (the in-process runtime)."""
        return self._local is None and self._excluded is None

    @property
    def roles(self) -> frozenset[str] | None:
        """The local roles; None when every role is local or they are `all_but` some."""
        return self._local

    @property
    def excluded(self) -> frozenset[str] | None:
        """The roles an `all_but` placement leaves to other processes (None otherwise)."""
        return self._excluded

    def here(self, role: str) -> bool:
        """Whether `role` runs in this process."""
        if self._excluded is not None:
            return role not in self._excluded
        return self._local is None or role in self._local

    def any_here(self, roles: Iterable[str]) -> bool:
        """Whether any of `roles` runs in this process."""
        if self._excluded is not None:
            return not self._excluded.issuperset(roles)
        return self._local is None or not self._local.isdisjoint(roles)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Placement)
            and self._local == other._local
            and self._excluded == other._excluded
        )

    def __hash__(self) -> int:
        return hash((self._local, self._excluded))

    def __repr__(self) -> str:
        if self._excluded is not None:
            return f"Placement(all_but={sorted(self._excluded)})"
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
