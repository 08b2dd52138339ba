"""Runs N simulated owners and a coordinator in this process, through the real messages.

Every message is encoded to bytes and decoded again on the other side, so the
simulation exercises the same code a transport does, and counts the bytes each
owner sends and receives at each stage and the seconds each party computes.
Owners can be dropped at any stage and messages tampered with, for tests of
dropouts and misbehaving owners.

Example:

```python
updates = {f"owner{i}": np.full(100, 0.01 * i) for i in range(10)}
report = simulate_round(updates, SecAggConfig(clip_range=1.0),
                        drop={"masked_input": ["owner3"]})
report.result.total          # the sum of the nine others' updates
report.bytes_up["masked_input"]["owner0"]
```
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from privkeras.backends.federated.secagg.coordinator import SecAggCoordinator, SecAggResult
from privkeras.backends.federated.secagg.crypto import Ed25519Credentials, Ed25519Signer
from privkeras.backends.federated.secagg.messages import STAGES
from privkeras.backends.federated.secagg.owner import SecAggOwner
from privkeras.backends.federated.secagg.params import SecAggConfig
from privkeras.core.random import SecureStream
from privkeras.errors import PrivkerasError

__all__ = ["SimulationReport", "simulate_round"]

#: tamper(stage, owner, data) -> bytes, several bytes objects (sent in turn) or None (not sent).
Tamper = Callable[[str, str, bytes], "bytes | Sequence[bytes] | None"]


@dataclasses.dataclass(frozen=True, eq=False)
class SimulationReport:
    """What a simulated round produced and cost.

    Attributes:
        result: The coordinator's `SecAggResult`.
        bytes_up: `{stage: {owner: bytes sent}}`.
        bytes_down: `{stage: {owner: bytes received}}`.
        owner_seconds: `{stage: {owner: seconds computing}}`.
        coordinator_seconds: `{stage: seconds}` (closing the stage, and receiving).
        owner_errors: `{owner: exception}` for owners that refused a message
            (they drop out of the round).
    """

    result: SecAggResult
    bytes_up: Mapping[str, Mapping[str, int]]
    bytes_down: Mapping[str, Mapping[str, int]]
    owner_seconds: Mapping[str, Mapping[str, float]]
    coordinator_seconds: Mapping[str, float]
    owner_errors: Mapping[str, Exception]

    def owner_bytes(self, owner: str) -> dict[str, tuple[int, int]]:
        """`{stage: (up, down)}` for one owner."""
        return {
            stage: (self.bytes_up[stage].get(owner, 0), self.bytes_down[stage].get(owner, 0))
            for stage in STAGES
        }


def simulate_round(
    updates: Mapping[str, np.ndarray],
    config: SecAggConfig,
    *,
    drop: Mapping[str, Iterable[str]] | None = None,
    tamper_up: Tamper | None = None,
    tamper_down: Tamper | None = None,
    seed: int | None = None,
) -> SimulationReport:
    """One round of secure aggregation over `updates` (one per owner, equal lengths).

    Args:
        updates: `{owner name: update}`.
        config: The settings.
        drop: `{stage: owners}`: these owners do not send their message of that
            stage (nor any later one). At `"unmasking"` they have already sent
            their masked input, which stays in the sum.
        tamper_up: Rewrites what owners send (see `Tamper`).
        tamper_down: Rewrites what the coordinator sends to owners.
        seed: Seeds every party's `SecureStream` (reproducible tests); None
            keys them all from os.urandom.

    Returns:
        A `SimulationReport`.

    Raises:
        SecAggRoundError: When the round cannot finish (too many dropouts, or
            owners whose shares do not reconstruct).
    """
    names = list(updates)
    lengths = {np.asarray(u).size for u in updates.values()}
    if len(lengths) != 1:
        raise ValueError(f"Expected updates of one length. Received: lengths {sorted(lengths)}")
    drop_at = {stage: set(drop.get(stage, ())) if drop else set() for stage in STAGES}
    unknown = set().union(*drop_at.values()) - set(names)
    if unknown or (drop and set(drop) - set(STAGES)):
        raise ValueError(
            f"Expected drop={{stage in {list(STAGES)}: owners in updates}}. Received: {drop!r}"
        )

    def stream(label: str) -> SecureStream:
        return SecureStream() if seed is None else SecureStream(seed=seed).fork(label)

    signers = {name: Ed25519Signer() for name in names}
    credentials = Ed25519Credentials({n: s.public_key_bytes() for n, s in signers.items()})
    coordinator = SecAggCoordinator(
        config, names, lengths.pop(), verifier=credentials, stream=stream("coordinator")
    )
    owners = {
        name: SecAggOwner(name, signers[name], credentials, stream=stream(f"owner/{name}"))
        for name in names
    }
    run = _Run(coordinator, owners, updates, drop_at, tamper_up, tamper_down)
    outgoing = coordinator.setup_messages()
    closers = (
        coordinator.close_advertise_keys,
        coordinator.close_share_keys,
        coordinator.close_masked_input,
        coordinator.close_unmasking,
    )
    for stage, close in zip(STAGES, closers):
        run.exchange(stage, outgoing)
        start = time.perf_counter()
        outgoing = close()
        run.coordinator_seconds[stage] += time.perf_counter() - start
    return SimulationReport(
        result=outgoing,
        bytes_up=run.bytes_up,
        bytes_down=run.bytes_down,
        owner_seconds=run.owner_seconds,
        coordinator_seconds=run.coordinator_seconds,
        owner_errors=run.errors,
    )


class _Run:
    """The state of one simulated round: who is alive, and what was counted."""

    def __init__(self, coordinator, owners, updates, drop_at, tamper_up, tamper_down):
        self.coordinator = coordinator
        self.owners = owners
        self.updates = updates
        self.drop_at = drop_at
        self.tamper_up, self.tamper_down = tamper_up, tamper_down
        self.dead: set[str] = set()
        self.errors: dict[str, Exception] = {}
        self.bytes_up = {stage: {} for stage in STAGES}
        self.bytes_down = {stage: {} for stage in STAGES}
        self.owner_seconds = {stage: {} for stage in STAGES}
        self.coordinator_seconds = dict.fromkeys(STAGES, 0.0)

    def exchange(self, stage: str, outgoing: Mapping[str, object]) -> None:
        for name, message in outgoing.items():
            if name in self.dead:
                continue
            data = message.to_bytes()
            if self.tamper_down is not None:
                data = self.tamper_down(stage, name, data)
            self.bytes_down[stage][name] = len(data)
            start = time.perf_counter()
            try:
                reply = self._answer(stage, name, data).to_bytes()
            except PrivkerasError as err:  # the owner refuses: it leaves the round
                self.errors[name] = err
                self.dead.add(name)
                continue
            finally:
                self.owner_seconds[stage][name] = time.perf_counter() - start
            if name in self.drop_at[stage]:
                self.dead.add(name)
                continue
            sent = [reply] if self.tamper_up is None else self.tamper_up(stage, name, reply)
            if isinstance(sent, (bytes, bytearray)):
                sent = [sent]
            start = time.perf_counter()
            for data in sent or ():
                self.bytes_up[stage][name] = self.bytes_up[stage].get(name, 0) + len(data)
                self.coordinator.receive(name, data)
            self.coordinator_seconds[stage] += time.perf_counter() - start

    def _answer(self, stage: str, name: str, data: bytes):
        owner = self.owners[name]
        if stage == "advertise_keys":
            return owner.advertise_keys(data)
        if stage == "share_keys":
            return owner.share_keys(data)
        if stage == "masked_input":
            return owner.masked_input(data, self.updates[name])
        return owner.unmask(data)
