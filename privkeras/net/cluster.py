"""Addresses: `host:port` strings and the cluster map `{peer name: "host:port"}`.

A cluster map is given as a dict or as a JSON file (`cluster.json`):

```json
{"p0": "10.0.0.5:7100", "p1": "10.0.0.6:7100", "dealer": "10.0.0.7:7100"}
```

A file is read again when a name it lacked is asked for, or when it changed
on disk: processes started on free ports (`--listen 127.0.0.1:0`) learn each
other's addresses from a file their parent completes once they are all up,
and a peer restarted on another port is found again.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from privkeras.errors import PartyError, format_received
from privkeras.net.certs import check_peer_name

__all__ = ["ClusterMap", "is_loopback", "parse_address"]

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "*", "[::]"}


def parse_address(address: object, *, what: str = "address") -> tuple[str, int]:
    """Splits `"host:port"` (or `"[v6]:port"`) into `(host, port)`.

    Raises:
        PartyError: The text is not `host:port` with a port in [0, 65535], or the
            host is a wildcard (`0.0.0.0`, `::`): privkeras binds and connects to
            named interfaces only.
    """
    text = address if isinstance(address, str) else None
    host, sep, port_text = (text or "").rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise PartyError(
            f"Expected {what} as 'host:port' with a port in [0, 65535]. "
            + format_received(**{what: address})
        )
    if host in _WILDCARD_HOSTS:
        raise PartyError(
            f"Expected {what} with a specific host (127.0.0.1 on one machine, the interface's "
            "own IP across hosts); every interface (0.0.0.0, ::) is never bound. "
            + format_received(**{what: address})
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether `host` is `localhost` or a loopback IP (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClusterMap:
    """Peer names to addresses, from a dict or a JSON file (re-read on a miss or a change).

    Args:
        source: A mapping `{name: "host:port"}`, a path to a JSON file holding
            one, or None for an empty map (peers added with `add`).

    Raises:
        PartyError: The file cannot be read or parsed, or a name or address is invalid.
    """

    def __init__(self, source: Mapping[str, str] | str | os.PathLike | None = None):
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._stamp: tuple[int, int] | None = None
        self._added: dict[str, str] = {}
        self._file: dict[str, str] = {}
        if isinstance(source, Mapping):
            self._added = _checked(dict(source), "cluster map")
        elif source is not None:
            self._path = Path(source)
            self._load()

    @property
    def path(self) -> Path | None:
        """The cluster file, if the map comes from one."""
        return self._path

    def names(self) -> list[str]:
        """The peers known now, sorted."""
        with self._lock:
            self._refresh_if_changed()
            return sorted({**self._file, **self._added})

    def as_dict(self) -> dict[str, str]:
        with self._lock:
            self._refresh_if_changed()
            return {**self._file, **self._added}

    def add(self, name: str, address: str) -> None:
        """Adds (or moves) a peer."""
        entry = _checked({name: address}, "peer")
        with self._lock:
            self._added.update(entry)

    def address(self, name: str) -> str:
        """The address of peer `name`.

        Raises:
            PartyError: `name` is not in the map (after re-reading the file).
        """
        with self._lock:
            self._refresh_if_changed()
            known = {**self._file, **self._added}
            if name not in known and self._path is not None:
                self._load()
                known = {**self._file, **self._added}
        if name not in known:
            source = f" ({self._path})" if self._path else ""
            raise PartyError(
                f"Expected peer {name!r} in the cluster map{source}, which names {sorted(known)}. "
                + format_received(peer=name)
            )
        return known[name]

    def _refresh_if_changed(self) -> None:
        if self._path is None:
            return
        try:
            stat = self._path.stat()
        except OSError:
            return
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            self._load()

    def _load(self) -> None:
        try:
            stat = self._path.stat()
            text = self._path.read_text()
        except OSError as error:
            raise PartyError(
                f"Expected a readable cluster file. Received: cluster='{self._path}' "
                f"({error.strerror or error})"
            ) from None
        try:
            data = json.loads(text)
        except ValueError as error:
            raise PartyError(
                f"Expected the cluster file '{self._path}' to hold a JSON object of "
                f"{{name: 'host:port'}}. Received: {error}"
            ) from None
        self._file = _checked(data, f"cluster file '{self._path}'")
        self._stamp = (stat.st_mtime_ns, stat.st_size)


def _checked(data: object, what: str) -> dict[str, str]:
    if not isinstance(data, dict):
        raise PartyError(
            f"Expected the {what} to map peer names to 'host:port'. "
            + format_received(type=type(data).__name__)
        )
    for name, address in data.items():
        try:
            check_peer_name(name)
        except ValueError as error:
            raise PartyError(f"In the {what}: {error}") from None
        parse_address(address, what=f"address of {name}")
        if address.rpartition(":")[2] == "0":
            raise PartyError(
                f"Expected a real port for peer {name!r} in the {what}. "
                + format_received(address=address)
            )
    return dict(data)


def write_cluster_file(path: str | os.PathLike, peers: Mapping[str, str]) -> Path:
    """Writes a cluster file atomically (readers never see half of it)."""
    path = Path(path)
    _checked(dict(peers), "cluster map")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(peers), indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
