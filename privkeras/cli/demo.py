"""`privkeras demo`: every privacy policy on offline data, one stage each.

Each stage is a function `stage(verbose) -> dict` in `privkeras/cli/stages/`,
listed in `STAGES`. A stage prints its own results line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

#: Stage name -> "module:function". The order is the order they run in.
STAGES: dict[str, str] = {
    "plaintext": "privkeras.cli.stages.plaintext:run",
    "dp-sgd": "privkeras.cli.stages.dpsgd:run",
    "federated": "privkeras.cli.stages.federated:run",
    "mpc": "privkeras.cli.stages.mpc:run",
    "he": "privkeras.cli.stages.he:run",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="train and evaluate a PrivateSequential under each privacy policy on offline data",
        description="Runs each privacy policy on scikit-learn's breast-cancer and digits data.",
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated stages to run (default: all of {', '.join(STAGES)})",
    )
    parser.add_argument("--verbose", action="store_true", help="show Keras progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    names = [name.strip() for name in args.stages.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise SystemExit(
            f"privkeras demo: expected stages from {list(STAGES)}. Received: {unknown}"
        )
    import keras

    print(f"privkeras demo (Keras {keras.__version__}, backend {keras.backend.backend()})")
    start = time.perf_counter()
    for name in names:
        module, function = STAGES[name].split(":")
        getattr(importlib.import_module(module), function)(verbose=args.verbose)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0
