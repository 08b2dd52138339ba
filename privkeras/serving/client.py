"""`pk.serving.connect`: a client of a served bundle, for private predictions.

```python
import privkeras as pk

client = pk.serving.connect("10.0.0.1:7100")        # or the bundle's manifest.json + cluster=
y = client.predict(x)                                # a batch, or one row
client.close()
```

The client reads the bundle's public manifest (from disk, or from the front
server), checks that every server serves that same bundle (manifest
digest), and then lets the engine that wrote it make the requests: MPC
secret-shares the rows to the parties and adds up the output shares they
return; HE makes the keys, registers the public context once per session,
encrypts, and decrypts. Only the client ever sees its rows and outputs in
the clear.

Credentials: `credentials=`, else the ones `pk.serving.local_servers`
registered for its servers, else `PRIVKERAS_CERTS` (a `privkeras certs`
folder, with the client's name's certificate), or `PRIVKERAS_CA`,
`PRIVKERAS_CERT`, `PRIVKERAS_KEY`, `PRIVKERAS_TOKEN`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from privkeras.errors import AuthenticationError, InvalidInputError, PartyError
from privkeras.serving.bundle import BundleError, Manifest, parse_manifest, read_manifest

__all__ = ["ServingClient", "connect"]

#: Names tried, in order, for the front server of a bare `host:port` (MPC's p0, HE's server).
FRONT_NAMES = ("p0", "server")

_LOCAL: list[tuple[frozenset[str], Any]] = []
_LOCAL_LOCK = threading.Lock()


@contextlib.contextmanager
def use_credentials(credentials: Any, addresses: Mapping[str, str]):
    """Makes `credentials` the clients' for servers at `addresses` while open (local_servers)."""
    entry = (frozenset(addresses.values()), credentials)
    with _LOCAL_LOCK:
        _LOCAL.append(entry)
    try:
        yield credentials
    finally:
        with _LOCAL_LOCK:
            _LOCAL.remove(entry)


def _credentials_for(addresses: Mapping[str, str], name: str) -> Any:
    from privkeras.net import Credentials

    with _LOCAL_LOCK:
        for known, credentials in reversed(_LOCAL):
            if set(addresses.values()) & known:
                return credentials
    folder = os.environ.get("PRIVKERAS_CERTS")
    ca, cert, key = (os.environ.get(f"PRIVKERAS_{n}") for n in ("CA", "CERT", "KEY"))
    if folder:
        ca = ca or os.path.join(folder, "ca.pem")
        cert = cert or os.path.join(folder, f"{name}.pem")
        key = key or os.path.join(folder, f"{name}.key")
    if ca is None and not os.environ.get("PRIVKERAS_TOKEN"):
        raise AuthenticationError(
            "Expected the client's credentials: credentials=, PRIVKERAS_CERTS (a `privkeras "
            "certs` folder with a certificate for the client's name), or PRIVKERAS_CA/"
            "PRIVKERAS_CERT/PRIVKERAS_KEY, or PRIVKERAS_TOKEN. Received: none"
        )
    return Credentials.from_files(ca=ca, cert=cert, key=key)


class ServingClient:
    """A connection to one served bundle.

    Attributes:
        manifest: The bundle's public `Manifest`.
        kind: `"mpc"` or `"he"`.
        input_shape: The shape of one row.
        output_shape: The shape of one output row.
    """

    def __init__(self, manifest: Manifest, engine_client: Any, transport: Any):
        self.manifest, self._engine_client, self.transport = manifest, engine_client, transport
        self.kind = manifest.kind
        self.input_shape, self.output_shape = manifest.input_shape, manifest.output_shape

    def predict(self, x: Any, timeout: float | None = None) -> np.ndarray:
        """Private predictions, in the clear for this client only.

        Args:
            x: A batch `(n, *input_shape)` or one row `input_shape` (numpy or
                anything `np.asarray` takes).
            timeout: Seconds for the whole prediction (default: `connect`'s).

        Returns:
            float32 outputs `(n, *output_shape)`, or `output_shape` for one row.

        Raises:
            InvalidInputError: A wrong shape, no rows, NaN or infinities.
            PrecisionOverflowError: Values beyond the bundle's input range.
            PartyError: A server is unreachable, dead, busy or too slow (named).
            AuthenticationError: A server refused this client's credentials.
        """
        values, single = self._checked(x)
        outputs = self._engine_client.predict_batch(values, timeout=timeout)
        return outputs[0] if single else outputs

    def _checked(self, x: Any) -> tuple[np.ndarray, bool]:
        from privkeras.backends.validation import check_finite

        try:
            values = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise InvalidInputError(
                f"Expected numeric inputs of shape (n, {_shown(self.input_shape)}) or "
                f"({_shown(self.input_shape)}). Received: {type(x).__name__} ({error})"
            ) from None
        single = values.shape == self.input_shape
        if single:
            values = values[None]
        if values.shape[1:] != self.input_shape or not len(values):
            raise InvalidInputError(
                f"Expected inputs of shape (n, {_shown(self.input_shape)}) with n >= 1, or one "
                f"row of shape ({_shown(self.input_shape)}). Received: shape={values.shape}"
            )
        check_finite(values, "x")
        return values, single

    def close(self) -> None:
        """Closes the connections (and, for HE, forgets the keys)."""
        self._engine_client.close()
        self.transport.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServingClient(kind={self.kind!r}, engine={self.manifest.engine!r})"


