"""`privkeras party`: a long-lived MPC compute party (or Pond's dealer) serving jobs over gRPC."""

from __future__ import annotations

import argparse

from privkeras.net import options

EXAMPLE = """example (development certificates from `privkeras certs certs --parties p0,p1,dealer`):
  privkeras party --id p0 --listen 127.0.0.1:7100 --cluster cluster.json --certs certs

cluster.json maps party names to addresses, e.g.
  {"p0": "10.0.0.1:7100", "p1": "10.0.0.2:7100", "dealer": "10.0.0.3:7100"}
and the driver uses the same map: pk.MPC(protocol="pond", parties={...}).
"""

ROLES = ("p0", "p1", "p2", "dealer")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "party",
        help="run an MPC compute party (or Pond's dealer) that serves jobs until stopped",
        description=(
            "Serves MPC jobs for a driver (pk.MPC(parties={...})): holds only its own shares, "
            "talks to the other parties over mutual TLS, stops cleanly on SIGTERM."
        ),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--id", required=True, choices=ROLES, help="this party's name")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for the ring kernels (default: the framework's; give each of several "
        "parties on one host its share of the cores)",
    )
    parser.add_argument(
        "--allow-seeded-jobs",
        action="store_true",
        help="take jobs with MPC(seed=...), whose keys all derive from the seed: tests only",
    )
    options.add_transport_arguments(parser)
    parser.set_defaults(run=lambda args: options.run_command(serve, args))


def serve(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # A party only rebuilds architectures and computes on ring kernels: Keras's torch
    # backend starts faster than TensorFlow (a `tfe` job still loads TensorFlow).
    os.environ.setdefault("KERAS_BACKEND", "torch")
    node = options.node_from_args(args, name=args.id)  # every check before anything starts
    if args.threads is not None:
        if args.threads < 1:
            from privkeras.errors import PrivacyPolicyError

            raise PrivacyPolicyError(f"Expected --threads >= 1. Received: --threads={args.threads}")
        for variable in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            os.environ[variable] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    import keras  # noqa: F401 - loaded before announcing ready, not during the first job

    from privkeras.backends.mpc import party  # noqa: F401
    from privkeras.backends.mpc.network import PartyService

    PartyService(node, timeout=args.timeout, allow_seeded_jobs=args.allow_seeded_jobs)
    return options.serve(args, node)
