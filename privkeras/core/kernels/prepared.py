"""Splits of operands that do not change between calls, kept per tensor.

A model's weights (and, in Pond, their masks and opened values) are the
same tensors in every inference call. Splitting them into limbs costs as
much as a GEMM, so the kernels keep the split of a tensor they see a second
time (or that `RingKernels.prepare` names) for as long as the tensor lives.

A kept split is used only for the very object it was made from, and only
while that object is unchanged: torch tensors by their version counter
(bumped by every in-place write, views included), TensorFlow eager tensors
because they are immutable, numpy arrays only when they and the arrays they
view are read-only. Anything else is split afresh on every call.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["DEFAULT_BUDGET_BYTES", "PreparedOperands"]

#: Most bytes of splits kept per kernels object (PRIVKERAS_PREPARED_CACHE_MB overrides).
DEFAULT_BUDGET_BYTES = 512 * 2**20


def _budget() -> int:
    value = os.environ.get("PRIVKERAS_PREPARED_CACHE_MB")
    if value is None:
        return DEFAULT_BUDGET_BYTES
    try:
        megabytes = float(value)
    except ValueError:
        raise ValueError(
            f"Expected PRIVKERAS_PREPARED_CACHE_MB to be a number of megabytes. Received: {value!r}"
        ) from None
    return int(megabytes * 2**20)


class _Entry:
    __slots__ = ("pinned", "ref", "seen", "sightings", "values", "version")

    def __init__(self, ref, version):
        self.ref, self.version = ref, version
        self.pinned = False
        self.sightings = 0
        self.values: dict[Hashable, Any] = {}
        self.seen: set[Hashable] = set()


class PreparedOperands:
    """Per-tensor splits, kept from the second sighting on.

    Args:
        version_of: The tensor's version (an int that changes with every
            write), or None for a tensor whose splits must not be kept.
        nbytes_of: Bytes of a kept value (for the budget).
    """

    def __init__(
        self,
        version_of: Callable[[Any], int | None],
        nbytes_of: Callable[[Any], int] = lambda value: getattr(value, "nbytes", 0),
    ):
        self._version_of = version_of
        self._nbytes_of = nbytes_of
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return sum(len(e.values) for e in self._entries.values())

    @property
    def nbytes(self) -> int:
        """Bytes of the splits kept now."""
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def pin(self, tensor: Any) -> bool:
        """Keeps the values of `tensor` from its first use on; False if it cannot be kept."""
        version = self._version_of(tensor)
        if version is None:
            return False
        with self._lock:
            entry = self._live_entry(tensor) or self._new_entry(tensor, version)
            if entry is None:
                return False
            entry.pinned = True
            return True

    def note(self, tensor: Any) -> None:
        """Records that `tensor` is an operand of one more product (from the second on, kept)."""
        version = self._version_of(tensor)
        if version is None:
            return
        with self._lock:
            entry = self._live_entry(tensor) or self._new_entry(tensor, version)
            if entry is not None:
                entry.sightings += 1

    def is_reused(self, tensor: Any) -> bool:
        """Whether values of `tensor` are kept or will be from now on (seen before, or pinned)."""
        with self._lock:
            entry = self._live_entry(tensor)
            return entry is not None and bool(
                entry.pinned or entry.values or entry.seen or entry.sightings > 0
            )

    def discard(self, tensor: Any, keep: Callable[[Hashable], bool]) -> None:
        """Drops the kept values of `tensor` whose key `keep` rejects (splits of routes not taken)."""
        with self._lock:
            entry = self._live_entry(tensor)
            if entry is None:
                return
            for key in [k for k in entry.values if not keep(k)]:
                self._bytes -= self._nbytes_of(entry.values.pop(key))

    def lookup(self, tensor: Any, key: Hashable) -> Any | None:
        """The kept value of (`tensor`, `key`) if `tensor` is unchanged since, else None."""
        with self._lock:
            entry = self._live_entry(tensor)
            if entry is None or key not in entry.values:
                return None
            self._entries.move_to_end(id(tensor))
            return entry.values[key]

    def get(
        self,
        tensor: Any,
        key: Hashable,
        make: Callable[[bool], Any],
        *,
        keep: bool | None = None,
    ) -> Any:
        """The value of (`tensor`, `key`): kept, or made by `make(transient)` (and kept if seen before).

        Args:
            tensor: The operand the value belongs to (its identity is the key).
            key: What the value is (for example the side and depth chunk).
            make: Computes the value; its argument says whether the value
                will be dropped after the call (so it may live in scratch buffers).
            keep: True keeps it on first sight (`prepare`), False never keeps
                (timing), None keeps it from the second sighting on.
        """
        kept = self.lookup(tensor, key)
        if kept is not None:
            self.hits += 1
            return kept
        self.misses += 1
        version = None if keep is False else self._version_of(tensor)
        if version is None:
            return make(True)
        with self._lock:
            entry = self._live_entry(tensor) or self._new_entry(tensor, version)
            if entry is None:
                return make(True)
            will_keep = bool(keep or entry.pinned or entry.sightings > 1 or key in entry.seen)
            if not will_keep:
                entry.seen.add(key)
        value = make(not will_keep)
        if will_keep:
            with self._lock:
                entry = self._live_entry(tensor)
                if entry is not None:
                    old = entry.values.get(key)
                    if old is not None:
                        self._bytes -= self._nbytes_of(old)
                    entry.values[key] = value
                    self._bytes += self._nbytes_of(value)
                    self._evict()
        return value

    def _live_entry(self, tensor: Any) -> _Entry | None:
        entry = self._entries.get(id(tensor))
        if entry is None:
            return None
        if entry.ref() is not tensor or entry.version != self._version_of(tensor):
            self._drop(id(tensor))
            return None
        return entry

    def _new_entry(self, tensor: Any, version: int) -> _Entry | None:
        key = id(tensor)
        try:
            ref = weakref.ref(tensor, lambda dead, key=key: self._forget(key, dead))
        except TypeError:  # objects without weak references are never kept
            return None
        entry = self._entries[key] = _Entry(ref, version)
        return entry

    def _forget(self, key: int, dead_ref) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.ref is dead_ref:
                self._drop(key)

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= sum(self._nbytes_of(v) for v in entry.values.values())

    def _evict(self) -> None:
        budget = _budget()
        while self._bytes > budget and self._entries:
            self._drop(next(iter(self._entries)))
