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

__all__ = ["LocalPartyCluster", "local_cluster"]

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

    @property
    def parties(self) -> dict[str, str]:
        return dict(self.processes.addresses)

    @property
    def pids(self) -> dict[str, int]:
        return dict(self.processes.pids)

    def policy(self, **fields: Any):
        """An `MPC` policy for these parties (`fields` as for `MPC`)."""
        from privkeras.policies import MPC

        return MPC(protocol=self.protocol, parties=self.parties, **fields)

    def __repr__(self) -> str:
        return f"LocalPartyCluster(protocol={self.protocol!r}, parties={self.parties})"


@contextlib.contextmanager
def local_cluster(
    protocol: str = "pond",
    tls: bool = True,
    timeout: float = 30.0,
    workdir: str | None = None,
) -> Iterator[LocalPartyCluster]:
    """Starts the party processes of `protocol` on loopback; stops them on exit.

    Args:
        protocol: `"pond"` (p0, p1 and the dealer) or `"aby3"` (p0, p1, p2).
        tls: Mutual TLS with development certificates (True) or plain text
            (False, warns; loopback debugging only).
        timeout: Each party's deadline for every network wait.
        workdir: Where logs, certificates and the cluster file go (a new
            temporary folder, removed on exit, if None).

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
    processes = LocalCluster(
        _ROLES[protocol],
        command=["party", "--timeout", str(float(timeout))],
        auth="mtls" if tls else "insecure",
        driver=DRIVER,
        name_flag="--id",
        workdir=workdir,
    )
    with processes:
        cluster = LocalPartyCluster(protocol, processes)
        with use_credentials(processes.credentials(DRIVER), cluster.parties):
            yield cluster
