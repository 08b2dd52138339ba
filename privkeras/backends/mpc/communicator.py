"""How MPC parties talk: an abstract communicator and the in-process one.

Protocols are written per party: each party computes a local step on its own
shares, then hands the messages it wants to send to `Communicator.exchange`,
which delivers them and returns every party's inbox. One `exchange` call is
one communication *round*: all its messages travel at the same time, none of
them depends on another. A networked communicator (gRPC) implements the same
`exchange` with each process passing only its own party's messages and
receiving only its own inbox.

Every message is counted: bytes (per sending party and in total), messages
and rounds. Messages from the dealer are correlated randomness that can be
produced before the inputs exist (the *offline* phase): they are counted
apart, in `offline_bytes`, and do not add rounds.

Example:

```python
import numpy as np
from privkeras.backends.mpc.communicator import InProcessCommunicator, Message

comm = InProcessCommunicator(["p0", "p1"])
inbox = comm.exchange([Message("p0", "p1", np.zeros(4, np.int64)),
                       Message("p1", "p0", np.ones(4, np.int64))])
inbox["p0", "p1"]          # what p0 sent to p1
comm.rounds, comm.bytes_sent, comm.bytes_sent_per_party
# (1, 64, {'p0': 32, 'p1': 32})
```
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["CommunicationStats", "Communicator", "InProcessCommunicator", "Message"]

Tensor = Any


@dataclasses.dataclass(frozen=True)
class Message:
    """One message of one round.

    Args:
        src: Name of the sending party.
        dst: Name of the receiving party.
        payload: A tensor (numpy, torch or tensorflow) of ring elements, or a
            tuple of such tensors sent together.
        bits: Meaningful bits per element: 64 for ring elements, 1 for a
            tensor of bits (a network communicator packs them eight to a
            byte; the count here assumes it does). For a tuple payload, one
            width per tensor, or one for all.
    """

    src: str
    dst: str
    payload: Tensor
    bits: int | tuple[int, ...] = 64

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: ceil(elements * bits / 8) per tensor."""
        if isinstance(self.payload, (tuple, list)):
            widths = self.bits if isinstance(self.bits, tuple) else (self.bits,) * len(self.payload)
            return sum(math.ceil(_numel(p) * w / 8) for p, w in zip(self.payload, widths))
        return math.ceil(_numel(self.payload) * self.bits / 8)


@dataclasses.dataclass(frozen=True)
class CommunicationStats:
    """A snapshot of a communicator's counters.

    Attributes:
        rounds: Online communication rounds.
        bytes_sent: Online bytes sent by all parties together.
        bytes_per_party: Online bytes sent, by sending party.
        messages: Online messages.
        offline_bytes: Bytes of correlated randomness sent by the dealer.
    """

    rounds: int
    bytes_sent: int
    bytes_per_party: Mapping[str, int]
    messages: int
    offline_bytes: int

    def __sub__(self, other: CommunicationStats) -> CommunicationStats:
        names = set(self.bytes_per_party) | set(other.bytes_per_party)
        return CommunicationStats(
            rounds=self.rounds - other.rounds,
            bytes_sent=self.bytes_sent - other.bytes_sent,
            bytes_per_party={
                n: self.bytes_per_party.get(n, 0) - other.bytes_per_party.get(n, 0)
                for n in sorted(names)
            },
            messages=self.messages - other.messages,
            offline_bytes=self.offline_bytes - other.offline_bytes,
        )

    def max_bytes_per_party(self) -> int:
        """The largest number of bytes any one party sent."""
        return max(self.bytes_per_party.values(), default=0)


class Communicator(abc.ABC):
    """Delivers the messages of one round between parties and counts them.

    Args:
        parties: Names of the compute parties (`"p0"`, `"p1"`, ...). Data
            owners and the dealer may send too; their names need not be listed.

    Subclasses implement `_deliver`. Counting happens here, so every
    communicator counts the same way.
    """

    def __init__(self, parties: Sequence[str]):
        self.parties = tuple(parties)
        self.reset()

    def reset(self) -> None:
        """Sets every counter back to zero."""
        self._rounds = 0
        self._messages = 0
        self._bytes: dict[str, int] = {name: 0 for name in self.parties}
        self._offline_bytes = 0

    @property
    def rounds(self) -> int:
        """Online communication rounds so far."""
        return self._rounds

    @property
    def bytes_sent(self) -> int:
        """Online bytes sent so far, all parties together."""
        return sum(self._bytes.values())

    @property
    def bytes_sent_per_party(self) -> dict[str, int]:
        """Online bytes sent so far, by sending party."""
        return dict(self._bytes)

    @property
    def offline_bytes(self) -> int:
        """Bytes of correlated randomness the dealer has sent so far."""
        return self._offline_bytes

    def snapshot(self) -> CommunicationStats:
        """The counters now, as an immutable `CommunicationStats`."""
        return CommunicationStats(
            rounds=self._rounds,
            bytes_sent=self.bytes_sent,
            bytes_per_party=dict(self._bytes),
            messages=self._messages,
            offline_bytes=self._offline_bytes,
        )

    def exchange(
        self, messages: Iterable[Message], *, offline: bool = False
    ) -> dict[tuple[str, str], Tensor]:
        """Sends the messages of one round and returns the inboxes.

        Args:
            messages: The round's messages; at most one per (src, dst) pair.
            offline: True for the dealer's correlated randomness (counted in
                `offline_bytes`, adds no round).

        Returns:
            A dict mapping `(src, dst)` to the payload `dst` received.
        """
        messages = list(messages)
        if not messages:
            return {}
        total = 0
        for message in messages:
            total += message.nbytes
            if not offline:
                self._bytes[message.src] = self._bytes.get(message.src, 0) + message.nbytes
        if offline:
            self._offline_bytes += total
        else:
            self._rounds += 1
            self._messages += len(messages)
        return self._deliver(messages)

    @abc.abstractmethod
    def _deliver(self, messages: list[Message]) -> dict[tuple[str, str], Tensor]:
        """Moves the payloads to their receivers; returns {(src, dst): payload}."""


class InProcessCommunicator(Communicator):
    """All parties live in this process: delivering a message hands over the tensor.

    Payloads are passed by reference. Tensors are never mutated in place by
    the protocols, so sender and receiver cannot disturb each other.
    """

    def _deliver(self, messages: list[Message]) -> dict[tuple[str, str], Tensor]:
        inbox: dict[tuple[str, str], Tensor] = {}
        for message in messages:
            key = (message.src, message.dst)
            if key in inbox:
                raise ValueError(
                    f"Expected at most one message per (src, dst) in a round. "
                    f"Received: two from {message.src!r} to {message.dst!r}"
                )
            inbox[key] = message.payload
        return inbox


def _numel(payload: Tensor) -> int:
    if isinstance(payload, (tuple, list)):
        return sum(_numel(part) for part in payload)
    size = 1
    for dim in payload.shape:
        size *= int(dim)
    return size
