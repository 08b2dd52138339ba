"""Per-thread scratch buffers for the temporaries of the limb and byte routes.

A fresh multi-megabyte tensor is mapped from the OS and page-faulted on first
write; on a virtual machine that costs more than the GEMM it feeds (a limb
split of a 784 x 128 operand took 1.4 ms in fresh tensors and 0.26 ms in
reused ones on the benchmark box). Temporaries that do not outlive a call
(limbs of an operand that is not kept, GEMM outputs before recombination)
therefore live in buffers kept per thread and per role, remade when the
shape changes. Results handed back to callers are always fresh.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SCRATCH_BUDGET_BYTES", "Scratch"]

#: Most bytes of scratch buffers one thread keeps between calls; beyond it,
#: buffers are made per call.
SCRATCH_BUDGET_BYTES = 64 * 2**20


class Scratch(threading.local):
    """Reusable buffers of one thread, one per role."""

    def __init__(self):
        self.buffers: dict[str, Any] = {}
        self.bytes = 0

    def get(self, role: str, matches: Callable[[Any], bool], make: Callable[[], Any]) -> Any:
        """The buffer of `role` if `matches(buffer)`, else a new one from `make()` (kept if it fits)."""
        buffer = self.buffers.get(role)
        if buffer is not None and matches(buffer):
            return buffer
        if buffer is not None:
            self.bytes -= buffer.nbytes
            del self.buffers[role]
        buffer = make()
        if self.bytes + buffer.nbytes <= SCRATCH_BUDGET_BYTES:
            self.buffers[role] = buffer
            self.bytes += buffer.nbytes
        return buffer
