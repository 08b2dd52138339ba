"""`Registry`: the one way privkeras registers things by name or by type.

Engines, clipping rules, accountants, MPC protocols, MPC layer lowerings and
HE layer converters are each kept in a `Registry`. Every registry keeps the
same contract, as Opacus's `accountants/registry.py` does:

- registering a key twice raises `RegistrationError` unless `replace=True`
  (registering the very same object again is a no-op);
- looking up an unknown key raises the registry's error type with a message
  that lists what is registered, computed from the registry itself;
- policies validate their fields against `names()` rather than keeping a
  copy of the accepted names.

Example:

```python
from privkeras.core.registry import Registry

SAMPLERS = Registry("sampler")
SAMPLERS.register("poisson", PoissonSampler)

@SAMPLERS.decorator("shuffle")
class ShuffleSampler: ...

SAMPLERS.get("poison")
# LookupError: Expected sampler to be one of ['poisson', 'shuffle'].
#   Received: sampler='poison'
```
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from privkeras.errors import PrivkerasError, RegistrationError, format_received

__all__ = ["RegistrationError", "Registry"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _key_name(key: Hashable) -> str:
    """Types are listed by class name, everything else by its str."""
    return key.__name__ if isinstance(key, type) else str(key)


class Registry(Generic[K, V]):
    """A mapping from names (or types) to registered objects with one contract.

    Args:
        what: What a key names, in messages (`"engine"`, `"clipping rule"`...).
        unknown_error: The exception type `get` raises for an unknown key (a
            `PrivkerasError` subclass: `PrivacyPolicyError` for a policy field,
            `UnsupportedLayerError` for layers, ...). `LookupError`-based by default.
    """

    def __init__(self, what: str, *, unknown_error: type[Exception] | None = None):
        self.what = what
        self.unknown_error = unknown_error or _UnknownKeyError
        self._items: dict[K, V] = {}

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, keys={self.names()})"

    # -- registering ----------------------------------------------------------------------
    def register(self, key: K, value: V, *, replace: bool = False) -> V:
        """Registers `value` under `key` and returns it.

        Raises:
            RegistrationError: If `key` is taken by another object and not `replace`.
        """
        current = self._items.get(key)
        if current is not None and current is not value and not replace:
            raise RegistrationError(
                f"A {self.what} for {_key_name(key)!r} is already registered "
                f"({_describe(current)}). Pass replace=True to replace it."
            )
        self._items[key] = value
        return value

    def decorator(self, *keys: K, replace: bool = False) -> Callable[[V], V]:
        """A decorator registering its target under each of `keys`."""

        def register(value: V) -> V:
            for key in keys:
                self.register(key, value, replace=replace)
            return value

        return register

    def unregister(self, key: K) -> None:
        """Removes `key` if present (for tests and plugins)."""
        self._items.pop(key, None)

    # -- looking up -------------------------------------------------------------------------
    def get(self, key: K) -> V:
        """The object under `key`.

        Raises:
            The registry's `unknown_error`, listing the registered keys.
        """
        try:
            return self._items[key]
        except (KeyError, TypeError):
            raise self.unknown_error(self.unknown_message(key)) from None

    def unknown_message(self, key: object) -> str:
        """`Expected <what> to be one of [...]. Received: <what>=<key>`."""
        name = self.what.replace(" ", "_")
        shown = _key_name(key) if isinstance(key, type) else key
        return f"Expected {self.what} to be one of {self.names()}. " + format_received(
            **{name: shown}
        )

    def names(self) -> list[str]:
        """The registered keys' names, sorted."""
        return sorted(_key_name(key) for key in self._items)

    def items(self) -> list[tuple[K, V]]:
        """A snapshot of (key, value) pairs, in registration order."""
        return list(self._items.items())

    def as_dict(self) -> dict[K, V]:
        """A copy of the mapping."""
        return dict(self._items)

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._items
        except TypeError:
            return False

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)


class _UnknownKeyError(PrivkerasError, LookupError):
    """An unknown key was looked up in a registry."""


def _describe(value: object) -> str:
    if isinstance(value, type) or callable(value):
        return getattr(value, "__qualname__", type(value).__qualname__)
    return type(value).__qualname__
