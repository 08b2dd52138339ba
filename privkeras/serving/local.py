"""`local_servers`: a bundle's server processes on loopback, started and always stopped.

What tests, examples and demos use to serve an exported bundle without any
set-up: one `privkeras serve` process per role of the bundle (MPC: each
compute party, and Pond's dealer; HE: the server), on free ports of
127.0.0.1, with development certificates made for the run (mutual TLS) and
a `client` certificate registered for `pk.serving.connect` in this process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from privkeras.serving.bundle import Manifest, read_manifest
from privkeras.serving.limits import ServingLimits

__all__ = ["LocalServers", "local_servers"]

#: The certificate name made for clients in this process.
CLIENT = "client"


class LocalServers:
    """The running processes of `local_servers`.

    Attributes:
        manifest: The served bundle's manifest.
        address: The front server's `host:port` (what clients connect to).
        addresses: `{role: "host:port"}`.
        pids: `{role: pid}`.
        processes: The `privkeras.net.processes.LocalCluster` behind it
            (`.children[role].kill()` to kill one, `.restart(role)`, `.certs_dir`).
    """

    def __init__(self, manifest: Manifest, processes: Any):
        self.manifest, self.processes = manifest, processes
        self.front = manifest.data.get("front", manifest.roles[0])

    @property
    def address(self) -> str:
        return self.processes.addresses[self.front]

    @property
    def addresses(self) -> dict[str, str]:
        return dict(self.processes.addresses)

    @property
    def pids(self) -> dict[str, int]:
        return dict(self.processes.pids)

    def connect(self, **options: Any):
        """`pk.serving.connect(self.address, ...)` with this run's client certificate."""
        from privkeras.serving.client import connect

        options.setdefault("credentials", self.processes.credentials(CLIENT))
        return connect(self.address, server=self.front, **options)

    def stats(self, role: str | None = None) -> dict[str, Any]:
        """A server's `serve.stats` (held requests, batches, its reveal log)."""
        client = self.processes.client(CLIENT)
        try:
            return dict(client.call(role or self.front, "serve.stats", timeout=10).meta)
        finally:
            client.close()

    def __repr__(self) -> str:
        return f"LocalServers(kind={self.manifest.kind!r}, addresses={self.addresses})"


@contextlib.contextmanager
def local_servers(
    bundle_dir: str | os.PathLike,
    tls: bool = True,
    timeout: float = 30.0,
    workdir: str | os.PathLike | None = None,
    **limits: Any,
) -> Iterator[LocalServers]:
    """Starts the server processes of a bundle on loopback; stops them on exit.

    Args:
        bundle_dir: A folder written by `model.export(..., format="mpc" | "he")`.
        tls: Mutual TLS with development certificates (True) or plain text
            (False, warns; loopback debugging only).
        timeout: Every server's deadline for each network wait.
        workdir: Where logs, certificates and the cluster file go (a new
            temporary folder, removed on exit, if None).
        **limits: `ServingLimits` fields (`max_batch_rows`, `max_delay`,
            `rate`, `request_ttl`, ...).

    Yields:
        `LocalServers`: `.address` for `pk.serving.connect`, `.pids`.

    Example:

    ```python
    model.export("credit_model", format="mpc")
    with pk.serving.local_servers("credit_model") as servers:
        client = pk.serving.connect(servers.address)
        client.predict(x)
    ```
    """
    from privkeras.net.processes import LocalCluster
    from privkeras.serving.client import use_credentials

    manifest = read_manifest(bundle_dir)
    flags = dataclasses.replace(ServingLimits(), **limits).flags()
    processes = LocalCluster(
        manifest.roles,
        command=["serve", str(bundle_dir), *flags, "--timeout", repr(float(timeout))],
        auth="mtls" if tls else "insecure",
        driver=CLIENT,
        name_flag="--party",
        workdir=workdir,
        ready_timeout=120.0,
    )
    with processes:
        servers = LocalServers(manifest, processes)
        with use_credentials(processes.credentials(CLIENT), servers.addresses):
            yield servers
