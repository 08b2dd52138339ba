"""Serve encrypted models: export once, answer many clients' private predictions.

```python
import privkeras as pk

model.export("credit_model", format="mpc")          # one share bundle per compute party
# each party's host: privkeras serve credit_model/p0 --listen ... --cluster cluster.json
with pk.serving.local_servers("credit_model") as servers:   # or all on loopback, for tests
    client = pk.serving.connect(servers.address)
    y = client.predict(x)                            # plaintext outputs, to this client only
```

- `connect(target, ...)`: a `ServingClient` for a front server's address or a
  bundle's manifest; `predict` takes a batch or one row.
- `local_servers(bundle_dir, tls=True)`: the bundle's server processes on
  loopback (`.address`, `.pids`), stopped on exit.
- `ServingLimits`: batching (rows, delay), request size and rate, memory, TTLs.
- `read_manifest`, `BundleError`: a bundle's public manifest; what a bad one raises.

Names are imported on first use, so `privkeras serve --help` stays fast.
See docs/serving.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ServingClient": "privkeras.serving.client",
    "connect": "privkeras.serving.client",
    "LocalServers": "privkeras.serving.local",
    "local_servers": "privkeras.serving.local",
    "ServingLimits": "privkeras.serving.limits",
    "BundleError": "privkeras.serving.bundle",
    "Manifest": "privkeras.serving.bundle",
    "read_manifest": "privkeras.serving.bundle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'privkeras.serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "batching", "bundle", "client", "limits", "local", "server"])


if TYPE_CHECKING:
    from privkeras.serving.bundle import BundleError, Manifest, read_manifest  # noqa: F401
    from privkeras.serving.client import ServingClient, connect  # noqa: F401
    from privkeras.serving.limits import ServingLimits  # noqa: F401
    from privkeras.serving.local import LocalServers, local_servers  # noqa: F401