def connect(
    target: str | os.PathLike,
    *,
    cluster: Mapping[str, str] | str | os.PathLike | None = None,
    credentials: Any = None,
    name: str = "client",
    server: str | None = None,
    timeout: float = 30.0,
) -> ServingClient:
    """Connects to the servers of a bundle.

    Args:
        target: The front server's `"host:port"` (it tells the client the
            manifest and the other servers' addresses), or the bundle's
            `manifest.json` / folder (then `cluster` gives the addresses).
        cluster: `{role: "host:port"}` or a cluster JSON file (with a manifest
            target; optional with an address target).
        credentials: `privkeras.net.Credentials`; default: see the module docstring.
        name: The client's name (its certificate's, under mutual TLS).
        server: The front server's name for an address target (default:
            tried as "p0", then "server").
        timeout: Default seconds of every prediction.

    Returns:
        A `ServingClient`.

    Raises:
        BundleError: An unreadable manifest, or servers serving another bundle.
        PartyError: The servers are unreachable.
        AuthenticationError: Missing or refused credentials.

    Example:

    ```python
    with pk.serving.local_servers("credit_model") as servers:
        client = pk.serving.connect(servers.address)
        client.predict(x[:5]), client.predict(x[0])
    ```
    """
    from privkeras.net import Client, ClusterMap
    from privkeras.serving.server import serving_backend

    local = _local_manifest(target)
    addresses = ClusterMap(cluster).as_dict() if cluster is not None else {}
    if local is None:
        names = [server] if server else list(FRONT_NAMES)
        fronts = {n: str(target) for n in names}
    else:
        front = local.data.get("front", local.roles[0])
        if front not in addresses:
            raise PartyError(
                f"Expected cluster= to give the address of server {front!r} of the bundle "
                f"{str(target)!r}. Received: cluster names {sorted(addresses)}"
            )
        fronts = {front: addresses[front]}
    credentials = credentials or _credentials_for({**addresses, **fronts}, name)
    transport = Client(name, {**addresses, **fronts}, credentials=credentials, timeout=timeout)
    try:
        front, info = _info(transport, fronts, timeout)
        manifest = parse_manifest(bytes(np.asarray(info.tensors[0], np.uint8)), f"{front}'s reply")
        if local is not None and local.digest != manifest.digest:
            raise BundleError(
                f"Expected server {front!r} to serve the bundle of {str(target)!r} (manifest "
                f"{local.digest[:12]}). Received: manifest {manifest.digest[:12]}"
            )
        for role, address in dict(info.meta.get("addresses") or {}).items():
            if role in manifest.roles and role not in addresses:
                transport.peers.add(role, address)
        engine_client = serving_backend(manifest.engine).connect(
            manifest, transport, info.meta, timeout
        )
    except BaseException:
        transport.close()
        raise
    return ServingClient(manifest, engine_client, transport)


def _local_manifest(target: str | os.PathLike) -> Manifest | None:
    path = Path(target)
    if isinstance(target, os.PathLike) or path.exists() or path.suffix == ".json":
        return read_manifest(path)
    return None


def _info(transport: Any, fronts: Mapping[str, str], timeout: float) -> tuple[str, Any]:
    """Asks the front server for the manifest; with several candidate names, the one whose
    certificate matches answers (the others fail the TLS name check at once)."""
    failure: BaseException | None = None
    for front in fronts:
        try:
            return front, transport.call(front, "serve.info", timeout=timeout)
        except PartyError as error:
            other_name = isinstance(error, AuthenticationError) or "Expected frames for" in str(
                error
            )
            if len(fronts) == 1 or not other_name:
                raise
            failure = error
    raise failure


def _shown(shape: tuple[int, ...]) -> str:
    return ", ".join(map(str, shape))
