"""The random streams each party, pair of parties and the dealer hold.

Every share, mask and triple in the MPC runtime is drawn from one of these
`SecureStream`s, each named by a label that says who holds its key:

| label | held by |
|---|---|
| `party/i` | compute party i |
| `pair/i/j` | compute parties i and j (a pairwise seed) |
| `common` | every compute party |
| `dealer`, `dealer/i` | Pond's dealer; the dealer and party i |
| `helper/P`, `helper/P/i` | a compute party P dealing for two others (ABY3's p2); P and party i |
| `owner/O/i/...` | data owner O and the listed parties |

A process holds only the keys of the roles that run in it (its
`Placement`): asking for another key returns None, so protocol code draws a
value exactly where a holder of its key runs, once per process. In one
process (every role local), a value drawn from a pair stream is drawn once
and used by both holders, which is what each of them computes on its own.

With `seed=None` the keys come from `os.urandom` (in one process) or from
`keys` agreed when a networked job starts; with an integer seed every key is
derived from it (tests only), so a run is reproducible bit for bit on every
kernel library and in every process layout.

Notes:
    A stream shared by two parties lets them draw the same values without
    talking: ABY3's pseudo-random zero sharing (Mohassel and Rindal, CCS
    2018, section 2.2) and the dealer's seed-compressed triples (the dealer
    sends party 0 nothing: party 0 expands its seed) rest on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from privkeras.backends.mpc.placement import Placement
from privkeras.core.random import SecureStream

__all__ = ["PartyStreams", "agree_stream_keys", "holders_of", "job_labels", "leader_of"]


def holders_of(label: str) -> frozenset[str]:
    """The roles that hold the key of a stream label (compute parties are `p0`, `p1`, ...)."""
    parts = label.split("/")
    kind, rest = parts[0], parts[1:]
    if kind == "party" and len(rest) == 1:
        return frozenset({f"p{rest[0]}"})
    if kind == "pair" and len(rest) == 2:
        return frozenset({f"p{rest[0]}", f"p{rest[1]}"})
    if kind == "common" and not rest:
        return frozenset({"p0", "p1", "p2"})
    if kind == "dealer" and len(rest) <= 1:
        return frozenset({"dealer", *(f"p{i}" for i in rest)})
    if kind == "helper" and 1 <= len(rest) <= 2:
        return frozenset({rest[0], *(f"p{i}" for i in rest[1:])})
    if kind == "owner" and rest:
        return frozenset({rest[0], *(f"p{i}" for i in rest[1:])})
    raise ValueError(f"Expected a stream label of privkeras's MPC runtime. Received: {label!r}")


def job_labels(protocol: str, owners: Sequence[str]) -> list[str]:
    """Every stream label a job of `protocol` with data owners `owners` may draw from."""
    if protocol == "pond":
        labels = ["party/0", "party/1", "pair/0/1", "common", "dealer", "dealer/0", "dealer/1"]
        return labels + [f"owner/{owner}/0" for owner in owners]
    labels = [
        *(f"party/{i}" for i in range(3)),
        "pair/0/1",
        "pair/0/2",
        "pair/1/2",
        "common",
        "helper/p2",
        "helper/p2/0",
        "helper/p2/1",
    ]
    return labels + [f"owner/{o}/0/{j}" for o in owners for j in (1, 2)]


def leader_of(label: str) -> str:
    """The holder that makes a shared key and sends it to the other holders."""
    parts = label.split("/")
    if parts[0] == "owner":
        return parts[1]
    if parts[0] == "dealer":
        return "dealer"
    if parts[0] == "helper":
        return parts[1]
    return min(holders_of(label))  # pair/i/j, common and party/i: the lowest party


def agree_stream_keys(
    communicator: Any, labels: Sequence[str], roles: Sequence[str]
) -> dict[str, bytes]:
    """Fresh 256-bit keys for the labels this process holds, agreed with their other holders.

    For each label (in the given order, the same in every process) its leader
    draws a key from `os.urandom` and sends it to the other holders over the
    job's authenticated, encrypted channels; keys held by one role only never
    leave it. `roles` are the job's roles (parties, dealer, owners). One setup round, not counted as protocol traffic.

    Notes:
        Semi-honest model: a leader is trusted to draw its key at random (as
        with the seeds of Mohassel and Rindal's zero sharing). Confidentiality
        of the keys in transit rests on the channel (mutual TLS).
    """
    placement: Placement = communicator.placement
    keys: dict[str, bytes] = {}
    pending: list[tuple[str, str, str]] = []
    for label in labels:
        holders = holders_of(label) & frozenset(roles)  # "common" is p0 and p1 under Pond
        if not placement.any_here(holders):
            continue
        lead = leader_of(label)
        if placement.here(lead):
            keys[label] = key = os.urandom(32)
            for holder in sorted(holders):
                if not placement.here(holder):
                    communicator.send_control(lead, holder, np.frombuffer(key, dtype=np.uint8))
        else:
            receiver = min(h for h in holders if placement.here(h))
            pending.append((label, lead, receiver))
    for label, lead, receiver in pending:  # every send is out before any wait
        key = bytes(np.asarray(communicator.receive_control(lead, receiver), dtype=np.uint8))
        if len(key) != 32:
            raise ValueError(
                f"Expected a 32-byte key for {label!r} from {lead!r}. Received: {len(key)} bytes"
            )
        keys[label] = key
    return keys


class PartyStreams:
    """Named streams of one runtime, restricted to the keys its local roles hold.

    Args:
        num_parties: Number of compute parties.
        seed: None (keys from `os.urandom` or `keys`) or an int (reproducible,
            tests only).
        placement: The roles running in this process (default: all of them).
        keys: 32-byte keys by label, agreed with the other holders when a
            networked job starts; labels not listed are derived from the root.
    """

    def __init__(
        self,
        num_parties: int,
        seed: int | None = None,
        placement: Placement | None = None,
        keys: Mapping[str, bytes] | None = None,
    ):
        self.num_parties = num_parties
        self.seeded = seed is not None
        self.placement = placement or Placement()
        self._root = SecureStream(seed)
        self._keys = dict(keys or {})
        self._cache: dict[str, SecureStream | None] = {}

    def add_keys(self, keys: Mapping[str, bytes]) -> None:
        """Adds keys agreed after the runtime was made (a session's new data owner).

        Raises:
            ValueError: For a label that was already drawn from (its key is fixed).
        """
        drawn = sorted(label for label in keys if label in self._cache)
        if drawn:
            raise ValueError(f"Expected keys for labels not drawn from yet. Received: {drawn}")
        self._keys.update(keys)

    def holds(self, label: str) -> bool:
        """Whether a role of this process holds the key of `label`."""
        return self.placement.any_here(holders_of(label))

    def _get(self, label: str) -> SecureStream | None:
        if label in self._cache:
            return self._cache[label]
        stream = None
        if self.holds(label):
            key = self._keys.get(label)
            # An agreed key is secret random bytes: hashing it (the seed path) keys the stream.
            stream = SecureStream(key) if key is not None else self._root.fork(label)
        self._cache[label] = stream
        return stream

    def party(self, i: int) -> SecureStream | None:
        """Randomness private to compute party `i`."""
        return self._get(f"party/{i}")

    def pair(self, i: int, j: int) -> SecureStream | None:
        """Randomness shared by compute parties `i` and `j` (a pairwise seed)."""
        low, high = sorted((i, j))
        return self._get(f"pair/{low}/{high}")

    def dealer(self, i: int | None = None, dealer: str = "dealer") -> SecureStream | None:
        """A dealer's private randomness, or the seed it shares with party `i`.

        `dealer` names who deals: Pond's dealer, or a compute party that deals
        for two others (ABY3's helper `"p2"`), with seeds apart from its others.
        """
        label = "dealer" if dealer == "dealer" else f"helper/{dealer}"
        return self._get(label if i is None else f"{label}/{i}")

    def common(self) -> SecureStream | None:
        """Randomness every compute party knows (a seed agreed by all of them)."""
        return self._get("common")

    def owner(self, owner: str, *parties: int) -> SecureStream | None:
        """A data owner's private randomness, or the seed it shares with `parties`."""
        return self._get("/".join(["owner", owner, *(str(p) for p in sorted(parties))]))
