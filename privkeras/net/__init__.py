"""The transport every engine uses: gRPC between named peers, tensors in binary frames.

- `Node`: one gRPC server per process plus a client to its peers; tagged
  point-to-point messages (`send`, `recv`, `exchange`) for protocol rounds,
  and calls to registered handlers (`register`, `call`).
- `Client`: the calling half only (a driver that serves nothing).
- `Credentials`: mutual TLS, a token over TLS, or (asked for) plain text.
- `wire`: the frame format (never pickle), chunking, bit-packing.
- `processes`: start CLI processes on free loopback ports and always stop them.

Names are imported on first use, so `privkeras --help` stays free of gRPC.
See docs/deployment.md for ports, certificates, tokens and timeouts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Client": "privkeras.net.client",
    "PendingSend": "privkeras.net.client",
    "Reply": "privkeras.net.client",
    "ClusterMap": "privkeras.net.cluster",
    "Credentials": "privkeras.net.credentials",
    "InsecureTransportWarning": "privkeras.net.credentials",
    "Node": "privkeras.net.node",
    "Request": "privkeras.net.node",
    "new_job_id": "privkeras.net.node",
    "Frame": "privkeras.net.wire",
    "WireLimits": "privkeras.net.wire",
    "bits": "privkeras.net.wire",
    "make_dev_certs": "privkeras.net.certs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'privkeras.net' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "wire", "processes", "options", "certs", "cluster", "credentials"])


if TYPE_CHECKING:
    from privkeras.net.certs import make_dev_certs  # noqa: F401
    from privkeras.net.client import Client, PendingSend, Reply  # noqa: F401
    from privkeras.net.cluster import ClusterMap  # noqa: F401
    from privkeras.net.credentials import Credentials, InsecureTransportWarning  # noqa: F401
    from privkeras.net.node import Node, Request, new_job_id  # noqa: F401
    from privkeras.net.wire import Frame, WireLimits, bits  # noqa: F401
