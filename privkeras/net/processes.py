"""Start privkeras commands as child processes on free loopback ports, and always stop them.

What tests, examples, `local_cluster`, `local_owners` and `local_servers`
build on. A child runs `python -m privkeras.cli.main COMMAND ...
--listen 127.0.0.1:0 --ready-file F --parent-pid P`; it writes its bound
address to F once it serves, and stops by itself if its parent dies. Its
stdout and stderr go to a log file whose tail is put into every error about
it.

Stopping is SIGTERM to the child's process group, then SIGKILL after a grace
period; `LocalProcesses.__exit__` and interpreter exit (`atexit`) stop every
child still running.

Example:

```python
from privkeras.net.processes import LocalCluster

with LocalCluster(["p0", "p1"], command=["net-echo"]) as cluster:
    client = cluster.client()               # a "driver" Client with its own certificate
    client.call("p0", "echo", [np.arange(3)])
    cluster.addresses, cluster.pids
```
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from privkeras.errors import PartyError

__all__ = ["ChildProcess", "LocalCluster", "LocalProcesses", "start_process"]

_LIVE: set[ChildProcess] = set()
_LIVE_LOCK = threading.Lock()


class ChildProcess:
    """One started privkeras command.

    Attributes:
        name: The node's peer name.
        address: Its bound `host:port` (known once `start_process` returns).
        log_path: Where its stdout and stderr go.
    """

    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path, ready_path: Path):
        self.name, self.popen, self.log_path, self.ready_path = name, popen, log_path, ready_path
        self.address: str | None = None

    def __repr__(self) -> str:
        return f"ChildProcess(name={self.name!r}, pid={self.pid}, address={self.address!r})"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, now, to the whole process group (for fault tests)."""
        self._signal_group(signal.SIGKILL)
        self._reap(10.0)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            if self._reap(grace) is None:
                self._signal_group(signal.SIGKILL)
                self._reap(10.0)
        with _LIVE_LOCK:
            _LIVE.discard(self)
        return self.popen.returncode

    def log_tail(self, nbytes: int = 4000) -> str:
        """The end of the child's log (its stdout and stderr)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-nbytes:].decode("utf-8", "replace")

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def _reap(self, seconds: float) -> int | None:
        try:
            return self.popen.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    workdir: str | os.PathLike,
    ready_timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> ChildProcess:
    """Starts `privkeras ARGV... --ready-file ... --parent-pid ...` and waits until it serves.

    Args:
        name: The node's name (names its log and ready files).
        argv: The command and its flags, e.g. `["net-echo", "--name", "p0",
            "--listen", "127.0.0.1:0", "--certs", DIR]`.
        workdir: Where the log and ready files go.
        ready_timeout: Seconds to wait for the ready file.
        env: Extra environment variables.

    Raises:
        PartyError: The child exited, or did not get ready in time; the
            message carries the tail of its log. The child is stopped first.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ready_path, log_path = workdir / f"{name}.ready.json", workdir / f"{name}.log"
    ready_path.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "privkeras.cli.main", *argv,
        "--ready-file", str(ready_path), "--parent-pid", str(os.getpid()),
    ]  # fmt: skip
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
        )
    child = ChildProcess(name, popen, log_path, ready_path)
    with _LIVE_LOCK:
        _LIVE.add(child)
    try:
        child.address = _wait_ready(child, ready_timeout)
    except BaseException:
        child.stop(grace=2.0)
        raise
    return child


def _wait_ready(child: ChildProcess, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.ready_path.exists():
            try:
                return json.loads(child.ready_path.read_text())["address"]
            except (OSError, ValueError, KeyError):
                pass
        if not child.alive():
            raise PartyError(
                f"Expected {child.name!r} to start serving. Received: it exited with code "
                f"{child.popen.returncode}. Its log ends:\n{child.log_tail()}"
            )
        time.sleep(0.02)
    raise PartyError(
        f"Expected {child.name!r} to serve within {timeout:.0f} s. Received: no ready file. "
        f"Its log ends:\n{child.log_tail()}"
    )


class LocalProcesses:
    """A group of child processes in one work folder, stopped together.

    Args:
        workdir: Folder for logs, ready files and the cluster file (a new
            temporary folder, removed on exit, if None).
    """

    def __init__(self, workdir: str | os.PathLike | None = None):
        self._own_dir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="privkeras-")) if workdir is None else Path(workdir)
        )
        self.children: dict[str, ChildProcess] = {}

    def start(self, name: str, argv: Sequence[str], **options: Any) -> ChildProcess:
        """Starts one child (see `start_process`)."""
        if name in self.children:
            raise PartyError(f"Expected a new process name. Received: name={name!r} (running)")
        child = start_process(name, argv, workdir=self.workdir, **options)
        self.children[name] = child
        return child

    @property
    def addresses(self) -> dict[str, str]:
        return {name: child.address for name, child in self.children.items()}

    @property
    def pids(self) -> dict[str, int]:
        return {name: child.pid for name, child in self.children.items()}

    def stop(self, grace: float = 5.0) -> None:
        """Stops every child (in parallel, each SIGTERM then SIGKILL after `grace`)."""
        threads = [
            threading.Thread(target=child.stop, args=(grace,)) for child in self.children.values()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def __enter__(self) -> LocalProcesses:
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.workdir, ignore_errors=True)


