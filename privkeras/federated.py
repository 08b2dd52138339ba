"""Federated training on data owners: `local_owners` starts real workers on loopback.

`local_owners(partitions)` writes each `(x, y)` partition to its own file,
starts one `privkeras worker` process per partition on 127.0.0.1 (ports
from the OS, mutual TLS with development certificates by default), and
stops them all on exit, whatever happens. It is what tests, examples and the
demo use; a real deployment starts `privkeras worker` on each owner's host.

Example:

```python
import privkeras as pk

with pk.federated.local_owners([(x1, y1), (x2, y2), (x3, y3)]) as cluster:
    model.fit(pk.FederatedData(cluster.owners), batch_size=32)
    cluster.pids                     # {'owner-0': 12345, ...}
```
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from privkeras.backends.federated.data import DataOwner, FederatedData
from privkeras.errors import PrivacyPolicyError
from privkeras.net.processes import LocalProcesses, start_process

__all__ = ["DataOwner", "FederatedData", "LocalOwners", "local_owners"]


class LocalOwners(LocalProcesses):
    """One `privkeras worker` process per partition on loopback; a context manager.

    Args:
        partitions: `(x, y)` per owner.
        names: Owner names (default `owner-0`, `owner-1`, ...).
        tls: Mutual TLS with development certificates (default); False runs
            the workers in plain text (`--insecure`, which warns).
        coordinator: The coordinator's certificate name.
        allow, max_epsilon, delta: Every worker's rules (`--allow`,
            `--max-epsilon`, `--delta`).
        workdir: Folder for data, certificates, ledgers and logs (a temporary
            one, removed on exit, if None).
        ready_timeout: Seconds each worker has to start serving.

    Attributes:
        owners: `DataOwner` handles for the coordinator.
        pids: Worker process ids by name.
    """

    def __init__(
        self,
        partitions: Sequence[tuple[Any, Any]],
        names: Sequence[str] | None = None,
        *,
        tls: bool = True,
        coordinator: str = "coordinator",
        allow: Sequence[str] = ("federated",),
        max_epsilon: float | None = None,
        delta: float | None = None,
        workdir: str | os.PathLike | None = None,
        ready_timeout: float = 120.0,
    ):
        super().__init__(workdir)
        partitions = list(partitions)
        if not partitions:
            raise PrivacyPolicyError("Expected at least one (x, y) partition. Received: []")
        self.names = (
            list(names) if names is not None else [f"owner-{i}" for i in range(len(partitions))]
        )
        if len(self.names) != len(partitions):
            raise PrivacyPolicyError(
                f"Expected one name per partition. Received: {len(self.names)} names for "
                f"{len(partitions)} partitions"
            )
        self.partitions, self.tls, self.coordinator = partitions, tls, coordinator
        self.rules = {"allow": list(allow), "max_epsilon": max_epsilon, "delta": delta}
        self.ready_timeout = ready_timeout
        self.certs_dir = self.workdir / "certs"
        self._ports: dict[str, str] = {}

    # -- life cycle -------------------------------------------------------------------------
    def __enter__(self) -> LocalOwners:
        try:
            self.start_all()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start_all(self) -> LocalOwners:
        """Writes the data and certificates, starts every worker (in parallel), waits until they serve."""
        import numpy as np

        if self.tls:
            from privkeras.net.certs import make_dev_certs

            make_dev_certs(self.certs_dir, [*self.names, self.coordinator], overwrite=True)
        for name, (x, y) in zip(self.names, self.partitions):
            np.savez(self.workdir / f"{name}.npz", x=np.asarray(x), y=np.asarray(y))
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=self._start_one, args=(name, "127.0.0.1:0", errors))
            for name in self.names
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return self

    def _argv(self, name: str, listen: str) -> list[str]:
        argv = ["worker", "--name", name, "--data", str(self.workdir / f"{name}.npz")]
        argv += ["--listen", listen, "--allow", ",".join(self.rules["allow"])]
        if self.rules["max_epsilon"] is not None:
            argv += ["--max-epsilon", str(self.rules["max_epsilon"])]
        if self.rules["delta"] is not None:
            argv += ["--delta", str(self.rules["delta"])]
        # The workers share this host's cores: each gets its share (at least one).
        argv += ["--threads", str(max(1, (os.cpu_count() or 1) // len(self.names)))]
        argv += ["--certs", str(self.certs_dir)] if self.tls else ["--insecure"]
        return argv

    def _start_one(self, name: str, listen: str, errors: list | None = None) -> None:
        try:
            child = start_process(
                name,
                self._argv(name, listen),
                workdir=self.workdir,
                ready_timeout=self.ready_timeout,
            )
        except BaseException as error:
            if errors is None:
                raise
            errors.append(error)
            return
        self.children[name] = child
        self._ports[name] = child.address

    def kill(self, name: str) -> None:
        """SIGKILLs one worker now (for fault tests)."""
        self.children[name].kill()

    def restart(self, name: str) -> None:
        """Starts a stopped or killed worker again, on the same address."""
        child = self.children.pop(name)
        child.stop(grace=1.0)
        self._start_one(name, self._ports[name])

    # -- what the coordinator uses ----------------------------------------------------------
    def credentials(self):
        """The coordinator's `privkeras.net.Credentials`."""
        from privkeras.net.credentials import Credentials

        if not self.tls:
            return Credentials.insecure_plaintext()
        folder = self.certs_dir
        return Credentials.mutual_tls(
            folder / "ca.pem",
            folder / f"{self.coordinator}.pem",
            folder / f"{self.coordinator}.key",
        )

    @property
    def owners(self) -> list[DataOwner]:
        credentials = self.credentials()
        return [
            DataOwner(self._ports[name], name=name, credentials=credentials) for name in self.names
        ]

    def data(self) -> FederatedData:
        """`FederatedData(self.owners)`."""
        return FederatedData(self.owners)


def local_owners(
    partitions: Sequence[tuple[Any, Any]], tls: bool = True, **options: Any
) -> LocalOwners:
    """`LocalOwners(partitions, tls=tls, **options)`: use it in a `with` block."""
    return LocalOwners(partitions, tls=tls, **options)
