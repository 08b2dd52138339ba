"""How MPC parties talk: an abstract communicator and the in-process one.

Protocols are written per party: each party computes a local step on its own
shares, then hands the messages of the round to `Communicator.exchange`,
which delivers them and returns the inbox of every local party. One
`exchange` call is one communication *round*: all its messages travel at the
same time, none of them depends on another.

Every process lists the whole round (every `(src, dst)` pair), but only the
messages whose sender runs in it carry a payload; the others have
`payload=None` and tell the process what to wait for (see
`privkeras.backends.mpc.placement`). In one process every role is local and
delivering hands over the tensor; a networked communicator (gRPC) sends its
own messages and receives its own inbox, tagged by channel and sequence
number so that every process agrees on which message is which.

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
import queue
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from privkeras.backends.mpc.placement import Placement
from privkeras.errors import PartyError

__all__ = [
    "ChannelHub",
    "CommunicationStats",
    "Communicator",
    "InProcessCommunicator",
    "Message",
    "ThreadedCommunicator",
]

Tensor = Any


@dataclasses.dataclass(frozen=True)
class Message:
    """One message of one round.

    Args:
        src: Name of the sending party.
        dst: Name of the receiving party.
        payload: A tensor (numpy, torch or tensorflow) of ring elements, or a
            tuple of such tensors sent together; None where the sender runs in
            another process (the message is then one this process may receive).
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
        """Bytes on the wire: ceil(elements * bits / 8) per tensor (0 for a remote sender's)."""
        if self.payload is None:
            return 0
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

    @classmethod
    def total(cls, snapshots: Sequence[CommunicationStats]) -> CommunicationStats:
        """The counts of one job run across processes, from each process's own counts.

        Every process takes part in every round, so rounds are the same in all
        of them; bytes, messages and offline bytes are each counted once, by
        their sender.
        """
        names = sorted({name for s in snapshots for name in s.bytes_per_party})
        return cls(
            rounds=max((s.rounds for s in snapshots), default=0),
            bytes_sent=sum(s.bytes_sent for s in snapshots),
            bytes_per_party={n: sum(s.bytes_per_party.get(n, 0) for s in snapshots) for n in names},
            messages=sum(s.messages for s in snapshots),
            offline_bytes=sum(s.offline_bytes for s in snapshots),
        )

    def max_bytes_per_party(self) -> int:
        """The largest number of bytes any one party sent."""
        return max(self.bytes_per_party.values(), default=0)