class LocalCluster(LocalProcesses):
    """Named nodes on loopback: dev certificates, one process each, a shared cluster file.

    Each node is started as `privkeras COMMAND --name NAME --listen 127.0.0.1:0
    --cluster WORKDIR/cluster.json` plus its credentials; once all serve, the
    cluster file is written with every address (nodes re-read it when they
    meet a name they lack), and each is health-checked.

    Args:
        names: Node names.
        command: The command and its flags before the transport flags,
            e.g. `["net-echo"]`; `--name NAME` is added unless `name_flag` is None.
        auth: "mtls" (default), "token" (token over TLS) or "insecure".
        driver: Name of the certificate made for the calling process.
        extra: Extra `{name: address}` entries for the cluster file (the
            driver's own node, if it serves).
        name_flag: The flag that passes a node's name (`--name`, `--id`).
        extra_certificates: More names to make certificates for in the same
            CA (processes started later with `start`, e.g. data owners' workers).
        workdir: As for `LocalProcesses`.
        ready_timeout: Seconds each node has to start serving.
    """

    def __init__(
        self,
        names: Iterable[str],
        command: Sequence[str],
        *,
        auth: str = "mtls",
        driver: str = "driver",
        extra: Mapping[str, str] | None = None,
        name_flag: str | None = "--name",
        workdir: str | os.PathLike | None = None,
        ready_timeout: float = 60.0,
        extra_certificates: Iterable[str] = (),
    ):
        super().__init__(workdir)
        if auth not in ("mtls", "token", "insecure"):
            raise ValueError(
                f"Expected auth in ['mtls', 'token', 'insecure']. Received: auth={auth!r}"
            )
        self.names, self.command, self.auth, self.driver = list(names), list(command), auth, driver
        self.extra, self.name_flag, self.ready_timeout = dict(extra or {}), name_flag, ready_timeout
        self.certs_dir = self.workdir / "certs"
        self.cluster_file = self.workdir / "cluster.json"
        self.extra_certificates = list(extra_certificates)

    def __enter__(self) -> LocalCluster:
        try:
            self.start_all()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start_all(self) -> LocalCluster:
        """Makes certificates, starts every node, writes the cluster file, checks health."""
        from privkeras.net.certs import make_dev_certs
        from privkeras.net.cluster import write_cluster_file

        if self.auth != "insecure":
            make_dev_certs(
                self.certs_dir, [*self.names, self.driver, *self.extra_certificates], overwrite=True
            )
        write_cluster_file(self.cluster_file, self.extra)
        errors: list[BaseException] = []

        def start(name: str) -> None:  # children start at once: each may import a framework
            try:
                self.start(name, self.argv(name), ready_timeout=self.ready_timeout,
                           env=self.credential_env())  # fmt: skip
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=start, args=(name,)) for name in self.names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        write_cluster_file(self.cluster_file, {**self.extra, **self.addresses})
        client = self.client()
        try:
            client.wait_healthy(self.names, timeout=self.ready_timeout)
        finally:
            client.close()
        return self

    def argv(self, name: str, listen: str = "127.0.0.1:0") -> list[str]:
        """The command line of node `name` (without the ready-file flags)."""
        argv = [*self.command, *([self.name_flag, name] if self.name_flag else [])]
        argv += ["--listen", listen, "--cluster", str(self.cluster_file)]
        return argv + self.credential_flags()

    def restart(self, name: str) -> ChildProcess:
        """Starts node `name` again on the address it had (after it was killed or stopped)."""
        old = self.children.pop(name)
        old.stop(grace=1.0)
        return self.start(
            name, self.argv(name, listen=old.address), ready_timeout=self.ready_timeout,
            env=self.credential_env(),
        )  # fmt: skip

    def credential_flags(self) -> list[str]:
        if self.auth == "insecure":
            return ["--insecure"]
        return ["--certs", str(self.certs_dir)]

    def credential_env(self) -> dict[str, str]:
        if self.auth != "token":
            return {}
        return {"PRIVKERAS_TOKEN": (self.certs_dir / "token").read_text().strip()}

    def credentials(self, name: str | None = None):
        """`Credentials` for `name` (default: the driver) in this cluster's mode."""
        from privkeras.net.credentials import Credentials

        name = name or self.driver
        if self.auth == "insecure":
            return Credentials.insecure_plaintext()
        ca = self.certs_dir / "ca.pem"
        cert, key = self.certs_dir / f"{name}.pem", self.certs_dir / f"{name}.key"
        if self.auth == "token":
            token = (self.certs_dir / "token").read_text()
            return Credentials.token_tls(token, ca, cert, key)
        return Credentials.mutual_tls(ca, cert, key)

    def client(self, name: str | None = None, **options: Any):
        """A `Client` named `name` (default: the driver) that reaches every node."""
        from privkeras.net.client import Client

        return Client(
            name or self.driver, dict(self.addresses), credentials=self.credentials(name), **options
        )

    def node(self, name: str | None = None, **options: Any):
        """A started `Node` named `name` (default: the driver) on a free loopback port.

        The cluster file is rewritten to include it, so the children reach it.
        """
        from privkeras.net.cluster import write_cluster_file
        from privkeras.net.node import Node

        name = name or self.driver
        node = Node(name, peers=dict(self.addresses), credentials=self.credentials(name), **options)
        node.start()
        self.extra[name] = node.address
        write_cluster_file(self.cluster_file, {**self.extra, **self.addresses})
        return node


@atexit.register
def _stop_all_children() -> None:
    with _LIVE_LOCK:
        children = list(_LIVE)
    for child in children:
        child.stop(grace=2.0)
