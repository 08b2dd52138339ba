"""`privkeras serve`: serve one role of an exported bundle (MPC party or HE server) until stopped."""

from __future__ import annotations

import argparse

from privkeras.net import options

EXAMPLE = """examples (development certificates from `privkeras certs certs --parties p0,p1,dealer,client`):
  # MPC (model.export("credit_model", format="mpc"), protocol pond): one process per role
  privkeras serve credit_model/p0 --listen 10.0.0.1:7100 --cluster cluster.json --certs certs
  privkeras serve credit_model/p1 --listen 10.0.0.2:7100 --cluster cluster.json --certs certs
  privkeras serve credit_model/dealer --listen 10.0.0.3:7100 --cluster cluster.json --certs certs
  # HE (model.export("credit_model_he", format="he")): one server
  privkeras serve credit_model_he --listen 10.0.0.4:7200 --certs certs

cluster.json maps the roles to addresses, e.g.
  {"p0": "10.0.0.1:7100", "p1": "10.0.0.2:7100", "dealer": "10.0.0.3:7100"}
clients: pk.serving.connect("10.0.0.1:7100").predict(x)   (see docs/serving.md)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve private predictions of an exported bundle (MPC party or HE server)",
        description=(
            "Serves one role of a bundle written by model.export(dir, format='mpc' or 'he'): "
            "checks every file against the manifest's digests, batches concurrent requests, "
            "serves gRPC health checks, and drains in-flight requests on SIGTERM."
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "bundle", metavar="BUNDLE", help="the bundle folder, or one role's folder in it (BUNDLE/p0)"
    )
    parser.add_argument(
        "--party", metavar="ROLE", help="the role to serve when BUNDLE is the top folder (p0, ...)"
    )
    options.add_transport_arguments(parser)
    limits = parser.add_argument_group("batching and limits")
    limits.add_argument(
        "--max-batch-rows",
        type=int,
        default=128,
        metavar="N",
        help="rows of concurrent requests run as one batch (default 128)",
    )
    limits.add_argument(
        "--max-delay-ms",
        type=float,
        default=5.0,
        metavar="MS",
        help="how long a request waits for others to batch with (default 5)",
    )
    limits.add_argument(
        "--max-request-rows",
        type=int,
        default=128,
        metavar="N",
        help="rows one request may carry (default 128)",
    )
    limits.add_argument(
        "--max-queued",
        type=int,
        default=1024,
        metavar="N",
        help="requests waiting for a batch; more are refused (default 1024)",
    )
    limits.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        metavar="R",
        help="requests per second per client name (default: unlimited)",
    )
    limits.add_argument(
        "--burst",
        type=int,
        default=None,
        metavar="N",
        help="requests a client may send at once above the rate (default 2 x R)",
    )
    limits.add_argument(
        "--request-ttl",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a request is kept for a client that went away (default 30)",
    )
    limits.add_argument(
        "--max-held-mb",
        type=float,
        default=256.0,
        metavar="MB",
        help="memory for clients' inputs and outputs (default 256)",
    )
    limits.add_argument(
        "--max-parallel-batches",
        type=int,
        default=2,
        metavar="N",
        help="batches that run at once (default 2)",
    )
    limits.add_argument(
        "--max-sessions",
        type=int,
        default=64,
        metavar="N",
        help="HE client sessions (public contexts) kept (default 64)",
    )
    limits.add_argument(
        "--max-concurrent-calls",
        type=int,
        default=256,
        metavar="N",
        help="calls served at once; more are refused as busy (default 256)",
    )
    limits.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="on SIGTERM, seconds for held requests to finish (default 10)",
    )
    parser.set_defaults(run=lambda args: options.run_command(serve, args))


def serve(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Servers rebuild architectures and compute on ring kernels or CKKS: Keras's torch
    # backend starts faster than TensorFlow (an `mpc-tfe` bundle still loads TensorFlow).
    os.environ.setdefault("KERAS_BACKEND", "torch")
    from privkeras.serving.bundle import read_manifest
    from privkeras.serving.server import limits_from_args, resolve_role, serve_bundle

    manifest = read_manifest(args.bundle)
    role = resolve_role(manifest, args.party)
    limits = limits_from_args(args)
    node = options.node_from_args(args, name=role, max_concurrent_calls=args.max_concurrent_calls)
    return serve_bundle(
        manifest,
        role,
        node,
        limits,
        args.timeout,
        drain_timeout=args.drain_timeout,
        on_ready=lambda started: options.announce_ready(args, started),
        parent_pid=getattr(args, "parent_pid", None),
    )
