"""`privkeras worker`: a data owner's long-lived process; its rows never leave it.

The worker loads its data (`--data x.npz` with arrays `x` and `y`,
`--data rows.csv --label COLUMN`, or `--loader module:function` returning
`(x, y)`), then answers the coordinator over gRPC (mutual TLS, or a token
over TLS): it describes its data in summary, trains on request from the
weights it is sent and returns only its update, evaluates, and refuses what
its own rules do not allow:

- `--allow federated,mpc`: what it takes part in (default: federated);
- `--max-epsilon E --delta D`: its privacy budget; its ledger (kept in
  `--ledger FILE`, by default next to the data file) counts every job on
  its data, and a job or round that would go over the budget is refused
  with `PrivacyBudgetExceededError` sent back to the coordinator.

Example:

    privkeras certs certs --parties alice,bob,coordinator
    privkeras worker --name alice --data alice.npz --listen 127.0.0.1:7001 --certs certs \\
        --max-epsilon 8 --delta 1e-5
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from pathlib import Path
from typing import Any

from privkeras.net import options

logger = logging.getLogger("privkeras.worker")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "worker",
        help="serve a data owner's rows for federated training (they never leave it)",
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("Example:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", required=True, help="this owner's name (its certificate's)")
    data = parser.add_argument_group("data (one of --data, --loader)")
    data.add_argument("--data", metavar="FILE", help=".npz with arrays x and y, or a .csv")
    data.add_argument("--label", metavar="COLUMN", help="the label column of a .csv")
    data.add_argument("--loader", metavar="MODULE:FUNCTION", help="a function returning (x, y)")
    rules = parser.add_argument_group("the owner's rules")
    rules.add_argument(
        "--allow", default="federated", help="comma-separated: federated, mpc (default: federated)"
    )
    rules.add_argument("--max-epsilon", type=float, metavar="E", help="privacy budget")
    rules.add_argument("--delta", type=float, metavar="D", help="delta of the budget")
    rules.add_argument(
        "--ledger",
        metavar="FILE",
        help="where the privacy ledger is kept (default: DATA.ledger.json)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for local training (default: the framework's; give each of several "
        "workers on one host its share of the cores)",
    )
    parser.add_argument(
        "--allow-seeded-jobs",
        action="store_true",
        help="share rows in MPC jobs with MPC(seed=...) (every key from the seed): tests only",
    )
    options.add_transport_arguments(parser, cluster=False)
    parser.set_defaults(run=lambda args: options.run_command(run, args))


def load_data(args: argparse.Namespace) -> tuple[Any, Any]:
    """The owner's `(x, y)` from `--data` or `--loader`.

    Raises:
        OwnerDataError: A missing or unreadable file, a missing array or column.
    """
    from privkeras.backends.federated.errors import OwnerDataError

    if (args.data is None) == (args.loader is None):
        raise OwnerDataError(
            "Expected exactly one of --data and --loader. "
            f"Received: --data={args.data!r}, --loader={args.loader!r}"
        )
    if args.loader is not None:
        return _call_loader(args.loader)
    path = Path(args.data)
    if not path.is_file():
        raise OwnerDataError(f"Expected a data file. Received: --data={args.data!r} (not found)")
    if path.suffix == ".npz":
        return _load_npz(path)
    if path.suffix == ".csv":
        return _load_csv(path, args.label)
    raise OwnerDataError(
        f"Expected --data to be a .npz or a .csv (or use --loader). Received: {path.name!r}"
    )


def _load_npz(path: Path):
    import numpy as np

    from privkeras.backends.federated.errors import OwnerDataError

    with np.load(path, allow_pickle=False) as archive:
        missing = [name for name in ("x", "y") if name not in archive.files]
        if missing:
            raise OwnerDataError(
                f"Expected arrays 'x' and 'y' in {path.name}. Received: {sorted(archive.files)}"
            )
        return archive["x"], archive["y"]


def _load_csv(path: Path, label: str | None):
    import csv

    import numpy as np

    from privkeras.backends.federated.errors import OwnerDataError

    if not label:
        raise OwnerDataError("Expected --label COLUMN with a .csv. Received: no --label")
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    header, body = rows[0], rows[1:]
    if label not in header:
        raise OwnerDataError(f"Expected a column {label!r} in {path.name}. Received: {header}")
    try:
        table = np.array([[float(cell) for cell in row] for row in body], dtype=np.float64)
    except ValueError as error:
        raise OwnerDataError(f"Expected numbers in every cell of {path.name}: {error}") from None
    column = header.index(label)
    return np.delete(table, column, axis=1).astype(np.float32), table[:, column]


def _call_loader(spec: str):
    from privkeras.backends.federated.errors import OwnerDataError

    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise OwnerDataError(f"Expected --loader MODULE:FUNCTION. Received: {spec!r}")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise OwnerDataError(f"Expected a loader {spec!r} that can be imported: {error}") from None
    result = function()
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise OwnerDataError(f"Expected {spec} to return (x, y). Received: {type(result).__name__}")
    return result


def owner_rules(args: argparse.Namespace):
    """`OwnerRules` from --allow, --max-epsilon, --delta and --ledger."""
    from privkeras.backends.federated.owner import OwnerRules

    allow = tuple(kind.strip() for kind in args.allow.split(",") if kind.strip())
    ledger = args.ledger
    if ledger is None and args.max_epsilon is not None:
        if args.data is None:
            from privkeras.errors import PrivacyPolicyError

            raise PrivacyPolicyError(
                "Expected --ledger FILE with --max-epsilon and --loader (where the ledger is "
                "kept across restarts). Received: no --ledger"
            )
        ledger = os.fspath(args.data) + ".ledger.json"
    return OwnerRules(allow, args.max_epsilon, args.delta, ledger)


def limit_threads(threads: int | None) -> None:
    """Caps the training framework's CPU threads (before it is imported)."""
    if threads is None:
        return
    if threads < 1:
        from privkeras.errors import PrivacyPolicyError

        raise PrivacyPolicyError(f"Expected --threads >= 1. Received: --threads={threads}")
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ[variable] = str(threads)
    import keras

    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    limit_threads(args.threads)
    from privkeras.backends.federated.owner import OwnerService
    from privkeras.backends.federated.remote import register_owner_methods
    from privkeras.backends.federated.secagg.identity import OwnerIdentity

    rules = owner_rules(args)
    x, y = load_data(args)
    node = options.node_from_args(args, name=args.name)
    # Secure aggregation signs this owner's round keys with its TLS certificate's key.
    identity = OwnerIdentity.from_credentials(args.name, node.credentials)
    service = OwnerService(args.name, x, y, rules, identity=identity)
    register_owner_methods(node, service)
    from privkeras.backends.mpc.owners import OwnerShareService

    # MPC jobs secret-share the rows straight to the compute parties (refused without --allow mpc).
    OwnerShareService(
        args.name,
        x,
        y,
        node,
        allowed="mpc" in rules.allow,
        timeout=args.timeout,
        allow_seeded_jobs=args.allow_seeded_jobs,
    )
    logger.info(
        "worker %r holds %d rows of shape %s; allows %s; budget %s",
        args.name,
        len(service.x),
        service.x.shape[1:],
        list(rules.allow),
        "none"
        if rules.max_epsilon is None
        else f"epsilon {rules.max_epsilon:g} at delta {rules.delta:g}",
    )
    return options.serve(args, node)
