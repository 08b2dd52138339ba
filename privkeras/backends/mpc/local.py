"""`local_cluster`: real MPC party processes on loopback, started and always stopped.

What tests, examples and `privkeras demo` use to run the networked runtime
without any set-up: one `privkeras party` process per role of the protocol,
on free ports of 127.0.0.1, with development certificates made for the run
(mutual TLS) and the driver's own certificate registered for this process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from privkeras.errors import PrivacyPolicyError

__all__ = ["LocalPartyCluster", "WorkerHandle", "local_cluster"]

_ROLES = {"pond": ("p0", "p1", "dealer"), "aby3": ("p0", "p1", "p2")}


class LocalPartyCluster:
    """The running processes of `local_cluster`.

    Attributes:
        protocol: The protocol the parties serve.
        parties: `{role: "127.0.0.1:port"}`, for `MPC(parties=...)`.
        pids: `{role: pid}`.
        processes: The `privkeras.net.processes.LocalCluster` behind it
            (`.children[role].kill()` to kill one, `.cluster_file`, `.certs_dir`).
    """

    def __init__(self, protocol: str, processes: Any):
        self.protocol, self.processes = protocol, processes
        #: Data owners' workers started with the cluster: `SharedData(cluster.owners)`.
        self.owners: list[WorkerHandle] = []

    @property
    def parties(self) -> dict[str, str]:
        return {r: a for r, a in self.processes.addresses.items() if r in _ROLES[self.protocol]}

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the parties and of the owners' workers."""
        return dict(self.processes.pids)

    def policy(self, **fields: Any):
        """An `MPC` policy for these parties (`fields` as for `MPC`)."""
        from privkeras.policies import MPC

        return MPC(protocol=self.protocol, parties=self.parties, **fields)

    def __repr__(self) -> str:
        return f"LocalPartyCluster(protocol={self.protocol!r}, parties={self.parties})"


class WorkerHandle:
    """A data owner's worker started by `local_cluster`: what `SharedData` takes."""

    def __init__(self, name: str, address: str):
        self.name, self.address = name, address

    def __repr__(self) -> str:
        return f"WorkerHandle({self.name!r}, {self.address!r})"


@contextlib.contextmanager
def local_cluster(
    protocol: str = "pond",
    tls: bool = True,
    timeout: float = 30.0,
    workdir: str | None = None,
    owners: dict[str, tuple[Any, Any]] | None = None,
    allow_seeded_jobs: bool = True,
) -> Iterator[LocalPartyCluster]:
    """Starts the party processes of `protocol` on loopback; stops them on exit.

    Args:
        protocol: `"pond"` (p0, p1 and the dealer) or `"aby3"` (p0, p1, p2).
        tls: Mutual TLS with development certificates (True) or plain text
            (False, warns; loopback debugging only).
        timeout: Each party's deadline for every network wait.
        workdir: Where logs, certificates and the cluster file go (a new
            temporary folder, removed on exit, if None).
        allow_seeded_jobs: Let the processes take `MPC(seed=...)` jobs, whose keys
            all derive from the seed (reproducible tests; True by default here,
            since these processes are for tests, examples and demos). Party
            processes started by hand refuse them unless `--allow-seeded-jobs`.
        owners: `{name: (x, y)}`: also start one `privkeras worker --allow mpc`
            per data owner (same CA), whose handles are `.owners`: train on
            them with `model.fit(pk.SharedData(cluster.owners))`.

    Yields:
        A `LocalPartyCluster` whose `.parties` go into `pk.MPC(parties=...)`.

    Example:

    ```python
    with pk.mpc.local_cluster("aby3") as cluster:
        model.compile(..., privacy=pk.MPC(protocol="aby3", parties=cluster.parties))
        model.fit(x, y)
    ```
    """
    from privkeras.backends.mpc.network import DRIVER, use_credentials
    from privkeras.net.processes import LocalCluster

    if protocol not in _ROLES:
        raise PrivacyPolicyError(
            f"Expected protocol in {sorted(_ROLES)}. Received: protocol={protocol!r}"
        )
    owners = dict(owners or {})
    processes = LocalCluster(
        _ROLES[protocol],
        # The parties share this host's cores: one kernel thread each (as on one core per party).
        command=["party", "--timeout", str(float(timeout)), "--threads", "1"]
        + (["--allow-seeded-jobs"] if allow_seeded_jobs else []),
        auth="mtls" if tls else "insecure",
        driver=DRIVER,
        name_flag="--id",
        workdir=workdir,
        extra_certificates=list(owners),
    )
    with processes:
        cluster = LocalPartyCluster(protocol, processes)
        cluster.owners = _start_workers(processes, owners, timeout, allow_seeded_jobs)
        with use_credentials(processes.credentials(DRIVER), cluster.parties):
            yield cluster


def _start_workers(
    processes: Any, owners: dict[str, tuple[Any, Any]], timeout: float, allow_seeded_jobs: bool
) -> list:
    import threading

    import numpy as np

    handles: dict[str, WorkerHandle] = {}
    errors: list[BaseException] = []

    def start(name: str, data: tuple[Any, Any]) -> None:
        try:
            path = processes.workdir / f"{name}.npz"
            np.savez(path, x=np.asarray(data[0]), y=np.asarray(data[1]))
            argv = ["worker", "--name", name, "--data", str(path), "--allow", "mpc"]
            argv += ["--allow-seeded-jobs"] if allow_seeded_jobs else []
            argv += ["--listen", "127.0.0.1:0", "--timeout", str(float(timeout)), "--threads", "1"]
            argv += processes.credential_flags()
            child = processes.start(name, argv, ready_timeout=processes.ready_timeout)
            handles[name] = WorkerHandle(name, child.address)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start, args=item) for item in owners.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [handles[name] for name in owners]
