"""The owner protocol over gRPC (`privkeras.net`): the coordinator's side and the worker's.

Each request is one `privkeras.net` call to the worker, method
`"federated/<request>"`, carrying the very bytes an in-process owner gets
(`wire`) as a single uint8 tensor; the answer comes back the same way. The
transport adds authentication (mutual TLS, or a token over TLS), deadlines
and chunking; a worker that is unreachable, silent past the timeout or
unauthenticated is a `PartyError` (`AuthenticationError`) naming it.

Example:

```python
from privkeras.net import Credentials

owner = pk.DataOwner("127.0.0.1:7001", name="alice",
                     credentials=Credentials.mutual_tls("certs/ca.pem", "certs/coordinator.pem",
                                                        "certs/coordinator.key"))
client = owner.connect()          # an OwnerClient over GrpcTransport
client.describe(timeout=10)
```
"""

from __future__ import annotations

from typing import Any

import numpy as np

from privkeras.backends.federated.data import register_remote_transport
from privkeras.backends.federated.protocol import Transport
from privkeras.errors import PrivacyPolicyError

__all__ = ["METHOD_PREFIX", "GrpcTransport", "register_owner_methods"]

METHOD_PREFIX = "federated/"
#: Requests a worker serves (aggregation messages are `federated/aggregation/...`).
REQUESTS = ("describe", "configure", "train", "evaluate")


def _credentials(options: dict[str, Any]):
    from privkeras.net.credentials import Credentials

    given = options.get("credentials")
    if given is not None:
        return given
    keys = {"ca", "cert", "key", "token", "token_file", "insecure"}
    unknown = sorted(set(options) - keys - {"client_name"})
    if unknown:
        raise PrivacyPolicyError(
            f"Expected DataOwner credentials among {sorted(keys | {'credentials'})}. "
            f"Received: {unknown}"
        )
    return Credentials.from_files(**{k: v for k, v in options.items() if k in keys})


class GrpcTransport(Transport):
    """Calls a `privkeras worker` through a `privkeras.net.Client`.

    Args:
        owner: The `DataOwner` (its address, name and credentials).
    """

    concurrent = True

    def __init__(self, owner: Any):
        super().__init__()
        from privkeras.net.client import Client

        credentials = _credentials(owner.credentials)
        name = owner.credentials.get("client_name") or credentials.identity or "coordinator"
        self.owner_name = owner.name
        self._authority = None if credentials.insecure else credentials.ca_cert
        self._client = Client(name, {owner.name: owner.address}, credentials=credentials)

    def _exchange(self, method: str, data: bytes, timeout: float) -> bytes:
        meta = {}
        if method.startswith("aggregation/"):  # an aggregator's own message
            method, meta = "aggregation", {"method": method}
        reply = self._client.call(
            self.owner_name,
            METHOD_PREFIX + method,
            [np.frombuffer(data, dtype=np.uint8)],
            meta,
            timeout=timeout,
        )
        return reply.tensors[0].tobytes() if reply.tensors else b""

    def certificate_authority(self) -> bytes | None:
        """The CA the coordinator checks the worker's server certificate against."""
        return self._authority

    def close(self) -> None:
        self._client.close()


def register_owner_methods(node: Any, service: Any) -> None:
    """Serves an `OwnerService`'s requests on a `privkeras.net.Node`."""
    from privkeras.net.client import Reply

    def handler_for(method: str):
        def handle(request) -> Reply:
            data = request.tensors[0].tobytes() if request.tensors else b""
            answer = service.handle(method, data)
            return Reply([np.frombuffer(answer, dtype=np.uint8)])

        return handle

    for method in REQUESTS:
        node.register(METHOD_PREFIX + method, handler_for(method))
    node.register(METHOD_PREFIX + "aggregation", _aggregation_handler(service))


def _aggregation_handler(service: Any):
    from privkeras.net.client import Reply

    def handle(request) -> Reply:
        data = request.tensors[0].tobytes() if request.tensors else b""
        method = str(request.meta.get("method", ""))
        answer = service.handle(method, data)
        return Reply([np.frombuffer(answer, dtype=np.uint8)])

    return handle


register_remote_transport(GrpcTransport)
