"""`DataOwner` and `FederatedData`: the owners a federated `fit` trains on.

Example:

```python
import privkeras as pk

owners = [pk.DataOwner("127.0.0.1:7001"), pk.DataOwner("127.0.0.1:7002")]
model.fit(pk.FederatedData(owners), batch_size=32)

# The same rounds with simulated owners in this process (research at scale):
model.fit(pk.FederatedData.simulate([(x1, y1), (x2, y2), (x3, y3)]))
```
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

from privkeras.backends.federated.owner import OwnerRules, OwnerService
from privkeras.backends.federated.protocol import (
    InProcessTransport,
    OwnerClient,
    OwnerProtocol,
    Transport,
)
from privkeras.errors import CapabilityError, PrivacyPolicyError

__all__ = ["DataOwner", "FederatedData", "register_remote_transport"]

#: Makes the transport to a worker at an address: set by the gRPC transport module.
_REMOTE_TRANSPORT: list[Callable[..., Transport]] = []


def register_remote_transport(factory: Callable[..., Transport]) -> None:
    """Sets how `DataOwner.connect` reaches a worker: `factory(owner) -> Transport`."""
    _REMOTE_TRANSPORT[:] = [factory]


@dataclasses.dataclass(frozen=True)
class DataOwner:
    """A handle on a data owner's `privkeras worker` (its rows stay there).

    Args:
        address: `host:port` the worker listens on.
        name: The worker's `--name` (its certificate's name under mutual TLS);
            default: the address.
        credentials: How the coordinator authenticates: `credentials=` a
            `privkeras.net.Credentials`, or the files `ca=`, `cert=`, `key=`,
            `token=` / `token_file=` (as `privkeras.net.Credentials.from_files`);
            `client_name=` names the coordinator (default: its certificate's name).

    Example:

    ```python
    alice = pk.DataOwner("127.0.0.1:7001", name="alice", ca="certs/ca.pem",
                         cert="certs/coordinator.pem", key="certs/coordinator.key")
    ```
    """

    address: str
    name: str | None = None
    credentials: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def __init__(self, address: str, name: str | None = None, **credentials: Any):
        if not isinstance(address, str) or ":" not in address:
            raise PrivacyPolicyError(
                f"Expected an address 'host:port'. Received: address={address!r}"
            )
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "name", name or address)
        object.__setattr__(self, "credentials", dict(credentials))

    def connect(self) -> OwnerProtocol:
        """An `OwnerProtocol` client talking to the worker.

        Raises:
            CapabilityError: When no network transport is installed.
        """
        if not _REMOTE_TRANSPORT:
            from privkeras.backends.federated import remote  # noqa: F401  (registers gRPC)
        if not _REMOTE_TRANSPORT:
            raise CapabilityError(
                "Reaching a worker needs the gRPC transport (privkeras.net), which is not "
                f"available. Received: DataOwner({self.address!r})"
            )
        return OwnerClient(self.name, _REMOTE_TRANSPORT[0](self))

    def __repr__(self) -> str:
        return f"DataOwner({self.address!r}, name={self.name!r})"


class FederatedData:
    """The data of several owners, for `model.fit` and `model.evaluate` under `Federated`.

    Args:
        owners: `DataOwner` handles (or `OwnerProtocol` implementations).

    Raises:
        PrivacyPolicyError: For no owners, or two owners with one name.
    """

    def __init__(self, owners: Sequence[DataOwner | OwnerProtocol]):
        owners = list(owners)
        if not owners:
            raise PrivacyPolicyError("Expected at least one data owner. Received: owners=[]")
        for owner in owners:
            if not isinstance(owner, (DataOwner, OwnerProtocol)):
                raise PrivacyPolicyError(
                    "Expected DataOwner handles (or OwnerProtocol implementations). "
                    f"Received: {type(owner).__name__}"
                )
        names = [owner.name for owner in owners]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise PrivacyPolicyError(
                f"Expected every owner to have its own name. Received: duplicates={duplicates}"
            )
        self.owners = owners
        self._clients: list[OwnerProtocol] | None = None

    @classmethod
    def simulate(
        cls,
        partitions: Sequence[tuple[Any, Any]],
        names: Sequence[str] | None = None,
        allow: Sequence[str] = ("federated",),
        max_epsilon: float | None = None,
        delta: float | None = None,
    ) -> FederatedData:
        """Owners simulated in this process, one per `(x, y)` partition.

        They run the workers' code (rules, ledger, local training, the same
        messages as bytes), so sampling, aggregation, clipping, noise and
        accounting are those of a real deployment. Each owner gets its own
        signing key and a certificate for its name from an in-memory
        authority made for these owners (`secagg.SimulatedAuthority`), with
        which secure aggregation authenticates its keys.

        Args:
            partitions: `(x, y)` per owner.
            names: Owner names (default `owner-0`, `owner-1`, ...).
            allow, max_epsilon, delta: Every owner's rules (`OwnerRules`).
        """
        partitions = list(partitions)
        if not partitions:
            raise PrivacyPolicyError("Expected at least one (x, y) partition. Received: []")
        names = list(names) if names is not None else [f"owner-{i}" for i in range(len(partitions))]
        if len(names) != len(partitions):
            raise PrivacyPolicyError(
                f"Expected one name per partition. Received: {len(names)} names for "
                f"{len(partitions)} partitions"
            )
        from privkeras.backends.federated.secagg.identity import SimulatedAuthority

        rules = OwnerRules(tuple(allow), max_epsilon, delta)
        authority = functools.cache(SimulatedAuthority)  # made when secure aggregation asks
        clients = []
        for name, partition in zip(names, partitions):
            if not (isinstance(partition, (tuple, list)) and len(partition) == 2):
                raise PrivacyPolicyError(
                    f"Expected each partition to be a pair (x, y). Received: {type(partition)}"
                )
            service = OwnerService(
                name,
                partition[0],
                partition[1],
                rules,
                identity=functools.partial(lambda n: authority().identity(n), name),
            )
            clients.append(OwnerClient(name, InProcessTransport(service)))
        return cls(clients)

    @property
    def names(self) -> list[str]:
        return [owner.name for owner in self.owners]

    def __len__(self) -> int:
        return len(self.owners)

    def clients(self) -> list[OwnerProtocol]:
        """The owners as `OwnerProtocol`s (connecting to workers the first time)."""
        if self._clients is None:
            self._clients = [
                owner.connect() if isinstance(owner, DataOwner) else owner for owner in self.owners
            ]
        return self._clients

    def close(self) -> None:
        """Closes connections to workers."""
        for client in self._clients or []:
            if client not in self.owners:
                client.close()
        self._clients = None

    def __repr__(self) -> str:
        return f"FederatedData({self.names})"