class Communicator(abc.ABC):
    """Delivers the messages of one round between parties and counts them.

    Args:
        parties: Names of the compute parties (`"p0"`, `"p1"`, ...). Data
            owners and the dealer may send too; their names need not be listed.
        placement: The roles running in this process (default: all).

    Subclasses implement `_deliver`. Counting happens here, so every
    communicator counts the same way: each process counts the rounds of the
    job (every process takes part in every `exchange` call) and the bytes and
    messages its own roles send; the counts of all processes add up to the
    in-process counts.
    """

    def __init__(self, parties: Sequence[str], placement: Placement | None = None):
        self.parties = tuple(parties)
        self.placement = placement or Placement()
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
                Messages of roles that run elsewhere have `payload=None`.
            offline: True for the dealer's correlated randomness (counted in
                `offline_bytes`, adds no round).

        Returns:
            A dict mapping `(src, dst)` to the payload `dst` received, for every
            local `dst`.

        Raises:
            ValueError: For a local sender without a payload, a remote one with
                a payload, or two messages on one (src, dst) pair.
            PartyError: (networked) when a peer does not answer within the deadline.
        """
        messages = list(messages)
        if not messages:
            return {}
        here = self.placement.here
        total, sent, seen = 0, 0, set()
        for message in messages:
            key = (message.src, message.dst)
            if key in seen:
                raise ValueError(
                    f"Expected at most one message per (src, dst) in a round. "
                    f"Received: two from {message.src!r} to {message.dst!r}"
                )
            seen.add(key)
            if here(message.src) != (message.payload is not None):
                raise ValueError(
                    f"Expected a payload exactly for messages sent from this process. "
                    f"Received: a message from {message.src!r} "
                    + ("without one" if message.payload is None else "with one")
                )
            if message.payload is None:
                continue
            total += message.nbytes
            sent += 1
            if not offline:
                self._bytes[message.src] = self._bytes.get(message.src, 0) + message.nbytes
        if offline:
            self._offline_bytes += total
        else:
            self._rounds += 1
            self._messages += sent
        return self._deliver(messages, offline)

    @abc.abstractmethod
    def _deliver(self, messages: list[Message], offline: bool) -> dict[tuple[str, str], Tensor]:
        """Sends the local messages, receives the local ones; returns {(src, dst): payload}."""

    def broadcast(self, source: str, value: Any, targets: Sequence[str]) -> np.ndarray:
        """A public value decided by `source` (the driver), delivered to every role in `targets`.

        Control, not protocol: a broadcast carries public decisions (a batch
        order, whether training stops) and is not counted in rounds or bytes.
        Returns the value in every process.
        """
        here = self.placement.here
        if here(source):
            array = np.asarray(value)
            for target in targets:
                if not here(target):
                    self.send_control(source, target, array)
            return array
        receiver = next((t for t in targets if here(t)), None)
        if receiver is None:
            raise ValueError(f"Expected a local role among {list(targets)} to receive a broadcast.")
        return np.asarray(self.receive_control(source, receiver))

    def flush(self) -> None:  # noqa: B027 - a no-op where delivery is immediate
        """Waits until every message this process sent has been delivered (in memory: at once)."""

    def send_control(self, src: str, dst: str, value: np.ndarray) -> None:
        """Sends a small public array on the (src, dst) channel, uncounted (setup, control)."""
        raise NotImplementedError(f"{type(self).__name__} does not cross processes")

    def post_control(self, src: str, dst: str, value: np.ndarray) -> Any:
        """Starts `send_control`; returns a pending send to `.result()`, or None once sent.

        A session's driver posts one command to every party before it waits on any.
        """
        self.send_control(src, dst, value)
        return None

    def receive_control(self, src: str, dst: str, timeout: float | None = None) -> np.ndarray:
        """Waits for the next control array on the (src, dst) channel.

        `timeout` overrides the communicator's deadline for this wait (a
        session's party waiting for the driver's next command).
        """
        raise NotImplementedError(f"{type(self).__name__} does not cross processes")


class InProcessCommunicator(Communicator):
    """All parties live in this process: delivering a message hands over the tensor.

    Payloads are passed by reference. Tensors are never mutated in place by
    the protocols, so sender and receiver cannot disturb each other.
    """

    def __init__(self, parties: Sequence[str], placement: Placement | None = None):
        if placement is not None and not placement.everywhere:
            raise ValueError(
                "Expected every role in this process for an InProcessCommunicator. "
                f"Received: {placement!r}"
            )
        super().__init__(parties)

    def _deliver(self, messages: list[Message], offline: bool) -> dict[tuple[str, str], Tensor]:
        return {(message.src, message.dst): message.payload for message in messages}


def _numel(payload: Tensor) -> int:
    if isinstance(payload, (tuple, list)):
        return sum(_numel(part) for part in payload)
    size = 1
    for dim in payload.shape:
        size *= int(dim)
    return size


class ThreadedCommunicator(Communicator):
    """One role (or a few) per thread of one process, over in-memory channels.

    Every role runs its own `MPCRuntime` on its own thread, with a placement
    that holds only that role, exactly as in a party process; the channels
    are FIFO queues per (src, dst) in a shared `ChannelHub`. It checks the
    one-protocol-code property without sockets: each thread computes only its
    own components and sends only its own messages.

    Args:
        parties: Names of the compute parties.
        placement: The roles of this thread.
        hub: The channels shared by every thread of the job.
        timeout: Seconds to wait for a message before raising `PartyError`.
    """

    def __init__(
        self,
        parties: Sequence[str],
        placement: Placement,
        hub: ChannelHub,
        timeout: float = 30.0,
    ):
        super().__init__(parties, placement)
        self.hub, self.timeout = hub, timeout

    def send_control(self, src: str, dst: str, value: np.ndarray) -> None:
        self.hub.put(src, dst, value)

    def receive_control(self, src: str, dst: str, timeout: float | None = None) -> np.ndarray:
        return self.hub.get(src, dst, self.timeout if timeout is None else timeout)

    def _deliver(self, messages: list[Message], offline: bool) -> dict[tuple[str, str], Tensor]:
        here = self.placement.here
        inbox: dict[tuple[str, str], Tensor] = {}
        for message in messages:
            if here(message.src):
                if here(message.dst):
                    inbox[message.src, message.dst] = message.payload
                else:
                    self.hub.put(message.src, message.dst, message.payload)
        for message in messages:
            if here(message.dst) and not here(message.src):
                inbox[message.src, message.dst] = self.hub.get(
                    message.src, message.dst, self.timeout
                )
        return inbox


class ChannelHub:
    """FIFO channels per (src, dst) between the threads of one job."""

    def __init__(self):
        self._queues: dict[tuple[str, str], queue.Queue] = {}
        self._lock = threading.Lock()

    def _queue(self, src: str, dst: str) -> queue.Queue:
        with self._lock:
            return self._queues.setdefault((src, dst), queue.Queue())

    def put(self, src: str, dst: str, payload: Tensor) -> None:
        self._queue(src, dst).put(payload)

    def get(self, src: str, dst: str, timeout: float) -> Tensor:
        try:
            return self._queue(src, dst).get(timeout=timeout)
        except queue.Empty:
            raise PartyError(
                f"Party {src!r} sent nothing to {dst!r} within {timeout:g} s."
            ) from None
