"""`privkeras serve`: one server role of an exported bundle, until SIGTERM.

The command reads the bundle's manifest, finds the engine that wrote it
through the engine registry (`privkeras.backends.registry`: this package
imports no engine), lets the engine load the role's files (every digest
checked first) and register its methods on a `privkeras.net.Node`, then
serves. Every node also serves gRPC health checks.

Shutting down (SIGTERM or SIGINT): the server takes no new requests, lets
the requests it holds finish and be collected (up to `drain_timeout`
seconds), then the node drains its calls in flight and exits 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from privkeras.errors import CapabilityError
from privkeras.serving.bundle import BundleError, Manifest
from privkeras.serving.limits import ServingLimits

__all__ = ["serve_bundle", "serving_backend"]


def serving_backend(engine: str) -> Any:
    """The serving side of the engine named `engine`, from the engine registry.

    Raises:
        EngineNotAvailableError: No engine of that name is registered.
        CapabilityError: The engine serves no bundles.
    """
    import privkeras.backends  # noqa: F401  (registers every engine that ships with privkeras)
    from privkeras.backends.registry import ENGINES

    cls = ENGINES.get(engine)
    factory = getattr(cls, "serving_backend", None)
    if factory is None:
        raise CapabilityError(f"Engine {engine!r} does not serve exported bundles.")
    return factory()


def resolve_role(manifest: Manifest, role: str | None) -> str:
    """The role to serve: `--party`, else the role folder given, else the bundle's only role.

    Raises:
        BundleError: The role is unknown, or the bundle has several and none was named.
    """
    chosen = role or manifest.role_dir
    if chosen is None and len(manifest.roles) == 1:
        chosen = manifest.roles[0]
    if chosen is None:
        raise BundleError(
            f"Expected a role to serve: the bundle has {list(manifest.roles)}. Received: "
            "none (serve a role's folder, e.g. BUNDLE/p0, or pass --party p0)"
        )
    if chosen not in manifest.roles or (manifest.role_dir not in (None, chosen)):
        raise BundleError(
            f"Expected a role of this bundle folder ({[manifest.role_dir] if manifest.role_dir else list(manifest.roles)}). "
            f"Received: --party {chosen}"
        )
    return chosen


def serve_bundle(
    manifest: Manifest,
    role: str,
    node: Any,
    limits: ServingLimits,
    timeout: float,
    *,
    drain_timeout: float = 10.0,
    on_ready: Any = None,
    parent_pid: int | None = None,
) -> int:
    """Loads the role, serves it on `node` until SIGTERM/SIGINT, drains, returns 0.

    Args:
        manifest: The bundle's manifest (`read_manifest`).
        role: The role this process serves.
        node: An unstarted `privkeras.net.Node` named `role`.
        limits: The server's `ServingLimits`.
        timeout: Seconds of every network wait.
        drain_timeout: Seconds to let held requests finish on shutdown.
        on_ready: Called with the started node (announces the address).
        parent_pid: Stop when this process is gone (child processes of tests).
    """
    backend = serving_backend(manifest.engine)
    server = backend.start_server(manifest, role, node, limits, timeout)  # digests first
    node.start()
    if on_ready is not None:
        on_ready(node)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        if parent_pid is not None and os.getppid() != parent_pid:
            break
    started = time.monotonic()
    server.drain(drain_timeout)
    node.stop(grace=max(1.0, drain_timeout - (time.monotonic() - started)))
    return 0


def limits_from_args(args: Any) -> ServingLimits:
    """`ServingLimits` from `privkeras serve`'s flags."""
    return ServingLimits(
        max_batch_rows=args.max_batch_rows,
        max_delay=args.max_delay_ms / 1000.0,
        max_request_rows=args.max_request_rows,
        max_queued=args.max_queued,
        rate=args.rate_limit,
        burst=args.burst,
        request_ttl=args.request_ttl,
        max_held_bytes=int(args.max_held_mb * (1 << 20)),
        max_parallel_batches=args.max_parallel_batches,
        max_sessions=args.max_sessions,
    )
