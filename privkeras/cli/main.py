"""The `privkeras` command."""

from __future__ import annotations

import argparse
import sys

from privkeras.cli import certs, demo, party, serve, worker
from privkeras.net import echo as net_echo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privkeras",
        description="privkeras: Keras 3 privacy-preserving deep learning (DP-SGD, federated, MPC, HE).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo.add_parser(sub)
    certs.add_parser(sub)
    party.add_parser(sub)
    worker.add_parser(sub)
    serve.add_parser(sub)
    net_echo.add_parser(sub)  # hidden: transport tests and benchmarks
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
